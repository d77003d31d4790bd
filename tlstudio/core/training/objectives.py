"""Pluggable training objectives: the loop stays the same, the loss changes.

Classification is the default; distillation, multi-task or domain adaptation arrive as new
Objective subclasses, not as rewrites of the engine loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ObjectiveContext:
    model: Any  # torch.nn.Module being trained (only the head in features mode)
    device: Any  # torch.device
    classes: list[str]
    precision: Any  # tlstudio.core.runtime.precision.PrecisionPlan
    config: Any  # TrainConfig (or a subclass)
    train_samples: list[Any]  # idx in a training batch indexes this list; unlabelled have label -1
    features_mode: bool = False  # x are cached body features, model maps them to logits
    run_dir: Path = field(default_factory=Path)
    class_counts: list[int] = field(default_factory=list)


class Objective:
    name = "classification"

    def setup(self, ctx: ObjectiveContext) -> Iterable[Any]:
        """Prepare; may yield Progress/Log events (e.g. while caching teacher outputs)."""
        return ()

    def loss(self, model, x, y, idx):  # -> tuple[Tensor, dict[str, float]]
        raise NotImplementedError

    def extra_modules(self) -> list[Any]:
        """Modules trained together with the model (e.g. adapters)."""
        return []

    def supports_features_mode(self) -> bool:
        return True

    def forward_student(self, model, x):
        return model(x)


class ClassificationObjective(Objective):
    """Cross-entropy with label smoothing and optional class weights; rows with y == -1 ignored."""

    name = "classification"

    def __init__(self, label_smoothing: float = 0.0, class_weights: bool = False) -> None:
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights
        self._criterion = None

    def setup(self, ctx: ObjectiveContext) -> Iterable[Any]:
        import torch

        weight = None
        if self.class_weights and ctx.class_counts:
            counts = torch.tensor(ctx.class_counts, dtype=torch.float32).clamp(min=1)
            # inverse frequency, normalised so the mean weight is 1
            weight = (counts.sum() / (len(counts) * counts)).to(ctx.device)
        self._criterion = torch.nn.CrossEntropyLoss(
            weight=weight, label_smoothing=self.label_smoothing, ignore_index=-1
        )
        return ()

    def loss(self, model, x, y, idx):
        logits = self.forward_student(model, x)
        if bool((y >= 0).any()):
            loss = self._criterion(logits.float(), y)
        else:  # a batch of unlabelled images only: nothing to learn from here
            loss = logits.float().sum() * 0.0
        return loss, {}
