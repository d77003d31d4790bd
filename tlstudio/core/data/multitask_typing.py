"""Multi-task label columns: the per-task record (TaskInfo) and the automatic typing.

Each label column is ``categorical`` (default), ``multilabel`` (cells like ``a;b``) or
``numeric`` (regression; z-scored for training). ``task_from_values`` parses one column's cells
and refuses, in one line naming the column, a task with no labels or a single class/value.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from tlstudio.core.data.dataset import DatasetError

TaskType = Literal["categorical", "multilabel", "numeric"]
TASK_TYPES: tuple[str, ...] = ("categorical", "multilabel", "numeric")
MULTI_SEP = re.compile(r"\s*[;|]\s*")
NUMERIC_MIN_UNIQUE = 16  # integer columns with fewer distinct values are classes (digits 0..9)
MAX_IMBALANCE = 10.0


@dataclass
class TaskInfo:
    name: str
    type: str
    classes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # per class (numeric: {})
    labelled: int = 0
    missing: int = 0
    mean: float | None = None  # numeric: z-scoring statistics (of all labelled rows)
    std: float | None = None

    @property
    def imbalance(self) -> float | None:
        vals = [v for v in self.counts.values() if v > 0]
        return (max(vals) / min(vals)) if len(vals) >= 2 else None

    def schema(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type, "classes": list(self.classes)}
        if self.type == "numeric":
            d.update(mean=self.mean, std=self.std)
        return d

    def summary(self) -> str:
        miss = f", {self.missing} missing" if self.missing else ""
        if self.type == "numeric":
            return f"{self.name}: numeric, {self.labelled} labels (mean {self.mean:.3g}, std {self.std:.3g}){miss}"
        imb = self.imbalance
        imb_s = f", imbalance {imb:.1f}x" if imb and imb > 1.5 else ""
        return f"{self.name}: {self.type}, {len(self.classes)} classes, {self.labelled} labels{miss}{imb_s}"



def _float(s: str) -> float | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def guess_type(values: Iterable[str]) -> str:
    """categorical unless cells hold ';'/'|' lists (multilabel) or are numbers with many
    distinct values or fractions (numeric). Empty cells are ignored."""
    vals = [v for v in values if v]
    if not vals:
        return "categorical"
    if any(MULTI_SEP.search(v) for v in vals):
        return "multilabel"
    nums = [_float(v) for v in vals]
    if all(n is not None for n in nums):
        fractional = any(n != int(n) for n in nums)  # type: ignore[arg-type]
        if fractional or len(set(nums)) >= NUMERIC_MIN_UNIQUE:
            return "numeric"
    return "categorical"


def _class_key(c: str) -> tuple:
    v = _float(c)
    return (0, v, c) if v is not None else (1, 0.0, c.lower())


def task_from_values(name: str, kind: str, raw: list[str], where: str) -> tuple[TaskInfo, list[Any]]:
    """TaskInfo plus the parsed value per row (None = missing). Raises DatasetError naming the column."""
    if kind not in TASK_TYPES:
        raise DatasetError(f"{where}: column '{name}': unknown type {kind!r} (use {', '.join(TASK_TYPES)})")
    info = TaskInfo(name=name, type=kind)
    labelled = [v for v in raw if v]
    info.labelled, info.missing = len(labelled), len(raw) - len(labelled)
    if not labelled:
        raise DatasetError(f"{where}: column '{name}' has no labels at all: fill it in or leave it out of the tasks.")
    parsed: list[Any] = []
    if kind == "numeric":
        nums = [_float(v) if v else None for v in raw]
        bad = next((v for v, n in zip(raw, nums) if v and n is None), None)
        if bad is not None:
            raise DatasetError(f"{where}: column '{name}' is numeric but holds {bad!r}: fix it or make the column categorical.")
        xs = [n for n in nums if n is not None]
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / max(1, len(xs) - 1))
        if len(xs) < 2 or std <= 0:
            raise DatasetError(f"{where}: column '{name}' has a single value ({xs[0]:g}): nothing to learn; leave it out of the tasks.")
        info.mean, info.std = mean, std
        return info, nums
    if kind == "multilabel":
        lists = [[c for c in MULTI_SEP.split(v) if c] if v else None for v in raw]
        counts = Counter(c for lst in lists if lst for c in set(lst))
        info.classes = sorted(counts, key=_class_key)
        idx = {c: i for i, c in enumerate(info.classes)}
        parsed = [sorted({idx[c] for c in lst}) if lst is not None else None for lst in lists]
    else:
        counts = Counter(labelled)
        info.classes = sorted(counts, key=_class_key)
        idx = {c: i for i, c in enumerate(info.classes)}
        parsed = [idx[v] if v else None for v in raw]
    info.counts = {c: counts[c] for c in info.classes}
    if len(info.classes) < 2:
        only = info.classes[0] if info.classes else ""
        raise DatasetError(f"{where}: column '{name}' has a single class ({only!r}): nothing to learn; "
                           "leave it out of the tasks or add images of other classes.")
    return info, parsed

