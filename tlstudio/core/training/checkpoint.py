"""Checkpoints of a training run: what last.pt holds, how it is saved and read back.

last.pt is the source of truth for where a run stands. run.json and history.csv are written
after it by the same ordered background writer, so a kill between the writes can leave them one
epoch behind; resume reconciles them from last.pt (``reconcile``), never the other way round.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tlstudio.core.errors import UserError
from tlstudio.core.runs import folder as runs


class TrainingFailed(UserError):
    pass


@dataclasses.dataclass
class Trackers:
    """Best-epoch bookkeeping; ``best_value`` is the objective's best_metric at the best epoch."""

    history: list[dict[str, float]]
    best_epoch: int | None = None
    best_value: float | None = None
    best_tie: float | None = None
    best_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    bad_epochs: int = 0

    @classmethod
    def from_state(cls, t: dict[str, Any]) -> "Trackers":
        if "best_value" not in t:  # a last.pt written before metrics became dictionaries
            best = t.get("best_epoch")
            acc, loss = t.get("best_acc", -1.0), t.get("best_loss", math.inf)
            metrics = {} if best is None else {"val_acc": acc, "val_loss": loss, "val_macro_f1": t.get("best_f1")}
            return cls(history=list(t["history"]), best_epoch=best, best_value=None if best is None else acc,
                       best_tie=None if best is None else loss,
                       best_metrics={k: v for k, v in metrics.items() if v is not None},
                       bad_epochs=int(t.get("bad_epochs", 0)))
        return cls(history=list(t["history"]), best_epoch=t["best_epoch"], best_value=t["best_value"],
                   best_tie=t["best_tie"], best_metrics=dict(t["best_metrics"]), bad_epochs=int(t["bad_epochs"]))


def save(path: Path, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run an atomic write of ``path``; a full disk becomes one clear TrainingFailed line.

    The write is atomic, so the previous file at ``path`` is still intact when it fails.
    (torch.save on a full disk raises a RuntimeError, hence the free-space check.)"""
    try:
        write(*args, **kwargs)
        return
    except UserError:
        raise
    except Exception as exc:  # OSError, torch's RuntimeError, safetensors' SafetensorError
        import errno
        import shutil

        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        if not full:
            try:
                full = shutil.disk_usage(path.parent).free < 64 * 2**20
            except OSError:
                pass
        if not full and not isinstance(exc, OSError):
            raise
        why = "disk full (No space left on device)" if full else (exc.strerror or str(exc)).splitlines()[0]
    # raised outside the except block, with no link to the write's traceback: its frames hold the
    # failed writer, whose open (deleted) temp file keeps the disk full until they are freed
    import gc

    gc.collect()
    raise TrainingFailed(f"Could not save {path}: {why}; the previous {path.name} is unchanged. "
                         "Free some space, then resume the run.")


def load(run_dir: Path) -> dict[str, Any]:
    """last.pt with weights_only=True; temp files of writes cut short by a kill are removed."""
    import torch

    for stale in run_dir.glob(".*.tmp"):  # ".last.pt.<random>.tmp", maybe 100s of MB
        stale.unlink(missing_ok=True)
    path = run_dir / runs.LAST_CKPT
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # one line: torch's own message spans paragraphs
        text = str(exc).strip() or type(exc).__name__
        why = ("refused: it holds more than plain tensors, and loading it would run code it contains"
               if "weights only" in text.lower() else text.splitlines()[0][:300])
        raise UserError(f"{path}: cannot read the checkpoint: {why}") from exc


def reconcile(run_dir: Path, ckpt: dict[str, Any]) -> None:
    """Bring history.csv back in line with last.pt (a kill may have left either one ahead)."""
    history = list(ckpt["trackers"]["history"])
    if len(runs.read_history(run_dir)) != len(history):
        runs.write_history(run_dir, history)


def optimizer_state(opt: Any, epoch: int, epochs: int, last: bool = False) -> dict[str, Any]:
    """The optimiser's state for last.pt, or {} once every epoch is done or ``last`` (the run
    stops early after this epoch; an early-stopped run is not resumed): nothing is left to train
    (a resume only finishes), and AdamW's two moments are twice the model. A finished run's
    last.pt is a third of the size (resnet18: 45 instead of 135 MB). The end of a short run waits
    for that fsync: resnet18, 32 px, 672 images under 2 busy loops, 4 runs each, 0.41-1.10 s
    (median 0.5) instead of 0.47-1.06 s (median 0.75); the disk's own noise is as large."""
    return opt.state_dict() if epoch < epochs and not last else {}


def state(ctx: Any, st: Any, epoch: int, batch: int, last: bool = False) -> dict[str, Any]:
    """Everything resume needs, as plain tensors and Python values (weights_only-safe)."""
    return {
        "model": ctx.model.state_dict(), "optimizer": optimizer_state(ctx.opt, epoch, ctx.config.epochs, last),
        "scheduler": ctx.sched.state_dict(),
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else {},
        "extra_modules": [m.state_dict() for m in ctx.objective.extra_modules()],
        "objective": ctx.objective.state_dict(),
        "epoch": epoch, "batch": batch, "step": st.step, "batch_size": ctx.batch_size,
        "trainable": list(ctx.trainable), "partial": dict(st.partial), "rng": _rng_state(),
        "trackers": dataclasses.asdict(st.trackers),
        "plan": {"precision": ctx.plan.name, "channels_last": bool(ctx.plan.channels_last),
                 "micro_batch": int(ctx.micro_batch)},
    }


def _rng_state():
    from tlstudio.core.runtime.rng_state import rng_state

    return rng_state()
