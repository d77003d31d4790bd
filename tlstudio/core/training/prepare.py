"""Preparing a training run: data, model, device, loaders, optimiser -> a RunContext.

Everything here happens once per run (and again on resume, from last.pt); the epoch loop
(training/loop.py) then only reads the context and an explicit LoopState.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from tlstudio.core.errors import UserError
from tlstudio.core.events import Event, Log, Progress, Warn
from tlstudio.core.runs import folder as runs
from tlstudio.core.training.objectives import ClassificationObjective, Objective, ObjectiveContext
from tlstudio.core.training.optimizers import load_optimizer_state, make_optimizer

MAX_SKIPPED_LISTED = 50  # individual warnings for skipped files; the rest are summarised


class RunStopped(UserError):
    """The stop event was set. Inside the training loop it becomes a resumable checkpoint; before
    training (during the weights download) it reaches the caller as this one-line message."""


@dataclasses.dataclass
class RunContext:
    config: Any
    run_dir: Path
    stop: threading.Event
    pause: threading.Event
    objective: Objective
    run_kind: str
    phase: str
    writer: Any  # runtime.background_writer.BackgroundWriter
    ckpt: dict[str, Any] | None
    report: Any  # data.dataset.ScanReport
    classes: list[str]
    split: Any  # data.dataset.Split
    train_split: Any
    dist: Any
    model: Any
    spec: Any
    groups: list[Any]
    trainable: list[bool]
    gradual_every: int | None
    device: Any
    threads: int
    plan: Any
    features_mode: bool
    micro_batch: int  # images per micro-batch of a step (0 = whole batches), runtime/step_timing.py
    batch_size: int
    data_cfg: dict[str, Any]
    loaders: Any = None
    train_module: Any = None
    octx: ObjectiveContext | None = None
    opt: Any = None
    sched: Any = None
    scaler: Any = None
    steps_per_epoch: int = 1
    lr: float = 1e-3
    extra_train: list[Any] = dataclasses.field(default_factory=list)
    t_start: float = dataclasses.field(default_factory=time.time)


def in_thread(fn: Callable[..., Any], task: str, cancel: threading.Event | None, **kwargs) -> Generator[Event, None, Any]:
    """Run fn(progress=cb, **kwargs) in a thread; yield its progress callbacks as Progress events.

    A set ``cancel`` during a download wins at once, even while progress keeps arriving."""
    q: queue.Queue = queue.Queue()
    out: dict[str, Any] = {}

    def progress(done: int, total: int | None = None) -> None:
        q.put(Progress(task=task, done=int(done), total=None if total is None else int(total)))

    def target() -> None:
        try:
            out["value"] = fn(progress=progress, **kwargs)
        except BaseException as exc:  # re-raised in the generator's thread
            out["error"] = exc
        finally:
            q.put(None)

    t = threading.Thread(target=target, name=f"tlstudio-{task}", daemon=True)
    t.start()
    last = 0.0
    while True:
        if cancel is not None and cancel.is_set() and task == "download":
            raise RunStopped("Stopped during the download of the starting weights; nothing was trained "
                             "yet. Start the run again to continue.")
        try:
            item = q.get(timeout=0.1)
        except queue.Empty:
            continue
        if item is None:
            break
        now = time.monotonic()
        if now - last > 0.1 or (item.total and item.done >= item.total):
            last = now
            yield item
    t.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


def schedule(config: Any, loaders: Any) -> tuple[int, Callable[[int], float]]:
    """(steps per epoch, LR factor per step): linear warm-up, then cosine to 1% over the run.
    ``loaders``: the run's Loaders, or its number of batches per epoch."""
    steps_per_epoch = max(1, loaders if isinstance(loaders, int) else loaders.batches_per_epoch)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    total = steps_per_epoch * config.epochs

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return steps_per_epoch, f


def load_data(config, run_dir: Path, stop, resuming: bool, extra_train) -> Generator[Event, None, tuple]:
    """Scan, check, split (split.json); returns (report, classes, split, train_split, dist)."""
    from tlstudio.core.data.dataset import make_split, scan
    from tlstudio.core.runtime import precision
    from tlstudio.core.runtime.parallel import init_distributed

    split = None
    if resuming and (run_dir / runs.SPLIT_JSON).is_file():
        from tlstudio.core.runs.guard import check_resumable

        split = runs.read_split(run_dir)
        check_resumable(run_dir, split)  # its images moved: one line, not a run on zero images
    yield Log(f"Scanning {config.data_dir}")
    scan_workers = max(1, precision.available_cores() - 1) if config.leave_one_core else None  # GUI: a core for the UI
    report = yield from in_thread(scan, "scan", stop, path=config.data_dir, stop=stop, workers=scan_workers,
                                  follow_links=config.follow_links)
    report.require_trainable()
    for w in report.warnings:
        yield Warn(w)
    for s in report.skipped[:MAX_SKIPPED_LISTED]:
        yield Warn(f"Skipped {s.path}: {s.reason}", path=s.path)
    if len(report.skipped) > MAX_SKIPPED_LISTED:
        yield Warn(f"... and {len(report.skipped) - MAX_SKIPPED_LISTED} more skipped files (see the Data step)")
    classes = list(report.classes)
    if resuming:  # split.json's labels index the run's classes: a changed class list would shift them
        old_classes = list(runs.read_run(run_dir).model.classes)
        if classes != old_classes:
            raise UserError(f"{config.data_dir}: the classes changed since this run started "
                            f"({', '.join(old_classes)} -> {', '.join(classes)}); resuming needs the same "
                            "class folders. Restore them, or start a new run from this one (chained transfer).")
    if split is None:
        split = make_split(report, val_fraction=config.val_fraction, seed=config.effective_split_seed)
        runs.write_split(run_dir, split)
    if not split.val:
        raise UserError(f"{config.data_dir}: no images left for validation; add images or raise the validation fraction")
    dist = init_distributed()
    train_samples = list(split.train) + list(extra_train or [])
    if dist.enabled:  # each process trains on its own shard; all validate on the full split
        # equal shard sizes: every process must run the same number of steps or DDP deadlocks
        per_rank = len(train_samples) // dist.world_size
        train_samples = train_samples[dist.rank::dist.world_size][:per_rank]
        yield Log(f"Distributed: process {dist.rank + 1} of {dist.world_size}, {len(train_samples)} training images")
    return report, classes, split, dataclasses.replace(split, train=train_samples), dist


def init_new_head(model) -> None:
    """Small random weights for the new head: some timm inits (EfficientNet's 1/sqrt(n_classes)
    range) give a fresh head logits of +-10 on pretrained features, which wastes the first epochs."""
    import torch

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    heads = list(head.values()) if isinstance(head, torch.nn.ModuleDict) else [head]  # one per task
    with torch.no_grad():
        for h in heads:
            linears = [m for m in h.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)] if h is not None else []
            if linears:
                torch.nn.init.normal_(linears[-1].weight, std=0.01)
                if linears[-1].bias is not None:
                    linears[-1].bias.zero_()


def choose_lr(config, trainable, gradual_every) -> tuple[float, str | None]:
    """The learning rate and the log line explaining it (None when the user set it)."""
    from tlstudio.core.models import layers
    from tlstudio.core.models.advice import default_lr

    if config.lr is not None:
        return config.lr, None
    if config.init == "scratch":
        return 3e-3, "Learning rate 0.003 (from scratch: one rate for every layer)"
    # the preset decides (benchmarks/bench_realweights.py): head/all 1e-3, partial 3e-3
    if gradual_every is not None:
        preset = config.freeze
    elif all(trainable):
        preset = "none"
    elif sum(trainable) <= 1 or layers.frozen_prefix_is_whole_body(trainable):
        preset = "head"
    else:
        preset = "last:1"
    lr = default_lr(preset)
    what = {"none": "full fine-tuning", "head": "head-only training", "last:1": "partial fine-tuning"}
    return lr, f"Learning rate {lr:g} (default for {what.get(preset, preset + ' training')})"


def prepare_run(config, run_dir: Path, stop, pause, objective: Objective | None, extra_train, run_kind: str,
                phase: str, resuming: bool, writer) -> Generator[Event, None, RunContext]:
    """Data, model (with its starting weights), freezing, device and precision, loaders and the
    objective's setup, optimiser and schedule, restored from last.pt when resuming."""
    import torch

    from tlstudio.core.models import backbones, layers
    from tlstudio.core.runtime import precision, step_timing
    from tlstudio.core.runtime.parallel import wrap_ddp
    from tlstudio.core.runtime.cpu_load import LoadSample
    from tlstudio.core.runtime.rng_state import seed_everything
    from tlstudio.core.training import checkpoint

    load_sample = LoadSample()  # the CPU load, sampled while the data and the model are prepared
    ckpt = checkpoint.load(run_dir) if resuming else None
    seed_everything(config.seed)
    report, classes, split, train_split, dist = yield from load_data(config, run_dir, stop, resuming, extra_train)
    if objective is None:
        objective = ClassificationObjective(config.label_smoothing, config.class_weights)

    # --- model ----------------------------------------------------------------------------
    yield Log(f"Creating {config.backbone} ({config.init}) with a new {len(classes)}-class head")
    logs: list[str] = []

    def build(progress):
        def create_body(n: int):
            return backbones.create_model(
                config.backbone, n, init="scratch" if resuming else config.init, weights_file=config.weights_file,
                init_run=config.init_run, log=logs.append, progress=progress)

        return objective.build_model(create_body, classes)

    model = yield from in_thread(build, "download", stop)
    for m in logs:
        yield Log(m)
    if not resuming:
        init_new_head(model)
    data_cfg = backbones.data_config(model, config.image_size)
    spec = backbones.model_spec(model, config.backbone, classes, config.image_size)
    groups = layers.layer_groups(model)
    trainable, gradual_every = layers.plan_from_settings(config.freeze, config.frozen_groups, groups)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        trainable = list(ckpt["trainable"])
    lr, why = choose_lr(config, trainable, gradual_every)
    if why:
        yield Log(why)

    device = precision.resolve_device(config.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    threads = precision.set_threads(config.leave_one_core, getattr(config, "threads", None), load_sample.result())
    # precision and layout from a quick timing at this size when the body trains (issue 18)
    # (a resumed run keeps the mode it trained in: the same numbers as an uninterrupted run; every
    # DDP process takes the same fixed rule, as a timing could differ between them)
    body_trains = not layers.frozen_prefix_is_whole_body(trainable)
    saved = (ckpt or {}).get("plan")
    size = int(data_cfg["input_size"][-1])  # the model's own size when the config leaves it unset
    if saved:
        plan = precision.choose_precision(device, model, saved["precision"], bool(saved["channels_last"]))
    else:
        plan = precision.choose_precision(
            device, model, config.precision, config.channels_last,
            measure=(config.batch_size, size, len(train_split.train) * config.epochs)
            if body_trains and not dist.enabled else None)
    features_mode = (
        config.cache != "off" and gradual_every is None and layers.frozen_prefix_is_whole_body(trainable)
        and objective.supports_features_mode() and not config.compile
    )
    micro = step_timing.choose_micro_batch(  # steps as micro-batches when a timing shows they pay
        model, config.batch_size, size, plan, requested=config.micro_batch,
        saved=saved.get("micro_batch", 0) if saved else None, allowed=objective.micro_batches and not features_mode,
        measure=body_trains and not dist.enabled and not config.compile, train_images=len(train_split.train) * config.epochs)
    yield Log(precision.describe_choice(plan, size, micro.phrase))
    plan.prepare_model(model)  # device, memory format, CPU bf16 attention: one implementation
    ctx = RunContext(
        config=config, run_dir=run_dir, stop=stop, pause=pause, objective=objective, run_kind=run_kind,
        phase=phase, writer=writer, ckpt=ckpt, report=report, classes=classes, split=split,
        train_split=train_split, dist=dist, model=model, spec=spec, groups=groups, trainable=trainable,
        gradual_every=gradual_every, device=device, threads=threads, plan=plan, features_mode=features_mode,
        batch_size=int(ckpt["batch_size"]) if ckpt is not None else config.batch_size, data_cfg=data_cfg,
        lr=lr, extra_train=list(extra_train or []), micro_batch=micro.size,
    )

    # --- loaders (feature cache when only the head trains) --------------------------------
    ctx.loaders, module = yield from make_loaders(ctx)
    layers.apply_freeze(model, groups, trainable)
    ctx.train_module = wrap_ddp(module, dist, device)
    counts = [0] * len(classes)
    for s in split.train:
        if s.label >= 0:
            counts[s.label] += 1
    ctx.octx = ObjectiveContext(
        model=ctx.train_module, device=device, classes=classes, precision=plan, config=config,
        train_samples=list(train_split.train), features_mode=features_mode, run_dir=run_dir, class_counts=counts,
        val_samples=list(split.val), full_model=model,
    )
    yield from objective.setup(ctx.octx) or ()
    for m in objective.extra_modules():
        m.to(device)
    if features_mode and ckpt is None and not dist.enabled and getattr(config, "fit_head", True):
        yield from objective.fit_head(ctx.octx, ctx.loaders, stop) or ()

    _set_up_optimiser(ctx)
    return ctx


def _set_up_optimiser(ctx: RunContext) -> None:
    """Optimiser, LR schedule and grad scaler of the run; their state (and the objective's, the
    RNG's) from last.pt when resuming."""
    import torch

    from tlstudio.core.models import layers
    from tlstudio.core.runtime.rng_state import set_rng_state

    config, objective, model, groups, lr, ckpt = ctx.config, ctx.objective, ctx.model, ctx.groups, ctx.lr, ctx.ckpt
    # every parameter is handed to the optimiser (frozen ones have no grad and are skipped),
    # so gradual unfreezing needs no new optimiser and resume sees the same state layout;
    # from scratch there is no pretrained body to protect: one learning rate for all
    body_mult = 1.0 if config.init == "scratch" else config.body_lr_mult
    pgroups = layers.param_groups(model, groups, [True] * len(groups), lr=lr, body_lr_mult=body_mult,
                                  layer_decay=config.layer_decay, weight_decay=config.weight_decay)
    extra_params = [p for m in objective.extra_modules() for p in m.parameters()]
    if extra_params:
        pgroups.append({"params": extra_params, "lr": lr, "weight_decay": config.weight_decay})
    for g in pgroups:
        g.setdefault("lr", lr)
    ctx.opt = make_optimizer(pgroups, config.optimizer, lr)
    ctx.steps_per_epoch, lr_factor = schedule(config, ctx.loaders)
    ctx.sched = torch.optim.lr_scheduler.LambdaLR(ctx.opt, lr_factor)
    ctx.scaler = torch.amp.GradScaler(ctx.device.type) if ctx.plan.use_scaler else None
    if ckpt is not None:
        load_optimizer_state(ctx.opt, ckpt["optimizer"])
        ctx.sched.load_state_dict(ckpt["scheduler"])
        if ctx.scaler is not None and ckpt.get("scaler"):
            ctx.scaler.load_state_dict(ckpt["scaler"])
        for m, sd in zip(objective.extra_modules(), ckpt.get("extra_modules", [])):
            m.load_state_dict(sd)
        objective.load_state_dict(ckpt.get("objective", {}))
        set_rng_state(ckpt["rng"])


def make_loaders(ctx: RunContext) -> Generator[Event, None, tuple[Any, Any]]:
    """(loaders, module to train): cached body features and the head alone in features mode."""
    from tlstudio.core.pipeline import loaders as pipeline
    from tlstudio.core.runtime import precision

    config, plan = ctx.config, ctx.plan
    if ctx.features_mode:
        from tlstudio.core.pipeline.feature_cache import DEFAULT_VIEWS, FeatureCache, head_module

        # no more augmented views than epochs: a 2-epoch run builds 2 (each costs a forward pass
        # per image), and view e is exactly what the uncached pipeline gives in epoch e
        cache = FeatureCache(
            ctx.model, ctx.train_split, ctx.data_cfg, batch_size=ctx.batch_size, augment=config.augment,
            seed=config.seed, views=min(DEFAULT_VIEWS, max(1, config.epochs)),
            budget_mb=config.cache_budget_mb, device=ctx.device, precision=plan,
            model_key=f"{config.backbone}|{config.init}|{config.weights_file}|{config.init_run}",
        )
        loaders = yield from cache.prepare(stop=ctx.stop)
        return loaders, head_module(ctx.model)
    loaders = pipeline.build_loaders(
        ctx.train_split, ctx.data_cfg, batch_size=ctx.batch_size, augment=config.augment, seed=config.seed,
        workers=config.workers, cache=config.cache, cache_budget_mb=config.cache_budget_mb, device=ctx.device,
        channels_last=plan.channels_last,
    )
    # decode everything into the cache up front (with progress), so epoch 1 trains at full speed
    yield from loaders.warm_cache(ctx.stop)
    if loaders.cache is not None:
        st = loaders.cache.stats
        where = f"{st.ram_entries} images in RAM ({st.ram_bytes / 2**20:.0f} MB)"
        if st.disk_entries or st.disk_hits:
            where += f", {st.disk_entries + st.disk_hits} on disk"
        if st.uncached:
            where += f", {st.uncached} decoded every epoch (both budgets full)"
        yield Log(f"Decoded-image cache: {where}; {loaders.reserve_bytes / 2**20:.0f} MB of the "
                  f"{config.cache_budget_mb} MB budget kept for batches in flight")
    module = ctx.model
    if config.compile:
        import torch

        example = torch.zeros(2, *ctx.data_cfg["input_size"], device=ctx.device)
        if plan.channels_last:
            example = example.contiguous(memory_format=torch.channels_last)
        module, msg = precision.compile_model(ctx.model, True, example, plan)
        yield Log(msg)
    return loaders, module
