"""The training engine: a generator of events that the CLI prints and the GUI shows.

fit(config, stop) scans the data, builds the model from its weight source, freezes layer
groups, trains with a pluggable objective, keeps the best weights, checkpoints every epoch
(and when stopped), and returns the RunInfo. resume(run_dir) continues a stopped run to the
same result an uninterrupted run with the same seed would have reached.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
import time
from collections.abc import Callable, Generator
from datetime import datetime
from pathlib import Path
from typing import Any

from tlstudio.core.runs import folder as runs
from tlstudio.core.runtime.allocator import training_allocator
from tlstudio.core.atomic import atomic_save_safetensors, atomic_torch_save, atomic_write_json
from tlstudio.core.runtime.background_writer import BackgroundWriter, snapshot
from tlstudio.core.config import TrainConfig
from tlstudio.core.errors import UserError
from tlstudio.core.events import (
    BatchEnd,
    Checkpointed,
    EpochEnd,
    Event,
    Finished,
    Log,
    Progress,
    RunStarted,
    Unfrozen,
    Warn,
)
from tlstudio.core.training.objectives import ClassificationObjective, Objective, ObjectiveContext
from tlstudio.core.runtime.rng_state import rng_state, seed_everything, set_rng_state
from tlstudio.core.training.validation import final_eval, validate

MAX_SKIPPED_LISTED = 50  # individual warnings for skipped files; the rest are summarised
FP_CHECK_STEPS = 3  # reduced precision must give finite losses on these first steps


class RunStopped(UserError):
    """The stop event was set. Inside the training loop it becomes a resumable checkpoint; before
    training (during the weights download) it reaches the caller as this one-line message."""


class TrainingFailed(UserError):
    pass


@dataclasses.dataclass
class _Trackers:
    history: list[dict[str, float]]
    best_epoch: int | None = None
    best_acc: float = -1.0
    best_loss: float = math.inf
    best_f1: float | None = None
    bad_epochs: int = 0


def _in_thread(fn: Callable[..., Any], task: str, cancel: threading.Event | None, **kwargs) -> Generator[Event, None, Any]:
    """Run fn(progress=cb, **kwargs) in a thread; yield its progress callbacks as Progress events."""
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
        try:
            item = q.get(timeout=0.1)
        except queue.Empty:
            if cancel is not None and cancel.is_set() and task == "download":
                raise RunStopped("Stopped during the download of the starting weights; nothing was trained "
                                 "yet. Start the run again to continue.") from None
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


def _schedule(config: TrainConfig, loaders: Any) -> tuple[int, Callable[[int], float]]:
    """(steps per epoch, LR factor per step): linear warm-up, then cosine to 1% over the run."""
    steps_per_epoch = max(1, loaders.batches_per_epoch)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    return steps_per_epoch, _lr_lambda(warmup, steps_per_epoch * config.epochs)


def _lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _new_run_dir(config: TrainConfig) -> Path:
    from tlstudio.core.runtime.parallel import distributed_context
    from tlstudio.core.paths import default_runs_dir

    if not distributed_context().is_main:  # only rank 0 writes the real run folder
        import tempfile

        return Path(tempfile.mkdtemp(prefix="tlstudio-rank-"))
    if config.out_dir:
        return Path(config.out_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = default_runs_dir() / f"{stamp}-{config.backbone}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    # PyTorch's CPU allocator says "DefaultCPUAllocator: can't allocate memory", not "out of memory"
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in msg for s in ("out of memory", "can't allocate memory", "cannot allocate memory"))


def _mark_failed(run_dir: Path) -> None:
    """Best effort (the disk may be full): a run that ended on an error is not left "running"."""
    try:
        info = runs.read_run(run_dir)
        if info.status == "running":
            info.status = "failed"
            runs.write_run(run_dir, info)
    except (OSError, runs.RunError):
        pass


def _save(path: Path, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run an atomic write of ``path``; a full disk becomes one clear TrainingFailed line.

    The write is atomic, so the previous file at ``path`` is still intact when it fails.
    (torch.save on a full disk raises a RuntimeError, hence the free-space check.)"""
    try:
        write(*args, **kwargs)
        return
    except (OSError, RuntimeError) as exc:
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


class _Logger:
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
    config: TrainConfig,
    stop: threading.Event | None = None,
    pause: threading.Event | None = None,
    objective: Objective | None = None,
    extra_train: list[Any] | None = None,
    run_kind: str = "train",
    phase: str = "main",
    _resume_from: Path | None = None,
) -> Generator[Event, None, runs.RunInfo]:
    """Train per ``config``; yield events; return the run's RunInfo."""
    stop = stop or threading.Event()
    pause = pause or threading.Event()
    run_dir = _resume_from or _new_run_dir(config)
    if _resume_from is None:
        if runs.is_run_dir(run_dir):
            raise UserError(f"{run_dir} already holds a run: resume it, or choose another output folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        config = config.model_copy(update={"out_dir": str(run_dir)})
        config.to_json_file(run_dir / runs.CONFIG_JSON)
    logger = _Logger(run_dir)
    from tlstudio.core.runtime.parallel import distributed_context
    from tlstudio.core.training.tensorboard import TB_DIR, TBWriter

    # TensorBoard event files when tensorboard is installed (a no-op otherwise); rank 0 only
    tb = TBWriter(run_dir / TB_DIR, enabled=distributed_context().is_main)
    writer = BackgroundWriter()  # end-of-epoch checkpoints are written while the next epoch trains
    gen = _fit(config, run_dir, stop, pause, objective, extra_train, run_kind, phase, _resume_from is not None,
               writer)
    alloc = training_allocator().__enter__()  # heap reuse for the step's big buffers (allocator.py)
    try:
        while True:
            ev = next(gen)
            logger(ev)
            tb.write(ev)
            yield ev
    except StopIteration as done:
        info = done.value
    except TrainingFailed as exc:  # disk full, out of memory at batch size 1: into log.txt and run.json
        writer.close()  # queued writes land before run.json says "failed"
        logger(Warn(str(exc)))
        _mark_failed(run_dir)
        raise
    finally:
        writer.close()
        tb.close()
        alloc.__exit__(None, None, None)
    if config.baseline and run_kind == "train" and phase == "main" and info.status in ("finished", "early_stopped"):
        info = yield from _baseline(config, run_dir, info, stop, pause, logger)
    return info


def resume(run_dir: str | Path, stop: threading.Event | None = None, pause: threading.Event | None = None,
           objective: Objective | None = None, extra_train: list[Any] | None = None) -> Generator[Event, None, runs.RunInfo]:
    """Continue a stopped run from its last checkpoint."""
    run_dir = Path(run_dir)
    info = runs.read_run(run_dir)
    if not (run_dir / runs.LAST_CKPT).is_file():
        raise UserError(f"{run_dir}: no checkpoint to resume from ({runs.LAST_CKPT} missing)")
    if info.status in ("finished", "early_stopped"):
        raise UserError(f"{run_dir}: this run already {info.status.replace('_', ' ')}; nothing to resume")
    if info.kind != "train" and objective is None:
        raise UserError(f"{run_dir}: a {info.kind} run; resume it with its own command")
    try:
        config = TrainConfig.from_json_file(run_dir / runs.CONFIG_JSON)
    except Exception as exc:
        raise UserError(f"{run_dir / runs.CONFIG_JSON}: cannot read the run's settings: {exc}") from exc
    return (yield from fit(config, stop, pause, objective=objective, extra_train=extra_train,
                           run_kind=info.kind, _resume_from=run_dir))


def _baseline(config, run_dir, info, stop, pause, logger) -> Generator[Event, None, runs.RunInfo]:
    """The same configuration from random initialisation: does transfer help here?"""
    base_cfg = config.model_copy(update={
        "init": "scratch", "weights_file": None, "init_run": None, "baseline": False,
        "freeze": "none", "frozen_groups": None, "out_dir": str(run_dir / runs.BASELINE_DIR),
    })
    yield Log("Training the same model from scratch (baseline) to measure the gain of transfer")
    base_dir = run_dir / runs.BASELINE_DIR
    if runs.is_run_dir(base_dir):  # an interrupted baseline: continue it
        base_gen = fit(base_cfg, stop, pause, phase="baseline", _resume_from=base_dir) \
            if (base_dir / runs.LAST_CKPT).is_file() else None
    else:
        base_gen = fit(base_cfg, stop, pause, phase="baseline")
    if base_gen is None:
        base = runs.read_run(base_dir)
    else:
        base = yield from base_gen
    if base.status not in ("finished", "early_stopped") or base.best_val_acc is None:
        yield Warn("The from-scratch baseline did not finish; the gain of transfer is unknown")
        return info
    gain = (info.best_val_acc or 0.0) - base.best_val_acc
    info.baseline = {
        "run_dir": str(base_dir),
        "transfer_val_acc": info.best_val_acc,
        "scratch_val_acc": base.best_val_acc,
        "gain": gain,
        "negative_transfer": gain < 0,
    }
    runs.write_run(run_dir, info)
    msg = (f"Transfer {info.best_val_acc:.1%} vs from scratch {base.best_val_acc:.1%}: "
           f"gain {gain * 100:+.1f} points")
    if gain < 0:
        ev: Event = Warn(f"Negative transfer: {msg}. The pretrained weights hurt on this data; "
                         "try unfreezing more layers or another backbone.")
    else:
        ev = Log(msg)
    logger(ev)
    yield ev
    return info


def _fit(config, run_dir, stop, pause, objective, extra_train, run_kind, phase, resuming,
         writer: BackgroundWriter) -> Generator[Event, None, runs.RunInfo]:
    import torch

    from tlstudio.core.models import backbones

    from tlstudio.core.models import layers

    from tlstudio.core.runtime import precision
    from tlstudio.core.data.dataset import Split, make_split, scan

    t_start = time.time()
    ckpt = None
    if resuming:
        # temp files of atomic writes cut short by a kill (".last.pt.<random>.tmp", maybe 100s of MB)
        for stale in run_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        try:
            ckpt = torch.load(run_dir / runs.LAST_CKPT, map_location="cpu", weights_only=True)
        except Exception as exc:  # one line: torch's own message spans paragraphs
            text = str(exc).strip() or type(exc).__name__
            why = ("refused: it holds more than plain tensors, and loading it would run code it contains"
                   if "weights only" in text.lower() else text.splitlines()[0][:300])
            raise UserError(f"{run_dir / runs.LAST_CKPT}: cannot read the checkpoint: {why}") from exc
    seed_everything(config.seed)

    # --- data -----------------------------------------------------------------------------
    yield Log(f"Scanning {config.data_dir}")
    scan_workers = max(1, precision.available_cores() - 1) if config.leave_one_core else None  # GUI: one core for the UI
    report = yield from _in_thread(scan, "scan", stop, path=config.data_dir, stop=stop, workers=scan_workers)
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
    if resuming and (run_dir / runs.SPLIT_JSON).is_file():
        split = runs.read_split(run_dir)
    else:
        split = make_split(report, val_fraction=config.val_fraction, seed=config.effective_split_seed)
        runs.write_split(run_dir, split)
    if not split.val:
        raise UserError(f"{config.data_dir}: no images left for validation; add images or raise the validation fraction")
    dist = _init_distributed()
    train_samples = list(split.train) + list(extra_train or [])
    if dist.enabled:  # each process trains on its own shard; all validate on the full split
        # equal shard sizes: every process must run the same number of steps or DDP deadlocks
        per_rank = len(train_samples) // dist.world_size
        train_samples = train_samples[dist.rank::dist.world_size][:per_rank]
        yield Log(f"Distributed: process {dist.rank + 1} of {dist.world_size}, {len(train_samples)} training images")
    train_split = dataclasses.replace(split, train=train_samples)
    counts = [0] * len(classes)
    for s in split.train:
        counts[s.label] += 1

    # --- model ----------------------------------------------------------------------------
    yield Log(f"Creating {config.backbone} ({config.init}) with a new {len(classes)}-class head")
    logs: list[str] = []
    model = yield from _in_thread(
        backbones.create_model, "download", stop, name=config.backbone, num_classes=len(classes),
        init="scratch" if resuming else config.init, weights_file=config.weights_file,
        init_run=config.init_run, log=logs.append,
    )
    for m in logs:
        yield Log(m)
    if not resuming:
        _init_new_head(model)
    data_cfg = backbones.data_config(model, config.image_size)
    spec = backbones.model_spec(model, config.backbone, classes, config.image_size)
    groups = layers.layer_groups(model)
    if config.frozen_groups is not None:
        frozen = set(config.frozen_groups)
        trainable = [g.is_head or g.index not in frozen for g in groups]
        gradual_every = None
    else:
        trainable, gradual_every = layers.plan_from_spec(config.freeze, groups)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        trainable = list(ckpt["trainable"])

    lr = config.lr
    if lr is None:
        from tlstudio.core.models.advice import default_lr

        if config.init == "scratch":
            lr = 3e-3
            yield Log(f"Learning rate {lr:g} (from scratch: one rate for every layer)")
        else:  # the preset decides (benchmarks/bench_realweights.py): head/all 1e-3, partial 3e-3
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
            yield Log(f"Learning rate {lr:g} (default for {what.get(preset, preset + ' training')})")

    device = precision.resolve_device(config.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    threads = precision.set_threads(config.leave_one_core)
    plan = precision.choose_precision(device, model, config.precision, config.channels_last)
    model.to(device)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)

    if objective is None:
        objective = ClassificationObjective(config.label_smoothing, config.class_weights)

    # --- loaders (feature cache when only the head trains) --------------------------------
    features_mode = (
        config.cache != "off" and gradual_every is None and layers.frozen_prefix_is_whole_body(trainable)
        and objective.supports_features_mode() and not config.compile
    )
    batch_size = int(ckpt["batch_size"]) if ckpt is not None else config.batch_size
    loaders, train_module = yield from _make_loaders(
        config, model, train_split, data_cfg, device, plan, batch_size, features_mode, stop)
    layers.apply_freeze(model, groups, trainable)

    train_module = _maybe_ddp(train_module, dist, device)
    ctx = ObjectiveContext(
        model=train_module, device=device, classes=classes, precision=plan, config=config,
        train_samples=train_samples, features_mode=features_mode, run_dir=run_dir, class_counts=counts,
    )
    setup_events = objective.setup(ctx)
    if setup_events is not None:
        yield from setup_events
    extra_params = [p for m in objective.extra_modules() for p in m.parameters()]
    for m in objective.extra_modules():
        m.to(device)

    # every parameter is handed to the optimiser (frozen ones have no grad and are skipped),
    # so gradual unfreezing needs no new optimiser and resume sees the same state layout
    # from scratch there is no pretrained body to protect: one learning rate for all
    body_mult = 1.0 if config.init == "scratch" else config.body_lr_mult
    pgroups = layers.param_groups(model, groups, [True] * len(groups), lr=lr, body_lr_mult=body_mult,
                                  layer_decay=config.layer_decay, weight_decay=config.weight_decay)
    if extra_params:
        pgroups.append({"params": extra_params, "lr": lr, "weight_decay": config.weight_decay})
    for g in pgroups:
        g.setdefault("lr", lr)
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(pgroups, lr=lr, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.AdamW(pgroups, lr=lr)
    steps_per_epoch, lr_factor = _schedule(config, loaders)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    scaler = torch.amp.GradScaler(device.type) if plan.use_scaler else None

    trackers = _Trackers(history=[])
    start_epoch, start_batch, step = 0, 0, 0
    partial = {"loss_sum": 0.0, "count": 0}
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if scaler is not None and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        for m, sd in zip(objective.extra_modules(), ckpt.get("extra_modules", [])):
            m.load_state_dict(sd)
        start_epoch, start_batch, step = int(ckpt["epoch"]), int(ckpt["batch"]), int(ckpt["step"])
        partial = dict(ckpt["partial"])
        t = ckpt["trackers"]
        trackers = _Trackers(history=list(t["history"]), best_epoch=t["best_epoch"], best_acc=t["best_acc"],
                             best_loss=t["best_loss"], best_f1=t["best_f1"], bad_epochs=t["bad_epochs"])
        set_rng_state(ckpt["rng"])

    info = runs.RunInfo(
        kind=run_kind, name=run_dir.name, status="running", config=config.model_dump(mode="json"), model=spec,
        data={"root": report.root, "layout": report.layout, "fingerprint": report.fingerprint,
              "counts": report.counts, "n_train": len(split.train), "n_val": len(split.val),
              "n_unlabelled": len(extra_train or []), "skipped": len(report.skipped)},
        versions=runs.versions(), seed=config.seed, device=str(device), precision=plan.name,
        epochs_done=start_epoch, best_epoch=trackers.best_epoch,
        best_val_acc=None if trackers.best_epoch is None else trackers.best_acc,
        timings={"threads": float(threads)},
    )
    if resuming:
        old = runs.read_run(run_dir)
        info.created, info.baseline, info.extra = old.created, old.baseline, old.extra
        info.timings.update({k: v for k, v in old.timings.items() if k == "train_s"})
    runs.write_run(run_dir, info)

    n_train_params, n_total = layers.count_params(model)
    yield RunStarted(
        run_dir=str(run_dir), backbone=config.backbone, device=str(device), precision=plan.name,
        classes=tuple(classes), n_train=loaders.n_train, n_val=loaders.n_val, epochs=config.epochs,
        batches_per_epoch=steps_per_epoch, trainable_params=n_train_params, total_params=n_total,
        start_epoch=start_epoch, phase=phase,
    )
    if resuming:
        yield Log(f"Resumed at epoch {start_epoch + 1}, batch {start_batch + 1}")

    def save_last(epoch: int, batch: int) -> None:
        writer.submit(_save, run_dir / runs.LAST_CKPT, atomic_torch_save, run_dir / runs.LAST_CKPT, snapshot({
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "extra_modules": [m.state_dict() for m in objective.extra_modules()],
            "epoch": epoch, "batch": batch, "step": step, "batch_size": batch_size,
            "trainable": list(trainable), "partial": dict(partial), "rng": rng_state(),
            "trackers": dataclasses.asdict(trackers),
        }))

    def finish(status: str, message: str = "") -> Generator[Event, None, runs.RunInfo]:
        writer.drain()  # every checkpoint on disk before the final evaluation reads the best weights
        info.status = status
        info.epochs_done = len(trackers.history)
        info.best_epoch = trackers.best_epoch
        info.best_val_acc = None if trackers.best_epoch is None else trackers.best_acc
        info.best_val_macro_f1 = trackers.best_f1
        info.timings["train_s"] = info.timings.get("train_s", 0.0) + (time.time() - t_start)
        runs.write_run(run_dir, info)
        if status in ("finished", "early_stopped") and trackers.best_epoch is not None:
            yield from final_eval(run_dir, info, split, device)
        yield Finished(run_dir=str(run_dir), status=status, best_epoch=trackers.best_epoch,
                       best_val_acc=info.best_val_acc, message=message,
                       result={"best_val_macro_f1": trackers.best_f1, "epochs_done": info.epochs_done})
        return info

    fp_checked = 0
    ema_ips = None
    epoch = start_epoch
    while epoch < config.epochs:
        # gradual unfreezing: one more group every K epochs
        if gradual_every is not None:
            new = layers.gradual_plan(groups, epoch, gradual_every)
            if new != trainable:
                opened = [g.name for g, a, b in zip(groups, trainable, new) if b and not a]
                trainable = new
                layers.apply_freeze(model, groups, trainable)
                if dist.enabled:
                    train_module = ctx.model = _maybe_ddp(model, dist, device)
                n_tr, _ = layers.count_params(model)
                yield Unfrozen(epoch=epoch, group=", ".join(opened), trainable_params=n_tr)
        if features_mode:
            _unwrap(train_module).train()
        else:
            layers.set_train_mode(model, groups, trainable)
        train_module.training = True  # a DDP wrapper's own flag (its children were set above)
        t_epoch = time.time()
        first_batch = start_batch if epoch == start_epoch else 0
        if first_batch == 0:
            partial = {"loss_sum": 0.0, "count": 0}
        try:
            batch_i = first_batch
            for batch_i, (x, y, idx) in enumerate(loaders.train_batches(epoch, first_batch), start=first_batch):
                if stop.is_set():
                    raise RunStopped()
                while pause.is_set() and not stop.is_set():
                    time.sleep(0.05)
                if stop.is_set():
                    raise RunStopped()
                for f in loaders.failures[:]:
                    loaders.failures.remove(f)
                    path, reason = (f.path, f.reason) if hasattr(f, "path") else f
                    yield Warn(f"Skipped {path} during training: {reason}", path=path)
                if x.shape[0] == 0:
                    continue
                t0 = time.perf_counter()
                x = x.to(device, non_blocking=True)
                if plan.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                y, idx = y.to(device), idx.to(device)
                with plan.autocast():
                    loss, parts = objective.loss(train_module, x, y, idx)
                if not torch.isfinite(loss):
                    if plan.name != "fp32" and fp_checked < FP_CHECK_STEPS:
                        plan = plan.fallback_fp32()
                        scaler = None
                        yield Warn("Reduced precision gave a non-finite loss; continuing in fp32")
                        with plan.autocast():
                            loss, parts = objective.loss(train_module, x, y, idx)
                    if not torch.isfinite(loss):
                        save_best_if_none = trackers.best_epoch is not None
                        msg = (f"The loss became {float(loss.detach())} at epoch {epoch + 1}, batch {batch_i + 1}: "
                               "training stopped. Try a lower learning rate."
                               + (" The best weights so far are kept." if save_best_if_none else ""))
                        yield Warn(msg)
                        return (yield from finish("failed", msg))
                fp_checked += 1
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                sched.step()
                step += 1
                lv = float(loss.detach())
                partial["loss_sum"] += lv * x.shape[0]
                partial["count"] += x.shape[0]
                dt = max(1e-6, time.perf_counter() - t0)
                ips = x.shape[0] / dt
                ema_ips = ips if ema_ips is None else 0.9 * ema_ips + 0.1 * ips
                yield BatchEnd(epoch=epoch, batch=batch_i, batches=steps_per_epoch, step=step, loss=lv,
                               lr=_head_lr(opt), images_per_s=ema_ips, parts=dict(parts), phase=phase)
        except RunStopped:
            save_last(epoch, batch_i)
            yield Checkpointed(path=str(run_dir / runs.LAST_CKPT), epoch=epoch, kind="last")
            return (yield from finish("stopped", f"Stopped at epoch {epoch + 1}, batch {batch_i + 1}; resumable"))
        except Exception as exc:
            if not _is_oom(exc):
                raise
            if batch_size <= 1:
                raise TrainingFailed(
                    f"Out of memory at epoch {epoch + 1} even with batch size 1 ({str(exc).splitlines()[0][:200]}). "
                    "Use a smaller image size or backbone, or freeze more layers.") from exc
            batch_size = max(1, batch_size // 2)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            yield Warn(f"Out of memory: retrying epoch {epoch + 1} with batch size {batch_size}")
            loaders, train_module = yield from _make_loaders(
                config, model, train_split, data_cfg, device, plan, batch_size, features_mode, stop)
            train_module = ctx.model = _maybe_ddp(train_module, dist, device)
            # more steps per epoch now: rescale the LR schedule to them (else it ends early), as a
            # resume with the smaller batch size (saved in last.pt) will also do
            steps_per_epoch, lr_factor = _schedule(config, loaders)
            step = epoch * steps_per_epoch
            sched.lr_lambdas = [lr_factor] * len(opt.param_groups)
            sched.last_epoch = step
            for g, base, f in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
                g["lr"] = base * f(step)
            sched._last_lr = [g["lr"] for g in opt.param_groups]
            start_batch, start_epoch = 0, epoch
            continue

        # --- validation --------------------------------------------------------------------
        val_loss, val_acc, val_f1 = validate(_unwrap(train_module), loaders.val, len(classes), device, plan)
        for f in loaders.failures[:]:  # validation images that vanished (else unreported in the last epoch)
            loaders.failures.remove(f)
            path, reason = (f.path, f.reason) if hasattr(f, "path") else f
            yield Warn(f"Skipped {path} during validation: {reason}", path=path)
        train_loss = partial["loss_sum"] / max(1, partial["count"])
        improved = (val_acc > trackers.best_acc + 1e-9) or (
            abs(val_acc - trackers.best_acc) <= 1e-9 and val_loss < trackers.best_loss)
        if improved:
            trackers.best_epoch, trackers.best_acc, trackers.best_loss, trackers.best_f1 = epoch, val_acc, val_loss, val_f1
            trackers.bad_epochs = 0
            best_path = run_dir / runs.BEST_WEIGHTS
            writer.submit(_save, best_path, atomic_save_safetensors, best_path, snapshot(model.state_dict()),
                          metadata={"tlstudio_model": spec.model_dump_json()})
        else:
            trackers.bad_epochs += 1
        n_tr, _ = layers.count_params(model)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc,
               "val_macro_f1": val_f1, "lr": _head_lr(opt), "seconds": time.time() - t_epoch,
               "trainable_params": n_tr}
        trackers.history.append(row)
        writer.submit(_save, run_dir / runs.HISTORY_CSV, runs.write_history, run_dir, list(trackers.history))
        yield EpochEnd(epoch=epoch, epochs=config.epochs, train_loss=train_loss, val_loss=val_loss, val_acc=val_acc,
                       val_macro_f1=val_f1, lr=row["lr"], seconds=row["seconds"], best=improved,
                       trainable_params=n_tr, phase=phase)
        if improved:
            yield Checkpointed(path=str(run_dir / runs.BEST_WEIGHTS), epoch=epoch, kind="best")
        epoch += 1
        save_last(epoch, 0)
        yield Checkpointed(path=str(run_dir / runs.LAST_CKPT), epoch=epoch - 1, kind="last")
        info.epochs_done = epoch
        info.best_epoch, info.best_val_acc, info.best_val_macro_f1 = trackers.best_epoch, trackers.best_acc, trackers.best_f1
        writer.submit(runs.write_run, run_dir, info.model_copy(deep=True))
        if config.early_stop_patience and trackers.bad_epochs >= config.early_stop_patience and epoch < config.epochs:
            yield Log(f"Early stopping: no improvement for {trackers.bad_epochs} epochs")
            return (yield from finish("early_stopped"))
    return (yield from finish("finished"))


def _init_new_head(model) -> None:
    """Small random weights for the new head: some timm inits (EfficientNet's 1/sqrt(n_classes)
    range) give a fresh head logits of +-10 on pretrained features, which wastes the first epochs."""
    import torch

    head = model.get_classifier()
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)] if head is not None else []
    if not linears:
        return
    last = linears[-1]
    with torch.no_grad():
        torch.nn.init.normal_(last.weight, std=0.01)
        if last.bias is not None:
            last.bias.zero_()


def _init_distributed():
    from tlstudio.core.runtime.parallel import distributed_context

    dist = distributed_context()
    if dist.enabled:
        import torch.distributed as tdist

        if not tdist.is_initialized():
            import torch

            tdist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist


def _unwrap(module):
    return getattr(module, "module", module) if type(module).__name__ == "DistributedDataParallel" else module


def _maybe_ddp(module, dist, device):
    if not dist.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    inner = module.module if isinstance(module, DistributedDataParallel) else module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(inner, device_ids=ids)


def _head_lr(opt) -> float:
    return max(g["lr"] for g in opt.param_groups)


def _make_loaders(config, model, train_split, data_cfg, device, plan, batch_size, features_mode, stop):
    from tlstudio.core.pipeline import loaders as pipeline
    from tlstudio.core.runtime import precision

    if features_mode:
        from tlstudio.core.pipeline.feature_cache import DEFAULT_VIEWS, FeatureCache, head_module

        # no more augmented views than epochs: a 2-epoch run builds 2 (each costs a forward pass
        # per image), and view e is exactly what the uncached pipeline gives in epoch e
        cache = FeatureCache(
            model, train_split, data_cfg, batch_size=batch_size, augment=config.augment, seed=config.seed,
            views=min(DEFAULT_VIEWS, max(1, config.epochs)),
            budget_mb=config.cache_budget_mb, device=device, precision=plan,
            model_key=f"{config.backbone}|{config.init}|{config.weights_file}|{config.init_run}",
        )
        loaders = yield from cache.prepare(stop=stop)
        return loaders, head_module(model)
    loaders = pipeline.build_loaders(
        train_split, data_cfg, batch_size=batch_size, augment=config.augment, seed=config.seed,
        workers=config.workers, cache=config.cache, cache_budget_mb=config.cache_budget_mb, device=device,
        channels_last=plan.channels_last,
    )
    # decode everything into the cache up front (with progress), so epoch 1 trains at full speed
    yield from loaders.warm_cache(stop)
    if loaders.cache is not None:
        st = loaders.cache.stats
        where = f"{st.ram_entries} images in RAM ({st.ram_bytes / 2**20:.0f} MB)"
        if st.disk_entries or st.disk_hits:
            where += f", {st.disk_entries + st.disk_hits} on disk"
        if st.uncached:
            where += f", {st.uncached} decoded every epoch (both budgets full)"
        yield Log(f"Decoded-image cache: {where}; {loaders.reserve_bytes / 2**20:.0f} MB of the "
                  f"{config.cache_budget_mb} MB budget kept for batches in flight")
    module = model
    if config.compile:
        import torch

        size = data_cfg["input_size"]
        example = torch.zeros(2, *size, device=device)
        if plan.channels_last:
            example = example.contiguous(memory_format=torch.channels_last)
        module, msg = precision.compile_model(model, True, example, plan)
        yield Log(msg)
    return loaders, module
