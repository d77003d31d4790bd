"""Teacher runs: loading them frozen, checking their classes, and the stages a hint reads."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from tlstudio.core.tasks.distill.config import DistillError

# --------------------------------------------------------------------------------------
# Stage features by forward hooks (works for any timm model with feature_info)
# --------------------------------------------------------------------------------------
def stage_modules(model) -> list[tuple[str, int, int]]:
    """(module name, channels, reduction) per timm feature stage (models.features, one reader of
    timm's feature_info for every job)."""
    from tlstudio.core.models.features import FeatureError, feature_info

    try:
        return [(f["module"], f["channels"], f["reduction"]) for f in feature_info(model) if f["module"]]
    except FeatureError:
        return []


def resolve_stage(model, stage: str, who: str) -> str:
    """A stage spec (feature_info index, negative allowed, or a module name) -> module name."""
    stages = stage_modules(model)
    names = dict(model.named_modules())
    if re.fullmatch(r"-?\d+", stage):
        i = int(stage)
        if not stages:
            raise DistillError(f"{who}: the model lists no feature stages; give a module name instead of {stage}")
        if not -len(stages) <= i < len(stages):
            raise DistillError(
                f"{who}: stage {i} does not exist; stages are 0..{len(stages) - 1}: "
                + ", ".join(f"{k}={m} ({c} ch)" for k, (m, c, _) in enumerate(stages))
            )
        return stages[i][0]
    if stage not in names:
        raise DistillError(f"{who}: no module named {stage!r} (stages: {[m for m, _, _ in stages]})")
    return stage


class _Capture:
    """Forward hook that keeps a module's output only while armed (no leaks at eval time)."""

    def __init__(self, module) -> None:
        self.armed = False
        self.value = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, output) -> None:
        if self.armed:
            self.value = output[0] if isinstance(output, (list, tuple)) else output

    def take(self):
        v, self.value = self.value, None
        return v

    def remove(self) -> None:
        self.handle.remove()


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


