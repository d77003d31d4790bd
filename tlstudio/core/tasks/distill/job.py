"""The distillation run: distil, train the same student without a teacher, compare (tradeoff)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

from tlstudio.core.events import BatchEnd, EpochEnd, Event, Finished, Log, RunStarted, Warn, relay
from tlstudio.core.tasks.distill.config import STUDENT_BASELINE_DIR, DistillConfig, DistillError
from tlstudio.core.tasks.distill.objective import DistillObjective
from tlstudio.core.tasks.distill.teachers import check_teacher_classes

# --------------------------------------------------------------------------------------
# The run: distil, train the student alone, compare
# --------------------------------------------------------------------------------------
def _relay(gen, phase: str | None, state: dict):
    """Yield ``gen``'s events (phase relabelled), remember the run folder; return its value."""
    def note(ev):
        if isinstance(ev, RunStarted):
            state.setdefault("run_dir", ev.run_dir)
            state["last_run_dir"] = ev.run_dir
        if isinstance(ev, Finished):
            state["status"] = ev.status
        if phase is not None and isinstance(ev, (RunStarted, BatchEnd, EpochEnd)):
            ev = dataclasses.replace(ev, phase=phase)
        return ev

    return (yield from relay(gen, note))


def _prepare(config: DistillConfig) -> Generator[Event, None, list | None]:
    """Check the teachers (readable, trained, same classes as each other and as the data) and
    read the unlabelled folder. Runs before any run folder exists. Returns the extra samples."""
    from tlstudio.core.data.dataset import scan
    from tlstudio.core.runs.folder import RunError, read_run

    teacher_classes = {}
    for run in config.teachers:
        try:
            info = read_run(run)
        except RunError as exc:
            raise DistillError(f"teacher run {run}: {exc}") from exc
        if not (Path(run) / "model.safetensors").is_file():
            raise DistillError(f"teacher run {run}: it has no trained weights (model.safetensors missing)")
        teacher_classes[run] = list(info.model.classes)
    yield Log(f"Checking the teachers' classes against {config.data_dir}")
    data_classes = list(scan(config.data_dir).classes)
    if data_classes:
        for run, classes in teacher_classes.items():
            check_teacher_classes(run, classes, data_classes)

    if not config.unlabeled_dir:
        return None
    from tlstudio.core.data.dataset import scan_unlabelled

    extra, skipped = scan_unlabelled(config.unlabeled_dir)
    for s in skipped[:20]:
        yield Warn(f"unlabelled image skipped: {s.reason}", s.path)
    if len(skipped) > 20:
        yield Warn(f"{len(skipped) - 20} more unlabelled images skipped")
    if not extra:
        raise DistillError(f"{config.unlabeled_dir}: no usable images in the unlabelled folder")
    yield Log(f"Unlabelled folder {config.unlabeled_dir}: {len(extra)} images")
    return extra


def distill(config: DistillConfig, stop: threading.Event | None = None,
            pause: threading.Event | None = None) -> Generator[Event, None, Any]:
    """Distil, then train the student without a teacher, then write the trade-off report."""
    from tlstudio.core.training.engine import fit

    extra = yield from _prepare(config)
    state: dict = {}
    info = yield from _relay(fit(config, stop, pause, objective=DistillObjective(config), extra_train=extra,
                                 run_kind="distill", phase="distill"), None, state)
    run_dir = Path(state.get("run_dir") or config.out_dir or "")
    return (yield from _after_main(config, run_dir, info, stop, pause))


def resume_distill(run_dir: str | Path, stop: threading.Event | None = None,
                   pause: threading.Event | None = None) -> Generator[Event, None, Any]:
    """Continue a stopped distillation: the distil run, then the student baseline, then the report."""
    from tlstudio.core.training.engine import fit
    from tlstudio.core.runs.folder import CONFIG_JSON, LAST_CKPT, RunError, read_run

    run_dir = Path(run_dir)
    try:
        info = read_run(run_dir)
    except RunError as exc:
        raise DistillError(str(exc)) from exc
    if info.kind != "distill":
        raise DistillError(f"{run_dir}: not a distillation run (it is a {info.kind} run: use resume)")
    try:
        config = DistillConfig.from_json_file(run_dir / CONFIG_JSON)
    except Exception as exc:  # noqa: BLE001 - pydantic or JSON error: name the file
        raise DistillError(f"{run_dir / CONFIG_JSON}: cannot read the distillation settings: "
                           f"{str(exc).splitlines()[0]}") from exc
    extra = yield from _prepare(config)
    if info.status not in ("finished", "early_stopped"):
        if not (run_dir / LAST_CKPT).is_file():
            raise DistillError(f"{run_dir}: no checkpoint to resume from ({LAST_CKPT} missing)")
        # the engine's resume() reads a plain TrainConfig; fit() with the run folder resumes any kind
        info = yield from _relay(fit(config, stop, pause, objective=DistillObjective(config), extra_train=extra,
                                     run_kind="distill", phase="distill", _resume_from=run_dir), None, {})
    else:
        yield Log(f"{run_dir.name}: the distillation itself had finished; continuing with what is left")
    return (yield from _after_main(config, run_dir, info, stop, pause))


def _after_main(config: DistillConfig, run_dir: Path, info, stop, pause) -> Generator[Event, None, Any]:
    """After the distil run: the student without a teacher (resumed if interrupted), the report."""
    import shutil

    from tlstudio.core.training.engine import fit
    from tlstudio.core.runs.folder import LAST_CKPT, is_run_dir, read_run, write_run

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    if getattr(info, "status", None) in ("stopped", "failed") or stopped():
        yield Log("Distillation stopped; `tlstudio distill-resume` (or Continue) finishes it later")
        return info

    baseline_dir = None
    if config.student_baseline:
        base_dir = run_dir / STUDENT_BASELINE_DIR
        base_cfg = config.student_config(out_dir=str(base_dir))
        done = False
        gen = None
        if is_run_dir(base_dir):
            status = read_run(base_dir).status
            if status in ("finished", "early_stopped"):
                done = True
            elif (base_dir / LAST_CKPT).is_file():
                yield Log("Continuing the student without a teacher where it stopped")
                gen = fit(base_cfg, stop, pause, run_kind="train", phase=STUDENT_BASELINE_DIR,
                          _resume_from=base_dir)
            else:  # interrupted before its first checkpoint: start it again
                shutil.rmtree(base_dir, ignore_errors=True)
        if not done and gen is None:
            yield Log("Training the same student without a teacher (student baseline) for the comparison")
            gen = fit(base_cfg, stop, pause, run_kind="train", phase=STUDENT_BASELINE_DIR)
        if gen is not None:
            yield from _relay(gen, None, {})
        if stopped():
            yield Log("Stopped during the student baseline; `tlstudio distill-resume` (or Continue) finishes it")
            return read_run(run_dir)
        baseline_dir = str(base_dir)

    from tlstudio.core.tasks.tradeoff import build_tradeoff, save_tradeoff, tradeoff_table

    report = yield from build_tradeoff(run_dir, config.teachers, baseline_dir, device=config.device,
                                       repeats=config.latency_repeats, rounds=config.latency_rounds,
                                       batch_size=config.batch_size)
    save_tradeoff(run_dir, report)
    info = read_run(run_dir)
    info.extra["tradeoff"] = report
    write_run(run_dir, info)
    yield Log("Trade-off (same validation images, latency measured on this machine):\n"
              + tradeoff_table(report) + "\n" + report["summary"])
    return info


