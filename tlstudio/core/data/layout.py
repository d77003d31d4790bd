"""Walking a data set folder and recognising its layout (class folders, train/val/test folders,
wrapper folders left by unzipping).

Symbolic links: a link that leads back into the data set is never followed (its images would be
counted twice, possibly under another class: `dog/loop -> ..` made every cat a dog too); a link
that leads outside the data set is followed only when the caller allows it (`follow_links`).
Each link not followed is reported with its reason, like every other file not used.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tlstudio.core.data.images import (
    IMAGE_EXTENSIONS,
    UNSUPPORTED_IMAGE_EXTENSIONS,
    _os_reason,
    bad_name_reason,
    display_path,
    is_hidden_name,
)
from tlstudio.core.data.records import ScanCancelled, SkippedFile

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
MAX_DEPTH = 64


@dataclass
class File:
    path: str
    size: int
    mtime_ns: int


@dataclass
class Walk:
    images: list[File] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def link_reason(link: str, root: str, *, is_dir: bool, follow_links: bool) -> str | None:
    """Why the symbolic link `link` is not followed (None: follow it). `root` is the resolved
    data set folder."""
    target = os.path.realpath(link)
    what = "folder" if is_dir else "file"
    if _inside(target, root):
        if is_dir and _inside(os.path.dirname(os.path.abspath(link)), target):
            return "symlink loop (links back to a folder that contains it; not followed)"
        rel = os.path.relpath(target, root).replace(os.sep, "/")
        rel = "the data set folder" if rel == "." else f"'{rel}'"
        return (f"link to the {what} {rel} inside the data set (not followed: its images would be "
                "counted twice, maybe under another class)")
    if not follow_links:
        return (f"link to a {what} outside the data set ({display_path(target)}; not followed unless "
                "links outside the data set are allowed: --follow-links)")
    return None


class _Walker:
    def __init__(self, root: str, follow_links: bool, progress: Progress | None, stop: threading.Event | None):
        self.root = os.path.realpath(root)
        self.follow_links = follow_links
        self.progress = progress
        self.stop = stop
        self.found = 0
        self.last = time.monotonic()

    def on_found(self) -> None:
        self.found += 1
        if self.stop is not None and self.stop.is_set():
            raise ScanCancelled(f"Scan of {self.root} stopped.")
        if self.progress is not None and time.monotonic() - self.last > 0.2:
            self.last = time.monotonic()
            self.progress(0, None)

    def walk(self, top: str, out: Walk, seen_dirs: set[tuple[int, int]], depth: int = 0) -> None:
        """Collect candidate image files under `top` (recursively), recording everything skipped."""
        if depth > MAX_DEPTH:
            out.skipped.append(SkippedFile(display_path(top), f"folders nested more than {MAX_DEPTH} deep"))
            return
        try:
            with os.scandir(top) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            out.skipped.append(SkippedFile(display_path(top), f"folder not readable: {_os_reason(e)}"))
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
            is_dir = stat.S_ISDIR(st.st_mode)
            if is_link:
                why = link_reason(e.path, self.root, is_dir=is_dir, follow_links=self.follow_links)
                if why:
                    out.skipped.append(SkippedFile(e.path, why))
                    continue
            if is_dir:
                key = (st.st_dev, st.st_ino)
                if key in seen_dirs:
                    why = "symlink loop (links back to a folder already scanned)" if is_link else "folder already scanned"
                    out.skipped.append(SkippedFile(e.path, why))
                    continue
                seen_dirs.add(key)
                self.walk(e.path, out, seen_dirs, depth + 1)
                continue
            ext = os.path.splitext(e.name)[1].lower()
            if not stat.S_ISREG(st.st_mode):  # FIFO, socket, device: opening could block
                out.skipped.append(SkippedFile(e.path, "not a regular file"))
            elif ext in IMAGE_EXTENSIONS:
                out.images.append(File(e.path, st.st_size, st.st_mtime_ns))
                self.on_found()
            elif ext in UNSUPPORTED_IMAGE_EXTENSIONS:
                out.skipped.append(SkippedFile(e.path, UNSUPPORTED_IMAGE_EXTENSIONS[ext]))
            else:
                out.skipped.append(SkippedFile(e.path, f"not an image ({ext or 'no'} extension)"))


def walk_tree(top: str, progress: Progress | None, stop: threading.Event | None, *,
              root: str | None = None, follow_links: bool = False) -> Walk:
    """Every candidate image under `top`; `root` is the data set folder `top` belongs to (links
    leading into it are never followed)."""
    out = Walk()
    walker = _Walker(root or top, follow_links, progress, stop)
    try:
        st = os.stat(top)
        seen = {(st.st_dev, st.st_ino)}
    except OSError:
        seen = set()
    walker.walk(top, out, seen, 0)
    return out


def visible_dirs(folder: str) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if not is_hidden_name(e.name) and e.is_dir() and not bad_name_reason(e.name))
    except OSError:
        return []


def visible_files(folder: str) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if not is_hidden_name(e.name) and not e.is_dir() and not bad_name_reason(e.name))
    except OSError:
        return []


def undecodable_names(folder: str) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if not is_hidden_name(e.name) and bad_name_reason(e.name))
    except OSError:
        return []


def split_dirs(folder: str) -> dict[str, str] | None:
    """{'train': path, 'val': path, ...} when `folder` holds train plus val and/or test."""
    found: dict[str, str] = {}
    for name in visible_dirs(folder):
        key = SPLIT_NAMES.get(name.lower())
        if key and key not in found:
            found[key] = os.path.join(folder, name)
    if "train" in found and ("val" in found or "test" in found):
        return found
    return None


def unwrap(root: str) -> str:
    """Enter single wrapper folders (root/dataset/<classes>) left by unzipping."""
    for _ in range(4):
        dirs = visible_dirs(root)
        if len(dirs) != 1 or split_dirs(root):
            return root
        if any(os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS for f in visible_files(root)):
            return root
        inner = os.path.join(root, dirs[0])
        if len(visible_dirs(inner)) < 2 and not split_dirs(inner):
            return root
        root = inner
    return root
