"""Anomaly run artefacts: what a fit leaves in its run folder and how the model comes back.

RUN_DIR/ (besides run.json, config.json, split.json, log.txt)
  model.safetensors   the feature extractor (whole timm model; its head is unused)
  anomaly.safetensors the method's tensors: PatchCore bank, or PaDiM channels/means/inverse covariances
  anomaly_eval.json   the evaluation on the run's labelled test images, when it had some (not
                      eval.json: that name holds a classification report)
run.json ``extra["anomaly"]`` holds the method, stages, threshold, normalisation and the
held-out normal scores (so the false-alarm slider can move the threshold without refitting).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlstudio.core.runs.folder import BEST_WEIGHTS, RunError, read_run

HEAD_FILE = "anomaly.safetensors"
EVAL_FILE = "anomaly_eval.json"


def anomaly_meta(info) -> dict[str, Any]:
    meta = (info.extra or {}).get("anomaly")
    if not meta:
        raise RunError(f"run {info.name or ''} is not an anomaly-detection run (no anomaly settings in run.json)")
    return meta


def save_head(run_dir: Path, head) -> None:
    from tlstudio.core.atomic import atomic_save_safetensors

    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    atomic_save_safetensors(Path(run_dir) / HEAD_FILE, tensors)


def build_head(method: str, tensors: dict):
    from tlstudio.core.tasks.anomaly.model import PadimHead, PatchCoreHead

    if method == "patchcore":
        return PatchCoreHead(tensors["bank"])
    if method == "padim":
        return PadimHead(tensors["channels"], tensors["mean"], tensors["inv_cov"])
    raise RunError(f"unknown anomaly method {method!r}")


def load_model(run_dir: str | Path, threshold: float | None = None):
    """(AnomalyModel in eval mode, RunInfo, meta). ``threshold`` overrides the saved one."""
    from safetensors.torch import load_file

    from tlstudio.core.models.backbones import create_model
    from tlstudio.core.models.weights import load_state_dict_file
    from tlstudio.core.tasks.anomaly.model import AnomalyModel

    run_dir = Path(run_dir)
    info = read_run(run_dir)
    meta = anomaly_meta(info)
    if info.status not in ("finished",):
        raise RunError(f"{run_dir}: the anomaly fit did not finish (status {info.status}); fit again")
    for f in (BEST_WEIGHTS, HEAD_FILE):
        if not (run_dir / f).is_file():
            raise RunError(f"{run_dir}: {f} is missing; the run folder is incomplete")
    body = create_model(info.model.backbone, info.model.num_classes, init="scratch")
    missing, unexpected = body.load_state_dict(load_state_dict_file(run_dir / BEST_WEIGHTS), strict=False)
    if missing or unexpected:
        raise RunError(f"{run_dir}: {BEST_WEIGHTS} does not fit {info.model.backbone}")
    try:
        tensors = load_file(str(run_dir / HEAD_FILE))
    except Exception as exc:  # noqa: BLE001 - a damaged file: name it
        raise RunError(f"{run_dir / HEAD_FILE}: cannot read: {exc}") from exc
    head = build_head(meta["method"], tensors)
    thr = float(meta["threshold"] if threshold is None else threshold)
    model = AnomalyModel(body, meta["indices"], head, sigma=float(meta.get("sigma", 4.0)),
                         threshold=thr, scale=float(meta["scale"]),
                         aggregate=int(meta.get("aggregate", 3)))  # runs before the setting: 3x3
    model.eval()
    return model, info, meta


def set_threshold(run_dir: str | Path, *, false_alarm_rate: float | None = None, mode: str | None = None,
                  raw: float | None = None) -> dict[str, Any]:
    """Move a fitted run's threshold without refitting: to a new false-alarm rate on its held-out
    good scores, to the F1-optimal one (mode "f1", when the fit had labelled defects), or to a raw
    value. The normalisation follows (the threshold stays at score 0.5). Returns the new meta."""
    from tlstudio.core.runs.folder import write_run
    from tlstudio.core.tasks.anomaly.threshold import false_alarm_threshold, normal_scale

    info = read_run(run_dir)
    meta = dict(anomaly_meta(info))
    held = meta.get("holdout_scores") or []
    if raw is not None:
        meta["threshold"], meta["threshold_mode"] = float(raw), "manual"
    elif mode == "f1":
        if meta.get("f1_threshold") is None:
            raise RunError(f"{run_dir}: no F1-optimal threshold (the fit had no labelled defect images)")
        meta["threshold"], meta["threshold_mode"] = float(meta["f1_threshold"]), "f1"
    else:
        rate = float(false_alarm_rate if false_alarm_rate is not None else meta.get("false_alarm_rate", 0.01))
        if not 0 < rate < 0.5:
            raise RunError(f"false-alarm rate must be between 0 and 0.5, not {rate}")
        meta["false_alarm_threshold"] = false_alarm_threshold(held, rate)
        meta["threshold"], meta["threshold_mode"], meta["false_alarm_rate"] = (
            meta["false_alarm_threshold"], "false_alarm", rate)
    # the spread of good scores stays as fitted: a lower threshold raises every score
    meta["scale"] = float(meta.get("scale") or normal_scale(held, meta["threshold"]))
    info.extra["anomaly"] = meta
    write_run(run_dir, info)
    return meta
