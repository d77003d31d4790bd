"""The multi-task training run: a generator of the engine's events over MultiTaskObjective.

It uses the engine's building blocks (run folder, weight download with progress, loaders and
the feature cache for head-only runs, layer groups and discriminative learning rates, the LR
schedule) and drives the Objective hooks of docs/TASKS.md itself, because the data (a label
table with several columns) and the step (PCGrad's per-task backward passes) differ from the
engine's single-label loop. Checkpoints every epoch and on Stop; resume continues from the
stopped batch with the same split, weights, optimiser, schedule and task weights.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from tlstudio.core.atomic import atomic_save_safetensors, atomic_torch_save, atomic_write_json
from tlstudio.core.errors import UserError
from tlstudio.core.events import BatchEnd, Checkpointed, EpochEnd, Event, Finished, Log, RunStarted, Warn
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks.multitask.config import MultiTaskConfig

MT_STATE = "multitask.json"  # per-task validation details of the best epoch (Evaluate page)


def _engine():
    from tlstudio.core.tasks.multitask import _runtime

    return _runtime


def spec_for(model, config: MultiTaskConfig, schema: dict[str, Any]):
    from tlstudio.core.models import backbones

    names = [t["name"] for t in schema["tasks"]]
    body = model.bodies[0] if model.soft else model.body
    return backbones.model_spec(body, config.backbone, names, config.image_size)


def run(config: MultiTaskConfig, stop: threading.Event | None = None, pause: threading.Event | None = None,
        _resume_from: Path | None = None, phase: str = "main", _same_split: bool = False,
        _schema: dict[str, Any] | None = None) -> Generator[Event, None, runs.RunInfo]:
    """Train a multi-task run. (``_same_split``/``_schema``: a single-task baseline on the
    split.json already in ``config.out_dir`` and the multi-task run's schema of its task.)"""
    eng = _engine()
    stop = stop or threading.Event()
    pause = pause or threading.Event()
    run_dir = _resume_from or eng.new_run_dir(config)
    if _resume_from is None:
        if runs.is_run_dir(run_dir) and not _same_split:
            raise UserError(f"{run_dir} already holds a run: resume it, or choose another output folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        config = config.model_copy(update={"out_dir": str(run_dir)})
        config.to_json_file(run_dir / runs.CONFIG_JSON)
    logger = eng.Logger(run_dir)
    gen = _fit(config, run_dir, stop, pause, _resume_from is not None, phase, _same_split, _schema)
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
        from tlstudio.core.tasks.multitask.baseline import run_baselines

        info = yield from run_baselines(config, run_dir, info, stop, pause)
        base = (info.extra.get("multitask") or {}).get("baseline")
        ev = Finished(run_dir=str(run_dir), status=info.status, best_epoch=info.best_epoch,
                      best_val_acc=info.best_val_acc, message=base["verdict"] if base else "",
                      metrics=dict(info.metrics))
        logger(ev)
        yield ev  # the run's own result comes last, after the baselines' Finished events
    return info


def resume(run_dir: str | Path, stop=None, pause=None) -> Generator[Event, None, runs.RunInfo]:
    run_dir = Path(run_dir)
    info = runs.read_run(run_dir)
    if not (run_dir / runs.LAST_CKPT).is_file():
        raise UserError(f"{run_dir}: no checkpoint to resume from ({runs.LAST_CKPT} missing)")
    config = MultiTaskConfig.from_json_file(run_dir / runs.CONFIG_JSON)
    if info.status in ("finished", "early_stopped"):
        if config.baseline and not (info.extra.get("multitask") or {}).get("baseline"):
            from tlstudio.core.tasks.multitask.baseline import run_baselines

            return (yield from run_baselines(config, run_dir, info, stop or threading.Event(), pause or threading.Event()))
        raise UserError(f"{run_dir}: this run already {info.status.replace('_', ' ')}; nothing to resume")
    return (yield from run(config, stop, pause, _resume_from=run_dir))


def _fit(config: MultiTaskConfig, run_dir: Path, stop, pause, resuming: bool, phase: str, same_split: bool = False,
         given_schema: dict[str, Any] | None = None):
    import torch

    from tlstudio.core.data.multitask import make_multitask_split, scan_multitask
    from tlstudio.core.models import backbones, layers
    from tlstudio.core.runtime import precision
    from tlstudio.core.runtime.rng_state import rng_state, seed_everything, set_rng_state
    from tlstudio.core.tasks.multitask.objective import MTContext, MultiTaskObjective

    eng = _engine()
    t_start = time.time()
    ckpt = None
    if resuming:
        ckpt = torch.load(run_dir / runs.LAST_CKPT, map_location="cpu", weights_only=True)
    seed_everything(config.seed)

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
        old = runs.read_run(run_dir).label_schema or {}
        if [(t["name"], t["type"], t["classes"]) for t in old.get("tasks", [])] != \
                [(t["name"], t["type"], t["classes"]) for t in schema["tasks"]]:
            raise UserError(f"{config.data_dir}: the tasks or their classes changed since this run started; "
                            "resuming needs the same label table.")
        schema = old
        split = runs.read_split(run_dir)
    elif same_split:
        schema = given_schema or schema
        split = runs.read_split(run_dir)
    else:
        split = make_multitask_split(report, config.val_fraction, config.effective_split_seed)
        runs.write_split(run_dir, split)
    if not split.val or not split.train:
        raise UserError(f"{config.data_dir}: too few images for a training and a validation set")
    objective = MultiTaskObjective(schema, config)

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
    spec = spec_for(model, config, schema)
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
    head_only = gradual_every is None and layers.frozen_prefix_is_whole_body(trainable)
    lr = config.lr
    if lr is None:
        from tlstudio.core.models.advice import default_lr

        lr = 3e-3 if config.init == "scratch" else default_lr(
            config.freeze if gradual_every else "none" if all(trainable) else "head" if head_only else "last:1")
        yield Log(f"Learning rate {lr:g}")
    if config.sharing == "soft" and head_only:
        yield Log("Soft sharing with a frozen body is hard sharing (the bodies cannot move apart): one body is used")
    device = precision.resolve_device(config.device)
    precision.set_threads(config.leave_one_core)
    plan = precision.choose_precision(device, model, config.precision, config.channels_last)
    model.to(device)
    features_mode = config.cache != "off" and head_only and not model.soft
    batch_size = int(ckpt["batch_size"]) if ckpt is not None else config.batch_size
    train_split = dataclasses.replace(split, train=list(split.train))
    loaders = yield from eng.make_loaders(config, model, train_split, data_cfg, device, plan, batch_size,
                                          features_mode, stop)
    train_module = model.get_classifier() if features_mode else model
    layers.apply_freeze(model, groups, trainable)
    ctx = MTContext(model=train_module, device=device, classes=spec.classes, precision=plan, config=config,
                    train_samples=list(split.train), features_mode=features_mode, run_dir=run_dir,
                    val_samples=list(split.val))
    objective.setup(ctx)
    if config.teacher_run:
        yield from _teacher_outputs(config, objective, schema, list(split.train), stop)
    for m in objective.extra_modules():
        m.to(device)
    if config.pcgrad and (features_mode or model.soft):
        yield Log("PCGrad: no trainable shared layers (head-only or soft sharing), so no gradient projection "
                  "is needed; the tasks' heads are already separate")
    body_mult = 1.0 if config.init == "scratch" else config.body_lr_mult
    pgroups = layers.param_groups(model, groups, [True] * len(groups), lr=lr, body_lr_mult=body_mult,
                                  layer_decay=config.layer_decay, weight_decay=config.weight_decay)
    extra = [p for m in objective.extra_modules() for p in m.parameters()]
    if extra:
        pgroups.append({"params": extra, "lr": lr * 10, "weight_decay": 0.0})
    for g in pgroups:
        g.setdefault("lr", lr)
    opt = (torch.optim.SGD(pgroups, lr=lr, momentum=0.9, nesterov=True) if config.optimizer == "sgd"
           else torch.optim.AdamW(pgroups, lr=lr))
    steps_per_epoch, lr_factor = eng.schedule(config, loaders.batches_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)

    # with the whole body frozen the heads never interact (each sees the same features and only its
    # task's loss reaches it), so like a separate model each task keeps its head from its own best
    # epoch: one model, and a fair comparison with the single-task baselines
    heads_independent = head_only
    if heads_independent and len(schema["tasks"]) > 1:
        yield Log("Head-only: each task keeps its head from its own best validation epoch (the frozen body "
                  "makes the heads independent)")
    history: list[dict[str, float]] = []
    best = {"epoch": None, "score": -math.inf, "loss": math.inf, "metrics": {}, "bad": 0, "per_task": {}}
    start_epoch, start_batch, step = 0, 0, 0
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        for m, sd in zip(objective.extra_modules(), ckpt.get("extra_modules", [])):
            m.load_state_dict(sd)
        objective.load_state_dict(ckpt.get("objective", {}))
        start_epoch, start_batch, step = int(ckpt["epoch"]), int(ckpt["batch"]), int(ckpt["step"])
        history = list(ckpt["history"])
        best = dict(ckpt["best"])
        set_rng_state(ckpt["rng"])

    info = runs.RunInfo(kind="train", task="multitask", name=run_dir.name, status="running",
                        config=config.model_dump(mode="json"), model=spec,
                        data={"root": report.root, "source": report.source, "n_train": len(split.train),
                              "n_val": len(split.val), "tasks": [t.summary() for t in report.tasks]},
                        versions=runs.versions(), seed=config.seed, device=str(device), precision=plan.name,
                        best_metric="val_score", label_schema=schema)
    if resuming:
        old = runs.read_run(run_dir)
        info.created, info.timings = old.created, dict(old.timings)
    runs.write_run(run_dir, info)
    n_tr, n_total = layers.count_params(model)
    yield RunStarted(run_dir=str(run_dir), backbone=config.backbone, device=str(device), precision=plan.name,
                     classes=tuple(spec.classes), n_train=loaders.n_train, n_val=loaders.n_val, epochs=config.epochs,
                     batches_per_epoch=steps_per_epoch, trainable_params=n_tr, total_params=n_total,
                     start_epoch=start_epoch, phase=phase)

    def save_last(epoch: int, batch: int) -> None:
        atomic_torch_save(run_dir / runs.LAST_CKPT, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "extra_modules": [m.state_dict() for m in objective.extra_modules()],
            "objective": objective.state_dict(), "epoch": epoch, "batch": batch, "step": step,
            "batch_size": batch_size, "trainable": list(trainable), "history": list(history), "best": dict(best),
            "rng": rng_state()})

    def finish(status: str, message: str = ""):
        info.status = status
        info.epochs_done = len(history)
        info.best_epoch = best["epoch"]
        info.metrics = dict(best["metrics"])
        info.best_val_acc = best["metrics"].get("val_acc")
        info.best_val_macro_f1 = best["metrics"].get("val_macro_f1")
        info.timings["train_s"] = info.timings.get("train_s", 0.0) + (time.time() - t_start)
        info.extra["multitask"] = {
            "per_task": best["per_task"], "relatedness": objective.relatedness.matrix(),
            "relatedness_samples": objective.relatedness.n, "weights": objective.weighting.weights(),
            "weighting": config.weighting, "pcgrad": config.pcgrad, "sharing": config.sharing,
            "tasks": [t.summary() for t in report.tasks], "task_epochs": best.get("task_epochs"),
            "heads_independent": heads_independent,
        }
        from tlstudio.core.tasks.multitask.baseline import unrelated_tasks

        unrelated = unrelated_tasks([t["name"] for t in schema["tasks"]], objective.relatedness.matrix())
        info.extra["multitask"]["unrelated_tasks"] = unrelated
        runs.write_run(run_dir, info)
        atomic_write_json(run_dir / MT_STATE, info.extra["multitask"])
        if unrelated and status in ("finished", "early_stopped"):
            if len(unrelated) == len(schema["tasks"]):
                msg = ("The tasks look unrelated to each other: their gradients on the shared layers are about as "
                       "aligned as chance. Compare with separate models (--baseline) before sharing one model.")
            else:
                msg = (f"Task {', '.join(unrelated)} looks unrelated to the others: its gradients on the shared "
                       "layers are about as aligned with theirs as chance. Compare with separate "
                       "models (--baseline) before keeping it in the shared model.")
            yield Warn(msg)
        if best["epoch"] is not None:
            parts = [f"{t}: " + (f"accuracy {d['accuracy']:.1%}" if "accuracy" in d else f"MAE {d.get('mae', 0):.3g}")
                     for t, d in best["per_task"].items()]
            per_epoch = best.get("task_epochs")
            when = (", ".join(f"{t} epoch {e + 1}" for t, e in per_epoch.items()) if per_epoch
                    else f"epoch {best['epoch'] + 1}")
            yield Log(f"Best ({when}): " + "; ".join(parts))
        yield Finished(run_dir=str(run_dir), status=status, best_epoch=best["epoch"], best_val_acc=info.best_val_acc,
                       message=message, metrics=dict(info.metrics))
        return info

    epoch = start_epoch
    while epoch < config.epochs:
        if gradual_every is not None:
            new = layers.gradual_plan(groups, epoch, gradual_every)
            if new != trainable:
                trainable = new
                layers.apply_freeze(model, groups, trainable)
        if features_mode:
            train_module.train()
        else:
            layers.set_train_mode(model, groups, trainable)
        objective.on_epoch_start(epoch, ctx)
        t_epoch = time.time()
        first = start_batch if epoch == start_epoch else 0
        loss_sum, count, batch_i = 0.0, 0, first
        try:
            for batch_i, (x, y, idx) in enumerate(loaders.train_batches(epoch, first), start=first):
                while pause.is_set() and not stop.is_set():
                    time.sleep(0.05)
                if stop.is_set():
                    raise eng.RunStopped()
                if x.shape[0] == 0:
                    continue
                t0 = time.perf_counter()
                x, idx = x.to(device), idx.to(device)
                with plan.autocast():
                    loss, parts = objective.loss(train_module, x, y, idx)
                if not torch.isfinite(loss):
                    msg = f"The loss became {float(loss.detach())} at epoch {epoch + 1}: training stopped. Try a lower learning rate."
                    yield Warn(msg)
                    return (yield from finish("failed", msg))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                lv = float(loss.detach())
                loss_sum += lv * x.shape[0]
                count += x.shape[0]
                yield BatchEnd(epoch=epoch, batch=batch_i, batches=steps_per_epoch, step=step, loss=lv,
                               lr=eng.head_lr(opt), images_per_s=x.shape[0] / max(1e-6, time.perf_counter() - t0),
                               parts=dict(parts), phase=phase)
        except eng.RunStopped:
            save_last(epoch, batch_i)
            yield Checkpointed(path=str(run_dir / runs.LAST_CKPT), epoch=epoch, kind="last")
            return (yield from finish("stopped", f"Stopped at epoch {epoch + 1}, batch {batch_i + 1}; resumable"))
        metrics = objective.validate(train_module if features_mode else model, loaders.val, ctx)
        objective.on_epoch_end(epoch, metrics, ctx)
        train_loss = loss_sum / max(1, count)
        if heads_independent:
            improved = _select_heads(best, model, objective.last_val, epoch)
        else:
            improved = metrics["val_score"] > best["score"] + 1e-9 or (
                abs(metrics["val_score"] - best["score"]) <= 1e-9 and metrics["val_loss"] < best["loss"])
            if improved:
                best.update(epoch=epoch, score=metrics["val_score"], loss=metrics["val_loss"], metrics=dict(metrics),
                            per_task=objective.last_val)
        if improved:
            best["bad"] = 0
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            for key, head in (best.get("heads") or {}).items():  # each task's head of its own best epoch
                state.update({f"heads.{key}.{n}": t for n, t in head.items()})
            atomic_save_safetensors(run_dir / runs.BEST_WEIGHTS, state,
                                    metadata={"tlstudio_model": spec.model_dump_json(), "tlstudio_task": "multitask"})
        else:
            best["bad"] += 1
        n_tr, _ = layers.count_params(model)
        row = {"epoch": epoch + 1, "train_loss": train_loss, **metrics, "lr": eng.head_lr(opt),
               "seconds": time.time() - t_epoch}
        history.append(row)
        runs.write_history(run_dir, history)
        yield EpochEnd(epoch=epoch, epochs=config.epochs, train_loss=train_loss, metrics=dict(metrics),
                       lr=row["lr"], seconds=row["seconds"], best=improved, trainable_params=n_tr, phase=phase,
                       best_metric="val_score")
        epoch += 1
        save_last(epoch, 0)
        if config.early_stop_patience and best["bad"] >= config.early_stop_patience and epoch < config.epochs:
            yield Log(f"Early stopping: no improvement of the mean task score for {best['bad']} epochs")
            return (yield from finish("early_stopped"))
    return (yield from finish("finished"))


def _teacher_outputs(config: MultiTaskConfig, objective, schema: dict[str, Any], train: list, stop):
    """Run the teacher (a trained multi-task run) once over the training images (eval transform)
    and hand its outputs, in this run's model space, to the objective."""
    import torch

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
    outs = yield from _engine().in_thread(lambda progress: _run_batches(teacher, [s.path for s in train], tinfo.model,
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


def _select_heads(best: dict[str, Any], model, per_task: dict[str, dict[str, Any]], epoch: int) -> bool:
    """Per-task selection (frozen body): a task whose score improved (ties: lower loss) keeps this
    epoch's head. Updates best's per_task, metrics (as if one model: val_score = mean), heads."""
    from tlstudio.core.tasks.multitask.objective import flat_metrics

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
