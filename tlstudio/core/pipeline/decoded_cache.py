"""Decode + resize every image once, keep the uint8 result (RAM within a byte budget, the
overflow on disk), so epochs after the first decode no files.

What is stored is the image resized so its short side is input_size / crop_pct (timm's eval
resize; long side capped at 2x the short side, centred): eval is then a centre crop, train
augmentation a random resized crop of it. Memory: RAM entries are counted in bytes and never
exceed the budget; nothing is evicted (with shuffled epochs every entry is read once per
epoch, so a fixed resident set beats LRU, which would thrash). Entries beyond the budget go to
disk under user_cache_dir()/decoded, keyed by path + size + mtime + target size, up to
`disk_budget_bytes`; beyond that, images are decoded each time (and the log says so).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_VERSION = "v2"  # v2: disk entries stored HWC
_ENTRY_OVERHEAD = 256  # bytes of Python/tensor bookkeeping per RAM entry, counted against the budget


class DecodeError(Exception):
    """Fallback error when tlstudio.core.data.images is not importable (its ImageError is used otherwise)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def image_errors() -> tuple[type[BaseException], ...]:
    """What decoding an unreadable file raises (the file is then skipped with its reason)."""
    from tlstudio.core.data.images import ImageError

    return (ImageError, DecodeError)


_PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4, "hamming": 5}


def decode_resized(path: str, short_side: int, interpolation: str = "bilinear") -> "torch.Tensor":
    """File -> uint8 CHW tensor whose short side is `short_side` (long side capped at 2x, centred).

    Raises the image loader's error (ImageError) for unreadable files.
    """
    import numpy as np
    import torch

    from tlstudio.core.data.images import load_rgb

    try:
        # draft lets libjpeg decode at 1/2, 1/4, 1/8 scale: big photos decode several times faster
        img = load_rgb(path, draft=(short_side, short_side))
    except image_errors():
        raise
    except (OSError, ValueError, SyntaxError) as e:  # anything PIL throws that the loader let through
        raise DecodeError(str(path), f"cannot read image ({e.__class__.__name__}: {e})") from e
    w, h = img.size
    if w <= h:  # torchvision Resize(int) arithmetic
        nw, nh = short_side, int(short_side * h / w)
    else:
        nh, nw = short_side, int(short_side * w / h)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), _PIL_RESAMPLE.get(str(interpolation), 2))
    cap = 2 * short_side
    if nw > cap or nh > cap:
        left, top = (nw - min(nw, cap)) // 2, (nh - min(nh, cap)) // 2
        img = img.crop((left, top, left + min(nw, cap), top + min(nh, cap)))
    arr = np.asarray(img, dtype=np.uint8)
    # CHW shape over HWC memory (PIL's own order, no transposing copy): the uint8 resize kernel
    # augmentation uses is ~3x faster on this layout (augment.py)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def prune_dir(root: str | Path, max_bytes: int, *, keep: set[str] | None = None) -> int:
    """Delete the least recently modified cache files under `root` until it holds <= max_bytes.
    Returns the bytes removed. Caches are rebuildable, so removal errors are ignored."""
    root = Path(root)
    if not root.is_dir():
        return 0
    files = []
    for dirpath, _dirs, names in os.walk(root):
        for nm in names:
            f = os.path.join(dirpath, nm)
            try:
                st = os.stat(f)
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, f))
    total = sum(sz for _, sz, _ in files)
    removed = 0
    for _, sz, f in sorted(files):
        if total <= max_bytes:
            break
        if keep and f in keep:
            continue
        try:
            os.remove(f)
        except OSError:
            continue
        total -= sz
        removed += sz
    return removed


@dataclass
class CacheStats:
    ram_hits: int = 0
    disk_hits: int = 0
    decodes: int = 0
    ram_entries: int = 0
    ram_bytes: int = 0
    disk_entries: int = 0
    disk_bytes: int = 0
    uncached: int = 0  # decodes that could not be kept anywhere (both budgets full)


class DecodedCache:
    """Thread-safe cache of decoded, resized uint8 images, keyed by path."""

    def __init__(self, short_side: int, interpolation: str = "bilinear", *, budget_bytes: int,
                 disk: bool = True, disk_budget_bytes: int | None = None, disk_dir: str | Path | None = None):
        self.short_side = int(short_side)
        self.interpolation = str(interpolation)
        self.budget_bytes = max(0, int(budget_bytes))
        self.disk = bool(disk)
        self.disk_budget_bytes = (max(4 * self.budget_bytes, 1 << 30) if disk_budget_bytes is None
                                  else int(disk_budget_bytes))
        if disk_dir is None and self.disk:
            from tlstudio.core.paths import user_cache_dir

            disk_dir = user_cache_dir() / "decoded"
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self._ram: dict[str, "torch.Tensor"] = {}
        self._on_disk: dict[str, Path] = {}
        self._lock = threading.Lock()
        self.stats = CacheStats()

    # --- keys -------------------------------------------------------------------------------
    def _disk_key(self, path: str) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        raw = f"{_VERSION}|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{self.short_side}|{self.interpolation}"
        return hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()

    # --- public -----------------------------------------------------------------------------
    @property
    def ram_bytes(self) -> int:
        return self.stats.ram_bytes

    def get(self, path: str) -> "torch.Tensor":
        """uint8 CHW tensor (shared: do not modify in place). Raises ImageError for bad files."""
        t = self._ram.get(path)
        if t is not None:
            self.stats.ram_hits += 1
            return t
        t = self._read_disk(path)
        if t is not None:
            self.stats.disk_hits += 1
            return t
        t = decode_resized(path, self.short_side, self.interpolation)
        self.stats.decodes += 1
        self._store(path, t)
        return t

    def __contains__(self, path: str) -> bool:
        return path in self._ram or path in self._on_disk

    def clear_ram(self) -> None:
        with self._lock:
            self._ram.clear()
            self.stats.ram_bytes = self.stats.ram_entries = 0

    # --- internals --------------------------------------------------------------------------
    def _store(self, path: str, t: "torch.Tensor") -> None:
        nbytes = t.numel() * t.element_size() + _ENTRY_OVERHEAD
        with self._lock:
            if path in self._ram:
                return
            if self.stats.ram_bytes + nbytes <= self.budget_bytes:
                self._ram[path] = t
                self.stats.ram_bytes += nbytes
                self.stats.ram_entries += 1
                return
            disk_ok = (self.disk and self.disk_dir is not None
                       and self.stats.disk_bytes + nbytes <= self.disk_budget_bytes)
            if disk_ok:
                self.stats.disk_bytes += nbytes  # reserve before writing outside the lock
        if not disk_ok:
            self.stats.uncached += 1
            return
        self._write_disk(path, t, nbytes)

    def _write_disk(self, path: str, t: "torch.Tensor", nbytes: int) -> None:
        import numpy as np

        key = self._disk_key(path)
        if key is None:
            return
        f = self.disk_dir / key[:2] / f"{key}.npy"
        try:
            if not f.exists():
                f.parent.mkdir(parents=True, exist_ok=True)
                tmp = f.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
                with open(tmp, "wb") as fh:  # stored HWC, as decoded
                    np.save(fh, np.ascontiguousarray(t.permute(1, 2, 0).numpy()), allow_pickle=False)
                os.replace(tmp, f)
        except OSError:
            with self._lock:
                self.stats.disk_bytes -= nbytes
            return
        with self._lock:
            self._on_disk[path] = f
            self.stats.disk_entries += 1

    def _read_disk(self, path: str) -> "torch.Tensor | None":
        f = self._on_disk.get(path)
        if f is None:
            if not self.disk or self.disk_dir is None:
                return None
            # an earlier run may have left it on disk (same file, same size, same mtime)
            key = self._disk_key(path)
            if key is None:
                return None
            f = self.disk_dir / key[:2] / f"{key}.npy"
            if not f.exists():
                return None
        import numpy as np
        import torch

        try:
            arr = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) != self.short_side:
            return None
        t = torch.from_numpy(arr).permute(2, 0, 1)
        if path not in self._on_disk:  # adopt a file from an earlier run; promote to RAM if room
            nbytes = t.numel() + _ENTRY_OVERHEAD
            with self._lock:
                if self.stats.ram_bytes + nbytes <= self.budget_bytes and path not in self._ram:
                    self._ram[path] = t
                    self.stats.ram_bytes += nbytes
                    self.stats.ram_entries += 1
                else:
                    self._on_disk[path] = f
        return t
