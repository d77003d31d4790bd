"""The training engine: a generator of events that the CLI prints and the GUI shows.

fit(config, stop) prepares a run (training/prepare.py: data, model from its weight source,
frozen groups, device, loaders, objective), runs the epoch loop (training/loop.py: the
objective's loss and validation metrics, best weights, a checkpoint every epoch and when
stopped) and returns the RunInfo. resume(run_dir) continues a stopped run to the same result an
uninterrupted run with the same seed would have reached.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from datetime import datetime
from pathlib import Path
from typing import Any

from tlstudio.core.errors import UserError
from tlstudio.core.events import Event, Log, RunStarted, Warn
from tlstudio.core.runs import folder as runs
from tlstudio.core.runtime.allocator import training_allocator
from tlstudio.core.runtime.background_writer import BackgroundWriter
from tlstudio.core.training.checkpoint import TrainingFailed
from tlstudio.core.training.objectives import Objective
from tlstudio.core.training.prepare import RunStopped, prepare_run

__all__ = ["fit", "resume", "RunLogger", "RunStopped", "TrainingFailed", "mark_failed"]


def _new_run_dir(config) -> Path | None:
    """The run folder; None on a non-main DDP process, which writes no files at all."""
    from tlstudio.core.runtime.parallel import distributed_context

    if not distributed_context().is_main:
        return None
    return Path(config.out_dir) if config.out_dir else runs.fresh_run_dir(config.backbone)


def mark_failed(run_dir: Path) -> None:
    """Best effort (the disk may be full): a run that ended on an error is not left "running"."""
    try:
        info = runs.read_run(run_dir)
        if info.status == "running":
            info.status = "failed"
            runs.write_run(run_dir, info)
    except (OSError, UserError):
        pass


def _remove_failed_start(run_dir: Path) -> None:
    """A run folder this call created, for a run that failed before training began (bad data,
    weights unavailable, stopped during the download), holds only its start files: remove it, so
    failed starts do not pile up as empty runs. The error itself reaches the caller."""
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)


class RunLogger:
    """Appends Log/Warn events to the run's log.txt (never fails the run)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / runs.LOG_TXT

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, Log | Warn):
            kind = "WARNING" if isinstance(ev, Warn) else "INFO"
            try:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(f"{datetime.now().isoformat(timespec='seconds')} {kind} {ev.message}\n")
            except OSError:
                pass


def fit(
    config,
    stop: threading.Event | None = None,
    pause: threading.Event | None = None,
    objective: Objective | None = None,
    extra_train: list[Any] | None = None,
    run_kind: str = "train",
    phase: str = "main",
    _resume_from: Path | None = None,
) -> Generator[Event, None, runs.RunInfo]:
    """Train per ``config``; yield events; return the run's RunInfo."""
    import tempfile

    from tlstudio.core.runs.guard import claim_out_dir

    stop = stop or threading.Event()
    pause = pause or threading.Event()
    run_dir = _resume_from or _new_run_dir(config)
    scratch_dir = lock = None
    created = False
    if run_dir is None:  # a non-main DDP process: its files go to a temp folder removed at the end
        scratch_dir = tempfile.TemporaryDirectory(prefix="tlstudio-rank-")
        run_dir = Path(scratch_dir.name)
    else:  # refuses a file, someone's folder of other things, a folder another job is writing
        created = not run_dir.exists()
        lock = claim_out_dir(run_dir, resume=_resume_from is not None)
    if _resume_from is None:
        config = config.model_copy(update={"out_dir": str(run_dir)})
        config.to_json_file(run_dir / runs.CONFIG_JSON)
    logger = RunLogger(run_dir)
    from tlstudio.core.runtime.parallel import distributed_context
    from tlstudio.core.training.tensorboard import TB_DIR, TBWriter

    # TensorBoard event files when tensorboard is installed (a no-op otherwise); rank 0 only
    tb = TBWriter(run_dir / TB_DIR, enabled=distributed_context().is_main)
    writer = BackgroundWriter()  # end-of-epoch checkpoints are written while the next epoch trains
    gen = _fit(config, run_dir, stop, pause, objective, extra_train, run_kind, phase, _resume_from is not None,
               writer)
    alloc = training_allocator().__enter__()  # heap reuse for the step's big buffers (allocator.py)
    started = False
    try:
        while True:
            ev = next(gen)
            started = started or isinstance(ev, RunStarted)
            logger(ev)
            tb.write(ev)
            yield ev
    except StopIteration as done:
        info = done.value
    except Exception as exc:  # disk full, out of memory at batch size 1, a bug: not left "running"
        writer.close()  # queued writes land before run.json says "failed"
        tb.close()
        if created and not started:
            _remove_failed_start(run_dir)  # failed before training began: no empty run folder left
        else:
            if isinstance(exc, UserError):
                logger(Warn(str(exc)))
            mark_failed(run_dir)
        raise
    finally:
        writer.close()
        tb.close()
        alloc.__exit__(None, None, None)
        if lock is not None:
            lock.release()
        if scratch_dir is not None:
            scratch_dir.cleanup()
    if config.baseline and run_kind == "train" and phase == "main" and objective is None \
            and info.status in ("finished", "early_stopped"):
        from tlstudio.core.training.baseline import scratch_baseline

        info = yield from scratch_baseline(config, run_dir, info, stop, pause, logger)
    return info


def resume(run_dir: str | Path, stop: threading.Event | None = None, pause: threading.Event | None = None,
           objective: Objective | None = None, extra_train: list[Any] | None = None) -> Generator[Event, None, runs.RunInfo]:
    """Continue a stopped run from its last checkpoint."""
    from tlstudio.core.config import TrainConfig

    from tlstudio.core.runs.guard import check_resumable

    run_dir = Path(run_dir)
    info = runs.read_run(run_dir)
    if not (run_dir / runs.LAST_CKPT).is_file():
        check_resumable(run_dir, None)  # one line that says how to start it again into the same folder
    if info.status in ("finished", "early_stopped"):
        raise UserError(f"{run_dir}: this run already {info.status.replace('_', ' ')}; nothing to resume")
    if info.kind != "train" and objective is None:
        raise UserError(f"{run_dir}: a {info.kind} run; resume it with `tlstudio resume {run_dir}`")
    try:
        config = TrainConfig.from_json_file(run_dir / runs.CONFIG_JSON)
    except Exception as exc:
        raise UserError(f"{run_dir / runs.CONFIG_JSON}: cannot read the run's settings: {exc}") from exc
    return (yield from fit(config, stop, pause, objective=objective, extra_train=extra_train,
                           run_kind=info.kind, _resume_from=run_dir))


def _fit(config, run_dir, stop, pause, objective, extra_train, run_kind, phase, resuming,
         writer: BackgroundWriter) -> Generator[Event, None, runs.RunInfo]:
    from tlstudio.core.models import layers
    from tlstudio.core.training import checkpoint
    from tlstudio.core.training.loop import LoopState, run_epochs

    ctx = yield from prepare_run(config, run_dir, stop, pause, objective, extra_train, run_kind, phase,
                                 resuming, writer)
    st = LoopState.from_ckpt(ctx.ckpt)
    if ctx.ckpt is not None:
        checkpoint.reconcile(run_dir, ctx.ckpt)
    report, split = ctx.report, ctx.split
    info = runs.RunInfo(
        kind=run_kind, task=getattr(config, "task", "classification"), name=run_dir.name, status="running",
        config=config.model_dump(mode="json"), model=ctx.spec,
        data={"root": report.root, "layout": report.layout, "fingerprint": report.fingerprint,
              "counts": report.counts, "n_train": len(split.train), "n_val": len(split.val),
              "n_unlabelled": len(ctx.extra_train), "skipped": len(report.skipped)},
        versions=runs.versions(), seed=config.seed, device=str(ctx.device), precision=ctx.plan.name,
        epochs_done=st.epoch, best_epoch=st.trackers.best_epoch, metrics=dict(st.trackers.best_metrics),
        best_metric=ctx.objective.best_metric[0], timings={"threads": float(ctx.threads)},
        label_schema=getattr(ctx.objective, "label_schema", None)
        or {"tasks": [{"name": "label", "type": "categorical", "classes": list(ctx.classes)}]},
    )
    info.best_val_acc = info.metrics.get("val_acc") if st.trackers.best_epoch is not None else None
    if resuming:
        old = runs.read_run(run_dir)
        info.created, info.baseline, info.extra = old.created, old.baseline, old.extra
        info.timings.update({k: v for k, v in old.timings.items() if k == "train_s"})
    runs.write_run(run_dir, info)

    n_train_params, n_total = layers.count_params(ctx.model)
    yield RunStarted(
        run_dir=str(run_dir), backbone=config.backbone, device=str(ctx.device), precision=ctx.plan.name,
        classes=tuple(ctx.classes), n_train=ctx.loaders.n_train, n_val=ctx.loaders.n_val, epochs=config.epochs,
        batches_per_epoch=ctx.steps_per_epoch, trainable_params=n_train_params, total_params=n_total,
        start_epoch=st.start_epoch, phase=phase,
    )
    if resuming:
        yield Log(f"Resumed at epoch {st.start_epoch + 1}, batch {st.start_batch + 1}")
    from tlstudio.core.runs.guard import early_stop_patience

    patience = early_stop_patience(len(split.train), config.early_stop_patience,
                                   explicit="early_stop_patience" in config.model_fields_set)
    if patience != config.early_stop_patience and patience is not None and patience < config.epochs:
        yield Log(f"Early stopping waits {patience} epochs without improvement ({len(split.train)} training "
                  "images give noisy validation scores)")
    return (yield from run_epochs(ctx, st, info, patience))
