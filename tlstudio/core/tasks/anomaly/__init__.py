"""Anomaly detection from normal images only (PatchCore / PaDiM on pretrained timm features).

The seeds' factory case: learn what good parts look like, flag whatever deviates. No gradient
training: features of a pretrained body, a memory bank (or per-position Gaussians), a threshold
set at a false-alarm rate on held-out good images. Registered as the "anomaly" TaskKind.
Heavy imports (torch, timm) stay inside the functions: the GUI imports this at start-up.
"""

from __future__ import annotations

from typing import Any

from tlstudio.core.tasks.anomaly.config import AnomalyConfig
from tlstudio.core.tasks.anomaly.data import detect


def run(config: AnomalyConfig, stop=None, pause=None):
    from tlstudio.core.tasks.anomaly.job import fit

    if not isinstance(config, AnomalyConfig):
        config = AnomalyConfig.model_validate(config if isinstance(config, dict) else config.model_dump())
    return fit(config, stop=stop, pause=pause)


def evaluate(run_dir, data=None, progress=None, **opts: Any) -> dict:
    from tlstudio.core.tasks.anomaly.evaluate import evaluate as _evaluate

    return _evaluate(run_dir, data, progress, **opts)


def predict(run_dir, paths, **opts: Any) -> list[dict]:
    from tlstudio.core.tasks.anomaly.evaluate import predict as _predict

    return _predict(run_dir, paths, **opts)


def export(run_dir, formats=None, out_dir=None, progress=None, **opts: Any) -> dict:
    from tlstudio.core.tasks.anomaly.export import export as _export

    return _export(run_dir, formats, out_dir, progress, **opts)


def eval_lines(report: dict) -> list[str]:
    from tlstudio.core.tasks.anomaly.evaluate import eval_lines as _lines

    return _lines(report)


def predict_line(row: dict) -> str:
    from tlstudio.core.tasks.anomaly.evaluate import predict_line as _line

    return _line(row)


def _register() -> None:
    import dataclasses

    from tlstudio.core.tasks.registry import TaskKind, register

    fields = {f.name for f in dataclasses.fields(TaskKind)}
    extra = {k: v for k, v in {"eval_lines": eval_lines, "predict_line": predict_line}.items() if k in fields}
    register(TaskKind(
        kind="anomaly", title="Anomaly detection",
        summary="learn from normal images only; flag whatever deviates, with a heat map of where",
        config_cls=AnomalyConfig, run=run, resume=None, evaluate=evaluate, predict=predict, export=export,
        best_metric=("image_auroc", "max"),
        gui_steps=("data", "anomaly_fit", "anomaly_evaluate", "anomaly_predict", "export", "runs"),
        trains=False, detect=detect, **extra,
    ))


_register()

__all__ = ["AnomalyConfig", "detect", "run", "evaluate", "predict", "export"]
