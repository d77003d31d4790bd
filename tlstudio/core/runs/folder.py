"""The run folder: what a training run leaves behind, and how to read it back.

RUN_DIR/
  run.json           RunInfo (below): config, classes, data fingerprint, versions, status, timings
  config.json        the TrainConfig (or DistillConfig) that made the run
  split.json         the train/val(/test) split actually used (dataset.Split)
  history.csv        one row per epoch
  model.safetensors  best-epoch weights of the whole timm model (new head included)
  last.pt            resumable checkpoint (model, optimizer, scheduler, epoch, RNG); weights_only-safe
  eval.json          evaluate.EvalReport of the best weights on the validation split
  baseline/          a complete run folder: the same config from scratch (negative-transfer check)
  log.txt            human-readable log
All writes are atomic (tlstudio.core.atomic).
"""

from __future__ import annotations

import csv
import io
import json
import platform
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tlstudio.core.atomic import atomic_write_text
from tlstudio.core.errors import UserError

RUN_SCHEMA_VERSION = 2  # 2: "task", "metrics" and "label_schema"; schema 1 folders are read too
RUN_JSON = "run.json"
CONFIG_JSON = "config.json"
SPLIT_JSON = "split.json"
HISTORY_CSV = "history.csv"
BEST_WEIGHTS = "model.safetensors"
LAST_CKPT = "last.pt"
EVAL_JSON = "eval.json"
LOG_TXT = "log.txt"
BASELINE_DIR = "baseline"

# first columns of history.csv; each kind of learning adds its own metric columns after them
HISTORY_FIELDS = ["epoch", "train_loss"]


class RunError(UserError):
    """A run folder is missing, incomplete or invalid. The message names the file."""


class ModelSpec(BaseModel):
    """What is needed to rebuild the model and feed it (also embedded in exports)."""

    model_config = ConfigDict(extra="forbid")

    backbone: str
    num_classes: int = Field(ge=1)
    classes: list[str]
    image_size: int = Field(ge=8)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"


class RunInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: int = RUN_SCHEMA_VERSION
    kind: str = "train"  # the job that wrote the folder: train, distill, fit, rank ...
    task: str = "classification"  # the kind of learning (tlstudio.core.tasks.registry)
    name: str = ""
    status: Literal["running", "stopped", "finished", "early_stopped", "failed"] = "running"
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    config: dict[str, Any]
    model: ModelSpec
    data: dict[str, Any] = Field(default_factory=dict)  # root, fingerprint, counts, n_train, n_val
    versions: dict[str, str] = Field(default_factory=dict)
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    epochs_done: int = 0
    best_epoch: int | None = None
    best_val_acc: float | None = None
    best_val_macro_f1: float | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    baseline: dict[str, Any] | None = None  # gain of transfer over scratch
    extra: dict[str, Any] = Field(default_factory=dict)  # distillation report and the like
    # the best epoch's metrics; None where a value was not finite (JSON has no NaN: it is written null)
    metrics: dict[str, float | None] = Field(default_factory=dict)
    best_metric: str = "val_acc"  # the metric that picked the best epoch
    label_schema: dict[str, Any] | None = None  # {"tasks": [{"name", "type", "classes"}]}

    @model_validator(mode="before")
    @classmethod
    def _from_schema_1(cls, data: Any) -> Any:
        """Schema 1 (first wave) had no task and kept only best_val_acc/best_val_macro_f1."""
        if isinstance(data, dict) and int(data.get("schema_version", 1)) < 2:
            data = dict(data)
            data.setdefault("task", "distillation" if data.get("kind") == "distill" else "classification")
            metrics = {k: data[f"best_{k}"] for k in ("val_acc", "val_macro_f1") if data.get(f"best_{k}") is not None}
            data.setdefault("metrics", metrics)
            data["schema_version"] = RUN_SCHEMA_VERSION
        return data


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import timm
    import torch

    import tlstudio

    out = {
        "tlstudio": tlstudio.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }
    for dist in ("torchvision", "numpy", "pillow", "safetensors"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def fresh_run_dir(label: str) -> Path:
    """A new run folder under the runs folder: "<date>-<time>-<label>", numbered when taken."""
    from datetime import datetime

    from tlstudio.core.paths import default_runs_dir

    base = default_runs_dir() / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{label}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / RUN_JSON).is_file()


def read_run(run_dir: str | Path) -> RunInfo:
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        raise RunError(f"{run_dir}: not a TL Studio run folder (no {RUN_JSON})")
    try:
        return RunInfo.model_validate_json(path.read_text(encoding="utf-8"))
    except Exception as exc:  # pydantic ValidationError, UnicodeDecodeError, ...
        raise RunError(f"{path}: invalid run file: {str(exc).splitlines()[0]}") from exc


def write_run(run_dir: str | Path, info: RunInfo) -> None:
    info.updated = time.time()
    atomic_write_text(Path(run_dir) / RUN_JSON, info.model_dump_json(indent=2))


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    path = Path(run_dir) / HISTORY_CSV
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows.append({k: float(v) for k, v in row.items() if v not in (None, "")})
    return rows


def write_history(run_dir: str | Path, rows: list[dict[str, Any]]) -> None:
    """One row per epoch; the columns are the union of the rows' keys (metrics differ per kind)."""
    fields = list(HISTORY_FIELDS)
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(Path(run_dir) / HISTORY_CSV, buf.getvalue())


def first_run(candidates, accept) -> str | None:
    """The first candidate folder that is a readable run and for which ``accept(path, info)`` holds."""
    for run_dir in candidates:
        if not run_dir:
            continue
        try:
            info = read_run(run_dir)
        except (RunError, OSError):
            continue
        if accept(Path(run_dir), info):
            return str(run_dir)
    return None


def list_runs(root: str | Path) -> list[Path]:
    """Run folders directly under ``root`` (and their baselines are not listed), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and is_run_dir(p)]
    return sorted(runs, key=lambda p: (p / RUN_JSON).stat().st_mtime, reverse=True)


def read_split(run_dir: str | Path):
    """The run's split.json as a dataset.Split (schema 1 or 2). The one place that parses it;
    RunError naming the file when it is missing or unreadable."""
    from tlstudio.core.data.dataset import Split

    path = Path(run_dir) / SPLIT_JSON
    if not path.is_file():
        raise RunError(f"{run_dir}: no {SPLIT_JSON} (the run's train/validation split)")
    try:
        return Split.from_json(json.loads(path.read_text(encoding="utf-8")))
    except Exception as exc:  # noqa: BLE001 - JSON, key or type errors: one line naming the file
        raise RunError(f"{path}: invalid split file: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def write_split(run_dir: str | Path, split) -> None:
    from tlstudio.core.atomic import atomic_write_json

    atomic_write_json(Path(run_dir) / SPLIT_JSON, split.to_json())


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=str)
