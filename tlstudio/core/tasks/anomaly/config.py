"""Settings of an anomaly-detection run (saved as config.json next to the run)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tlstudio.core.config import DEFAULT_BACKBONE, InitKind

ANOMALY_SCHEMA_VERSION = 1
DEFAULT_CORESET_RATIO = 0.1
DEFAULT_MAX_BANK = 16_384  # patches; bounds memory and kNN time whatever the number of images
DEFAULT_IMAGE_SIZE = 224
DEFAULT_FALSE_ALARM = 0.01  # "flag at most 1 in 100 good parts"


class AnomalyConfig(BaseModel):
    """Everything that decides what an anomaly fit does. Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    schema_version: int = ANOMALY_SCHEMA_VERSION
    task: Literal["anomaly"] = "anomaly"
    data_dir: str
    out_dir: str | None = None  # None: a new folder under the default runs folder

    # the feature extractor: any timm body with stages, or an earlier TL Studio run
    backbone: str = DEFAULT_BACKBONE
    init: InitKind = "pretrained"
    weights_file: str | None = None
    init_run: str | None = None
    image_size: int = Field(DEFAULT_IMAGE_SIZE, ge=32, le=1024)
    strides: tuple[int, ...] = (8, 16)  # feature stages, by stride in pixels
    # neighbourhood averaged into each patch feature (odd; 1 = none). 1: image AUROC 0.97-1.0 vs 0.76-0.99
    # with 3x3 on the offline texture/object sets (benchmarks/RESULTS.md, Anomaly detection)
    aggregate: int = Field(1, ge=1, le=7)

    method: Literal["patchcore", "padim"] = "patchcore"
    coreset_ratio: float = Field(DEFAULT_CORESET_RATIO, gt=0.0, le=1.0)
    max_bank: int = Field(DEFAULT_MAX_BANK, ge=16, le=1_000_000)
    projection_dim: int = Field(64, ge=8, le=1024)  # random projection used by the coreset search
    padim_dims: int = Field(100, ge=4, le=1024)  # PaDiM: random feature subset per position

    # threshold: held-out normal images set it at a false-alarm rate
    holdout_fraction: float = Field(0.2, gt=0.0, lt=0.9)
    false_alarm_rate: float = Field(DEFAULT_FALSE_ALARM, gt=0.0, lt=0.5)
    threshold_mode: Literal["false_alarm", "f1"] = "false_alarm"  # f1: needs labelled defects

    batch_size: int = Field(12, ge=1, le=512)  # images decoded together; the body runs them in CPU chunks of ~6
    seed: int = 0
    device: str = "cpu"
    name: str = ""

    @model_validator(mode="after")
    def _check_init(self) -> AnomalyConfig:
        if self.init == "file" and not self.weights_file:
            raise ValueError("init 'file' needs weights_file")
        if self.aggregate % 2 == 0:
            raise ValueError("aggregate must be odd (1 = no neighbourhood averaging, 3 = 3x3, ...)")
        if self.init == "run" and not self.init_run:
            raise ValueError("init 'run' needs init_run (an earlier TL Studio run folder)")
        return self
