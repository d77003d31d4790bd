"""A deterministic split of a synthetic class-folder tree, without scanning (pipeline/cache tests)."""

from __future__ import annotations

from pathlib import Path

from tlstudio.core.data.dataset import Sample, Split


def split_of(root: Path, n_val: int = 6) -> Split:
    """The first ``n_val`` PNGs (sorted by path) validate, the rest train; labels from folder names."""
    files = sorted(root.rglob("*.png"))
    classes = sorted({f.parent.name for f in files})
    samples = [Sample(str(f), classes.index(f.parent.name)) for f in files]
    return Split(train=samples[n_val:], val=samples[:n_val], test=[], seed=0, val_fraction=0.0)
