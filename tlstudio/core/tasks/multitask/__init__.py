"""Multi-task learning: one body, a head per label column, an honest comparison with separate
models (registered as the kind "multitask"). Modules: config; model (hard/soft sharing);
weighting, pcgrad, metrics (targets, masked losses, per-task scores) and objective (the step);
trainer (the run: prepare -> loop -> checkpoint, under torchrun with distributed); baseline
(single-task comparison); artifacts (load, evaluate, predict) and export."""

from __future__ import annotations

from typing import Any

from tlstudio.core.tasks.multitask.config import MultiTaskConfig


def run(config: Any, stop=None, pause=None):
    from tlstudio.core.tasks.multitask.trainer import run as _run

    if not isinstance(config, MultiTaskConfig):
        config = MultiTaskConfig.model_validate(config.model_dump() if hasattr(config, "model_dump") else config)
    return _run(config, stop, pause)


def resume(run_dir, stop=None, pause=None):
    from tlstudio.core.tasks.multitask.trainer import resume as _resume

    return _resume(run_dir, stop, pause)


def evaluate(run_dir, data=None, progress=None) -> dict:
    from tlstudio.core.tasks.multitask.artifacts import evaluate as _evaluate

    return _evaluate(run_dir, data, progress)


def predict(run_dir, paths, **opts) -> list:
    from tlstudio.core.tasks.multitask.artifacts import predict as _predict

    return _predict(run_dir, paths, **opts)


def export(run_dir, formats=("safetensors", "onnx", "torchscript"), out_dir=None, progress=None, **kw):
    from tlstudio.core.tasks.multitask.export import export as _export

    return _export(run_dir, formats, out_dir, progress, **kw)


def eval_lines(r: dict) -> list[str]:
    from tlstudio.core.tasks.multitask.artifacts import eval_lines as _lines

    return _lines(r)


def predict_line(row: dict) -> str:
    from tlstudio.core.tasks.multitask.artifacts import predict_line as _line

    return _line(row)


def detect(path: str) -> str | None:
    from tlstudio.core.data.multitask import is_multitask_data

    return is_multitask_data(path)


def _register() -> None:
    from tlstudio.core.tasks.registry import TaskKind, register

    register(TaskKind(
        kind="multitask", title="Multi-task learning",
        summary="several label columns per image (empty cells allowed): one backbone, a head per task, "
                "compared with separate models",
        config_cls=MultiTaskConfig, run=run, resume=resume, evaluate=evaluate, predict=predict, export=export,
        best_metric=("val_score", "max"),
        gui_steps=("data", "model", "layers", "train", "mt_evaluate", "mt_predict", "export", "runs"),
        detect=detect, eval_lines=eval_lines, predict_line=predict_line,
    ))


_register()
