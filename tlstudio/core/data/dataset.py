"""Finding the labelled images in whatever folder the user drops.

Layouts understood by `scan`:
  folders  root/<class>/**/image     every image under a top-level folder is that class
  split    root/train|val|test/<class>/**/image   (train plus val and/or test)
  csv      a CSV of path,label[,split]; paths relative to the CSV's folder and never outside it

A folder holding exactly one sub-folder (typical of unzipped archives) is entered automatically.
Every file that is not used is listed in `ScanReport.skipped` with its reason, except hidden and
system files (dot-files, Thumbs.db, __MACOSX, ...) which are ignored silently. Validation is
header-level and parallel, so 50,000 images scan in seconds. Duplicates (exact and near) are
grouped for the split; the same picture under two classes is excluded (its label is ambiguous).

The pieces live beside this module: records (samples, reports, errors), candidates (which files
of which layout), layout (walking, links), csv_labels, duplicates, split (make_split), probing
(parallel header checks).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from tlstudio.core.data.candidates import Candidate, Layout, choose_labels, find_candidates, rel_path, resolve_input
from tlstudio.core.data.csv_labels import _PATH_HEADERS  # noqa: F401 - data.multitask imports it from here
from tlstudio.core.data.duplicates import (
    NEAR_DUP_MAX_BYTES,
    NEAR_DUP_MAX_IMAGES,
    Duplicates,
    DuplicatePair,
    ambiguous,
    describe,
    find_duplicates,
)
from tlstudio.core.data.images import DEFAULT_MAX_PIXELS, _os_reason, display_path
from tlstudio.core.data.layout import (  # noqa: F401 - SPLIT_NAMES is part of this module's API
    SPLIT_NAMES,
    File,
    Walk,
    walk_tree,
)
from tlstudio.core.data.probing import look_all, look_cost, probe_all
from tlstudio.core.data.records import (  # noqa: F401 - match_classes is part of this module's API
    DatasetError,
    Sample,
    ScanCancelled,
    ScanReport,
    SkippedFile,
    class_warnings,
    match_classes,
)
from tlstudio.core.data.split import SPLIT_SCHEMA_VERSION, Split, make_split  # noqa: F401

__all__ = [
    "DatasetError", "ScanCancelled", "Sample", "SkippedFile", "ScanReport", "Split", "make_split", "scan",
    "scan_unlabelled", "match_classes", "SPLIT_NAMES", "SPLIT_SCHEMA_VERSION", "DuplicatePair",
]

_File = File  # older name, still imported by data.multitask

Progress = Callable[[int, "int | None"], None]

_MAX_EXAMPLES = 5  # file pairs named in one warning


def _fingerprint(layout: str, entries: list[tuple[str, int, int, str, str]]) -> str:
    """entries: (relative path, size, mtime_ns, class name, split) - stable across runs."""
    h = hashlib.sha256(layout.encode())
    for rel, size, mtime, cls, split in sorted(entries):
        h.update(f"{rel}\t{size}\t{mtime}\t{cls}\t{split}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


def _examples(pairs: list[str]) -> str:
    more = f" and {len(pairs) - _MAX_EXAMPLES} more" if len(pairs) > _MAX_EXAMPLES else ""
    return "; ".join(pairs[:_MAX_EXAMPLES]) + more


def scan(
    path: str | os.PathLike,
    *,
    csv_path: str | os.PathLike | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    full_check: bool = False,
    follow_links: bool = False,
    near_duplicates: bool | None = None,
) -> ScanReport:
    """Scan a data set folder (or CSV, or .zip) and report classes, samples, skips and warnings.

    `progress(done, total)` is called from the calling thread (total None while still listing
    files). Setting `stop` makes the scan raise ScanCancelled promptly. `full_check` decodes
    every image instead of checking headers (slower, finds corruption inside pixel data).
    `follow_links`: also use symbolic links that lead outside the data set (links back into it
    are never followed). `near_duplicates`: look for resized/re-encoded copies (a small decode
    per image); None = when the data set is small enough for that to be quick (at most
    NEAR_DUP_MAX_IMAGES images and NEAR_DUP_MAX_BYTES to decode), with a warning otherwise.
    """
    warns: list[str] = []
    skipped: list[SkippedFile] = []
    class_dirs: list[tuple[str, str]] = []  # (class, split) folders seen, to report empty ones
    root, csv_file = choose_labels(*resolve_input(path, csv_path), warns)
    layout, splits, cands = find_candidates(root, csv_file, follow_links, progress, stop, skipped, warns, class_dirs)
    stopped = f"Scan of {csv_file or root} stopped."

    # near duplicates need a small decode of each image ("looks"): decided before probing, so the
    # progress bar covers both passes (probe: first half, looks: second half) and never goes back
    cost = look_cost([f for f, _, _ in cands])
    want_looks = bool(near_duplicates) or (near_duplicates is None and len(cands) <= NEAR_DUP_MAX_IMAGES
                                           and cost <= NEAR_DUP_MAX_BYTES)
    half = len(cands) // 2 if want_looks else len(cands)
    usable, hashes = _probe(cands, progress, half, stop, stopped, skipped,
                            max_pixels=max_pixels, full_check=full_check, workers=workers)

    # duplicates: exact copies from the probe's hashes; near ones from small decoded "looks"
    files = [f for f, _, _ in usable]
    looks = None
    if want_looks:
        looks = _looks(files, len(cands), half, progress, stop, stopped, workers)
    elif near_duplicates is None and len(files) > 1:
        warns.append(f"Only exact duplicates were looked for: {len(files):,} images ({cost / 1e6:,.0f} MB to decode) "
                     "would make the scan slow; `tlstudio scan --near-duplicates` also finds resized or "
                     "re-encoded copies.")
    dups = find_duplicates([(f.path, f.size) for f in files], hashes, looks)
    cls_of = {f.path: cls for f, cls, _ in usable}
    usable = _drop_ambiguous(usable, dups, cls_of, root, skipped, warns)
    return _report(root, layout, csv_file, splits, usable, dups, cls_of, class_dirs, skipped, warns)


def _probe(cands: list[Candidate], progress: Progress | None, half: int, stop: threading.Event | None,
           stopped: str, skipped: list[SkippedFile], *, max_pixels: int, full_check: bool,
           workers: int | None) -> tuple[list[Candidate], dict[str, str]]:
    """(usable candidates, content hashes) after the parallel header checks; the rest are skipped.
    The probe reports progress over the first `half` of the bar."""
    n = len(cands)

    def probe_progress(done: int, total: int | None) -> None:
        if progress is not None:
            progress(done * half // max(1, total) if total else done, n if total is not None else None)

    probed = probe_all([f for f, _, _ in cands], max_pixels=max_pixels, full=full_check, workers=workers,
                       progress=probe_progress if progress is not None else None, stop=stop)
    if probed is None:
        raise ScanCancelled(stopped)
    reasons, hashes = probed
    usable: list[Candidate] = []
    for (f, cls, split), r in zip(cands, reasons):
        if r is None:
            usable.append((f, cls, split))
        else:
            skipped.append(SkippedFile(f.path, r))
    return usable, hashes


def _looks(files: list[File], n: int, half: int, progress: Progress | None, stop: threading.Event | None,
           stopped: str, workers: int | None) -> dict[str, bytes]:
    """Small decoded thumbnails for near duplicates, reported over the second part of the bar."""
    def look_progress(done: int, total: int | None) -> None:
        if progress is not None:
            progress(half + (done * (n - half) // total if total else n - half), n)

    looks = look_all(files, workers=workers, progress=look_progress, stop=stop)
    if looks is None:
        raise ScanCancelled(stopped)
    return looks


def _drop_ambiguous(usable: list[Candidate], dups: Duplicates, cls_of: dict[str, str], root: str,
                    skipped: list[SkippedFile], warns: list[str]) -> list[Candidate]:
    """The same picture under two classes has no clear label: those files are skipped, and one
    warning per pair of classes names examples."""
    excluded, cross = ambiguous(dups, cls_of)
    if not excluded:
        return usable
    for f, cls, _ in usable:
        if f.path in excluded:
            others = ", ".join(f"'{c}'" for c in excluded[f.path])
            skipped.append(SkippedFile(f.path, f"the same image is also in class {others}: "
                                               "left out of training (its label is ambiguous)"))
    by_classes: dict[tuple[str, ...], list[str]] = {}
    for p in cross:
        key = tuple(sorted({cls_of[p.a], cls_of[p.b]}))
        pair = f"{display_path(rel_path(p.a, root))} = {display_path(rel_path(p.b, root))}"
        by_classes.setdefault(key, []).append(pair)
    for key, texts in sorted(by_classes.items()):
        names = " and ".join(f"'{c}'" for c in key)
        warns.append(f"The same image is in classes {names} ({len(texts)}x): {_examples(texts)}; "
                     "these files are left out of training (their label is ambiguous).")
    return [u for u in usable if u[0].path not in excluded]


def _report(root: str, layout: Layout, csv_file: str | None, splits: dict[str, str] | None,
            usable: list[Candidate], dups: Duplicates, cls_of: dict[str, str], class_dirs: list[tuple[str, str]],
            skipped: list[SkippedFile], warns: list[str]) -> ScanReport:
    """Classes (sorted names), samples in a stable order, per-split samples and counts, the
    remaining warnings and the fingerprint."""
    classes = sorted({cls for _, cls, _ in usable})
    index = {c: i for i, c in enumerate(classes)}
    usable.sort(key=lambda t: (t[2], index[t[1]], t[0].path))
    samples = [Sample(f.path, index[cls]) for f, cls, _ in usable]
    counts = {c: 0 for c in classes}
    for _, cls, _ in usable:
        counts[cls] += 1
    presplit = None
    split_counts = None
    if splits is not None and (layout == "split" or splits == {}):
        presplit = {}
        split_counts = {}
        for f, cls, split in usable:
            presplit.setdefault(split, []).append(Sample(f.path, index[cls]))
            split_counts.setdefault(split, {c: 0 for c in classes})[cls] += 1
        if layout == "split":
            for name in splits:
                presplit.setdefault(name, [])
                split_counts.setdefault(name, {c: 0 for c in classes})

    empty = sorted({cls for cls, _ in class_dirs if cls not in counts})
    for cls in empty:
        n_sk = sum(1 for s in skipped if f"{os.sep}{cls}{os.sep}" in s.path)
        extra = f" ({n_sk} files skipped)" if n_sk else ""
        warns.append(f"Folder '{cls}' has no usable images{extra}: it is not used as a class.")
    warns += class_warnings(classes, counts, split_counts)
    split_of = {f.path: split for f, _, split in usable}
    warns += describe(dups.pairs, lambda p: cls_of[p], lambda p: split_of.get(p, ""),
                      lambda p: display_path(rel_path(p, root)), _examples)
    if skipped:
        warns.append(f"{len(skipped)} files skipped (each is listed with its reason).")

    fp = _fingerprint(layout, [(rel_path(f.path, root), f.size, f.mtime_ns, cls, split) for f, cls, split in usable])
    skipped = sorted((SkippedFile(display_path(s.path), s.reason) for s in skipped), key=lambda s: s.path)
    return ScanReport(
        root=root, layout=layout, classes=classes, samples=samples, presplit=presplit, counts=counts,
        skipped=skipped, warnings=warns, fingerprint=fp, split_counts=split_counts, empty_classes=empty,
        csv_path=csv_file, duplicates=dups.pairs, duplicate_groups=dups.groups,
    )


def scan_unlabelled(
    path: str | os.PathLike,
    *,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    full_check: bool = False,
    follow_links: bool = False,
) -> tuple[list[Sample], list[SkippedFile]]:
    """Every usable image in a folder tree (or a single image file), label -1, sorted by path.
    Symbolic links are followed as in `scan` (never back into the folder; outside only with
    `follow_links`)."""
    p = Path(path).expanduser()
    if not p.exists() and not p.is_symlink():
        raise DatasetError(f"Not found: {p}")
    if p.is_file() or p.is_symlink() and not p.is_dir():
        files = []
        w = Walk()
        try:
            st = os.stat(p)
            files.append(File(str(p), st.st_size, st.st_mtime_ns))
        except OSError as e:
            w.skipped.append(SkippedFile(str(p), _os_reason(e)))
    else:
        w = walk_tree(str(p.resolve()), progress, stop, follow_links=follow_links)
        files = w.images
    probed = probe_all(files, max_pixels=max_pixels, full=full_check, workers=workers, progress=progress, stop=stop)
    if probed is None:
        raise ScanCancelled(f"Scan of {p} stopped.")
    reasons = probed[0]
    samples = [Sample(f.path, -1) for f, r in zip(files, reasons) if r is None]
    skipped = w.skipped + [SkippedFile(f.path, r) for f, r in zip(files, reasons) if r is not None]
    skipped = [SkippedFile(display_path(s.path), s.reason) for s in skipped]
    return sorted(samples, key=lambda s: s.path), sorted(skipped, key=lambda s: s.path)
