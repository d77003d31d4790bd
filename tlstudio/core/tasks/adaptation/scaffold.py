"""The run scaffolding shared by the domain-adaptation and semi-supervised jobs.

Both jobs are: a run folder (config.json, a run.json from the start so a stopped run is listed
and resumable), a baseline trained on the labelled images as a complete classification sub-run,
then more sub-runs or a head on cached features, and at the end the kept model copied to the
run folder. This module holds those steps; the jobs (adaptation/job.py, semisupervised/job.py)
hold what differs. Under torchrun only rank 0 writes (ranks.py says who does what).
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from tlstudio.core.config import TrainConfig
from tlstudio.core.errors import UserError
from tlstudio.core.events import Event, Finished, Log, Warn, relay
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks.adaptation.ranks import Stopped, is_follower, on_main, share, silent

JobBody = Callable[[Any, Path, threading.Event, threading.Event], Generator[Event, None, runs.RunInfo]]


def _open_run_dir(config, task: str, tag: str) -> Path:
    """The run folder, made and holding config.json (rank 0); refused when it holds another run."""
    run_dir = Path(config.out_dir) if config.out_dir else runs.fresh_run_dir(f"{tag}-{config.backbone}")
    resuming = runs.is_run_dir(run_dir) and (run_dir / runs.CONFIG_JSON).is_file()
    if resuming and runs.read_run(run_dir).task != task:
        raise UserError(f"{run_dir} already holds a run: choose another output folder")
    if resuming and runs.read_run(run_dir).status in ("finished", "early_stopped"):
        raise UserError(f"{run_dir}: this run already finished; nothing to resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resuming:
        config.model_copy(update={"out_dir": str(run_dir)}).to_json_file(run_dir / runs.CONFIG_JSON)
    return run_dir


def run_job(config, config_cls: type, task: str, tag: str, body: JobBody, stop=None, pause=None
            ) -> Generator[Event, None, runs.RunInfo]:
    """Open (or reopen) the run folder and run ``body``; a stop ends as a resumable "stopped" run,
    an error as "failed". Under torchrun every process runs ``body``; only rank 0 reports events."""
    from tlstudio.core.tasks.adaptation.ranks import context

    stop = stop or threading.Event()
    pause = pause or threading.Event()
    if not isinstance(config, config_cls):
        config = config_cls.model_validate(config.model_dump() if hasattr(config, "model_dump") else config)
    context()

    def opened() -> Generator[Event, None, Path]:
        return _open_run_dir(config, task, tag)
        yield  # a generator for on_main

    run_dir = Path((yield from on_main(opened)))
    config = config.model_copy(update={"out_dir": str(run_dir)})
    if is_follower():
        return (yield from silent(body(config, run_dir, stop, pause)))
    try:
        return (yield from body(config, run_dir, stop, pause))
    except Stopped:
        set_status(run_dir, "stopped")
        yield Finished(run_dir=str(run_dir), status="stopped", best_epoch=None, best_val_acc=None,
                       message="Stopped; resume the run to continue (finished phases are kept)")
        return runs.read_run(run_dir)
    except BaseException:
        set_status(run_dir, "failed")
        raise


def resume_job(run_dir, config_cls: type, run: Callable, stop=None, pause=None
               ) -> Generator[Event, None, runs.RunInfo]:
    """Continue a stopped job: finished phases are reused, a stopped sub-run resumes."""
    run_dir = Path(run_dir)
    try:
        config = config_cls.from_json_file(run_dir / runs.CONFIG_JSON)
    except Exception as exc:
        raise UserError(f"{run_dir / runs.CONFIG_JSON}: cannot read the run's settings: {exc}") from exc
    return (yield from run(config.model_copy(update={"out_dir": str(run_dir)}), stop, pause))


def set_status(run_dir: Path, status: str) -> None:
    try:
        info = runs.read_run(run_dir)
        if info.status == "running":
            info.status = status
            runs.write_run(run_dir, info)
    except (OSError, runs.RunError):
        pass


def write_placeholder(run_dir: Path, config, task: str, kind: str) -> None:
    """run.json from the start (status running), so a run stopped during its baseline is listed
    and `tlstudio resume RUN` finds its kind; the model spec is completed when the baseline ends."""
    if is_follower() or runs.is_run_dir(run_dir):
        return
    from tlstudio.core.data.dataset import scan

    classes = list(scan(config.data_dir).classes) or ["?"]
    spec = runs.ModelSpec(backbone=config.backbone, num_classes=len(classes), classes=classes,
                          image_size=config.image_size or 224)
    runs.write_run(run_dir, runs.RunInfo(kind=kind, task=task, name=run_dir.name, status="running",
                                         config=config.model_dump(mode="json"), model=spec, seed=config.seed))


def base_config(config: TrainConfig, out_dir: Path, **update: Any) -> TrainConfig:
    """The plain classification settings inside a task config (for the baseline and engine phases)."""
    fields = set(TrainConfig.model_fields) - {"task"}
    data = config.model_dump(include=fields)
    data.update({"out_dir": str(out_dir), "baseline": False, **update})
    return TrainConfig(**data)


def _sub_run_plan(out: Path) -> tuple[str, runs.RunInfo | None]:
    """("reuse", info) for a finished sub-run, ("resume", None) for a stopped one with a
    checkpoint, ("fit", None) otherwise (a start that never got a checkpoint is removed)."""
    if runs.is_run_dir(out):
        info = runs.read_run(out)
        if info.status in ("finished", "early_stopped"):
            return "reuse", info
        if (out / runs.LAST_CKPT).is_file():
            return "resume", None
        shutil.rmtree(out)
    return "fit", None


# warnings already said in a job, by the job's run folder: every sub-run scans the same labelled
# images, and a semi-supervised run with a training body repeated each scan warning three times
_SAID: dict[str, set[str]] = {}


def sub_run(cfg: TrainConfig, stop, pause, phase: str, **kw: Any) -> Generator[Event, None, runs.RunInfo]:
    """Train a sub-run folder, resuming it if a stopped one is there, reusing it if it finished.
    Rank 0 decides; under torchrun every process then trains the same sub-run (the engine shards
    the images and writes files on rank 0 only). A warning an earlier sub-run of the job gave is
    not given again."""
    from tlstudio.core.training import engine

    out = Path(cfg.out_dir)
    action, info = share(None if is_follower() else _sub_run_plan(out))
    if action == "reuse":
        yield Log(f"{out.name}: already trained, reusing it")
        return info
    said = _SAID.setdefault(str(out.parent.resolve()), set())
    if action == "resume" and is_follower():
        return (yield from _once(_follower_resume(out, stop, pause, **kw), said))
    if action == "resume":
        share()  # the other processes have copied the sub-run's checkpoint
        return (yield from _once(engine.resume(out, stop, pause, **kw), said))
    return (yield from _once(engine.fit(cfg, stop, pause, phase=phase, **kw), said))


def _once(events: Generator[Event, None, Any], said: set[str]) -> Generator[Event, None, Any]:
    """``events`` without the warnings in ``said`` (which it adds its own to)."""
    def keep(ev: Event) -> Event | None:
        if isinstance(ev, Warn):
            if ev.message in said:
                return None
            said.add(ev.message)
        return ev

    return (yield from relay(events, keep))


def _follower_resume(out: Path, stop, pause, **kw: Any) -> Generator[Event, None, runs.RunInfo]:
    """A follower resumes from a scratch copy of rank 0's stopped sub-run (same weights, optimiser
    and position), so it writes nothing into the run folder; the copy is removed at the end."""
    import tempfile

    from tlstudio.core.runs.guard import LOCK_FILE
    from tlstudio.core.training import engine

    with tempfile.TemporaryDirectory(prefix="tlstudio-rank-") as scratch:
        copy = Path(scratch) / out.name
        shutil.copytree(out, copy, ignore=shutil.ignore_patterns(LOCK_FILE))
        share()  # copied before rank 0 writes to it again
        return (yield from engine.resume(copy, stop, pause, **kw))


def train_baseline(config, base_dir: Path, stop, pause, phase: str, what: str) -> Generator[Event, None, runs.RunInfo]:
    """The baseline on the labelled images alone, as a complete classification sub-run."""
    base = yield from sub_run(base_config(config, base_dir), stop, pause, phase)
    if base.status == "stopped":
        raise Stopped()
    if base.status not in ("finished", "early_stopped"):
        raise UserError(f"The {what} training ended as {base.status}; see {base_dir / runs.LOG_TXT}")
    return base


@dataclasses.dataclass
class Baseline:
    """The trained baseline model, ready for feature passes (rank 0)."""

    info: runs.RunInfo
    model: Any
    spec: runs.ModelSpec
    split: Any
    data_cfg: dict
    device: Any
    frozen: bool

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.classes)
        for s in self.split.train:
            if s.label >= 0:
                counts[s.label] += 1
        return counts


def load_baseline(config, base_dir: Path, info: runs.RunInfo) -> Baseline:
    from tlstudio.core.models.backbones import data_config
    from tlstudio.core.models.run_model import load_run_model
    from tlstudio.core.runtime import precision

    device = precision.resolve_device(config.device)
    model, info0 = load_run_model(base_dir)
    model.to(device).eval()
    return Baseline(info=info, model=model, spec=info0.model, split=runs.read_split(base_dir),
                    data_cfg=data_config(model, config.image_size), device=device,
                    frozen=body_is_frozen(config, model))


def body_is_frozen(config: TrainConfig, model) -> bool:
    from tlstudio.core.models import layers

    groups = layers.layer_groups(model)
    trainable, every = layers.plan_from_settings(config.freeze, config.frozen_groups, groups)
    return every is None and layers.frozen_prefix_is_whole_body(trainable)


def set_head(model, head) -> None:
    """Copy a trained linear head into the model's classifier."""
    import torch

    clf = model.get_classifier()
    lin = clf if isinstance(clf, torch.nn.Linear) else [m for m in clf.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        lin.weight.copy_(head.weight.to(lin.weight.dtype))
        lin.bias.copy_(head.bias.to(lin.bias.dtype))


def save_weights(folder: Path, model, spec) -> None:
    """The model's weights as the folder's model.safetensors (with its spec)."""
    from tlstudio.core.atomic import atomic_save_safetensors

    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_save_safetensors(folder / runs.BEST_WEIGHTS, sd, metadata={"tlstudio_model": spec.model_dump_json()})


def write_model_folder(folder: Path, model, spec, config_dict: dict, *, task: str, kind: str, split=None,
                       history: list[dict] | None = None, metrics: dict | None = None, extra: dict | None = None,
                       status: str = "finished") -> runs.RunInfo:
    """A complete run folder for a model made without the engine (AdaBN, feature heads)."""
    from tlstudio.core.atomic import atomic_write_json

    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder, model, spec)
    atomic_write_json(folder / runs.CONFIG_JSON, config_dict)
    if split is not None:
        runs.write_split(folder, split)
    if history:
        runs.write_history(folder, history)
    m = dict(metrics or {})
    info = runs.RunInfo(kind=kind, task=task, name=folder.name, status=status, config=config_dict, model=spec,
                        versions=runs.versions(), epochs_done=len(history or []),
                        best_epoch=(len(history) - 1) if history else None, best_val_acc=m.get("val_acc"),
                        metrics=m, extra=dict(extra or {}))
    runs.write_run(folder, info)
    return info


def write_main_run(run_dir: Path, config, spec, split, unlabelled: list, *, status: str, kind: str, task: str,
                   data: dict, metrics: dict, extra: dict, history: list[dict] | None = None,
                   seconds: float | None = None) -> runs.RunInfo:
    """The run's own run.json, split.json (unlabelled images as unlabelled rows) and history.csv."""
    runs.write_split(run_dir, dataclasses.replace(split, train=list(split.train) + list(unlabelled)))
    if history:
        runs.write_history(run_dir, history)
    old = runs.read_run(run_dir) if runs.is_run_dir(run_dir) else None
    info = runs.RunInfo(kind=kind, task=task, name=run_dir.name, status=status,
                        config=config.model_dump(mode="json"), model=spec, versions=runs.versions(),
                        data={"root": config.data_dir, "n_train": len(split.train), "n_val": len(split.val), **data},
                        seed=config.seed, epochs_done=len(history or []), metrics=metrics,
                        best_val_acc=metrics.get("val_acc"), best_epoch=(len(history) - 1) if history else None,
                        extra=extra)
    if old is not None:
        info.created = old.created
    if seconds is not None:
        info.timings["total_s"] = seconds
    runs.write_run(run_dir, info)
    return info
