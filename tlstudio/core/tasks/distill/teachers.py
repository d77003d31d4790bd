"""Teacher runs: loading them frozen, checking their classes, and the stages a hint reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tlstudio.core.tasks.distill.config import DistillError

# --------------------------------------------------------------------------------------
# Stages a hint reads (resolved and captured by models.features, shared with every job)
# --------------------------------------------------------------------------------------
def stage_capture(model, stage: str, who: str):
    """A :class:`~tlstudio.core.models.features.StageCapture` of ``stage`` (feature_info index or
    module name) on ``model`` and whatever wraps it; DistillError names ``who`` and the stages."""
    from tlstudio.core.models.features import FeatureError, StageCapture

    try:
        return StageCapture(model, stage)
    except FeatureError as exc:
        raise DistillError(f"{who}: {exc}") from exc


def resolve_stage(model, stage: str, who: str) -> str:
    """The module name (inside any wrapper) a stage spec names; DistillError names ``who``."""
    from tlstudio.core.models.features import FeatureError
    from tlstudio.core.models.features import resolve_stage as resolve

    try:
        return resolve(model, stage).module
    except FeatureError as exc:
        raise DistillError(f"{who}: {exc}") from exc


# --------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Teacher:
    run_dir: str
    model: Any
    info: Any  # runs.RunInfo
    perm: list[int] | None  # teacher logit columns in the data set's class order (None: same order)

    @property
    def name(self) -> str:
        return Path(self.run_dir).name

    @property
    def backbone(self) -> str:
        return self.info.model.backbone


def check_teacher_classes(run_dir: str, teacher_classes: list[str], classes: list[str]) -> list[int] | None:
    """Column permutation mapping the teacher's class order to ``classes``; DistillError if the sets differ."""
    if list(teacher_classes) == list(classes):
        return None
    missing = [c for c in classes if c not in teacher_classes]
    extra = [c for c in teacher_classes if c not in classes]
    if missing or extra or len(teacher_classes) != len(classes):
        parts = []
        if missing:
            parts.append(f"the data has {missing} which the teacher does not know")
        if extra:
            parts.append(f"the teacher has {extra} which the data lacks")
        raise DistillError(
            f"teacher run {run_dir}: its classes do not match the data set's: " + "; ".join(parts)
            + f" (teacher: {list(teacher_classes)}, data: {list(classes)})"
        )
    return [list(teacher_classes).index(c) for c in classes]


def load_teacher(run_dir: str, classes: list[str] | None = None, device=None) -> Teacher:
    """Load a run's best weights frozen and in eval mode; check its classes against ``classes``."""
    from tlstudio.core.runs.folder import RunError, read_run
    from tlstudio.core.models.run_model import load_run_model

    try:
        info = read_run(run_dir)
        perm = check_teacher_classes(run_dir, info.model.classes, classes) if classes is not None else None
        model, info = load_run_model(run_dir)
    except RunError as exc:
        raise DistillError(f"teacher run {run_dir}: {exc}") from exc
    model.eval()
    model.requires_grad_(False)
    if device is not None:
        model.to(device)
    return Teacher(str(run_dir), model, info, perm)


def _teacher_data_cfg(spec) -> dict:
    s = int(spec.image_size)
    return {
        "input_size": (3, s, s),
        "mean": tuple(spec.mean),
        "std": tuple(spec.std),
        "interpolation": spec.interpolation,
        "crop_pct": spec.crop_pct,
        "crop_mode": spec.crop_mode,
    }


