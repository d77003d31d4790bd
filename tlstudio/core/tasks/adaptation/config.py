"""Settings of a domain-adaptation run: a normal training config plus the target domain."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tlstudio.core.config import TrainConfig

AdaptMethod = Literal["adabn", "mcc", "dann", "selftrain"]
METHODS: tuple[str, ...] = ("adabn", "mcc", "dann", "selftrain")
# measured on real ImageNet features with a camera shift (benchmarks/RESULTS.md, "Domain adaptation")
DEFAULT_METHOD = "mcc"


class AdaptConfig(TrainConfig):
    """``data_dir`` holds the labelled source images; ``target_dir`` the unlabelled target images."""

    task: Literal["adaptation"] = "adaptation"
    target_dir: str
    adapt: AdaptMethod = DEFAULT_METHOD
    check_dir: str | None = None  # 10-20 labelled target images: only to compare models, never trained on
    # also re-estimate BatchNorm statistics on the target (AdaBN) where it applies; None = per method:
    # on for self-training (+18 points there), off for MCC/DANN (MCC alone did better) - measured
    bn_adapt: bool | None = None
    mcc_weight: float = Field(1.0, ge=0.0)
    mcc_temperature: float = Field(2.5, gt=0.0)
    dann_weight: float = Field(1.0, ge=0.0)
    dann_hidden: int = Field(256, ge=8, le=4096)
    selftrain_rounds: int = Field(3, ge=1, le=10)
    selftrain_threshold: float = Field(0.0, ge=0.0, lt=1.0)
    head_epochs: int = Field(30, ge=1, le=1000)  # epochs of the head on cached features (frozen body)


def uses_bn_adapt(config: AdaptConfig) -> bool:
    """Whether AdaBN goes along with the method (the adabn method always re-estimates)."""
    if config.adapt == "adabn":
        return True
    return config.bn_adapt if config.bn_adapt is not None else config.adapt == "selftrain"
