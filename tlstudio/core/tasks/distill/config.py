"""Distillation settings (config.json of a distillation run) and its errors."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from tlstudio.core.config import TrainConfig
from tlstudio.core.errors import UserError

FEATURE_LOSS_PATTERN = re.compile(r"^[^:\s]+:[^:\s]+$")
STUDENT_BASELINE_DIR = "student_baseline"

#: Typical ranges, shown next to the controls in the GUI and in the CLI help.
TEMPERATURE_HELP = (
    "Temperature T (3..10): higher T softens the teacher's probabilities so the student also "
    "learns which wrong classes look alike; T=1 keeps only the top guess."
)
ALPHA_HELP = (
    "Alpha (0.5..0.9): the share of the loss that follows the teacher; the rest follows the "
    "labels. Higher alpha trusts the teacher more."
)


class DistillError(UserError):
    """A teacher run cannot teach this student on this data (message names the run)."""


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------
class DistillConfig(TrainConfig):
    """A TrainConfig for the student plus the teacher(s) and the KD settings.

    ``backbone``, ``init``, ``freeze`` ... describe the student. Saved as config.json.
    """

    task: str = "distillation"
    # the student has to move its features towards the teacher's: all its layers train by default
    freeze: str = "none"

    teachers: list[str] = Field(min_length=1)  # run folders
    teacher_weights: list[float] | None = None  # None: equal weights
    temperature: float = Field(4.0, gt=0.0, le=100.0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)
    feature_loss: str | None = None  # "TEACHER_STAGE:STUDENT_STAGE", stage = feature_info index or module name
    feature_weight: float = Field(1.0, ge=0.0)
    unlabeled_dir: str | None = None
    student_baseline: bool = True  # also train the student without a teacher for the report
    cache_teacher: bool = True  # compute teacher outputs once when its inputs are deterministic
    latency_repeats: int = Field(5, ge=1)  # timed passes per latency measurement
    latency_rounds: int = Field(3, ge=1)  # interleaved rounds; the best round counts (robust to load bursts)

    @field_validator("feature_loss")
    @classmethod
    def _check_feature_loss(cls, v: str | None) -> str | None:
        if v is not None and not FEATURE_LOSS_PATTERN.match(v):
            raise ValueError(f"feature_loss must look like TEACHER_STAGE:STUDENT_STAGE (e.g. 3:3), not {v!r}")
        return v

    @model_validator(mode="after")
    def _check_weights(self) -> "DistillConfig":
        w = self.teacher_weights
        if w is not None:
            if len(w) != len(self.teachers):
                raise ValueError(f"{len(w)} teacher weights for {len(self.teachers)} teachers")
            if any(x < 0 for x in w) or sum(w) <= 0:
                raise ValueError("teacher weights must be >= 0 and not all zero")
        return self

    def student_config(self, out_dir: str | None = None) -> TrainConfig:
        """The same student settings as a plain TrainConfig (for the no-teacher baseline)."""
        own = set(DistillConfig.model_fields) - set(TrainConfig.model_fields)
        data = self.model_dump(exclude=own)
        data.update(out_dir=out_dir, baseline=False)
        return TrainConfig(**data)


def parse_feature_loss(spec: str) -> tuple[str, str]:
    t, s = spec.split(":", 1)
    return t, s


