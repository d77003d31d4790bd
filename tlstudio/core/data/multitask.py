"""Multi-task data: one image, several labels (one per task), some of them missing.

Two layouts:
  table    a CSV/TSV with a header row: an image path column, several label columns and an
           optional ``split`` column (train/val/test). An EMPTY cell means "no label for this
           task": the row still trains the other tasks.
  trees    root/<task>/<class>/**/image for several tasks over the same image names, matched
           by the path below the class folder (task_a/cat/x.png and task_b/indoor/x.png are
           one image with two labels).

Each label column is typed automatically (the user confirms or changes it): ``categorical``
(default), ``multilabel`` (cells like ``a;b``) or ``numeric`` (regression; z-scored for
training, Huber loss). A task with no labels or a single class is refused with one line naming
the column. Samples carry ``targets = {task: value}`` (class index, list of class indices, or a
float); the label schema ``{"tasks": [{"name", "type", "classes", ...}]}`` goes into run.json.

Modules by job: multitask_typing (TaskInfo, column typing), multitask_tables (label tables),
multitask_trees (task folder trees), multitask_report (rows -> MultiTaskReport); this one finds
the data, scans it and splits it.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

from tlstudio.core.data.dataset import DatasetError, Sample, Split
from tlstudio.core.data.images import DEFAULT_MAX_PIXELS, is_hidden_name
from tlstudio.core.data.multitask_report import MAX_IMBALANCE, MultiTaskReport, build_report
from tlstudio.core.data.multitask_tables import read_table, scan_table, table_columns
from tlstudio.core.data.multitask_typing import TASK_TYPES, TaskInfo, TaskType, guess_type, task_from_values

__all__ = ["MAX_IMBALANCE", "TASK_TYPES", "MultiTaskReport", "TaskInfo", "TaskType", "build_report", "find_table",
           "guess_type", "is_multitask_data", "make_multitask_split", "read_table", "scan_multitask", "scan_table",
           "table_columns", "task_from_values"]


def find_table(path: str | os.PathLike) -> str | None:
    """The multi-column label table for ``path``: the file itself, or the one table in a folder
    whose header has at least two label columns."""
    p = Path(path)
    cands = [p] if p.is_file() else sorted(q for q in p.glob("*") if q.is_file()) if p.is_dir() else []
    hits = []
    for q in cands:
        if q.suffix.lower() not in (".csv", ".tsv", ".txt", ".xlsx") or is_hidden_name(q.name):
            continue
        try:
            if len(table_columns(q)[2]) >= 2 or p.is_file():
                hits.append(str(q))
        except DatasetError:
            continue
    return hits[0] if len(hits) == 1 else None


def is_multitask_data(path: str | os.PathLike) -> str | None:
    """One line when ``path`` holds several label columns (or task trees), else None. Cheap."""
    try:
        table = find_table(path)
        if table:
            labels = table_columns(table)[2]
            if len(labels) >= 2:
                return f"{os.path.basename(table)} has {len(labels)} label columns ({', '.join(labels)}): multi-task learning"
        elif Path(path).is_dir():
            from tlstudio.core.data.multitask_trees import tree_tasks

            trees = tree_tasks(path)
            if trees:
                return f"{len(trees)} task folders over the same images ({', '.join(trees)}): multi-task learning"
    except (DatasetError, OSError):
        return None
    return None


def scan_multitask(path: str | os.PathLike, *, tasks: list[str] | None = None, types: dict[str, str] | None = None,
                   progress: Callable[[int, int | None], None] | None = None, stop: threading.Event | None = None,
                   workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> MultiTaskReport:
    """Scan a label table (or a folder holding one, or task trees). ``tasks``: the label
    columns to use (default: all); ``types``: column -> type overrides of the automatic typing."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"Not found: {p}")
    kw = dict(stop=stop, progress=progress, workers=workers, max_pixels=max_pixels)
    table = str(p.resolve()) if p.is_file() else find_table(p)
    if table:
        return scan_table(table, tasks, types, **kw)
    from tlstudio.core.data.multitask_trees import scan_trees

    return scan_trees(str(p.resolve()), tasks, types, **kw)


def make_multitask_split(report: MultiTaskReport, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """The table's own split when it has one; else seeded and stratified by the first task's
    class (rows without that label form their own stratum), at least one val image per stratum."""
    if report.presplit is not None:
        train, val, test = (list(report.presplit.get(k, [])) for k in ("train", "val", "test"))
        if val:
            return Split(train=train, val=val, test=test, seed=seed, val_fraction=val_fraction)
        samples = train
    else:
        samples, test = list(report.samples), []
    first = report.tasks[0].name
    strata: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.path):
        v = (s.targets or {}).get(first)
        strata.setdefault(repr(v) if not isinstance(v, float) else "num", []).append(s)
    train, val = [], []
    for key in sorted(strata):
        items = strata[key]
        random.Random(f"{seed}:{key}").shuffle(items)
        n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction))) if len(items) >= 2 else 0
        val += items[:n_val]
        train += items[n_val:]
    return Split(train=sorted(train, key=lambda s: s.path), val=sorted(val, key=lambda s: s.path),
                 test=test, seed=seed, val_fraction=val_fraction)
