"""The multi-task training run: a generator of the engine's events over MultiTaskObjective.

run(config) = prepare (prepare.py: label table, split, model, loaders, optimiser -> MTRun), the
epoch loop (loop.py, with an explicit LoopState), checkpoints and the final report
(checkpoint.py), then the single-task baselines when asked (baseline.py). It uses the engine's
pieces (weight download with progress, loaders and the feature cache, layer groups and learning
rates, LR schedule, run log, checkpoint writes) and drives the Objective hooks of docs/TASKS.md
itself, because the data (a label table with several columns) and the step (PCGrad's per-task
backward passes, per-task heads kept from their own best epoch) differ from the engine's loop.

Under torchrun every process runs this; rank 0 writes the run folder, the others a scratch
folder removed at the end (nothing is left in the temp folder). resume(run_dir) continues a
stopped run from the stopped batch with the same split, weights, optimiser, schedule and task
weights (also under torchrun).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

from tlstudio.core.errors import UserError
from tlstudio.core.events import Event, Finished, Log, RunStarted, Warn
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks.multitask import _runtime as eng
from tlstudio.core.tasks.multitask.config import MultiTaskConfig


def run(config: MultiTaskConfig, stop: threading.Event | None = None, pause: threading.Event | None = None,
        _resume_from: Path | None = None, phase: str = "main", _same_split: bool = False,
        _schema: dict[str, Any] | None = None) -> Generator[Event, None, runs.RunInfo]:
    """Train a multi-task run. (``_same_split``/``_schema``: a single-task baseline on the
    split.json already in ``config.out_dir`` and the multi-task run's schema of its task.)"""
    from tlstudio.core.runtime.parallel import distributed_context

    stop = stop or threading.Event()
    pause = pause or threading.Event()
    scratch = None
    if phase == "main" and not distributed_context().is_main:
        # a non-main torchrun process: its files go to a temp folder removed at the end
        scratch = tempfile.TemporaryDirectory(prefix="tlstudio-rank-")
        run_dir = Path(scratch.name)
    else:
        run_dir = _resume_from or eng.new_run_dir(config)
    try:
        return (yield from _run_in(config, run_dir, _resume_from, stop, pause, phase, _same_split, _schema))
    finally:
        if scratch is not None:
            scratch.cleanup()


def _run_in(config: MultiTaskConfig, run_dir: Path, source_dir: Path | None, stop, pause, phase: str,
            same_split: bool, schema: dict[str, Any] | None) -> Generator[Event, None, runs.RunInfo]:
    """The run writing to ``run_dir`` (a resumed run read from ``source_dir``), then the baselines."""
    if source_dir is None or run_dir != source_dir:
        if source_dir is None and runs.is_run_dir(run_dir) and not same_split:
            raise UserError(f"{run_dir} already holds a run: resume it, or choose another output folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        config = config.model_copy(update={"out_dir": str(run_dir)})
        config.to_json_file(run_dir / runs.CONFIG_JSON)
    logger = eng.Logger(run_dir)
    gen = _fit(config, run_dir, source_dir, stop, pause, phase, same_split, schema)
    try:
        while True:
            ev = next(gen)
            logger(ev)
            yield ev
    except StopIteration as done:
        info = done.value
    except UserError as exc:
        logger(Warn(str(exc)))
        eng.mark_failed(run_dir)
        raise
    if config.baseline and phase == "main" and info.status in ("finished", "early_stopped"):
        info = yield from _baselines(config, run_dir, info, stop, pause, logger)
    return info


def _baselines(config, run_dir: Path, info, stop, pause, logger) -> Generator[Event, None, runs.RunInfo]:
    from tlstudio.core.tasks.multitask.baseline import run_baselines

    info = yield from run_baselines(config, run_dir, info, stop, pause)
    base = (info.extra.get("multitask") or {}).get("baseline")
    ev = Finished(run_dir=str(run_dir), status=info.status, best_epoch=info.best_epoch,
                  best_val_acc=info.best_val_acc, message=base["verdict"] if base else "",
                  metrics=dict(info.metrics))
    logger(ev)
    yield ev  # the run's own result comes last, after the baselines' Finished events
    return info


def _fit(config: MultiTaskConfig, run_dir: Path, source_dir: Path | None, stop, pause, phase: str,
         same_split: bool, schema: dict[str, Any] | None) -> Generator[Event, None, runs.RunInfo]:
    from tlstudio.core.models import layers
    from tlstudio.core.tasks.multitask import checkpoint
    from tlstudio.core.tasks.multitask.loop import LoopState, run_epochs
    from tlstudio.core.tasks.multitask.prepare import prepare_run

    resuming = source_dir is not None
    prepared = yield from prepare_run(config, run_dir, source_dir, stop, pause, phase, same_split, schema)
    st = LoopState.from_ckpt(prepared.ckpt)
    if resuming:
        checkpoint.reconcile_history(prepared, st)
    info = checkpoint.new_info(prepared, resuming)
    runs.write_run(run_dir, info)
    n_tr, n_total = layers.count_params(prepared.model)
    yield RunStarted(run_dir=str(run_dir), backbone=config.backbone, device=str(prepared.device),
                     precision=prepared.plan.name, classes=tuple(prepared.spec.classes),
                     n_train=prepared.loaders.n_train, n_val=prepared.loaders.n_val, epochs=config.epochs,
                     batches_per_epoch=prepared.steps_per_epoch, trainable_params=n_tr, total_params=n_total,
                     start_epoch=st.start_epoch, phase=phase)
    if resuming:
        yield Log(f"Resumed at epoch {st.start_epoch + 1}, batch {st.start_batch + 1}")
    return (yield from run_epochs(prepared, st, info))


def resume(run_dir: str | Path, stop=None, pause=None) -> Generator[Event, None, runs.RunInfo]:
    """Continue a stopped run (or add the baselines a finished run was asked for and lacks)."""
    from tlstudio.core.runtime.parallel import distributed_context

    run_dir = Path(run_dir)
    info = runs.read_run(run_dir)
    if not (run_dir / runs.LAST_CKPT).is_file():
        raise UserError(f"{run_dir}: no checkpoint to resume from ({runs.LAST_CKPT} missing)")
    config = MultiTaskConfig.from_json_file(run_dir / runs.CONFIG_JSON)
    stop, pause = stop or threading.Event(), pause or threading.Event()
    if info.status not in ("finished", "early_stopped"):
        return (yield from run(config, stop, pause, _resume_from=run_dir))
    if not config.baseline or (info.extra.get("multitask") or {}).get("baseline"):
        raise UserError(f"{run_dir}: this run already {info.status.replace('_', ' ')}; nothing to resume")
    from tlstudio.core.tasks.multitask.baseline import run_baselines

    if distributed_context().is_main:
        return (yield from run_baselines(config, run_dir, info, stop, pause))
    with tempfile.TemporaryDirectory(prefix="tlstudio-rank-") as scratch:  # a non-main torchrun process
        runs.write_split(Path(scratch), runs.read_split(run_dir))
        return (yield from run_baselines(config, Path(scratch), info, stop, pause))
