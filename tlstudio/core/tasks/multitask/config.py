"""Settings of a multi-task run: the common training settings plus the tasks and how they mix."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tlstudio.core.config import TrainConfig

Weighting = Literal["equal", "manual", "initial", "uncertainty", "dwa", "gradnorm"]
TaskType = Literal["categorical", "multilabel", "numeric"]


class MultiTaskConfig(TrainConfig):
    """``data_dir``: a CSV/TSV with an image column and several label columns (or the folder
    holding it, or task trees task/<class>/image). ``baseline``: also train one separate model
    per task with the same budget and report MTL vs single-task per task."""

    task: Literal["multitask"] = "multitask"
    tasks: list[str] | None = None  # label columns used as tasks (None: all)
    task_types: dict[str, TaskType] = Field(default_factory=dict)  # overrides of the automatic typing
    weighting: Weighting = "equal"
    task_weights: list[float] | None = None  # manual weighting, in the order of `tasks`
    pcgrad: bool = False
    sharing: Literal["hard", "soft"] = "hard"
    soft_penalty: float = Field(1e-3, ge=0.0)  # soft sharing: L2 pull between the bodies
    # gradient cosine between tasks on the shared layers every N steps (K extra backward passes
    # through the body each time: 50 keeps the average cost to a few %); every step on cached features
    relatedness_every: int = Field(50, ge=1)
    huber_delta: float = Field(1.0, gt=0.0)  # numeric tasks (z-scored targets)
    # multi-head distillation: a trained multi-task run teaches this one, task by task
    teacher_run: str | None = None
    kd_temperature: float = Field(4.0, gt=0.0)
    kd_alpha: float = Field(0.7, ge=0.0, le=1.0)  # weight of the teacher's soft targets

    @field_validator("task_weights")
    @classmethod
    def _check_weights(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(w < 0 for w in v):
            raise ValueError("task weights must be >= 0")
        return v
