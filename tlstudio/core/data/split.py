"""Train/validation(/test) splits: the data set's own, or a stratified, seeded one that keeps
groups of duplicate images (exact copies, resized or re-encoded copies) on one side, so the
validation score is not inflated by images the model trained on."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlstudio.core.data.records import DatasetError, Sample

if TYPE_CHECKING:
    from tlstudio.core.data.dataset import ScanReport

SPLIT_SCHEMA_VERSION = 2


@dataclass
class Split:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    seed: int
    val_fraction: float

    def to_json(self) -> dict:
        return {
            "schema_version": SPLIT_SCHEMA_VERSION,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "train": [s.to_row() for s in self.train],
            "val": [s.to_row() for s in self.val],
            "test": [s.to_row() for s in self.test],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Split:
        """Schema 1 rows are [path, label]; schema 2 may add [targets, domain]."""

        def load(rows) -> list[Sample]:
            return [Sample.from_row(r) for r in rows or []]

        return cls(
            train=load(d.get("train")),
            val=load(d.get("val")),
            test=load(d.get("test")),
            seed=int(d.get("seed", 0)),
            val_fraction=float(d.get("val_fraction", 0.2)),
        )


def _units(samples: list[Sample], groups: Iterable[Sequence[str]]) -> dict[int, list[list[Sample]]]:
    """Samples bundled into units that must stay on one side (a duplicate group, or one image),
    per label (a group counts under the label of its first member), in (label, path) order."""
    group_of: dict[str, int] = {}
    for gi, g in enumerate(groups):
        for p in g:
            group_of.setdefault(p, gi)
    ordered = sorted(samples, key=lambda s: (s.label, s.path))  # input order never matters
    bundles: dict[int, list[Sample]] = {}
    by_label: dict[int, list[list[Sample]]] = defaultdict(list)
    for s in ordered:
        gi = group_of.get(s.path)
        if gi is None:
            by_label[s.label].append([s])
        elif gi in bundles:
            bundles[gi].append(s)
        else:
            bundles[gi] = [s]
            by_label[s.label].append(bundles[gi])
    return by_label


def stratified(samples: list[Sample], val_fraction: float, seed: int,
               groups: Iterable[Sequence[str]] = ()) -> tuple[list[Sample], list[Sample]]:
    """Per class, about `val_fraction` of the images into validation (at least one when the class
    has two or more, and never all); images of one group always land on the same side."""
    train: list[Sample] = []
    val: list[Sample] = []
    by_label = _units(samples, groups)
    for label in sorted(by_label):
        units = by_label[label]
        random.Random(f"{seed}:{label}").shuffle(units)
        n = sum(len(u) for u in units)
        n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
        if val_fraction > 0 and n >= 2:
            n_val = max(1, n_val)
        n_val = min(n_val, n - 1) if n >= 2 else 0
        taken = 0
        to_train: list[list[Sample]] = []
        for u in units:  # shuffled order; a group that would overshoot stays in training
            if taken + len(u) <= n_val:
                val += u
                taken += len(u)
            else:
                to_train.append(u)
        if taken == 0 and n_val > 0 and len(to_train) > 1:  # only big groups: the smallest to val
            smallest = min(to_train, key=len)
            to_train.remove(smallest)
            val += smallest
        for u in to_train:
            train += u
    key = lambda s: (s.label, s.path)  # noqa: E731
    return sorted(train, key=key), sorted(val, key=key)


def make_split(report: ScanReport, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """The data set's own train/val(/test) when it has one, else a stratified seeded split:
    every class with >= 2 images gets at least one validation image (and keeps one for training),
    and duplicate groups found by the scan stay together."""
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"Validation fraction must be between 0 and 1 (got {val_fraction}).")
    groups = getattr(report, "duplicate_groups", None) or ()
    if report.presplit is not None:
        train = list(report.presplit.get("train", []))
        val = list(report.presplit.get("val", []))
        test = list(report.presplit.get("test", []))
        if not val:  # train + test only: carve val out of train
            train, val = stratified(train, val_fraction, seed, groups)
        return Split(train=train, val=val, test=test, seed=seed, val_fraction=val_fraction)
    train, val = stratified(report.samples, val_fraction, seed, groups)
    return Split(train=train, val=val, test=[], seed=seed, val_fraction=val_fraction)


def stratified_folds(labels: Any, k: int, seed: int = 0) -> list[Any]:
    """k disjoint index arrays, every class spread evenly over them (shuffled with seed): the
    ranking's k-fold probe and the head fit's choice of penalty (training/head_fit.py)."""
    import numpy as np

    y = np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            folds[(j + offset) % k].append(int(i))
        offset += len(idx)  # next class starts where this one stopped: fold sizes stay even
    return [np.array(sorted(f), dtype=int) for f in folds if f]
