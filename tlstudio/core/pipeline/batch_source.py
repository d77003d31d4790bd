"""Sample indices -> training batches: decode (or read the decoded cache), augment, normalise.

One `_Source` per sample list; the train and validation loaders, the eval loader and the feature
cache all turn indices into batches through it. An unreadable image is dropped from its batch
and recorded once in the shared `failures` list.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Sequence

from tlstudio.core.pipeline.augment import PRESETS, augment_one, normalise, sample_rng, scale_size
from tlstudio.core.pipeline.decoded_cache import DecodedCache, decode_resized, image_errors

if TYPE_CHECKING:
    import torch

Batch = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]
RawBatch = tuple["torch.Tensor", list, "torch.Tensor", "torch.Tensor"]  # uint8 x, erase boxes, y, idx


def _skipped(path: str, reason: str):
    from tlstudio.core.data.records import SkippedFile

    return SkippedFile(path=path, reason=reason)


def _sample_fields(s: Any) -> tuple[str, int]:
    if hasattr(s, "path"):
        return str(s.path), int(getattr(s, "label", -1))
    path, label = s  # (path, label) tuples are accepted too
    return str(path), int(label)


def default_threads() -> int:
    """Decode threads: as many as the cores torch may use (set_threads leaves one for the GUI), at most 4."""
    import torch

    return max(1, min(4, torch.get_num_threads()))


class _Source:
    """Turns sample indices into normalised batches (shared by the train and val iterables)."""

    def __init__(self, samples: Sequence[Any], data_cfg: dict, *, augment: str, seed: int,
                 cache: DecodedCache | None, threads: int, failures: list, failed: set[str],
                 pin: bool = False, channels_last: bool = False):
        if augment not in PRESETS:
            from tlstudio.core.errors import UserError

            raise UserError(f"unknown augmentation {augment!r}: use none, light or strong")
        fields = [_sample_fields(s) for s in samples]
        self.paths = [p for p, _ in fields]
        self.labels = [lab for _, lab in fields]
        self.size = int(data_cfg["input_size"][-1])
        self.short = scale_size(data_cfg)
        self.interp = str(data_cfg.get("interpolation") or "bilinear")
        self.mean = tuple(data_cfg.get("mean") or (0.485, 0.456, 0.406))
        self.std = tuple(data_cfg.get("std") or (0.229, 0.224, 0.225))
        self.augment = augment
        self.seed = int(seed)
        self.cache = cache
        self.threads = max(1, int(threads))
        self.failures = failures
        self.failed = failed
        self.pin = pin
        self.channels_last = bool(channels_last)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, i: int):
        path = self.paths[i]
        if path in self.failed:
            return None
        try:
            if self.cache is not None:
                return self.cache.get(path)
            return decode_resized(path, self.short, self.interp)
        except image_errors() as e:
            with self._lock:
                if path not in self.failed:
                    self.failed.add(path)
                    self.failures.append(_skipped(path, getattr(e, "reason", str(e))))
            return None

    def _augment(self, i: int, img, epoch: int, train: bool):
        if img is None:
            return None
        if train and self.augment != "none":
            return augment_one(img, self.size, self.augment, sample_rng(self.seed, epoch, i))
        return augment_one(img, self.size, "none", None)

    def _item(self, i: int, epoch: int, train: bool):
        return self._augment(i, self._image(i), epoch, train)

    def raw_batch(self, indices: Sequence[int], epoch: int, train: bool, pool: ThreadPoolExecutor | None) -> RawBatch | None:
        """Decode (if not cached) and augment: a uint8 batch, a quarter of the float batch's bytes,
        which is what waits in the prefetch queue. `finish` turns it into the float batch."""
        import torch

        # decode (PIL, GIL released) in the pool only when something is not cached yet; the
        # torch augmentation runs here, single-threaded (see prefetch._data_thread_torch)
        cache = self.cache
        misses = len(indices) if cache is None else sum(1 for i in indices if self.paths[i] not in cache)
        if pool is not None and misses > 1:
            imgs = list(pool.map(self._image, indices))
        else:
            imgs = [self._image(i) for i in indices]
        # each crop goes straight into the batch tensor: no list of crops next to a stacked copy
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        u8 = torch.empty((len(indices), 3, self.size, self.size), dtype=torch.uint8, memory_format=fmt)
        boxes, kept = [], []
        for i, img in zip(indices, imgs):
            item = self._augment(i, img, epoch, train)
            if item is not None:
                u8[len(kept)].copy_(item[0])
                boxes.append(item[1])
                kept.append(i)
        if not kept:
            return None
        y = torch.tensor([self.labels[i] for i in kept], dtype=torch.long)
        return u8[:len(kept)], boxes, y, torch.tensor(kept, dtype=torch.long)

    def finish(self, raw: RawBatch) -> Batch:
        """uint8 batch -> normalised float32 NCHW (channels_last memory when the model wants it, so
        the training step needs no layout copy); random-erasing boxes are zeroed after normalising."""
        u8, boxes, y, idx = raw
        x = normalise(u8, self.mean, self.std, channels_last=self.channels_last)
        for n, box in enumerate(boxes):
            if box is not None:
                t, l, h, w = box
                x[n, :, t:t + h, l:l + w] = 0.0
        if self.pin:
            x = x.pin_memory()
        return x, y, idx

    def batch(self, indices: Sequence[int], epoch: int, train: bool, pool: ThreadPoolExecutor | None) -> Batch | None:
        raw = self.raw_batch(indices, epoch, train, pool)
        return None if raw is None else self.finish(raw)
