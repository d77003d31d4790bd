"""The records a scan produces: one usable image (`Sample`), one file not used (`SkippedFile`),
the whole result (`ScanReport`: with its class-balance warnings and `match_classes`, its labels
in a trained model's class order), and the errors a data set can raise. Kept apart from the scan so
every module that only passes them around (archive, loaders, splits, runs) imports no scan code."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from tlstudio.core.data.duplicates import DuplicatePair
from tlstudio.core.errors import UserError


class DatasetError(UserError):
    """The folder or CSV cannot be used as a data set (message says why and where)."""


class ScanCancelled(DatasetError):
    """The scan's stop event was set."""


@dataclass(frozen=True)
class Sample:
    """One image. ``label`` indexes the run's classes (-1 = unlabelled); kinds of learning with
    several label columns keep them in ``targets`` (task name -> value; a missing key or None is a
    missing label); ``domain`` names where the image comes from ("source", "target", ...)."""

    path: str
    label: int  # -1 = unlabelled
    targets: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    domain: str | None = None

    def to_row(self) -> list[Any]:
        row: list[Any] = [self.path, self.label]
        if self.targets is not None or self.domain is not None:
            row += [self.targets, self.domain]
        return row

    @classmethod
    def from_row(cls, r: Any) -> Sample:
        if isinstance(r, dict):
            return cls(str(r["path"]), int(r["label"]), r.get("targets"), r.get("domain"))
        return cls(str(r[0]), int(r[1]), r[2] if len(r) > 2 else None, r[3] if len(r) > 3 else None)


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass
class ScanReport:
    root: str
    layout: Literal["folders", "split", "csv"]
    classes: list[str]
    samples: list[Sample]
    presplit: dict[str, list[Sample]] | None
    counts: dict[str, int]
    skipped: list[SkippedFile]
    warnings: list[str]
    fingerprint: str
    split_counts: dict[str, dict[str, int]] | None = None  # split layout: per split, per class
    empty_classes: list[str] = field(default_factory=list)  # class folders without usable images
    csv_path: str | None = None
    # duplicate images: every pair found (exact or near), and the groups the split keeps together
    duplicates: list[DuplicatePair] = field(default_factory=list)
    duplicate_groups: list[list[str]] = field(default_factory=list)

    def require_trainable(self) -> None:
        """Raise DatasetError unless there are images of at least two classes."""
        where = self.csv_path or self.root
        if not self.samples:
            extra = f" ({len(self.skipped)} files skipped, e.g. {self.skipped[0].path}: {self.skipped[0].reason})" if self.skipped else ""
            hint = "" if self.layout == "csv" else " Put each class's images in its own sub-folder."
            raise DatasetError(f"No usable images in {where}{extra}.{hint}")
        present = [c for c in self.classes if self.counts.get(c, 0) > 0]
        if len(present) < 2:
            only = f" only one class ('{present[0]}')" if present else " no class"
            raise DatasetError(
                f"{where} has{only}: need at least two classes to train a classifier. "
                "Put each class's images in its own sub-folder, next to each other."
            )
        if self.presplit is not None:
            train = self.presplit.get("train", [])
            if len({s.label for s in train}) < 2:
                raise DatasetError(f"{where}: the train/ folder needs images of at least two classes.")

    def summary(self) -> str:
        parts = ", ".join(f"{c}: {self.counts.get(c, 0)}" for c in self.classes)
        return (
            f"{len(self.samples)} images in {len(self.classes)} classes ({parts}); "
            f"{len(self.skipped)} skipped; layout {self.layout}"
        )

    def to_json(self) -> dict:
        return {
            "root": self.root,
            "layout": self.layout,
            "classes": list(self.classes),
            "counts": dict(self.counts),
            "split_counts": self.split_counts,
            "n_images": len(self.samples),
            "samples": [[s.path, s.label] for s in self.samples],
            "presplit": None
            if self.presplit is None
            else {k: [[s.path, s.label] for s in v] for k, v in self.presplit.items()},
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "warnings": list(self.warnings),
            "empty_classes": list(self.empty_classes),
            "fingerprint": self.fingerprint,
            "csv_path": self.csv_path,
            "duplicates": [p.to_json() for p in self.duplicates],
            "duplicate_groups": [list(g) for g in self.duplicate_groups],
        }

    @classmethod
    def from_json(cls, d: dict) -> ScanReport:
        def samples(rows):
            return [Sample(str(p), int(lab)) for p, lab in rows]

        return cls(
            root=d["root"],
            layout=d["layout"],
            classes=list(d["classes"]),
            samples=samples(d["samples"]),
            presplit=None if d.get("presplit") is None else {k: samples(v) for k, v in d["presplit"].items()},
            counts=dict(d["counts"]),
            skipped=[SkippedFile(s["path"], s["reason"]) for s in d.get("skipped", [])],
            warnings=list(d.get("warnings", [])),
            fingerprint=d["fingerprint"],
            split_counts=d.get("split_counts"),
            empty_classes=list(d.get("empty_classes", [])),
            csv_path=d.get("csv_path"),
            duplicates=[DuplicatePair.from_json(p) for p in d.get("duplicates", [])],
            duplicate_groups=[list(g) for g in d.get("duplicate_groups", [])],
        )


MIN_PER_CLASS = 5
MAX_IMBALANCE = 10.0


def class_warnings(classes: list[str], counts: dict[str, int], split_counts: dict[str, dict[str, int]] | None) -> list[str]:
    warns: list[str] = []
    if len(classes) == 1:
        warns.append(f"Only one class ('{classes[0]}'): need at least two classes to train.")
    for c in classes:
        if 0 < counts[c] < MIN_PER_CLASS:
            warns.append(f"Class '{c}' has only {counts[c]} image{'s' if counts[c] > 1 else ''} (at least {MIN_PER_CLASS} needed for a meaningful validation; 20+ is better).")
    nonzero = {c: n for c, n in counts.items() if n > 0}
    if len(nonzero) >= 2:
        big = max(nonzero, key=lambda c: nonzero[c])
        small = min(nonzero, key=lambda c: nonzero[c])
        ratio = nonzero[big] / nonzero[small]
        if ratio > MAX_IMBALANCE:
            warns.append(
                f"Classes are imbalanced {ratio:.0f}:1 ('{big}' has {nonzero[big]} images, '{small}' has {nonzero[small]}): "
                "consider class-weighted loss or more images of the small classes."
            )
    if split_counts:
        train = split_counts.get("train", {})
        for c in classes:
            if train and train.get(c, 0) == 0:
                warns.append(f"Class '{c}' has no images in train: the model cannot learn it.")
        val = split_counts.get("val")
        if val is not None and sum(val.values()) == 0:
            warns.append("The val folder has no usable images: a validation split is made from train.")
    return warns


def match_classes(report: ScanReport, classes: list[str]) -> ScanReport:
    """Relabel `report` to a trained model's class order. Unknown classes raise DatasetError."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in report.classes if c not in index and report.counts.get(c, 0) > 0]
    if unknown:
        raise DatasetError(
            f"{report.csv_path or report.root}: class(es) {', '.join(repr(c) for c in unknown)} are not classes of this model "
            f"(it knows {', '.join(repr(c) for c in classes)})."
        )
    remap = {i: index[c] for i, c in enumerate(report.classes) if c in index}

    def re(samples: list[Sample]) -> list[Sample]:
        return [Sample(s.path, remap[s.label]) for s in samples]

    counts = {c: report.counts.get(c, 0) for c in classes}
    split_counts = None
    if report.split_counts is not None:
        split_counts = {k: {c: v.get(c, 0) for c in classes} for k, v in report.split_counts.items()}
    return dataclasses.replace(
        report,
        classes=list(classes),
        samples=re(report.samples),
        presplit=None if report.presplit is None else {k: re(v) for k, v in report.presplit.items()},
        counts=counts,
        split_counts=split_counts,
    )
