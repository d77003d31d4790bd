"""Checkpoints and the end of a multi-task run.

last.pt holds everything resume needs (weights, optimiser, schedule, task weights, the loop
state with the best epoch so far, RNG, precision mode) and is written first at the end of each
epoch and on Stop; history.csv follows, and resume rewrites it from last.pt if a kill came
between the two. model.safetensors holds the best weights (head-only: each task's head from its
own best epoch). Writes go through the engine's training.checkpoint.save (a full disk becomes
one line). ``finish`` writes run.json and multitask.json and says what the run found.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from tlstudio.core.atomic import atomic_save_safetensors, atomic_torch_save, atomic_write_json
from tlstudio.core.events import Event, Finished, Log, Warn
from tlstudio.core.runs import folder as runs

MT_STATE = "multitask.json"  # per-task validation details of the best epoch (Evaluate page)


def save_last(run: Any, st: Any, epoch: int, batch: int, last: bool = False) -> None:
    """last.pt (rank 0); ``last``: the run stops early after this epoch (no optimiser state kept)."""
    from tlstudio.core.runtime.rng_state import rng_state
    from tlstudio.core.training import checkpoint

    if not run.dist.is_main:  # the other processes hold the same state: rank 0's file is the one
        return
    path = run.run_dir / runs.LAST_CKPT
    checkpoint.save(path, atomic_torch_save, path, {
        "model": run.model.state_dict(), "optimizer": checkpoint.optimizer_state(run.opt, epoch, run.config.epochs, last),
        "scheduler": run.sched.state_dict(),
        "extra_modules": [m.state_dict() for m in run.objective.extra_modules()],
        "objective": run.objective.state_dict(), "epoch": epoch, "batch": batch, "step": st.step,
        "batch_size": run.batch_size, "trainable": list(run.trainable), "history": list(st.history),
        "best": dict(st.best), "partial": dict(st.partial), "rng": rng_state(),
        "plan": {"precision": run.plan.name, "channels_last": bool(run.plan.channels_last)}})


def reconcile_history(run: Any, st: Any) -> None:
    """history.csv back in line with last.pt (a kill may have come between the two writes)."""
    if run.run_dir == run.source_dir and len(runs.read_history(run.run_dir)) != len(st.history):
        runs.write_history(run.run_dir, st.history)


def save_best(run: Any, best: dict[str, Any]) -> None:
    """The model's weights, with each task's head of its own best epoch where they are kept."""
    from tlstudio.core.training import checkpoint

    if not run.dist.is_main:
        return
    state = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
    for key, head in (best.get("heads") or {}).items():
        state.update({f"heads.{key}.{n}": t for n, t in head.items()})
    path = run.run_dir / runs.BEST_WEIGHTS
    checkpoint.save(path, atomic_save_safetensors, path, state,
                    metadata={"tlstudio_model": run.spec.model_dump_json(), "tlstudio_task": "multitask"})


def new_info(run: Any, resuming: bool) -> runs.RunInfo:
    config, split, report = run.config, run.split, run.report
    info = runs.RunInfo(kind="train", task="multitask", name=run.run_dir.name, status="running",
                        config=config.model_dump(mode="json"), model=run.spec,
                        data={"root": report.root, "source": report.source, "n_train": len(split.train),
                              "n_val": len(split.val), "tasks": [t.summary() for t in report.tasks]},
                        versions=runs.versions(), seed=config.seed, device=str(run.device), precision=run.plan.name,
                        best_metric="val_score", label_schema=run.schema)
    if resuming:
        old = runs.read_run(run.source_dir)
        info.created, info.timings = old.created, dict(old.timings)
    return info


def finish(run: Any, st: Any, info: runs.RunInfo, status: str, message: str = "") -> Generator[Event, None, runs.RunInfo]:
    """run.json (status, best epoch, per-task results, relatedness, weights) and multitask.json;
    a warning for tasks that look unrelated; the best epoch per task; Finished."""
    from tlstudio.core.tasks.multitask.baseline import unrelated_tasks

    best, objective, names = st.best, run.objective, [t["name"] for t in run.schema["tasks"]]
    info.status = status
    info.epochs_done = len(st.history)
    info.best_epoch = best["epoch"]
    info.metrics = dict(best["metrics"])
    info.best_val_acc = best["metrics"].get("val_acc")
    info.best_val_macro_f1 = best["metrics"].get("val_macro_f1")
    info.timings["train_s"] = info.timings.get("train_s", 0.0) + (time.time() - run.t_start)
    matrix = objective.relatedness.matrix()
    unrelated = unrelated_tasks(names, matrix)
    info.extra["multitask"] = {
        "per_task": best["per_task"], "relatedness": matrix, "relatedness_samples": objective.relatedness.n,
        "weights": objective.weighting.weights(), "weighting": run.config.weighting, "pcgrad": run.config.pcgrad,
        "sharing": run.config.sharing, "tasks": [t.summary() for t in run.report.tasks],
        "task_epochs": best.get("task_epochs"), "heads_independent": run.heads_independent,
        "unrelated_tasks": unrelated,
    }
    runs.write_run(run.run_dir, info)
    atomic_write_json(run.run_dir / MT_STATE, info.extra["multitask"])
    if unrelated and status in ("finished", "early_stopped"):
        yield Warn(unrelated_message(unrelated, len(names)))
    if best["epoch"] is not None:
        parts = [f"{t}: " + (f"accuracy {d['accuracy']:.1%}" if "accuracy" in d else f"MAE {d.get('mae', 0):.3g}")
                 for t, d in best["per_task"].items()]
        per_epoch = best.get("task_epochs")
        when = (", ".join(f"{t} epoch {e + 1}" for t, e in per_epoch.items()) if per_epoch
                else f"epoch {best['epoch'] + 1}")
        yield Log(f"Best ({when}): " + "; ".join(parts))
    yield Finished(run_dir=str(run.run_dir), status=status, best_epoch=best["epoch"], best_val_acc=info.best_val_acc,
                   message=message, metrics=dict(info.metrics))
    return info


def unrelated_message(unrelated: list[str], n_tasks: int) -> str:
    if len(unrelated) == n_tasks:
        return ("The tasks look unrelated to each other: their gradients on the shared layers are about as "
                "aligned as chance. Compare with separate models (--baseline) before sharing one model.")
    return (f"Task {', '.join(unrelated)} looks unrelated to the others: its gradients on the shared "
            "layers are about as aligned with theirs as chance. Compare with separate "
            "models (--baseline) before keeping it in the shared model.")
