"""Extracting a dropped .zip without trusting it.

Refused (ArchiveError naming the archive and the entry): paths that climb out (`../`), absolute
paths, drive letters and UNC paths, encrypted entries, a total uncompressed size over the cap,
an entry whose compression ratio says "zip bomb", an archive that expands that much overall
(many entries each too small for the per-entry check), more data than the entry declares.
Symlink entries are never created: they are skipped and reported. macOS clutter (__MACOSX,
dot-files) is skipped silently. Extraction goes to a temporary sibling folder first and is
renamed into place only when complete, so a failed extraction leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tlstudio.core.errors import UserError
from tlstudio.core.data.images import is_hidden_name
from tlstudio.core.data.records import SkippedFile

DEFAULT_MAX_TOTAL_BYTES = 8 * 1024**3  # 8 GiB uncompressed
DEFAULT_MAX_RATIO = 200.0  # JPEG/PNG barely compress; BMP/TIFF of photos compress < 10x
RATIO_MIN_BYTES = 1 << 20  # tiny members (e.g. a blank 100 KB BMP) may compress a lot; harmless
MAX_ENTRIES = 1_000_000
OVERALL_MIN_BYTES = 16 << 20  # the whole-archive ratio is judged from this much uncompressed data
KEEP_ARCHIVES = 5  # extracted archives kept in the cache (most recently used first) ...
MAX_ARCHIVE_AGE_DAYS = 30  # ... and none unused for longer than this
_CHUNK = 1 << 20


class ArchiveError(UserError):
    """The archive is unsafe or unreadable; the message names the archive and the entry."""


def _safe_parts(name: str) -> tuple[str, ...] | None:
    """Relative, normalised path parts for an entry name, or None if it would escape."""
    n = name.replace("\\", "/")
    if n.startswith("/") or n.startswith("//"):
        return None
    if len(n) >= 2 and n[1] == ":":  # C:foo, C:/foo
        return None
    parts = []
    for p in PurePosixPath(n).parts:
        if p in ("", "."):
            continue
        if p == ".." or ":" in p:
            return None
        parts.append(p)
    return tuple(parts)


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return info.create_system == 3 and stat.S_ISLNK(mode)


def safe_extract_zip(
    zip_path: str | os.PathLike,
    dest_dir: str | os.PathLike,
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    skipped: list | None = None,
) -> Path:
    """Extract `zip_path` into `dest_dir` (created; must be empty if it exists) and return it.

    `skipped`, if given, receives a SkippedFile for every entry not extracted (symlinks).
    """
    zp = Path(zip_path)
    dest = Path(dest_dir)
    if dest.exists() and any(dest.iterdir()):
        raise ArchiveError(f"Cannot extract {zp.name}: the folder {dest} is not empty.")
    try:
        zf = zipfile.ZipFile(zp)
    except FileNotFoundError:
        raise ArchiveError(f"Archive not found: {zp}") from None
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ArchiveError(f"{zp.name} is not a readable zip archive ({e}).") from None

    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ENTRIES:
            raise ArchiveError(f"{zp.name} has {len(infos):,} entries (limit {MAX_ENTRIES:,}).")
        plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
        declared = 0
        for info in infos:
            parts = _safe_parts(info.filename)
            if parts is None:
                raise ArchiveError(f"{zp.name}: entry '{info.filename}' points outside the archive folder (refused).")
            if not parts or any(is_hidden_name(p) for p in parts):
                continue  # __MACOSX/, .DS_Store, ...
            if _is_symlink(info):
                if skipped is not None:
                    skipped.append(SkippedFile(f"{zp}!{info.filename}", "symbolic link inside the archive (not extracted)"))
                continue
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{zp.name}: entry '{info.filename}' is password-protected (not supported).")
            if not info.is_dir():
                declared += info.file_size
                if declared > max_total_bytes:
                    raise ArchiveError(
                        f"{zp.name}: uncompressed size exceeds the limit of {max_total_bytes:,} bytes "
                        f"(at entry '{info.filename}'): possible zip bomb."
                    )
                if info.file_size >= RATIO_MIN_BYTES and info.file_size > max_ratio * max(1, info.compress_size):
                    raise ArchiveError(
                        f"{zp.name}: entry '{info.filename}' expands {info.file_size / max(1, info.compress_size):,.0f}x "
                        f"(limit {max_ratio:g}x): possible zip bomb."
                    )
            plan.append((info, parts))

        try:
            packed = zp.stat().st_size
        except OSError:
            packed = 0
        if declared >= OVERALL_MIN_BYTES and declared > max_ratio * max(1, packed):
            raise ArchiveError(
                f"{zp.name}: {packed:,} bytes would expand to {declared:,} ({declared / max(1, packed):,.0f}x overall, "
                f"limit {max_ratio:g}x; images barely compress): possible zip bomb."
            )
        free = shutil.disk_usage(dest.parent if dest.parent.exists() else Path.cwd()).free
        if declared > free:
            raise ArchiveError(f"{zp.name} needs {declared:,} bytes but only {free:,} are free on the disk.")

        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            written = 0
            for info, parts in plan:
                target = tmp.joinpath(*parts)
                n = 0
                try:
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "xb") as out:
                        while chunk := src.read(_CHUNK):
                            n += len(chunk)
                            written += len(chunk)
                            # the header may lie about sizes: enforce on real bytes
                            if n > info.file_size or written > max_total_bytes:
                                raise ArchiveError(
                                    f"{zp.name}: entry '{info.filename}' holds more data than it declares: possible zip bomb."
                                )
                            out.write(chunk)
                except (FileExistsError, NotADirectoryError):
                    raise ArchiveError(
                        f"{zp.name}: entry '{info.filename}' clashes with another entry of the same name (refused)."
                    ) from None
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
                    raise ArchiveError(f"{zp.name}: entry '{info.filename}' is corrupt or unsupported ({e}).") from None
                except ArchiveError:
                    raise
                except OSError as e:
                    raise ArchiveError(f"{zp.name}: cannot write entry '{info.filename}' ({e.strerror or e}).") from None
            if dest.exists():
                dest.rmdir()  # checked empty above
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def extract_to_cache(zip_path: str | os.PathLike) -> Path:
    """Extract a dropped archive once into the user cache (keyed by name, size and mtime)."""
    from tlstudio.core.paths import user_cache_dir

    zp = Path(zip_path)
    try:
        st = zp.stat()
    except OSError as e:
        raise ArchiveError(f"Cannot read {zp}: {e.strerror or e}") from None
    key = hashlib.sha256(f"{zp.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    dest = user_cache_dir() / "archives" / f"{zp.stem}-{key}"
    if not dest.is_dir():  # complete: partial extractions never get this name
        safe_extract_zip(zp, dest)
    try:
        os.utime(dest)  # most recently used: kept by the pruning below
    except OSError:
        pass
    prune_archive_cache(dest.parent, keep=dest)
    return dest


def prune_archive_cache(folder: Path, keep: Path | None = None) -> list[Path]:
    """Remove extracted archives beyond the KEEP_ARCHIVES most recently used (when unused for a
    day: a training may be reading one), those unused for MAX_ARCHIVE_AGE_DAYS, and partial
    extractions left by a crash (older than a day). `keep` is never removed. Returns what was
    removed; a folder that cannot be removed is left quietly."""
    import time

    now = time.time()
    removed: list[Path] = []
    try:
        entries = [(p, p.stat().st_mtime) for p in folder.iterdir() if p.is_dir()]
    except OSError:
        return removed
    done = [(p, t) for p, t in entries if not p.name.startswith(".")]
    partial = [(p, t) for p, t in entries if p.name.startswith(".") and ".partial-" in p.name]
    done.sort(key=lambda e: e[1], reverse=True)
    # beyond the newest few, only what nobody used for a day: a training may still be reading it
    doomed = [p for i, (p, t) in enumerate(done)
              if (i >= KEEP_ARCHIVES and now - t > 86400) or now - t > MAX_ARCHIVE_AGE_DAYS * 86400]
    doomed += [p for p, t in partial if now - t > 86400]
    for p in doomed:
        if keep is not None and p.resolve() == keep.resolve():
            continue
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            removed.append(p)
    return removed
