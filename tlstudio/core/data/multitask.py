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
"""

from __future__ import annotations

import csv
import math
import os
import random
import re
import stat
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tlstudio.core.data.dataset import (
    SPLIT_NAMES,
    DatasetError,
    Sample,
    ScanCancelled,
    SkippedFile,
    Split,
    _File,
    _PATH_HEADERS,
)
from tlstudio.core.data.images import DEFAULT_MAX_PIXELS, _os_reason, is_hidden_name

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


@dataclass
class MultiTaskReport:
    root: str
    layout: Literal["table", "trees"]
    source: str  # the CSV/TSV file, or the root of the trees
    tasks: list[TaskInfo]
    samples: list[Sample]
    presplit: dict[str, list[Sample]] | None
    skipped: list[SkippedFile]
    warnings: list[str]
    columns: list[str] = field(default_factory=list)  # every label column found (tasks are a subset)

    @property
    def label_schema(self) -> dict[str, Any]:
        return {"tasks": [t.schema() for t in self.tasks]}

    def task(self, name: str) -> TaskInfo:
        return next(t for t in self.tasks if t.name == name)

    def summary(self) -> str:
        return f"{len(self.samples)} images, {len(self.tasks)} tasks: " + "; ".join(t.summary() for t in self.tasks)


# ----------------------------------------------------------------------------- typing


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


def _task_from_values(name: str, kind: str, raw: list[str], where: str) -> tuple[TaskInfo, list[Any]]:
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


# ----------------------------------------------------------------------------- tables


def _read_table(path: str) -> tuple[list[str], list[list[str]]]:
    if path.lower().endswith(".xlsx"):
        try:
            import openpyxl  # optional: only when installed
        except ImportError:
            raise DatasetError(f"{path}: reading .xlsx needs openpyxl; save the sheet as CSV instead.") from None
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        rows = [["" if c is None else str(c) for c in r] for r in wb.active.iter_rows(values_only=True)]
    else:
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                text = f.read()
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: not a UTF-8 text file.") from None
        except OSError as e:
            raise DatasetError(f"{path}: {_os_reason(e)}") from None
        try:
            dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel_tab if path.lower().endswith(".tsv") else csv.excel
        rows = list(csv.reader(text.splitlines(), dialect))
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if len(rows) < 2:
        raise DatasetError(f"{path}: expected a header row (path and label column names) and at least one image row.")
    return [c.strip() for c in rows[0]], [[c.strip() for c in r] for r in rows[1:]]


def table_columns(path: str | os.PathLike) -> tuple[str, str | None, list[str]]:
    """(path column, split column or None, label columns) from the header row."""
    header, _ = _read_table(str(path))
    low = [h.lower() for h in header]
    pi = next((i for i, h in enumerate(low) if h in _PATH_HEADERS), 0)
    si = next((i for i, h in enumerate(low) if h == "split"), None)
    labels = [h for i, h in enumerate(header) if i not in (pi, si) and h]
    return header[pi], (header[si] if si is not None else None), labels


def _probe(files: list[_File], stop, progress, workers, max_pixels) -> list[str | None]:
    from tlstudio.core.data.probing import probe_all

    out = probe_all(files, max_pixels=max_pixels, full=False, workers=workers, progress=progress, stop=stop)
    if out is None:
        raise ScanCancelled("Scan stopped.")
    return out[0]


def _stat_file(full: str) -> _File | str:
    try:
        st = os.stat(full)
    except OSError as e:
        return _os_reason(e)
    if not stat.S_ISREG(st.st_mode):
        return "not an image file"
    return _File(full, st.st_size, st.st_mtime_ns)


def _build(root: str, layout, source: str, names: list[str], types: dict[str, str] | None,
           rows: list[tuple[str, str | None, list[str], str]], skipped: list[SkippedFile], warns: list[str],
           columns: list[str], stop, progress, workers, max_pixels) -> MultiTaskReport:
    """rows: (absolute path, split or None, raw cell per task, where) -> typed, probed report."""
    files, keep = [], []
    for full, split, cells, where in rows:
        f = _stat_file(full)
        if isinstance(f, str):
            skipped.append(SkippedFile(full, f"{where}: {f}"))
        else:
            files.append(f)
            keep.append((full, split, cells))
    reasons = _probe(files, stop, progress, workers, max_pixels)
    usable = []
    for (full, split, cells), r in zip(keep, reasons):
        if r is None:
            usable.append((full, split, cells))
        else:
            skipped.append(SkippedFile(full, r))
    where = os.path.basename(source)
    tasks, parsed = [], []
    for j, name in enumerate(names):
        raw = [cells[j] for _, _, cells in usable]
        kind = (types or {}).get(name) or guess_type(raw)
        info, vals = _task_from_values(name, kind, raw, where)
        tasks.append(info)
        parsed.append(vals)
        if info.imbalance and info.imbalance > MAX_IMBALANCE:
            warns.append(f"Task '{name}': classes are imbalanced ({info.imbalance:.0f}x between the largest and smallest).")
    samples, by_split, unlabelled = [], {}, 0
    for i, (full, split, _) in enumerate(usable):
        targets = {t.name: parsed[j][i] for j, t in enumerate(tasks) if parsed[j][i] is not None}
        if not targets:
            unlabelled += 1
            continue
        first = tasks[0]
        label = targets.get(first.name, -1) if first.type == "categorical" else -1
        s = Sample(full, int(label), targets)
        samples.append(s)
        if split:
            by_split.setdefault(split, []).append(s)
    if unlabelled:
        warns.append(f"{unlabelled} images have no label for any of the chosen tasks: not used.")
    presplit = None
    if by_split:
        presplit = {k: by_split.get(k, []) for k in ("train", "val", "test")}
        no_split = len(samples) - sum(len(v) for v in by_split.values())
        if no_split:
            warns.append(f"{no_split} rows have no split: they are put in train.")
            in_split = {s.path for v in by_split.values() for s in v}
            presplit["train"] += [s for s in samples if s.path not in in_split]
    if skipped:
        warns.append(f"{len(skipped)} files skipped (each is listed with its reason).")
    skipped.sort(key=lambda s: s.path)
    return MultiTaskReport(root=root, layout=layout, source=source, tasks=tasks, samples=samples, presplit=presplit,
                           skipped=skipped, warnings=warns, columns=columns)


def _scan_table(path: str, tasks, types, **kw) -> MultiTaskReport:
    header, body = _read_table(path)
    pcol, scol, labels = table_columns(path)
    names = list(tasks) if tasks else labels
    unknown = [t for t in names if t not in header]
    if unknown:
        raise DatasetError(f"{path}: no column {', '.join(repr(u) for u in unknown)}; label columns: {', '.join(labels)}")
    if not names:
        raise DatasetError(f"{path}: no label columns next to '{pcol}'.")
    root = os.path.dirname(os.path.abspath(path))
    root_n = os.path.normcase(os.path.normpath(root))
    pi, si = header.index(pcol), header.index(scol) if scol else None
    cols = [header.index(n) for n in names]
    rows, skipped, warns, seen = [], [], [], set()
    for lineno, r in enumerate(body, start=2):
        where = f"{os.path.basename(path)} line {lineno}"
        rel = r[pi] if pi < len(r) else ""
        if not rel:
            skipped.append(SkippedFile(",".join(r), f"{where}: no image path"))
            continue
        rel = rel.replace("\\", "/")
        full = os.path.normpath(rel if os.path.isabs(rel) else os.path.join(root, rel))
        nf = os.path.normcase(full)
        if not nf.startswith(root_n + os.sep):
            skipped.append(SkippedFile(rel, f"{where}: path is outside the table's folder (refused)"))
            continue
        if full in seen:
            skipped.append(SkippedFile(full, f"{where}: listed more than once"))
            continue
        seen.add(full)
        split = None
        if si is not None and si < len(r) and r[si]:
            split = SPLIT_NAMES.get(r[si].lower())
            if split is None:
                warns.append(f"{where}: unknown split '{r[si]}' (use train, val or test): row put in train")
                split = "train"
        rows.append((full, split, [r[c] if c < len(r) else "" for c in cols], where))
    return _build(root, "table", path, names, types, rows, skipped, warns, labels, **kw)


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
        return _scan_table(table, tasks, types, **kw)
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
