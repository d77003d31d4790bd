"""Preparing a multi-task run: label table, split, model, freezing, device, loaders, objective,
optimiser -> an MTRun that the epoch loop (loop.py) only reads.

Under torchrun (runtime/parallel.py) every process prepares the same run: the same split (read
from, or computed like, rank 0's), its own equal shard of the training rows, and the shared model
(or, head-only, the heads on cached features) in DistributedDataParallel. Only rank 0's folder is
the run folder; the others write to a scratch folder removed at the end (trainer.py).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from tlstudio.core.errors import UserError
from tlstudio.core.events import Event, Log, Warn
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks.multitask.config import MultiTaskConfig
from tlstudio.core.training.optimizers import load_optimizer_state, make_optimizer


@dataclasses.dataclass
class MTRun:
    """Everything the epoch loop needs; ``run_dir`` is where this process writes, ``source_dir``
    where a resumed run's files are read (they differ only on a non-main DDP process)."""

    config: MultiTaskConfig
    run_dir: Path
    source_dir: Path
    stop: Any
    pause: Any
    phase: str
    dist: Any
    ckpt: dict[str, Any] | None
    report: Any  # data.multitask.MultiTaskReport
    schema: dict[str, Any]
    split: Any  # the whole split (every process validates on all of split.val)
    train_split: Any  # this process's shard of the training rows
    objective: Any  # MultiTaskObjective
    model: Any  # MultiTaskModel
    spec: Any
    groups: list[Any]
    trainable: list[bool]
    gradual_every: int | None
    device: Any
    plan: Any
    features_mode: bool
    heads_independent: bool
    batch_size: int
    data_cfg: dict[str, Any]
    lr: float
    loaders: Any = None
    train_module: Any = None  # the module the loss runs through (DDP-wrapped under torchrun)
    octx: Any = None
    opt: Any = None
    sched: Any = None
    steps_per_epoch: int = 1
    t_start: float = dataclasses.field(default_factory=time.time)


def spec_for(model, config: MultiTaskConfig, schema: dict[str, Any]):
    from tlstudio.core.models import backbones

    names = [t["name"] for t in schema["tasks"]]
    body = model.bodies[0] if model.soft else model.body
    return backbones.model_spec(body, config.backbone, names, config.image_size)


def load_checkpoint(source_dir: Path, owner: bool) -> dict[str, Any]:
    """last.pt of a resumed run (the owner of the folder also clears temp files of cut writes)."""
    if owner:
        from tlstudio.core.training import checkpoint

        return checkpoint.load(source_dir)
    import torch

    return torch.load(source_dir / runs.LAST_CKPT, map_location="cpu", weights_only=True)


def prepare_run(config: MultiTaskConfig, run_dir: Path, source_dir: Path | None, stop, pause, phase: str,
                same_split: bool, given_schema: dict[str, Any] | None) -> Generator[Event, None, MTRun]:
    from tlstudio.core.models import layers
    from tlstudio.core.runtime import precision
    from tlstudio.core.runtime.parallel import init_distributed
    from tlstudio.core.runtime.rng_state import seed_everything
    from tlstudio.core.tasks.multitask.objective import MultiTaskObjective
    from tlstudio.core.training.prepare import choose_lr

    resuming = source_dir is not None
    source = source_dir or run_dir
    dist = init_distributed()
    from tlstudio.core.runtime.cpu_load import LoadSample

    load_sample = LoadSample()  # the CPU load, sampled while the data and the model are prepared
    ckpt = load_checkpoint(source, owner=source == run_dir) if resuming else None
    seed_everything(config.seed)
    report, schema, split = yield from _load_data(config, run_dir, source, stop, resuming, same_split, given_schema)
    train_split = dataclasses.replace(split, train=list(split.train))
    if dist.enabled:  # equal shards: every process must run the same number of steps
        per_rank = len(split.train) // dist.world_size
        train_split.train = list(split.train)[dist.rank::dist.world_size][:per_rank]
        yield Log(f"Distributed: process {dist.rank + 1} of {dist.world_size}, {per_rank} training images")
    objective = MultiTaskObjective(schema, config)

    model, data_cfg, groups, trainable, gradual_every = yield from _build_model(config, objective, schema, stop,
                                                                                 resuming, ckpt)
    head_only = gradual_every is None and layers.frozen_prefix_is_whole_body(trainable)
    lr, why = choose_lr(config, trainable, gradual_every)
    if why:
        yield Log(why)
    if config.sharing == "soft" and head_only:
        yield Log("Soft sharing with a frozen body is hard sharing (the bodies cannot move apart): one body is used")
    device = precision.resolve_device(config.device)
    if dist.enabled and device.type == "cuda":
        import torch

        device = torch.device("cuda", dist.local_rank)
    precision.set_threads(config.leave_one_core, load=load_sample.result())
    saved = (ckpt or {}).get("plan")  # a resumed run keeps the mode it trained in
    plan = (precision.choose_precision(device, model, saved["precision"], bool(saved["channels_last"])) if saved
            else precision.choose_precision(device, model, config.precision, config.channels_last))
    plan.prepare_model(model)  # device, memory format, CPU bf16 attention: the engine's one implementation
    run = MTRun(
        config=config, run_dir=run_dir, source_dir=source, stop=stop, pause=pause, phase=phase, dist=dist,
        ckpt=ckpt, report=report, schema=schema, split=split, train_split=train_split, objective=objective,
        model=model, spec=spec_for(model, config, schema), groups=groups, trainable=trainable,
        gradual_every=gradual_every, device=device, plan=plan,
        features_mode=config.cache != "off" and head_only and not model.soft,
        # with the whole body frozen the heads never interact (each sees the same features and only
        # its task's loss reaches it), so like a separate model each task keeps its head from its
        # own best epoch: one model, and a fair comparison with the single-task baselines
        heads_independent=head_only,
        batch_size=int(ckpt["batch_size"]) if ckpt is not None else config.batch_size, data_cfg=data_cfg, lr=lr,
    )
    yield from _loaders_and_objective(run)
    if run.heads_independent and len(schema["tasks"]) > 1:
        yield Log("Head-only: each task keeps its head from its own best validation epoch (the frozen body "
                  "makes the heads independent)")
    _set_up_optimiser(run)
    return run


def _load_data(config, run_dir: Path, source: Path, stop, resuming: bool, same_split: bool, given_schema):
    """Scan the label table; the split: the resumed run's, the baseline's given one, or a new one
    (written to split.json; every process computes the same one from the seed)."""
    from tlstudio.core.data.multitask import make_multitask_split, scan_multitask
    from tlstudio.core.tasks.multitask import _runtime as eng

    yield Log(f"Scanning {config.data_dir} (several label columns: multi-task)")
    report = yield from eng.in_thread(scan_multitask, "scan", stop, path=config.data_dir, tasks=config.tasks,
                                      types=dict(config.task_types) or None, stop=stop)
    for w in report.warnings:
        yield Warn(w)
    for s in report.skipped[:eng.MAX_SKIPPED_LISTED]:
        yield Warn(f"Skipped {s.path}: {s.reason}", path=s.path)
    for t in report.tasks:
        yield Log("Task " + t.summary())
    schema = report.label_schema
    if resuming:
        old = runs.read_run(source).label_schema or {}
        if [(t["name"], t["type"], t["classes"]) for t in old.get("tasks", [])] != \
                [(t["name"], t["type"], t["classes"]) for t in schema["tasks"]]:
            raise UserError(f"{config.data_dir}: the tasks or their classes changed since this run started; "
                            "resuming needs the same label table.")
        schema = old
        split = runs.read_split(source)
        if source != run_dir:  # a non-main process: its scratch folder holds the split (baselines copy it)
            runs.write_split(run_dir, split)
    elif same_split:
        schema = given_schema or schema
        split = runs.read_split(run_dir)
    else:
        split = make_multitask_split(report, config.val_fraction, config.effective_split_seed)
        runs.write_split(run_dir, split)
    if not split.val or not split.train:
        raise UserError(f"{config.data_dir}: too few images for a training and a validation set")
    return report, schema, split


def _build_model(config, objective, schema, stop, resuming: bool, ckpt):
    """The shared model with its starting weights (or last.pt's), its layer groups and freezing."""
    from tlstudio.core.models import backbones, layers
    from tlstudio.core.tasks.multitask import _runtime as eng

    yield Log(f"Creating {config.backbone} ({config.init}) with {len(schema['tasks'])} heads "
              f"({config.sharing} sharing): " + ", ".join(t["name"] for t in schema["tasks"]))
    logs: list[str] = []
    body = yield from eng.in_thread(
        backbones.create_model, "download", stop, name=config.backbone, num_classes=1,
        init="scratch" if resuming else config.init, weights_file=config.weights_file,
        init_run=config.init_run, log=logs.append)
    for m in logs:
        yield Log(m)
    model = objective.build_model(lambda n: body)
    data_cfg = backbones.data_config(body, config.image_size)
    groups = layers.layer_groups(model)
    trainable, gradual_every = layers.plan_from_settings(config.freeze, config.frozen_groups, groups)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        trainable = list(ckpt["trainable"])
    return model, data_cfg, groups, trainable, gradual_every


def _loaders_and_objective(run: MTRun) -> Generator[Event, None, None]:
    """Loaders (cached features when only the heads train), the module the loss runs through
    (DDP-wrapped under torchrun), the objective's setup and the teacher's outputs."""
    from tlstudio.core.models import layers
    from tlstudio.core.runtime.parallel import wrap_ddp
    from tlstudio.core.tasks.multitask import _runtime as eng
    from tlstudio.core.tasks.multitask.objective import MTContext

    config, model = run.config, run.model
    run.loaders = yield from eng.make_loaders(config, model, run.train_split, run.data_cfg, run.device, run.plan,
                                              run.batch_size, run.features_mode, run.stop)
    layers.apply_freeze(model, run.groups, run.trainable)
    run.train_module = wrap_ddp(model.get_classifier() if run.features_mode else model, run.dist, run.device)
    run.octx = MTContext(model=run.train_module, device=run.device, classes=run.spec.classes, precision=run.plan,
                         config=config, train_samples=list(run.train_split.train), features_mode=run.features_mode,
                         run_dir=run.run_dir, val_samples=list(run.split.val), full_model=model)
    run.objective.setup(run.octx)
    if config.teacher_run:
        yield from teacher_outputs(config, run.objective, run.schema, list(run.train_split.train), run.stop)
    for m in run.objective.extra_modules():
        m.to(run.device)
    if config.pcgrad and (run.features_mode or model.soft):
        yield Log("PCGrad: no trainable shared layers (head-only or soft sharing), so no gradient projection "
                  "is needed; the tasks' heads are already separate")


def _set_up_optimiser(run: MTRun) -> None:
    """Optimiser (every parameter; the learned task weights at 10x the rate, no decay) and the
    engine's LR schedule; their state from last.pt when resuming."""
    import torch

    from tlstudio.core.models import layers
    from tlstudio.core.runtime.rng_state import set_rng_state
    from tlstudio.core.tasks.multitask import _runtime as eng

    config, lr = run.config, run.lr
    body_mult = 1.0 if config.init == "scratch" else config.body_lr_mult
    pgroups = layers.param_groups(run.model, run.groups, [True] * len(run.groups), lr=lr, body_lr_mult=body_mult,
                                  layer_decay=config.layer_decay, weight_decay=config.weight_decay)
    extra = [p for m in run.objective.extra_modules() for p in m.parameters()]
    if extra:
        pgroups.append({"params": extra, "lr": lr * 10, "weight_decay": 0.0})
    for g in pgroups:
        g.setdefault("lr", lr)
    run.opt = make_optimizer(pgroups, config.optimizer, lr)
    run.steps_per_epoch, lr_factor = eng.schedule(config, run.loaders.batches_per_epoch)
    run.sched = torch.optim.lr_scheduler.LambdaLR(run.opt, lr_factor)
    ckpt = run.ckpt
    if ckpt is not None:
        load_optimizer_state(run.opt, ckpt["optimizer"])
        run.sched.load_state_dict(ckpt["scheduler"])
        for m, sd in zip(run.objective.extra_modules(), ckpt.get("extra_modules", [])):
            m.load_state_dict(sd)
        run.objective.load_state_dict(ckpt.get("objective", {}))
        set_rng_state(ckpt["rng"])


def teacher_outputs(config: MultiTaskConfig, objective, schema: dict[str, Any], train: list, stop):
    """Run the teacher (a trained multi-task run) once over the training images (eval transform)
    and hand its outputs, in this run's model space, to the objective."""
    import torch

    from tlstudio.core.tasks.multitask import _runtime as eng
    from tlstudio.core.tasks.multitask.artifacts import _run_batches, load_model

    teacher, tinfo, _ = load_model(config.teacher_run)
    tasks = {t["name"]: t for t in (tinfo.label_schema or {}).get("tasks", [])}
    for t in schema["tasks"]:
        tt = tasks.get(t["name"])
        if tt is None or tt["type"] != t["type"] or tt["classes"] != t["classes"]:
            raise UserError(f"teacher {config.teacher_run}: has no task '{t['name']}' of type {t['type']} with the "
                            f"classes {', '.join(t['classes']) or '(numeric)'}; a teacher must know every task")
    yield Log(f"Teacher {Path(config.teacher_run).name} ({tinfo.model.backbone}): computing its outputs for "
              f"{len(train)} training images (T = {config.kd_temperature:g}, alpha = {config.kd_alpha:g})")
    outs = yield from eng.in_thread(lambda progress: _run_batches(teacher, [s.path for s in train], tinfo.model,
                                                                  progress), "teacher", stop)
    raw, ok, _ = outs
    result: dict[str, torch.Tensor] = {}
    for t in schema["tasks"]:
        name = t["name"]
        width = 1 if t["type"] == "numeric" else len(t["classes"])
        full = torch.full((len(train), width), float("nan"))
        vals = torch.from_numpy(raw[name]).float().reshape(len(ok), width)
        if t["type"] == "numeric":  # teacher outputs are in the column's units: into this run's z-space
            vals = (vals - float(t.get("mean") or 0.0)) / float(t.get("std") or 1.0)
        full[torch.as_tensor(ok, dtype=torch.long)] = vals
        result[name] = full
    objective.set_teacher_outputs(result)
