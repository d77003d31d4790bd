"""The result of a multi-task scan (MultiTaskReport) and how rows become one: typed tasks,
probed images, samples with their targets, the table's own split."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any, Literal

from tlstudio.core.data.dataset import File, Sample, ScanCancelled, SkippedFile
from tlstudio.core.data.images import _os_reason
from tlstudio.core.data.multitask_typing import TaskInfo, guess_type, task_from_values

MAX_IMBALANCE = 10.0


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



def _probe(files: list[File], stop, progress, workers, max_pixels) -> list[str | None]:
    from tlstudio.core.data.probing import probe_all

    out = probe_all(files, max_pixels=max_pixels, full=False, workers=workers, progress=progress, stop=stop)
    if out is None:
        raise ScanCancelled("Scan stopped.")
    return out[0]


def _stat_file(full: str) -> File | str:
    try:
        st = os.stat(full)
    except OSError as e:
        return _os_reason(e)
    if not stat.S_ISREG(st.st_mode):
        return "not an image file"
    return File(full, st.st_size, st.st_mtime_ns)


def build_report(root: str, layout, source: str, names: list[str], types: dict[str, str] | None,
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
        info, vals = task_from_values(name, kind, raw, where)
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

