"""Semi-supervised learning: a few labelled images + many unlabelled ones of the same kind.

Pseudo-labels with a confidence threshold and a class-balanced cap (pseudo.py; on cached features
when the body is frozen), FixMatch weak/strong consistency where the body trains (fixmatch.py),
and the review queue that turns proposed labels a person accepted into labelled data (review.py).
"""

from __future__ import annotations

from tlstudio.core.tasks.registry import TaskKind, register
from tlstudio.core.tasks.semisupervised.config import SemiConfig


def _run(config, stop=None, pause=None):
    from tlstudio.core.tasks.semisupervised.job import run

    return run(config, stop, pause)


def _resume(run_dir, stop=None, pause=None):
    from tlstudio.core.tasks.semisupervised.job import resume

    return resume(run_dir, stop, pause)


def _evaluate(run_dir, data=None, progress=None):
    from tlstudio.core.tasks.semisupervised.job import evaluate

    return evaluate(run_dir, data, progress)


def _predict(run_dir, paths, **opts):
    from tlstudio.core.tasks.classification import predict

    return predict(run_dir, paths, **opts)


def _export(run_dir, formats, out_dir=None, progress=None, **kw):
    from tlstudio.core.tasks.classification import export

    return export(run_dir, formats, out_dir=out_dir, progress=progress, **kw)


def _eval_lines(r):
    from tlstudio.core.tasks.semisupervised.job import eval_lines

    return eval_lines(r)


def _predict_line(row):
    from tlstudio.core.tasks.classification import predict_line

    return predict_line(row)


KIND = register(TaskKind(
    kind="semisupervised", title="Semi-supervised (few labels + unlabelled images)",
    summary="a few labelled images + many unlabelled ones of the same kind: pseudo-labels, reviewed by you",
    config_cls=SemiConfig, run=_run, resume=_resume, evaluate=_evaluate, predict=_predict, export=_export,
    best_metric=("val_acc", "max"),
    gui_steps=("data", "model", "layers", "adapt", "review", "evaluate", "predict", "export", "runs"),
    eval_lines=_eval_lines, predict_line=_predict_line,
))

__all__ = ["KIND", "SemiConfig"]
