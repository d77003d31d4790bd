"""Semi-supervised learning: a few labelled images + many unlabelled ones of the same kind.

Pseudo-labels with a confidence threshold and a class-balanced cap (pseudo.py; on cached features
when the body is frozen, by rounds of fine-tuning when it trains), FixMatch weak/strong
consistency on request (fixmatch.py),
and the review queue that turns proposed labels a person accepted into labelled data (review.py).
"""

from __future__ import annotations

from tlstudio.core.tasks import classification
from tlstudio.core.tasks.registry import TaskKind, lazy, register
from tlstudio.core.tasks.semisupervised.config import SemiConfig

_JOB = "tlstudio.core.tasks.semisupervised.job"

KIND = register(TaskKind(
    kind="semisupervised", title="Semi-supervised (few labels + unlabelled images)",
    summary="a few labelled images + many unlabelled ones of the same kind: pseudo-labels, reviewed by you",
    config_cls=SemiConfig, run=lazy(_JOB, "run"), resume=lazy(_JOB, "resume"), evaluate=lazy(_JOB, "evaluate"),
    predict=classification.predict, export=classification.export, best_metric=("val_acc", "max"),
    gui_steps=("data", "model", "layers", "adapt", "review", "evaluate", "predict", "export", "runs"),
    eval_lines=lazy(_JOB, "eval_lines"), predict_line=classification.predict_line,
))

__all__ = ["KIND", "SemiConfig"]
