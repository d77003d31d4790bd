"""The records a scan produces: one usable image (`Sample`), one file not used (`SkippedFile`),
the whole result (`ScanReport`), and the errors a data set can raise. Kept apart from the scan so
every module that only passes them around (archive, loaders, splits, runs) imports no scan code."""

from __future__ import annotations

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

