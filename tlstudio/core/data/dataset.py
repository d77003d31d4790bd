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

The pieces live beside this module: samples (records and errors), layout (walking, links,
layouts), csv_labels, duplicates, split (make_split), probing (parallel header checks).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from tlstudio.core.data.csv_labels import _LABEL_HEADERS, _PATH_HEADERS, csv_has_label_header, read_csv  # noqa: F401
from tlstudio.core.data.duplicates import (
    NEAR_DUP_MAX_BYTES,
    NEAR_DUP_MAX_IMAGES,
    DuplicatePair,
    ambiguous,
    describe,
    find_duplicates,
)
from tlstudio.core.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    _os_reason,
    bad_name_reason,
    display_path,
)
from tlstudio.core.data.layout import (  # noqa: F401 - SPLIT_NAMES is part of this module's API
    SPLIT_NAMES,
    File,
    Walk,
    link_reason,
    split_dirs,
    undecodable_names,
    unwrap,
    visible_dirs,
    visible_files,
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


def _rel(path: str, root: str) -> str:
    if path.startswith(root) and path[len(root) : len(root) + 1] == os.sep:
        return path[len(root) + 1 :].replace(os.sep, "/")  # fast path: relpath is slow at 50k files
    try:
        return os.path.relpath(path, root).replace(os.sep, "/")
    except ValueError:  # other drive on Windows
        return path


def _examples(pairs: list[str]) -> str:
    more = f" and {len(pairs) - _MAX_EXAMPLES} more" if len(pairs) > _MAX_EXAMPLES else ""
    return "; ".join(pairs[:_MAX_EXAMPLES]) + more


def _resolve_input(path: str | os.PathLike, csv_path: str | os.PathLike | None) -> tuple[str, str | None]:
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"Folder not found: {p}")
    if p.is_file():
        if p.suffix.lower() == ".csv":
            return str(p.parent.resolve()), str(p.resolve())
        if p.suffix.lower() == ".zip":
            from tlstudio.core.data.archive import extract_to_cache

            return str(extract_to_cache(p)), None
        raise DatasetError(f"{p} is a file: choose the folder that holds one sub-folder per class, or a CSV of path,label.")
    if not os.access(p, os.R_OK | os.X_OK):
        raise DatasetError(f"{p}: permission denied (cannot list the folder).")
    root = str(p.resolve())
    if csv_path is not None:
        c = Path(csv_path).expanduser()
        if not c.is_file():
            raise DatasetError(f"CSV file not found: {c}")
        return str(c.parent.resolve()), str(c.resolve())
    return root, None


def _csv_candidates(csv_file: str, root: str, follow_links: bool, skipped: list[SkippedFile],
                    warns: list[str]) -> list[tuple[File, str, str]]:
    rows, sk, w = read_csv(csv_file)
    skipped += sk
    warns += w
    name = os.path.basename(csv_file)
    cands: list[tuple[File, str, str]] = []
    for full, label, split, lineno in rows:
        try:
            st = os.stat(full)
        except OSError as e:
            skipped.append(SkippedFile(display_path(full), f"{name} line {lineno}: {_os_reason(e)}"))
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped.append(SkippedFile(display_path(full), f"{name} line {lineno}: not an image file"))
            continue
        if os.path.islink(full) and (why := link_reason(full, root, is_dir=False, follow_links=follow_links)) \
                and "outside" in why:
            skipped.append(SkippedFile(full, f"{name} line {lineno}: {why}"))
            continue
        cands.append((File(full, st.st_size, st.st_mtime_ns), label, split or ""))
    return cands


def _folder_candidates(root: str, splits: dict[str, str] | None, follow_links: bool, progress: Progress | None,
                       stop: threading.Event | None, skipped: list[SkippedFile], warns: list[str],
                       class_dirs: list[tuple[str, str]]) -> list[tuple[File, str, str]]:
    cands: list[tuple[File, str, str]] = []
    tops = list(splits.items()) if splits else [("", root)]
    for split_name, top in tops:
        for fname in visible_files(top):
            # images beside the class folders are reported; READMEs, CSVs etc. are not data
            if os.path.splitext(fname)[1].lower() in IMAGE_EXTENSIONS:
                skipped.append(SkippedFile(os.path.join(top, fname), "not inside a class folder"))
        for name in undecodable_names(top):
            skipped.append(SkippedFile(display_path(os.path.join(top, name)), bad_name_reason(name) or ""))
        for cls in visible_dirs(top):
            folder = os.path.join(top, cls)
            if os.path.islink(folder):  # a class folder that is a link: the same rule as inside
                why = link_reason(folder, root, is_dir=True, follow_links=follow_links)
                if why:
                    skipped.append(SkippedFile(folder, why))
                    continue
            class_dirs.append((cls, split_name))
            w = walk_tree(folder, progress, stop, root=root, follow_links=follow_links)
            skipped += w.skipped
            cands += [(f, cls, split_name) for f in w.images]
    if splits:
        known = {os.path.basename(p) for p in splits.values()}
        for d in visible_dirs(root):
            if d not in known:
                warns.append(f"Folder '{d}' next to the train/val folders is ignored.")
    return cands


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
    root, csv_file = _resolve_input(path, csv_path)
    warns: list[str] = []
    if csv_file is None:
        csvs = [f for f in visible_files(root) if f.lower().endswith(".csv")]
        if len(csvs) == 1 and not split_dirs(root):
            cand = os.path.join(root, csvs[0])
            # a lone CSV is the labels when nothing else is there, or when its header says so
            if not visible_dirs(root) or csv_has_label_header(cand):
                csv_file = cand
                if visible_dirs(root):
                    warns.append(f"Using the labels in {csvs[0]} (not the sub-folder names) as classes.")
    if csv_file is None:
        new_root = unwrap(root)
        if new_root != root:
            warns.append(f"Using the folder '{_rel(new_root, root)}' inside {root} as the data set.")
            root = new_root

    # (file, class name, split) for every candidate image
    skipped: list[SkippedFile] = []
    class_dirs: list[tuple[str, str]] = []  # (class, split) folders seen, to report empty ones
    splits = None if csv_file else split_dirs(root)
    layout: Literal["folders", "split", "csv"]
    if csv_file is not None:
        layout = "csv"
        cands = _csv_candidates(csv_file, root, follow_links, skipped, warns)
        if any(s for _, _, s in cands):
            splits = {}
            missing = sum(1 for _, _, s in cands if not s)
            if missing:
                warns.append(f"{missing} CSV rows have no split: they are put in train.")
                cands = [(f, c, s or "train") for f, c, s in cands]
    else:
        layout = "split" if splits else "folders"
        cands = _folder_candidates(root, splits, follow_links, progress, stop, skipped, warns, class_dirs)

    # near duplicates need a small decode of each image ("looks"): decided before probing, so the
    # progress bar covers both passes (probe: first half, looks: second half) and never goes back
    cost = look_cost([f for f, _, _ in cands])
    want_looks = bool(near_duplicates) or (near_duplicates is None and len(cands) <= NEAR_DUP_MAX_IMAGES
                                           and cost <= NEAR_DUP_MAX_BYTES)
    n = len(cands)
    half = n // 2 if want_looks else n

    def probe_progress(done: int, total: int | None) -> None:
        if progress is not None:
            progress(done * half // max(1, total) if total else done, n if total is not None else None)

    probed = probe_all([f for f, _, _ in cands], max_pixels=max_pixels, full=full_check, workers=workers,
                       progress=probe_progress if progress is not None else None, stop=stop)
    if probed is None:
        raise ScanCancelled(f"Scan of {csv_file or root} stopped.")
    reasons, hashes = probed
    usable: list[tuple[File, str, str]] = []
    for (f, cls, split), r in zip(cands, reasons):
        if r is None:
            usable.append((f, cls, split))
        else:
            skipped.append(SkippedFile(f.path, r))

    # duplicates: exact copies from the probe's hashes; near ones from small decoded "looks"
    looks = None
    files = [f for f, _, _ in usable]
    if want_looks:
        def look_progress(done: int, total: int | None) -> None:
            if progress is not None:
                progress(half + (done * (n - half) // total if total else n - half), n)

        looks = look_all(files, workers=workers, progress=look_progress, stop=stop)
        if looks is None:
            raise ScanCancelled(f"Scan of {csv_file or root} stopped.")
    elif near_duplicates is None and len(files) > 1:
        warns.append(f"Only exact duplicates were looked for: {len(files):,} images ({cost / 1e6:,.0f} MB to decode) "
                     "would make the scan slow; `tlstudio scan --near-duplicates` also finds resized or "
                     "re-encoded copies.")
    dups = find_duplicates([(f.path, f.size) for f in files], hashes, looks)
    cls_of = {f.path: cls for f, cls, _ in usable}
    excluded, cross = ambiguous(dups, cls_of)
    if excluded:
        for f, cls, _ in usable:
            if f.path in excluded:
                others = ", ".join(f"'{c}'" for c in excluded[f.path])
                skipped.append(SkippedFile(f.path, f"the same image is also in class {others}: "
                                                   "left out of training (its label is ambiguous)"))
        usable = [u for u in usable if u[0].path not in excluded]
        by_classes: dict[tuple[str, ...], list[str]] = {}
        for p in cross:
            key = tuple(sorted({cls_of[p.a], cls_of[p.b]}))
            by_classes.setdefault(key, []).append(f"{display_path(_rel(p.a, root))} = {display_path(_rel(p.b, root))}")
        for key, texts in sorted(by_classes.items()):
            names = " and ".join(f"'{c}'" for c in key)
            warns.append(f"The same image is in classes {names} ({len(texts)}x): {_examples(texts)}; "
                         "these files are left out of training (their label is ambiguous).")

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
                      lambda p: display_path(_rel(p, root)), _examples)
    if skipped:
        warns.append(f"{len(skipped)} files skipped (each is listed with its reason).")

    fp = _fingerprint(layout, [(_rel(f.path, root), f.size, f.mtime_ns, cls, split) for f, cls, split in usable])
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
