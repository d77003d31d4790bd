"""Small frozen events yielded by the engine's generators (fit, distill, scan...).

The CLI prints them; the GUI routes them to its panels. Keep them cheap to create and
free of tensors so they cross threads safely.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class RunStarted(Event):
    run_dir: str
    backbone: str
    device: str
    precision: str  # "fp32", "bf16", "fp16"
    classes: tuple[str, ...]
    n_train: int
    n_val: int
    epochs: int
    batches_per_epoch: int
    trainable_params: int
    total_params: int
    start_epoch: int = 0  # > 0 when resumed
    phase: str = "main"  # "main", "baseline" (from-scratch comparison), "distill"


@dataclass(frozen=True)
class Progress(Event):
    """Long work that is not a training batch: download, scan, feature caching, evaluation."""

    task: str  # "download", "scan", "cache", "eval", ...
    done: int
    total: int | None
    message: str = ""


@dataclass(frozen=True)
class Log(Event):
    message: str


@dataclass(frozen=True)
class Warn(Event):
    message: str
    path: str | None = None  # the file concerned, if any


@dataclass(frozen=True)
class BatchEnd(Event):
    epoch: int  # 0-based
    batch: int  # 0-based within the epoch
    batches: int  # per epoch
    step: int  # global optimiser step
    loss: float
    lr: float
    images_per_s: float
    parts: dict[str, float] = field(default_factory=dict)  # loss components (e.g. soft/hard in KD)
    phase: str = "main"


@dataclass(frozen=True)
class EpochEnd(Event):
    epoch: int  # 0-based
    epochs: int
    train_loss: float
    # validation metrics of the run's kind of learning: classification has val_loss, val_acc,
    # val_macro_f1; per-task names use a slash (val_acc/digit); see docs/TASKS.md
    metrics: dict[str, float]
    lr: float
    seconds: float
    best: bool  # this epoch is the best so far (its weights were kept)
    trainable_params: int
    parts: dict[str, float] = field(default_factory=dict)
    phase: str = "main"
    best_metric: str = "val_acc"  # the metric that picks the best epoch
    # the best metric of the model kept so far when that is not this epoch's own value (multi-task
    # with a frozen body: each task keeps the head of its own best epoch); None otherwise
    kept_score: float | None = None

    @property
    def val_loss(self) -> float | None:
        return self.metrics.get("val_loss")

    @property
    def val_acc(self) -> float | None:
        return self.metrics.get("val_acc")

    @property
    def val_macro_f1(self) -> float | None:
        return self.metrics.get("val_macro_f1")


@dataclass(frozen=True)
class Unfrozen(Event):
    """Gradual unfreezing opened one more group."""

    epoch: int
    group: str
    trainable_params: int


@dataclass(frozen=True)
class Checkpointed(Event):
    path: str
    epoch: int
    kind: str  # "last" (resumable) or "best" (weights)


@dataclass(frozen=True)
class Finished(Event):
    run_dir: str
    status: str  # "finished", "stopped", "early_stopped", "failed"
    best_epoch: int | None
    best_val_acc: float | None  # classification's headline; None for kinds without accuracy
    message: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # the best epoch's metrics


def relay(gen: Generator, transform: Callable[[Any], Any]) -> Generator:
    """Yield ``transform(ev)`` for each event of ``gen`` (None drops the event) and return
    ``gen``'s value. Closing the relay closes ``gen`` at once, as ``yield from`` would, so a
    run's clean-up (its ``finally`` blocks) runs then and not when the generator is collected."""
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as done:
                return done.value
            out = transform(ev)
            if out is not None:
                yield out
    finally:
        gen.close()


def drive(gen: Generator, on_event: Callable[[Any], None] | None = None) -> Any:
    """Run an event generator (fit, resume, distill...) to its end; return its return value."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as done:
            return done.value
        if on_event is not None:
            on_event(ev)
