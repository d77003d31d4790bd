"""Which files a scan looks at: the input resolved (folder, CSV or .zip), the labels' source
chosen (a lone CSV or the folder names), and one candidate (file, class, split) per image of the
layout, with every file left out recorded in `skipped` with its reason.

`dataset.scan` then probes, de-duplicates and reports these candidates.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Literal

from tlstudio.core.data.csv_labels import csv_has_label_header, read_csv
from tlstudio.core.data.images import IMAGE_EXTENSIONS, _os_reason, bad_name_reason, display_path
from tlstudio.core.data.layout import (
    File,
    Progress,
    link_reason,
    split_dirs,
    undecodable_names,
    unwrap,
    visible_dirs,
    visible_files,
    walk_tree,
)
from tlstudio.core.data.records import DatasetError, SkippedFile

Layout = Literal["folders", "split", "csv"]
Candidate = tuple[File, str, str]  # (file, class name, split name or "")


def rel_path(path: str, root: str) -> str:
    if path.startswith(root) and path[len(root) : len(root) + 1] == os.sep:
        return path[len(root) + 1 :].replace(os.sep, "/")  # fast path: relpath is slow at 50k files
    try:
        return os.path.relpath(path, root).replace(os.sep, "/")
    except ValueError:  # other drive on Windows
        return path


def resolve_input(path: str | os.PathLike, csv_path: str | os.PathLike | None) -> tuple[str, str | None]:
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


def choose_labels(root: str, csv_file: str | None, warns: list[str]) -> tuple[str, str | None]:
    """(root, csv_file) after the two automatic choices: a lone CSV is the labels when nothing else
    is there or its header says so, and a folder holding one sub-folder is entered."""
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
            warns.append(f"Using the folder '{rel_path(new_root, root)}' inside {root} as the data set.")
            root = new_root
    return root, csv_file


def find_candidates(root: str, csv_file: str | None, follow_links: bool, progress: Progress | None,
                    stop: threading.Event | None, skipped: list[SkippedFile], warns: list[str],
                    class_dirs: list[tuple[str, str]]) -> tuple[Layout, dict[str, str] | None, list[Candidate]]:
    """(layout, split folders, candidates). `splits` is {} for a CSV with a split column (None
    without one); `class_dirs` receives the (class, split) folders seen, to report empty ones."""
    splits = None if csv_file else split_dirs(root)
    if csv_file is None:
        layout: Layout = "split" if splits else "folders"
        return layout, splits, _folder_candidates(root, splits, follow_links, progress, stop, skipped, warns,
                                                  class_dirs)
    cands = _csv_candidates(csv_file, root, follow_links, skipped, warns)
    if any(s for _, _, s in cands):
        splits = {}
        missing = sum(1 for _, _, s in cands if not s)
        if missing:
            warns.append(f"{missing} CSV rows have no split: they are put in train.")
            cands = [(f, c, s or "train") for f, c, s in cands]
    return "csv", splits, cands


def _csv_candidates(csv_file: str, root: str, follow_links: bool, skipped: list[SkippedFile],
                    warns: list[str]) -> list[Candidate]:
    rows, sk, w = read_csv(csv_file)
    skipped += sk
    warns += w
    name = os.path.basename(csv_file)
    cands: list[Candidate] = []
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
                       class_dirs: list[tuple[str, str]]) -> list[Candidate]:
    cands: list[Candidate] = []
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
