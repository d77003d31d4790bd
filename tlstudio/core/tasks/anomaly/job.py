"""Fitting an anomaly detector: a generator of events, like engine.fit.

features of the normal images -> memory bank (PatchCore, coreset-reduced as it goes) or
per-position Gaussians (PaDiM) -> held-out normal images set the threshold at the chosen
false-alarm rate -> labelled test images (if any) are evaluated -> run folder written.
Stop (threading.Event) is honoured between batches and inside the coreset search.
Planning and progress helpers are in plan.py, the steps up to the learned head in fit_steps.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from tlstudio.core.errors import UserError
from tlstudio.core.events import Event, Finished, Log, RunStarted, Warn
from tlstudio.core.tasks.anomaly.config import AnomalyConfig
from tlstudio.core.tasks.anomaly.fit_steps import (
    _extractor,
    _Extractor,
    _Fit,
    _learn_normal,
    _read_data,
    _start_run,
    _Stop,
)
from tlstudio.core.tasks.anomaly.plan import _threaded, plan, plan_text  # noqa: F401 - plan, plan_text: the app's API

def _new_run_dir(config: AnomalyConfig) -> Path:
    from tlstudio.core.runs.folder import fresh_run_dir

    return Path(config.out_dir) if config.out_dir else fresh_run_dir(f"anomaly-{config.backbone}")


def fit(config: AnomalyConfig, stop: threading.Event | None = None,
        pause: threading.Event | None = None) -> Generator[Event, None, Any]:
    """Fit per ``config``; yield events; return the run's RunInfo."""
    from tlstudio.core.runs import folder as runs

    stop = stop or threading.Event()
    from tlstudio.core.runs.guard import claim_out_dir

    run_dir = _new_run_dir(config)
    lock = claim_out_dir(run_dir)  # new or empty folder only; locked while this fit writes it
    config = config.model_copy(update={"out_dir": str(run_dir)})
    from tlstudio.core.atomic import atomic_write_text

    atomic_write_text(run_dir / runs.CONFIG_JSON, config.model_dump_json(indent=2))
    from tlstudio.core.training.engine import RunLogger

    log = RunLogger(run_dir)
    state: dict[str, Any] = {}
    try:
        for ev in _fit(config, run_dir, stop, pause, state):
            log(ev)
            yield ev
    except BaseException:
        info = state.get("info")
        if info is not None and info.status == "running":
            info.status = "failed"
            try:
                runs.write_run(run_dir, info)
            except OSError:
                pass
        raise
    finally:
        lock.release()
    return state["info"]


def _fit(config: AnomalyConfig, run_dir: Path, stop, pause, state) -> Generator[Event, None, None]:
    """data -> feature extractor -> bank or Gaussians -> threshold -> test evaluation -> run folder."""
    from tlstudio.core.runs import folder as runs
    from tlstudio.core.tasks.anomaly.model import AnomalyModel

    t0 = time.perf_counter()
    job = _Fit(config, run_dir, stop, pause)
    try:
        data, holdout, bank_paths = yield from _read_data(job)
        ex = yield from _extractor(job, len(bank_paths))
        state["info"] = job.info = _start_run(job, data, ex, bank_paths, holdout)
        runs.write_run(run_dir, job.info)
        yield RunStarted(str(run_dir), ex.spec.backbone, "cpu", "fp32", ("normal", "anomaly"), len(bank_paths),
                         len(holdout), 1, -(-len(bank_paths) // config.batch_size), 0,
                         sum(p_.numel() for p_ in ex.body.parameters()), phase="fit")
        head = yield from _learn_normal(job, ex, bank_paths)
        model = AnomalyModel(ex.body, ex.indices, head, aggregate=config.aggregate).eval()
        meta = yield from _set_threshold(job, model, ex, head, holdout)
        metrics = yield from _evaluate_test(job, model, ex.spec, meta, data, holdout)
    except _Stop as s:
        job.info.status = "stopped"
        runs.write_run(run_dir, job.info)
        yield Finished(str(run_dir), "stopped", None, None, str(s))
        return
    _save_run(job, ex, head, data, bank_paths, holdout, metrics, t0)
    yield Log(f"Threshold {meta['threshold']:.4g} ({meta['threshold_mode'].replace('_', '-')}), "
              f"fit in {job.info.timings['fit_s']:.1f} s; saved {run_dir}")
    yield Finished(str(run_dir), "finished", None, None, "", result={"threshold": meta["threshold"]}, metrics=metrics)


def _set_threshold(job: _Fit, model, ex: _Extractor, head, holdout: list[str]) -> Generator[Event, None, dict]:
    """Score the held-out normal images; threshold at the false-alarm rate; the run's anomaly meta."""
    import numpy as np
    import torch

    from tlstudio.core.tasks.anomaly.scoring import score_paths
    from tlstudio.core.tasks.anomaly.threshold import false_alarm_threshold, few_scores_rule, normal_scale

    config = job.config
    hold_scores, _maps, _fail = score_paths(model, holdout, ex.spec, batch_size=4, stop=job.stop)
    job.check_stop("while scoring held-out images")
    hs = hold_scores[~np.isnan(hold_scores)]
    if hs.size == 0:
        raise UserError("none of the held-out normal images could be read: cannot set a threshold")
    thr = false_alarm_threshold(hs, config.false_alarm_rate)
    scale = normal_scale(hs, thr)
    if config.false_alarm_rate * hs.size < 1:
        yield Warn(f"{hs.size} held-out good images cannot measure a {config.false_alarm_rate:.1%} false-alarm "
                   f"rate: threshold {few_scores_rule(hs.size)} (more normal images help)")
    model.set_normalisation(thr, scale)
    meta = {"method": config.method, "indices": ex.indices, "strides": list(config.strides), "grid": ex.grid,
            "aggregate": config.aggregate,
            "feature_dim": ex.plan["feature_dim"],
            "bank_size": int(getattr(head, "bank", torch.zeros(0)).shape[0]),
            "sigma": 4.0, "threshold": thr, "scale": scale, "false_alarm_threshold": thr,
            "false_alarm_rate": config.false_alarm_rate, "threshold_mode": "false_alarm",
            "holdout_scores": [float(v) for v in hs], "holdout": holdout}
    job.info.extra["anomaly"] = meta
    return meta


def _evaluate_test(job: _Fit, model, spec, meta: dict, data, holdout: list[str]) -> Generator[Event, None, dict]:
    """Evaluate on the labelled test images, if any (the F1-optimal threshold replaces the
    false-alarm one when the config asks for it); the report is saved next to the run."""
    from tlstudio.core.atomic import atomic_write_json
    from tlstudio.core.tasks.anomaly import store
    from tlstudio.core.tasks.anomaly.evaluate import evaluate_images, split_of

    test = split_of(data, holdout)
    if not any(t.label == 1 for t in test):
        return {}
    yield Log(f"Evaluating on {len(test)} labelled test images")
    holdout_is_test = data.layout != "mvtec"
    report = yield from _threaded(
        lambda cb: evaluate_images(model, spec, meta, test, progress=cb, stop=job.stop, holdout_is_test=holdout_is_test),
        "eval", "evaluating")
    job.check_stop("while evaluating")
    if report.get("f1_optimal_threshold") is not None:
        meta["f1_threshold"] = report["f1_optimal_threshold"]
        meta["f1_optimal"] = report["f1_optimal"]
        if job.config.threshold_mode == "f1":
            meta["threshold"] = report["f1_optimal_threshold"]
            meta["threshold_mode"] = "f1"
            model.set_normalisation(meta["threshold"], meta["scale"])
            report = evaluate_images(model, spec, meta, test, holdout_is_test=holdout_is_test)
    metrics = {k: v for k, v in report["metrics"].items() if isinstance(v, (int, float)) and v is not None}
    atomic_write_json(job.run_dir / store.EVAL_FILE, report)
    yield Log("Test: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k in
                                    ("image_auroc", "pixel_auroc", "f1", "precision", "recall")))
    return metrics


def _save_run(job: _Fit, ex: _Extractor, head, data, bank_paths: list[str], holdout: list[str],
              metrics: dict, t0: float) -> None:
    """Weights, head, split and the finished run.json."""
    from tlstudio.core.atomic import atomic_save_safetensors
    from tlstudio.core.data.dataset import Sample, Split
    from tlstudio.core.runs import folder as runs
    from tlstudio.core.tasks.anomaly import store
    from tlstudio.core.tasks.anomaly.evaluate import split_of

    run_dir, info, config = job.run_dir, job.info, job.config
    atomic_save_safetensors(run_dir / runs.BEST_WEIGHTS, {k: v.contiguous() for k, v in ex.body.state_dict().items()})
    store.save_head(run_dir, head)
    runs.write_split(run_dir, Split(
        train=[Sample(x, 0) for x in bank_paths], val=[Sample(x, 0) for x in holdout],
        test=[Sample(t.path, t.label, {"defect": t.defect, "mask": t.mask}) for t in split_of(data, holdout)],
        seed=config.seed, val_fraction=config.holdout_fraction))
    info.model = ex.spec
    info.timings["fit_s"] = round(time.perf_counter() - t0, 3)
    info.metrics = metrics
    info.status = "finished"
    info.epochs_done = 1
    runs.write_run(run_dir, info)
