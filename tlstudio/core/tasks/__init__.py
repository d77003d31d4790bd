"""Kinds of learning (classification, distillation, ...) plugged into the engine.

Each module below registers one ``registry.TaskKind`` when imported; the registry imports them
on first use. A new kind of learning is a new module plus one line here.
"""

KIND_MODULES: tuple[str, ...] = (
    "tlstudio.core.tasks.classification",
    "tlstudio.core.tasks.distill",
    "tlstudio.core.tasks.knn",
    "tlstudio.core.tasks.anomaly",
    "tlstudio.core.tasks.adaptation",
    "tlstudio.core.tasks.semisupervised",
    "tlstudio.core.tasks.multitask",
    "tlstudio.core.tasks.ranking",
)
