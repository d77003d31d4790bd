"""Finding the labelled images in whatever folder the user drops, and splitting them.

Layouts understood by `scan`:
  folders  root/<class>/**/image     every image under a top-level folder is that class
  split    root/train|val|test/<class>/**/image   (train plus val and/or test)
  csv      a CSV of path,label[,split]; paths relative to the CSV's folder and never outside it

A folder holding exactly one sub-folder (typical of unzipped archives) is entered automatically.
Every file that is not used is listed in `ScanReport.skipped` with its reason, except hidden and
system files (dot-files, Thumbs.db, __MACOSX, ...) which are ignored silently. Validation is
header-level and parallel (threads), so 50,000 images scan in seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import random
import stat
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tlstudio.core.errors import UserError
from tlstudio.core.data.images import (
    DEFAULT_MAX_PIXELS,
    QUICK_HASH_SPAN,
    IMAGE_EXTENSIONS,
    UNSUPPORTED_IMAGE_EXTENSIONS,
    _os_reason,
    bad_name_reason,
    display_path,
    full_hash,
    is_hidden_name,
)
from tlstudio.core.data.probing import probe_all

Progress = Callable[[int, "int | None"], None]

SPLIT_NAMES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
MIN_PER_CLASS = 5
MAX_IMBALANCE = 10.0
_MAX_DEPTH = 64
_MAX_EXAMPLES = 5  # file pairs named in one warning


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
        )


# ----------------------------------------------------------------------------- walking


@dataclass
class _File:
    path: str
    size: int
    mtime_ns: int


@dataclass
class _Walk:
    images: list[_File] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


def _walk(top: str, out: _Walk, seen_dirs: set[tuple[int, int]], depth: int = 0, on_found: Callable[[], None] | None = None) -> None:
    """Collect candidate image files under `top` (recursively), recording everything skipped."""
    if depth > _MAX_DEPTH:
        out.skipped.append(SkippedFile(top, f"folders nested more than {_MAX_DEPTH} deep"))
        return
    try:
        with os.scandir(top) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        out.skipped.append(SkippedFile(top, f"folder not readable: {_os_reason(e)}"))
        return
    for e in entries:
        if is_hidden_name(e.name):
            continue
        bad = bad_name_reason(e.name)
        if bad:
            out.skipped.append(SkippedFile(display_path(e.path), bad))
            continue
        try:
            is_link = e.is_symlink()
            st = os.stat(e.path)  # follows links: ELOOP / ENOENT for bad links
        except OSError as err:
            if is_link and isinstance(err, FileNotFoundError):
                out.skipped.append(SkippedFile(e.path, "broken link (its target does not exist)"))
            else:
                out.skipped.append(SkippedFile(e.path, _os_reason(err)))
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                why = "symlink loop (links back to a folder already scanned)" if is_link else "folder already scanned"
                out.skipped.append(SkippedFile(e.path, why))
                continue
            seen_dirs.add(key)
            _walk(e.path, out, seen_dirs, depth + 1, on_found)
            continue
        ext = os.path.splitext(e.name)[1].lower()
        if not stat.S_ISREG(st.st_mode):  # FIFO, socket, device: opening could block
            out.skipped.append(SkippedFile(e.path, "not a regular file"))
        elif ext in IMAGE_EXTENSIONS:
            out.images.append(_File(e.path, st.st_size, st.st_mtime_ns))
            if on_found is not None:
                on_found()
        elif ext in UNSUPPORTED_IMAGE_EXTENSIONS:
            out.skipped.append(SkippedFile(e.path, UNSUPPORTED_IMAGE_EXTENSIONS[ext]))
        else:
            out.skipped.append(SkippedFile(e.path, f"not an image ({ext or 'no'} extension)"))


def _walk_root(top: str, progress: Progress | None, stop: threading.Event | None) -> _Walk:
    out = _Walk()
    try:
        st = os.stat(top)
        seen = {(st.st_dev, st.st_ino)}
    except OSError:
        seen = set()
    counter = [0, time.monotonic()]

    def found() -> None:
        counter[0] += 1
        if stop is not None and stop.is_set():
            raise ScanCancelled(f"Scan of {top} stopped.")
        if progress is not None and time.monotonic() - counter[1] > 0.2:
            counter[1] = time.monotonic()
            progress(0, None)

    _walk(top, out, seen, 0, found)
    return out


def _visible_dirs(folder: str) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if not is_hidden_name(e.name) and e.is_dir() and not bad_name_reason(e.name))
    except OSError:
        return []


def _visible_files(folder: str) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if not is_hidden_name(e.name) and not e.is_dir() and not bad_name_reason(e.name))
    except OSError:
        return []


def _undecodable_names(folder: str) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if not is_hidden_name(e.name) and bad_name_reason(e.name))
    except OSError:
        return []


def _split_dirs(folder: str) -> dict[str, str] | None:
    """{'train': path, 'val': path, ...} when `folder` holds train plus val and/or test."""
    found: dict[str, str] = {}
    for name in _visible_dirs(folder):
        key = SPLIT_NAMES.get(name.lower())
        if key and key not in found:
            found[key] = os.path.join(folder, name)
    if "train" in found and ("val" in found or "test" in found):
        return found
    return None


def _unwrap(root: str) -> str:
    """Enter single wrapper folders (root/dataset/<classes>) left by unzipping."""
    for _ in range(4):
        dirs = _visible_dirs(root)
        if len(dirs) != 1 or _split_dirs(root):
            return root
        if any(os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS for f in _visible_files(root)):
            return root
        inner = os.path.join(root, dirs[0])
        if len(_visible_dirs(inner)) < 2 and not _split_dirs(inner):
            return root
        root = inner
    return root


# ----------------------------------------------------------------------------- CSV


_PATH_HEADERS = {"path", "file", "filename", "file_name", "filepath", "file_path", "image", "image_path", "img", "name", "id"}
_LABEL_HEADERS = {"label", "class", "category", "target", "labels", "class_name", "y"}


def _csv_has_label_header(path: str) -> bool:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = next(csv.reader([f.readline()]), [])
    except (OSError, UnicodeDecodeError):
        return False
    cols = {c.strip().lower() for c in first}
    return bool(cols & _PATH_HEADERS) and bool(cols & _LABEL_HEADERS)


def _read_csv(csv_path: str) -> tuple[list[tuple[str, str, str | None, int]], list[SkippedFile], list[str]]:
    """Rows (absolute path, label, split or None, line no.), skipped rows, warnings."""
    root = os.path.dirname(os.path.abspath(csv_path))
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise DatasetError(f"{csv_path}: not a UTF-8 text CSV file.") from None
    except OSError as e:
        raise DatasetError(f"{csv_path}: {_os_reason(e)}") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(text.splitlines(), dialect))
    if not rows:
        raise DatasetError(f"{csv_path} is empty: expected lines of path,label.")
    pi, li, si = 0, 1, None
    first = [c.strip().lower() for c in rows[0]]
    start = 0
    if any(c in _PATH_HEADERS for c in first) or any(c in _LABEL_HEADERS for c in first):
        start = 1
        pi = next((i for i, c in enumerate(first) if c in _PATH_HEADERS), 0)
        li = next((i for i, c in enumerate(first) if c in _LABEL_HEADERS), 1 if pi == 0 else 0)
        si = next((i for i, c in enumerate(first) if c == "split"), None)
    out: list[tuple[str, str, str | None, int]] = []
    skipped: list[SkippedFile] = []
    warns: list[str] = []
    seen: set[str] = set()
    root_n = os.path.normcase(os.path.normpath(root))
    for lineno, row in enumerate(rows[start:], start=start + 1):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{os.path.basename(csv_path)} line {lineno}"
        if len(row) <= max(pi, li):
            skipped.append(SkippedFile(",".join(row), f"{where}: expected path,label"))
            continue
        rel, label = row[pi].strip(), row[li].strip()
        if not label:
            skipped.append(SkippedFile(rel, f"{where}: no label"))
            continue
        rel_os = rel.replace("\\", "/")
        full = os.path.normpath(os.path.join(root, rel_os))
        if os.path.isabs(rel_os) or (len(rel_os) > 1 and rel_os[1] == ":"):
            full = os.path.normpath(rel_os)
        if os.path.normcase(full) != root_n and not os.path.normcase(full).startswith(root_n + os.sep):
            skipped.append(SkippedFile(rel, f"{where}: path is outside the CSV's folder (refused)"))
            continue
        if full in seen:
            skipped.append(SkippedFile(full, f"{where}: listed more than once"))
            continue
        seen.add(full)
        split = None
        if si is not None and si < len(row):
            split = SPLIT_NAMES.get(row[si].strip().lower())
            if row[si].strip() and split is None:
                warns.append(f"{where}: unknown split '{row[si].strip()}' (use train, val or test); split column ignored")
                si = None
        out.append((full, label, split, lineno))
    return out, skipped, warns


# ----------------------------------------------------------------------------- scan


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
    root = str(p.resolve())
    if csv_path is not None:
        c = Path(csv_path).expanduser()
        if not c.is_file():
            raise DatasetError(f"CSV file not found: {c}")
        return str(c.parent.resolve()), str(c.resolve())
    return root, None


def scan(
    path: str | os.PathLike,
    *,
    csv_path: str | os.PathLike | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    full_check: bool = False,
) -> ScanReport:
    """Scan a data set folder (or CSV, or .zip) and report classes, samples, skips and warnings.

    `progress(done, total)` is called from the calling thread (total None while still listing
    files). Setting `stop` makes the scan raise ScanCancelled promptly. `full_check` decodes
    every image instead of checking headers (slower, finds corruption inside pixel data).
    """
    root, csv_file = _resolve_input(path, csv_path)
    warns: list[str] = []
    if csv_file is None:
        csvs = [f for f in _visible_files(root) if f.lower().endswith(".csv")]
        if len(csvs) == 1 and not _split_dirs(root):
            cand = os.path.join(root, csvs[0])
            # a lone CSV is the labels when nothing else is there, or when its header says so
            if not _visible_dirs(root) or _csv_has_label_header(cand):
                csv_file = cand
                if _visible_dirs(root):
                    warns.append(f"Using the labels in {csvs[0]} (not the sub-folder names) as classes.")
    if csv_file is None:
        new_root = _unwrap(root)
        if new_root != root:
            warns.append(f"Using the folder '{_rel(new_root, root)}' inside {root} as the data set.")
            root = new_root

    # (file, class name, split) for every candidate image
    cands: list[tuple[_File, str, str]] = []
    skipped: list[SkippedFile] = []
    class_dirs: list[tuple[str, str]] = []  # (class, split) folders seen, to report empty ones
    splits = None if csv_file else _split_dirs(root)

    if csv_file is not None:
        layout: Literal["folders", "split", "csv"] = "csv"
        rows, sk, w = _read_csv(csv_file)
        skipped += sk
        warns += w
        for full, label, split, lineno in rows:
            try:
                st = os.stat(full)
            except OSError as e:
                skipped.append(SkippedFile(full, f"{os.path.basename(csv_file)} line {lineno}: {_os_reason(e)}"))
                continue
            if not stat.S_ISREG(st.st_mode):
                skipped.append(SkippedFile(full, f"{os.path.basename(csv_file)} line {lineno}: not an image file"))
                continue
            cands.append((_File(full, st.st_size, st.st_mtime_ns), label, split or ""))
        if any(s for _, _, s in cands):
            splits = {}
            missing = sum(1 for _, _, s in cands if not s)
            if missing:
                warns.append(f"{missing} CSV rows have no split: they are put in train.")
                cands = [(f, c, s or "train") for f, c, s in cands]
    else:
        layout = "split" if splits else "folders"
        tops = list(splits.items()) if splits else [("", root)]
        for split_name, top in tops:
            for fname in _visible_files(top):
                # images beside the class folders are reported; READMEs, CSVs etc. are not data
                if os.path.splitext(fname)[1].lower() in IMAGE_EXTENSIONS:
                    skipped.append(SkippedFile(os.path.join(top, fname), "not inside a class folder"))
            for name in _undecodable_names(top):
                skipped.append(SkippedFile(display_path(os.path.join(top, name)), bad_name_reason(name) or ""))
            for cls in _visible_dirs(top):
                class_dirs.append((cls, split_name))
                w = _walk_root(os.path.join(top, cls), progress, stop)
                skipped += w.skipped
                cands += [(f, cls, split_name) for f in w.images]
        if splits:
            known = {os.path.basename(p) for p in splits.values()}
            for d in _visible_dirs(root):
                if d not in known:
                    warns.append(f"Folder '{d}' next to the train/val folders is ignored.")

    probed = probe_all([f for f, _, _ in cands], max_pixels=max_pixels, full=full_check, workers=workers,
                       progress=progress, stop=stop)
    if probed is None:
        raise ScanCancelled(f"Scan of {csv_file or root} stopped.")
    reasons, hashes = probed
    usable: list[tuple[_File, str, str]] = []
    for (f, cls, split), r in zip(cands, reasons):
        if r is None:
            usable.append((f, cls, split))
        else:
            skipped.append(SkippedFile(f.path, r))

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
    warns += _class_warnings(classes, counts, split_counts)
    warns += _duplicate_warnings(usable, hashes, root)
    if skipped:
        warns.append(f"{len(skipped)} files skipped (each is listed with its reason).")

    fp = _fingerprint(layout, [(_rel(f.path, root), f.size, f.mtime_ns, cls, split) for f, cls, split in usable])
    skipped.sort(key=lambda s: s.path)
    return ScanReport(
        root=root, layout=layout, classes=classes, samples=samples, presplit=presplit, counts=counts,
        skipped=skipped, warnings=warns, fingerprint=fp, split_counts=split_counts, empty_classes=empty,
        csv_path=csv_file,
    )


def _class_warnings(classes: list[str], counts: dict[str, int], split_counts: dict[str, dict[str, int]] | None) -> list[str]:
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


def _duplicate_warnings(usable: list[tuple[_File, str, str]], hashes: dict[str, str], root: str) -> list[str]:
    quick: dict[str, list[tuple[_File, str, str]]] = defaultdict(list)
    for f, cls, split in usable:
        h = hashes.get(f.path)
        if h is not None:
            quick[h].append((f, cls, split))
    groups: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for h, members in quick.items():
        if len(members) < 2:
            continue
        for f, cls, split in members:
            key = h
            if f.size > 2 * QUICK_HASH_SPAN:  # quick hash saw only the ends: confirm on all bytes
                try:
                    key = full_hash(f.path)
                except OSError:
                    continue
            groups[key].append((_rel(f.path, root), cls, split))
    cross: dict[tuple[str, str], list[str]] = defaultdict(list)
    leaks: list[str] = []
    same = 0
    same_ex: list[str] = []
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort()
        first = members[0]
        for other in members[1:]:
            if other[1] != first[1]:
                key = tuple(sorted((first[1], other[1])))
                cross[key].append(f"{first[0]} = {other[0]}")  # type: ignore[index]
            elif other[2] == first[2]:
                same += 1
                same_ex.append(f"{first[0]} = {other[0]}")
        by_split: dict[str, list[str]] = defaultdict(list)
        for rel, _, split in members:
            by_split[split].append(rel)
        if "train" in by_split and ("val" in by_split or "test" in by_split):
            other_split = "val" if "val" in by_split else "test"
            leaks.append(f"{by_split['train'][0]} = {by_split[other_split][0]}")
    warns = []
    for (a, b), pairs in sorted(cross.items()):
        warns.append(f"The same image is in classes '{a}' and '{b}' ({len(pairs)}x): {_examples(pairs)}")
    if leaks:
        warns.append(f"{len(leaks)} images are in both train and val/test (inflates validation accuracy): {_examples(leaks)}")
    if same:
        warns.append(f"{same} images are exact duplicates within their class: {_examples(same_ex)}")
    return warns


def scan_unlabelled(
    path: str | os.PathLike,
    *,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    full_check: bool = False,
) -> tuple[list[Sample], list[SkippedFile]]:
    """Every usable image in a folder tree (or a single image file), label -1, sorted by path."""
    p = Path(path).expanduser()
    if not p.exists() and not p.is_symlink():
        raise DatasetError(f"Not found: {p}")
    if p.is_file() or p.is_symlink() and not p.is_dir():
        files = []
        w = _Walk()
        try:
            st = os.stat(p)
            files.append(_File(str(p), st.st_size, st.st_mtime_ns))
        except OSError as e:
            w.skipped.append(SkippedFile(str(p), _os_reason(e)))
    else:
        w = _walk_root(str(p.resolve()), progress, stop)
        files = w.images
    probed = probe_all(files, max_pixels=max_pixels, full=full_check, workers=workers, progress=progress, stop=stop)
    if probed is None:
        raise ScanCancelled(f"Scan of {p} stopped.")
    reasons = probed[0]
    samples = [Sample(f.path, -1) for f, r in zip(files, reasons) if r is None]
    skipped = w.skipped + [SkippedFile(f.path, r) for f, r in zip(files, reasons) if r is not None]
    return sorted(samples, key=lambda s: s.path), sorted(skipped, key=lambda s: s.path)


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


# ----------------------------------------------------------------------------- split


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


def _stratified(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    by_label: dict[int, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: (s.label, s.path)):  # input order never matters
        by_label[s.label].append(s)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted(by_label):
        items = by_label[label]
        random.Random(f"{seed}:{label}").shuffle(items)
        n = len(items)
        n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
        if val_fraction > 0 and n >= 2:
            n_val = max(1, n_val)
        n_val = min(n_val, n - 1) if n >= 2 else 0
        val += items[:n_val]
        train += items[n_val:]
    key = lambda s: (s.label, s.path)  # noqa: E731
    return sorted(train, key=key), sorted(val, key=key)


def make_split(report: ScanReport, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """The data set's own train/val(/test) when it has one, else a stratified seeded split:
    every class with >= 2 images gets at least one validation image (and keeps one for training)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"Validation fraction must be between 0 and 1 (got {val_fraction}).")
    if report.presplit is not None:
        train = list(report.presplit.get("train", []))
        val = list(report.presplit.get("val", []))
        test = list(report.presplit.get("test", []))
        if not val:  # train + test only: carve val out of train
            train, val = _stratified(train, val_fraction, seed)
        return Split(train=train, val=val, test=test, seed=seed, val_fraction=val_fraction)
    train, val = _stratified(report.samples, val_fraction, seed)
    return Split(train=train, val=val, test=[], seed=seed, val_fraction=val_fraction)
