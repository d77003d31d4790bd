"""Knowledge distillation: trained teacher run(s) teach a (usually smaller) student.

Response-based KD (the default) matches the teacher's softened class probabilities;
feature-based KD adds a hint loss between a teacher stage and a student stage. Several
teachers average (or weight) their soft targets. A teacher with the student's own
architecture gives self-distillation. Unlabelled images get only the soft term, so the
teacher labels them. ``distill()`` runs the engine with :class:`DistillObjective`, then trains
the same student without a teacher and writes the trade-off report (tradeoff.py).
"""

from __future__ import annotations

from tlstudio.core.tasks.distill.config import (
    ALPHA_HELP,
    STUDENT_BASELINE_DIR,
    TEMPERATURE_HELP,
    DistillConfig,
    DistillError,
    parse_feature_loss,
)
from tlstudio.core.tasks.distill.job import distill, resume_distill
from tlstudio.core.tasks.distill.losses import hint_loss, kd_loss, kd_loss_from_probs, soft_kd_term, soft_targets
from tlstudio.core.tasks.distill.objective import DistillObjective
from tlstudio.core.tasks.distill.teachers import Teacher, check_teacher_classes, load_teacher, resolve_stage

__all__ = [
    "ALPHA_HELP", "STUDENT_BASELINE_DIR", "TEMPERATURE_HELP", "DistillConfig", "DistillError", "DistillObjective",
    "Teacher", "check_teacher_classes", "distill", "hint_loss", "kd_loss", "kd_loss_from_probs", "load_teacher",
    "parse_feature_loss", "resolve_stage", "resume_distill", "soft_kd_term", "soft_targets",
]


def _register() -> None:
    from tlstudio.core.tasks import classification
    from tlstudio.core.tasks.registry import TaskKind, register

    register(TaskKind(
        kind="distillation", title="Knowledge distillation",
        summary="a small student learns from trained teacher run(s): same classes, a fraction of the size",
        config_cls=DistillConfig, run=distill, resume=resume_distill, evaluate=classification.evaluate,
        predict=classification.predict, export=classification.export, best_metric=("val_acc", "max"),
        gui_steps=("data", "distill", "evaluate", "predict", "export", "runs"),
        eval_lines=classification.eval_lines, predict_line=classification.predict_line,
    ))


_register()
