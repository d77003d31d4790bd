"""Settings of a semi-supervised run: a normal training config plus the unlabelled images."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tlstudio.core.config import TrainConfig

# tuned on real ImageNet features (benchmarks/RESULTS.md, "Unlabelled images"; bench_adapt.py --semi):
# heads trained with label smoothing 0.1 on a few labels are rarely 95% sure, so 0.95 selected no
# image at all; 0.5 with the class cap gave +3.8 points (0.3: +2.9, 0.7: +0.7, 0.9: -1.0)
DEFAULT_THRESHOLD = 0.5


class SemiConfig(TrainConfig):
    """``data_dir`` holds the labelled images; ``unlabeled_dir`` more images of the same kind."""

    task: Literal["semisupervised"] = "semisupervised"
    unlabeled_dir: str
    method: Literal["auto", "pseudolabel", "fixmatch"] = "auto"  # auto: pseudo-labels (methods.method_of)
    pseudo_threshold: float = Field(DEFAULT_THRESHOLD, ge=0.0, lt=1.0)
    # each class's bar follows how often the model is sure of it (FlexMatch): a class the head is
    # rarely sure of still gets pseudo-labels (+5.9 points against +3.9 with one bar, RESULTS.md)
    class_thresholds: bool = True
    cap_factor: float = Field(1.0, gt=0.0, le=10.0)  # per-class cap = expected share of the unlabelled x this
    rounds: int = Field(2, ge=1, le=10)
    unlabeled_weight: float = Field(1.0, ge=0.0)
    head_epochs: int = Field(30, ge=1, le=1000)
