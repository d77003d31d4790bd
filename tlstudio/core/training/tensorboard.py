"""TensorBoard event files from the engine's events, when tensorboard is installed.

The engine owns logging; it only has to do

    tb = TBWriter(run_dir / "tensorboard")      # a no-op when tensorboard is missing
    for ev in events: tb.write(ev)              # EpochEnd, BatchEnd, Unfrozen, Finished...
    tb.close()

`history_to_tensorboard(run_dir)` writes the same curves afterwards from history.csv (for runs
made before tensorboard was installed). Rank 0 only under DDP: the caller decides.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

TB_DIR = "tensorboard"


def tensorboard_available() -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception:  # ImportError when tensorboard is not installed; anything else: treat as missing
        return False
    return True


class TBWriter:
    """Scalars per epoch (and every `batch_every` optimiser steps) under `log_dir`."""

    def __init__(self, log_dir: str | Path, *, batch_every: int = 10, enabled: bool = True):
        self.log_dir = Path(log_dir)
        self.batch_every = max(1, int(batch_every))
        self._w: Any = None
        if enabled and tensorboard_available():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.utils.tensorboard import SummaryWriter

                self._w = SummaryWriter(log_dir=str(self.log_dir))

    @property
    def active(self) -> bool:
        return self._w is not None

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._w is not None and value is not None:
            self._w.add_scalar(tag, float(value), int(step))

    def write(self, event) -> None:
        """Log one engine event; unknown event types are ignored."""
        if self._w is None:
            return
        kind = type(event).__name__
        phase = getattr(event, "phase", "main")
        pre = "" if phase == "main" else f"{phase}/"
        if kind == "EpochEnd":
            step = event.epoch + 1
            self.scalar(f"{pre}loss/train", event.train_loss, step)
            for key, value in event.metrics.items():
                self.scalar(f"{pre}{metric_tag(key)}", value, step)
            self.scalar(f"{pre}lr", event.lr, step)
            self.scalar(f"{pre}epoch_seconds", event.seconds, step)
            self.scalar(f"{pre}trainable_params", event.trainable_params, step)
            for k, v in (event.parts or {}).items():
                self.scalar(f"{pre}loss_parts/{k}", v, step)
            self._w.flush()
        elif kind == "BatchEnd":
            if event.step % self.batch_every == 0:
                self.scalar(f"{pre}batch/loss", event.loss, event.step)
                self.scalar(f"{pre}batch/lr", event.lr, event.step)
                self.scalar(f"{pre}batch/images_per_s", event.images_per_s, event.step)
        elif kind == "Unfrozen":
            self._w.add_text(f"{pre}unfrozen", f"epoch {event.epoch + 1}: {event.group}", event.epoch + 1)
        elif kind == "Finished":
            best = ", ".join(f"{k} {v:.4f}" for k, v in (event.metrics or {}).items())
            if best:
                self._w.add_text(f"{pre}finished", f"{event.status}, best epoch: {best}")
            self._w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None

    def __enter__(self) -> "TBWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_TAGS = {"val_loss": "loss/val", "val_acc": "val/accuracy", "val_macro_f1": "val/macro_f1"}


def metric_tag(key: str) -> str:
    """TensorBoard tag of a metric: classification keeps its tags, other metrics go under metrics/."""
    return _TAGS.get(key, f"metrics/{key}")


def history_to_tensorboard(run_dir: str | Path, log_dir: str | Path | None = None) -> Path | None:
    """Write a run's history.csv as TensorBoard scalars; None when tensorboard is not installed."""
    from tlstudio.core.runs.folder import read_history

    run_dir = Path(run_dir)
    out = Path(log_dir) if log_dir else run_dir / TB_DIR
    with TBWriter(out) as tb:
        if not tb.active:
            return None
        for row in read_history(run_dir):
            step = int(row.get("epoch", 0)) + 1
            for key, value in row.items():
                if key == "train_loss":
                    tb.scalar("loss/train", value, step)
                elif key == "lr":
                    tb.scalar("lr", value, step)
                elif key.startswith("val") or "/" in key:
                    tb.scalar(metric_tag(key), value, step)
    return out
