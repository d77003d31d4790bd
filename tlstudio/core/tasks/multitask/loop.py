"""The epoch/step loop of a multi-task run, over a prepared MTRun and an explicit LoopState.

Per epoch: gradual unfreezing, the training steps (the objective's masked, weighted per-task
losses; PCGrad inside the objective), validation (mean of per-task scores picks the best epoch;
head-only: each task's head from its own best epoch), best weights, last.pt, history, early
stopping. Stop checkpoints the current batch; resume continues from it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Generator
from typing import Any

from tlstudio.core.events import BatchEnd, Checkpointed, EpochEnd, Event, Log, Warn
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks.multitask import _runtime as eng
from tlstudio.core.tasks.multitask import checkpoint, distributed
from tlstudio.core.tasks.multitask.prepare import MTRun


def _new_best() -> dict[str, Any]:
    return {"epoch": None, "score": -math.inf, "loss": math.inf, "metrics": {}, "bad": 0, "per_task": {}}


@dataclasses.dataclass
class LoopState:
    """Where the run stands; ``best``: the best epoch so far (and, head-only, each task's best
    head), as saved in last.pt."""

    epoch: int = 0
    start_epoch: int = 0
    start_batch: int = 0
    step: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    best: dict[str, Any] = dataclasses.field(default_factory=_new_best)
    # the running epoch's training loss so far (sum over images, images): kept across a Stop
    partial: dict[str, float] = dataclasses.field(default_factory=lambda: {"loss_sum": 0.0, "count": 0})

    @classmethod
    def from_ckpt(cls, ckpt: dict[str, Any] | None) -> "LoopState":
        if ckpt is None:
            return cls()
        e = int(ckpt["epoch"])
        return cls(epoch=e, start_epoch=e, start_batch=int(ckpt["batch"]), step=int(ckpt["step"]),
                   history=list(ckpt["history"]), best=dict(ckpt["best"]),
                   partial=dict(ckpt.get("partial") or {"loss_sum": 0.0, "count": 0}))


@dataclasses.dataclass(frozen=True)
class Interrupted:
    """An epoch that ended early: Stop (resumable at ``batch``, not trained yet) or a failure."""

    status: str  # "stopped" | "failed"
    batch: int
    message: str = ""


def run_epochs(run: MTRun, st: LoopState, info: runs.RunInfo) -> Generator[Event, None, runs.RunInfo]:
    config = run.config
    while st.epoch < config.epochs:
        epoch = st.epoch
        first = st.start_batch if epoch == st.start_epoch else 0
        _prepare_epoch(run, epoch, fresh=first == 0 or not run.dist.is_main)
        if first == 0 or not run.dist.is_main:  # resumed inside an epoch: rank 0 alone brings its sums
            st.partial = {"loss_sum": 0.0, "count": 0}
        t_epoch = time.time()
        trained = yield from _train_epoch(run, st, epoch, first)
        if isinstance(trained, Interrupted):
            return (yield from _interrupted(run, st, info, epoch, trained))
        yield from _end_epoch(run, st, epoch, trained, t_epoch)
        if stops_early(run, st):
            yield Log(f"Early stopping: no improvement of the mean task score for {st.best['bad']} epochs")
            return (yield from checkpoint.finish(run, st, info, "early_stopped"))
    return (yield from checkpoint.finish(run, st, info, "finished"))


def stops_early(run: MTRun, st: LoopState) -> bool:
    """No improvement of the mean task score for the patience, with epochs left."""
    patience = run.config.early_stop_patience
    return bool(patience and st.best["bad"] >= patience and st.epoch < run.config.epochs)


def _interrupted(run: MTRun, st: LoopState, info, epoch: int, why: Interrupted) -> Generator[Event, None, runs.RunInfo]:
    if why.status == "stopped":  # a checkpoint at the batch that was not trained: resume starts there
        if run.dist.enabled:  # rank 0's last.pt holds every process's sums of the epoch so far
            run.objective.sync_epoch_losses()
            st.partial = distributed.sum_over_ranks(st.partial, ["loss_sum", "count"])
        checkpoint.save_last(run, st, epoch, why.batch)
        yield Checkpointed(path=str(run.run_dir / runs.LAST_CKPT), epoch=epoch, kind="last")
        return (yield from checkpoint.finish(
            run, st, info, "stopped", f"Stopped at epoch {epoch + 1}, batch {why.batch + 1}; resumable"))
    yield Warn(why.message)
    return (yield from checkpoint.finish(run, st, info, "failed", why.message))


def _prepare_epoch(run: MTRun, epoch: int, fresh: bool) -> None:
    """Gradual unfreezing (one more group every K epochs), train mode for what trains, and the
    objective's epoch start (``fresh``: not when resuming inside the epoch, whose sums last.pt kept)."""
    from tlstudio.core.models import layers
    from tlstudio.core.runtime.parallel import wrap_ddp

    if run.gradual_every is not None:
        new = layers.gradual_plan(run.groups, epoch, run.gradual_every)
        if new != run.trainable:
            run.trainable = new
            layers.apply_freeze(run.model, run.groups, run.trainable)
            if run.dist.enabled:  # DDP fixes its parameter set when it wraps: wrap again
                run.train_module = run.octx.model = wrap_ddp(run.model, run.dist, run.device)
    eng.set_epoch_train_mode(run.model, run.train_module, run.groups, run.trainable, run.features_mode)
    if fresh:
        run.objective.on_epoch_start(epoch, run.octx)


def _train_epoch(run: MTRun, st: LoopState, epoch: int, first: int) -> Generator[Event, None, float | Interrupted]:
    """The epoch's steps from batch ``first``: the mean training loss, or why it ended early.
    (Under torchrun Stop is agreed inside the step, after its forward pass, so that every process
    stops at the same batch.)"""
    for batch_i, (x, y, idx) in enumerate(run.loaders.train_batches(epoch, first), start=first):
        while run.pause.is_set() and not run.stop.is_set():
            time.sleep(0.05)
        if not run.dist.enabled and run.stop.is_set():
            return Interrupted("stopped", batch_i)
        if x.shape[0] == 0:
            continue
        t0 = time.perf_counter()
        result = _step(run, st, epoch, batch_i, x, y, idx)
        if isinstance(result, Interrupted):
            return result
        lv, parts = result
        st.partial["loss_sum"] += lv * x.shape[0]
        st.partial["count"] += x.shape[0]
        yield BatchEnd(epoch=epoch, batch=batch_i, batches=run.steps_per_epoch, step=st.step, loss=lv,
                       lr=eng.head_lr(run.opt), images_per_s=x.shape[0] / max(1e-6, time.perf_counter() - t0),
                       parts=dict(parts), phase=run.phase)
    total = distributed.sum_over_ranks(st.partial, ["loss_sum", "count"])  # every process's images
    return total["loss_sum"] / max(1, total["count"])


def _step(run: MTRun, st: LoopState, epoch: int, batch_i: int, x, y, idx) -> tuple[float, dict[str, float]] | Interrupted:
    """One optimiser step: (loss, per-task parts), or Stop / a non-finite loss (decided on every
    process alike under torchrun)."""
    import torch

    x, idx = run.plan.prepare_input(x), idx.to(run.device)
    with run.plan.autocast():
        loss, parts = run.objective.loss(run.train_module, x, y, idx)
    finite = bool(torch.isfinite(loss))
    if run.dist.enabled:
        if distributed.any_rank(run.stop.is_set()):
            return Interrupted("stopped", batch_i)
        finite = not distributed.any_rank(not finite)
    if not finite:
        return Interrupted("failed", batch_i, f"The loss became {float(loss.detach())} at epoch {epoch + 1}: "
                                              "training stopped. Try a lower learning rate.")
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_grads([p for m in run.objective.extra_modules() for p in m.parameters()])
    run.opt.step()
    run.sched.step()
    st.step += 1
    return float(loss.detach()), parts


def _end_epoch(run: MTRun, st: LoopState, epoch: int, train_loss: float, t_epoch: float) -> Generator[Event, None, None]:
    """Validation (rank 0's numbers on every process), the best epoch, last.pt, history, EpochEnd."""
    from tlstudio.core.models import layers
    from tlstudio.core.runtime.parallel import unwrap

    objective = run.objective
    objective.sync_epoch_losses()
    metrics = per_task = None
    if run.dist.is_main:
        metrics = objective.validate(unwrap(run.train_module) if run.features_mode else run.model,
                                     run.loaders.val, run.octx)
        per_task = objective.last_val
    metrics, objective.last_val = distributed.from_main((metrics, per_task))
    objective.on_epoch_end(epoch, metrics, run.octx)
    best = st.best
    if run.heads_independent:
        improved = select_heads(best, run.model, objective.last_val, epoch)
    else:
        improved = metrics["val_score"] > best["score"] + 1e-9 or (
            abs(metrics["val_score"] - best["score"]) <= 1e-9 and metrics["val_loss"] < best["loss"])
        if improved:
            best.update(epoch=epoch, score=metrics["val_score"], loss=metrics["val_loss"], metrics=dict(metrics),
                        per_task=objective.last_val)
    if improved:
        best["bad"] = 0
        checkpoint.save_best(run, best)
    else:
        best["bad"] += 1
    n_tr, _ = layers.count_params(run.model)
    row = {"epoch": epoch + 1, "train_loss": train_loss, **metrics, "lr": eng.head_lr(run.opt),
           "seconds": time.time() - t_epoch}
    st.history.append(row)
    st.epoch = epoch + 1
    checkpoint.save_last(run, st, st.epoch, 0, last=stops_early(run, st))  # last.pt first: resume trusts it
    runs.write_history(run.run_dir, st.history)
    yield EpochEnd(epoch=epoch, epochs=run.config.epochs, train_loss=train_loss, metrics=dict(metrics),
                   lr=row["lr"], seconds=row["seconds"], best=improved, trainable_params=n_tr, phase=run.phase,
                   best_metric="val_score", kept_score=float(best["score"]) if run.heads_independent else None)
    if run.heads_independent and improved:  # the epoch's own mean score is not what was kept: say what was
        kept = [name for name, e in best["task_epochs"].items() if e == epoch]
        yield Log(f"Epoch {epoch + 1}: this epoch's head kept for {', '.join(kept)} (each task keeps the head "
                  f"of its own best epoch); mean task score with the kept heads {best['score']:.3f}")


def select_heads(best: dict[str, Any], model, per_task: dict[str, dict[str, Any]], epoch: int) -> bool:
    """Per-task selection (frozen body): a task whose score improved (ties: lower loss) keeps this
    epoch's head. Updates best's per_task, metrics (as if one model: val_score = mean), heads."""
    from tlstudio.core.tasks.multitask.metrics import flat_metrics

    best.setdefault("per_task", {})
    best.setdefault("heads", {})
    best.setdefault("task_epochs", {})
    changed = False
    for name, key in zip(model.task_names, model.keys):
        d = per_task[name]
        old = best["per_task"].get(name)
        if old is None or d["score"] > old["score"] + 1e-9 or (abs(d["score"] - old["score"]) <= 1e-9
                                                               and d["loss"] < old["loss"]):
            best["per_task"][name] = d
            best["heads"][key] = {n: t.detach().cpu().clone() for n, t in model.heads[key].state_dict().items()}
            best["task_epochs"][name] = epoch
            changed = True
    if changed:
        m = flat_metrics(best["per_task"])
        m["val_loss"] = sum(d["loss"] for d in best["per_task"].values())
        best.update(epoch=epoch, score=m["val_score"], loss=m["val_loss"], metrics=m)
    return changed
