"""The epoch/step loop, shared by every gradient-trained kind of learning.

It reads a RunContext (training/prepare.py) and keeps what changes in an explicit LoopState;
the objective supplies the loss, the validation metrics and the metric that picks the best
epoch. Checkpoints go through the context's ordered background writer (last.pt first).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Generator
from typing import Any

from tlstudio.core.atomic import atomic_save_safetensors, atomic_torch_save
from tlstudio.core.events import BatchEnd, Checkpointed, EpochEnd, Event, Finished, Log, Unfrozen, Warn
from tlstudio.core.runs import folder as runs
from tlstudio.core.runtime import contention
from tlstudio.core.runtime.background_writer import snapshot
from tlstudio.core.runtime.parallel import unwrap, wrap_ddp
from tlstudio.core.training import checkpoint
from tlstudio.core.training.checkpoint import TrainingFailed, Trackers
from tlstudio.core.training.objectives import better
from tlstudio.core.training.prepare import RunContext, RunStopped, make_loaders, schedule

FP_CHECK_STEPS = 3  # reduced precision must give finite losses on these first steps


@dataclasses.dataclass
class LoopState:
    trackers: Trackers
    epoch: int = 0
    start_epoch: int = 0
    start_batch: int = 0
    step: int = 0
    partial: dict[str, float] = dataclasses.field(default_factory=lambda: {"loss_sum": 0.0, "count": 0})
    fp_checked: int = 0
    ema_ips: float | None = None

    @classmethod
    def from_ckpt(cls, ckpt: dict[str, Any] | None) -> "LoopState":
        if ckpt is None:
            return cls(trackers=Trackers(history=[]))
        e = int(ckpt["epoch"])
        return cls(trackers=Trackers.from_state(ckpt["trackers"]), epoch=e, start_epoch=e,
                   start_batch=int(ckpt["batch"]), step=int(ckpt["step"]), partial=dict(ckpt["partial"]))


def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    # PyTorch's CPU allocator says "DefaultCPUAllocator: can't allocate memory", not "out of memory"
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in msg for s in ("out of memory", "can't allocate memory", "cannot allocate memory"))


def head_lr(opt) -> float:
    return max(g["lr"] for g in opt.param_groups)


def set_epoch_train_mode(model, train_module, groups, trainable, features_mode: bool) -> None:
    """Train mode for an epoch: in features mode the module trained on cached features (the
    head); else each layer group as ``layers.set_train_mode`` sets it (a frozen group's
    normalisation stays in eval mode); a DDP wrapper's own flag too (its children were set)."""
    from tlstudio.core.models import layers

    if features_mode:
        unwrap(train_module).train()
    else:
        layers.set_train_mode(model, groups, trainable)
    train_module.training = True


def save_last(ctx: RunContext, st: LoopState, epoch: int, batch: int, last: bool = False) -> None:
    path = ctx.run_dir / runs.LAST_CKPT
    ctx.writer.submit(checkpoint.save, path, atomic_torch_save, path,
                      snapshot(checkpoint.state(ctx, st, epoch, batch, last)))


def finish(ctx: RunContext, st: LoopState, info: runs.RunInfo, status: str,
           message: str = "") -> Generator[Event, None, runs.RunInfo]:
    ctx.writer.drain()  # every checkpoint on disk before the final evaluation reads the best weights
    tr = st.trackers
    info.status = status
    info.epochs_done = len(tr.history)
    _best_into(info, tr)
    info.timings["train_s"] = info.timings.get("train_s", 0.0) + (time.time() - ctx.t_start)
    runs.write_run(ctx.run_dir, info)
    if status in ("finished", "early_stopped") and tr.best_epoch is not None:
        yield from ctx.objective.final_eval(ctx.run_dir, info, ctx.split, ctx.device) or ()
    yield Finished(run_dir=str(ctx.run_dir), status=status, best_epoch=tr.best_epoch,
                   best_val_acc=info.best_val_acc, message=message, metrics=dict(info.metrics),
                   result={"best_val_macro_f1": info.best_val_macro_f1, "epochs_done": info.epochs_done})
    return info


def _best_into(info: runs.RunInfo, tr: Trackers) -> None:
    info.best_epoch = tr.best_epoch
    info.metrics = dict(tr.best_metrics)
    info.best_val_acc = tr.best_metrics.get("val_acc") if tr.best_epoch is not None else None
    info.best_val_macro_f1 = tr.best_metrics.get("val_macro_f1") if tr.best_epoch is not None else None


def run_epochs(ctx: RunContext, st: LoopState, info: runs.RunInfo,
               patience: int | None) -> Generator[Event, None, runs.RunInfo]:
    import torch

    from tlstudio.core.models import layers

    config, objective, octx = ctx.config, ctx.objective, ctx.octx
    metric, mode = objective.best_metric
    tie_name, tie_mode = objective.tie_metric
    while st.epoch < config.epochs:
        epoch = st.epoch
        if ctx.gradual_every is not None:  # gradual unfreezing: one more group every K epochs
            new = layers.gradual_plan(ctx.groups, epoch, ctx.gradual_every)
            if new != ctx.trainable:
                opened = [g.name for g, a, b in zip(ctx.groups, ctx.trainable, new) if b and not a]
                ctx.trainable = new
                layers.apply_freeze(ctx.model, ctx.groups, ctx.trainable)
                if ctx.dist.enabled:
                    ctx.train_module = octx.model = wrap_ddp(ctx.model, ctx.dist, ctx.device)
                yield Unfrozen(epoch=epoch, group=", ".join(opened), trainable_params=layers.count_params(ctx.model)[0])
        set_epoch_train_mode(ctx.model, ctx.train_module, ctx.groups, ctx.trainable, ctx.features_mode)
        yield from objective.on_epoch_start(epoch, octx) or ()
        t_epoch = time.time()
        first_batch = st.start_batch if epoch == st.start_epoch else 0
        if first_batch == 0:
            st.partial = {"loss_sum": 0.0, "count": 0}
        batch_i = first_batch
        try:
            for batch_i, (x, y, idx) in enumerate(ctx.loaders.train_batches(epoch, first_batch), start=first_batch):
                ended = yield from _step(ctx, st, info, epoch, batch_i, x, y, idx)
                if ended is not None:
                    return ended
        except RunStopped:
            save_last(ctx, st, epoch, batch_i)
            yield Checkpointed(path=str(ctx.run_dir / runs.LAST_CKPT), epoch=epoch, kind="last")
            return (yield from finish(ctx, st, info, "stopped", f"Stopped at epoch {epoch + 1}, batch {batch_i + 1}; resumable"))
        except Exception as exc:
            if not is_oom(exc):
                raise
            yield from _retry_smaller_batch(ctx, st, epoch, exc)
            continue

        # --- validation --------------------------------------------------------------------
        metrics = objective.validate(unwrap(ctx.train_module), ctx.loaders.val, octx)
        yield from _report_failures(ctx, "validation")
        train_loss = st.partial["loss_sum"] / max(1, st.partial["count"])
        tr = st.trackers
        value, tie = metrics[metric], metrics.get(tie_name)
        improved = better(value, tr.best_value, mode) or (
            tr.best_value is not None and abs(value - tr.best_value) <= 1e-9 and tie is not None
            and better(tie, tr.best_tie, tie_mode))
        if improved:
            tr.best_epoch, tr.best_value, tr.best_tie, tr.best_metrics = epoch, value, tie, dict(metrics)
            tr.bad_epochs = 0
            best_path = ctx.run_dir / runs.BEST_WEIGHTS
            ctx.writer.submit(checkpoint.save, best_path, atomic_save_safetensors, best_path,
                              snapshot(ctx.model.state_dict()), metadata={"tlstudio_model": ctx.spec.model_dump_json()})
        else:
            tr.bad_epochs += 1
        n_tr = layers.count_params(ctx.model)[0]
        row = {"epoch": epoch + 1, "train_loss": train_loss, **metrics, "lr": head_lr(ctx.opt),
               "seconds": time.time() - t_epoch, "trainable_params": n_tr}
        tr.history.append(row)
        yield from objective.on_epoch_end(epoch, metrics, octx) or ()
        st.epoch = epoch + 1
        stopping_early = bool(patience and tr.bad_epochs >= patience and st.epoch < config.epochs)
        # last.pt first: it is the source of truth; history and run.json follow (checkpoint.reconcile)
        save_last(ctx, st, st.epoch, 0, last=stopping_early)
        ctx.writer.submit(checkpoint.save, ctx.run_dir / runs.HISTORY_CSV, runs.write_history, ctx.run_dir,
                          list(tr.history))
        info.epochs_done = st.epoch
        _best_into(info, tr)
        ctx.writer.submit(runs.write_run, ctx.run_dir, info.model_copy(deep=True))
        yield EpochEnd(epoch=epoch, epochs=config.epochs, train_loss=train_loss, metrics=dict(metrics),
                       lr=row["lr"], seconds=row["seconds"], best=improved, trainable_params=n_tr,
                       phase=ctx.phase, best_metric=metric)
        if improved:
            yield Checkpointed(path=str(ctx.run_dir / runs.BEST_WEIGHTS), epoch=epoch, kind="best")
        yield Checkpointed(path=str(ctx.run_dir / runs.LAST_CKPT), epoch=epoch, kind="last")
        if stopping_early:
            from tlstudio.core.runs.guard import early_stop_message

            yield Log(early_stop_message(epoch, patience, tr.best_epoch, metric, tr.best_value, len(ctx.split.train)))
            return (yield from finish(ctx, st, info, "early_stopped"))
    return (yield from finish(ctx, st, info, "finished"))


def _report_failures(ctx: RunContext, during: str) -> Generator[Event, None, None]:
    for f in ctx.loaders.failures[:]:  # images that vanished or broke while training
        ctx.loaders.failures.remove(f)
        yield Warn(f"Skipped {f.path} during {during}: {f.reason}", path=f.path)


def _step(ctx: RunContext, st: LoopState, info, epoch: int, batch_i: int, x, y, idx) -> Generator[Event, None, Any]:
    """One optimiser step; returns the finished RunInfo when the loss became non-finite."""
    import torch

    if ctx.stop.is_set():
        raise RunStopped()
    while ctx.pause.is_set() and not ctx.stop.is_set():
        time.sleep(0.05)
    if ctx.stop.is_set():
        raise RunStopped()
    yield from _report_failures(ctx, "training")
    for line in contention.take_log_lines():  # the CPU load changed the thread choice (issue 18)
        yield Log(line)
    if x.shape[0] == 0:
        return None
    t0 = time.perf_counter()
    x = x.to(ctx.device, non_blocking=True)
    if ctx.plan.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    y, idx = y.to(ctx.device), idx.to(ctx.device)
    pieces = micro_batches(ctx, x, y, idx)
    loss, parts = _forward_backward(ctx, pieces)
    if not math.isfinite(loss):
        if ctx.plan.name != "fp32" and st.fp_checked < FP_CHECK_STEPS:
            ctx.plan = ctx.octx.precision = ctx.plan.fallback_fp32()
            ctx.scaler = None
            yield Warn("Reduced precision gave a non-finite loss; continuing in fp32")
            loss, parts = _forward_backward(ctx, pieces)
        if not math.isfinite(loss):
            msg = (f"The loss became {loss} at epoch {epoch + 1}, batch {batch_i + 1}: "
                   "training stopped. Try a lower learning rate."
                   + (" The best weights so far are kept." if st.trackers.best_epoch is not None else ""))
            yield Warn(msg)
            return (yield from finish(ctx, st, info, "failed", msg))
    st.fp_checked += 1
    if ctx.scaler is not None:
        ctx.scaler.step(ctx.opt)
        ctx.scaler.update()
    else:
        ctx.opt.step()
    ctx.sched.step()
    st.step += 1
    lv = loss
    st.partial["loss_sum"] += lv * x.shape[0]
    st.partial["count"] += x.shape[0]
    ips = x.shape[0] / max(1e-6, time.perf_counter() - t0)
    st.ema_ips = ips if st.ema_ips is None else 0.9 * st.ema_ips + 0.1 * ips
    yield BatchEnd(epoch=epoch, batch=batch_i, batches=ctx.steps_per_epoch, step=st.step, loss=lv,
                   lr=head_lr(ctx.opt), images_per_s=st.ema_ips, parts=dict(parts), phase=ctx.phase)
    return None


def micro_batches(ctx: RunContext, x, y, idx) -> list[tuple[Any, Any, Any, float]]:
    """A step's batch as (x, y, idx, share) pieces: whole, or micro-batches of ctx.micro_batch
    images when the plan says so (image batches only: cached features stay whole). `share` is a
    piece's part of the batch's mean loss, from Objective.loss_weight; the shares add up to 1."""
    n, k = int(x.shape[0]), int(ctx.micro_batch or 0)
    if k <= 0 or k >= n or x.dim() != 4:
        return [(x, y, idx, 1.0)]
    cuts = [(i, min(n, i + k)) for i in range(0, n, k)]
    w = [ctx.objective.loss_weight(y[a:b], idx[a:b]) for a, b in cuts]
    total = sum(w)
    shares = [v / total for v in w] if total > 0 else [(b - a) / n for a, b in cuts]
    return [(x[a:b], y[a:b], idx[a:b], s) for (a, b), s in zip(cuts, shares)]


def _forward_backward(ctx: RunContext, pieces) -> tuple[float, dict[str, float]]:
    """Loss and backward of each piece (its loss scaled by its share), gradients accumulated from
    zero. Returns (the batch's loss, its parts averaged by share), or a non-finite loss as soon as
    one piece gives one (nothing more is run; the caller decides). DDP: the gradients are
    all-reduced once, with the last piece's backward (`no_sync` for the others)."""
    import contextlib

    import torch

    module, objective, scaler = ctx.train_module, ctx.objective, ctx.scaler
    ctx.opt.zero_grad(set_to_none=True)
    total, sums, weights = 0.0, {}, {}
    last = len(pieces) - 1
    for i, (xc, yc, ic, share) in enumerate(pieces):
        sync = module.no_sync() if i < last and hasattr(module, "no_sync") else contextlib.nullcontext()
        with sync:
            with ctx.plan.autocast():
                loss, parts = objective.loss(module, xc, yc, ic)
            if not torch.isfinite(loss):
                return float(loss.detach()), {}
            scaled = loss * share if last else loss
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if not last:  # one piece: the objective's own numbers, as they are
            return float(loss.detach()), dict(parts)
        total += float(loss.detach()) * share
        for name, v in parts.items():
            sums[name] = sums.get(name, 0.0) + float(v) * share
            weights[name] = weights.get(name, 0.0) + share
    return total, {name: sums[name] / weights[name] if weights[name] > 0 else sums[name] for name in sums}


def _retry_smaller_batch(ctx: RunContext, st: LoopState, epoch: int, exc: BaseException) -> Generator[Event, None, None]:
    """Out of memory: halve the batch, rebuild the loaders, rescale the LR schedule, redo the epoch."""
    import torch

    if ctx.batch_size <= 1:
        raise TrainingFailed(
            f"Out of memory at epoch {epoch + 1} even with batch size 1 ({str(exc).splitlines()[0][:200]}). "
            "Use a smaller image size or backbone, or freeze more layers.") from exc
    ctx.batch_size = max(1, ctx.batch_size // 2)
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    yield Warn(f"Out of memory: retrying epoch {epoch + 1} with batch size {ctx.batch_size}")
    ctx.loaders, module = yield from make_loaders(ctx)
    ctx.train_module = ctx.octx.model = wrap_ddp(module, ctx.dist, ctx.device)
    # more steps per epoch now: rescale the LR schedule to them (else it ends early), as a
    # resume with the smaller batch size (saved in last.pt) will also do
    ctx.steps_per_epoch, lr_factor = schedule(ctx.config, ctx.loaders)
    st.step = epoch * ctx.steps_per_epoch
    sched, opt = ctx.sched, ctx.opt
    sched.lr_lambdas = [lr_factor] * len(opt.param_groups)
    sched.last_epoch = st.step
    for g, base, f in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
        g["lr"] = base * f(st.step)
    sched._last_lr = [g["lr"] for g in opt.param_groups]
    st.start_batch, st.start_epoch = 0, epoch
