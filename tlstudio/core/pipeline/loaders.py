"""Training/validation batches: seeded, resumable, cached, tolerant of files that vanish.

A batch is ``(x, y, idx)``: x float32 NCHW normalised with data_cfg mean/std at
data_cfg['input_size'], y long labels (-1 = unlabelled), idx long indices into the sample list
(split.train for train, split.val for val, `samples` for eval_loader).

Determinism: the order of epoch e is ``randperm(n, Generator(seed * 1000 + e))`` and each
sample's augmentation draws from an RNG seeded by (seed, e, index), so batch b of epoch e is a
pure function of (seed, e, b) - ``train_batches(e, start_batch=b)`` resumes mid-epoch exactly.

Speed: images are decoded and resized once into a DecodedCache (RAM within the budget, then
disk); augmentation works on the cached uint8 tensors. Batches are assembled in a background
thread (decode in a small thread pool; PIL and torch release the GIL) while the model trains
on the previous one. No worker processes: threads are safe with Qt and in a PyInstaller bundle,
and with the cache they are faster than processes here (benchmarks/RESULTS.md).

Failures: an image that cannot be read is dropped from its batch and recorded once in
``loaders.failures`` (SkippedFile); a batch left empty is skipped.

The pieces: `batch_source` (indices -> batches), `prefetch` (the background thread).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from tlstudio.core.runtime.allocator import bounded_memory
from tlstudio.core.pipeline.augment import scale_size
from tlstudio.core.pipeline.batch_source import (  # noqa: F401 - feature_cache imports the last two from here
    Batch,
    _Source,
    default_threads,
    _sample_fields,
    _skipped,
)
from tlstudio.core.pipeline.decoded_cache import DecodedCache
from tlstudio.core.pipeline.prefetch import PREFETCH_DEPTH, _prefetch

_SLACK_BYTES = 8 << 20  # thread stacks, PIL/numpy temporaries: measured 54-68 MB live for ~52 estimated


def _chunks(order: Sequence[int], batch_size: int) -> list[list[int]]:
    batches = [list(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
    # a trailing batch of one breaks BatchNorm in train mode: fold it into the previous batch
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return batches


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(int(seed) * 1000 + int(epoch))
    return torch.randperm(n, generator=g).tolist()


class _Epochs:
    """Iterable view: iterating gives the batches of the loaders' current epoch."""

    def __init__(self, loaders: "Loaders", train: bool):
        self._l = loaders
        self._train = train

    def __iter__(self) -> Iterator[Batch]:
        if self._train:
            return self._l.train_batches(self._l.epoch)
        return self._l.val_batches()

    def __len__(self) -> int:
        return self._l.batches_per_epoch if self._train else self._l.val_batches_count


@dataclass
class Loaders:
    train: Iterable = field(init=False)
    val: Iterable = field(init=False)
    n_train: int = 0
    n_val: int = 0
    batches_per_epoch: int = 0
    failures: list = field(default_factory=list)  # SkippedFile (path, reason), each path once
    batch_size: int = 32
    seed: int = 0
    epoch: int = 0
    cache: DecodedCache | None = None
    threads: int = 1
    reserve_bytes: int = 0  # working memory (batches in flight) taken from the cache budget
    _train_src: Any = None
    _val_src: Any = None
    _pool: Any = None

    def __post_init__(self) -> None:
        self.train = _Epochs(self, True)
        self.val = _Epochs(self, False)

    @property
    def val_batches_count(self) -> int:
        return (self.n_val + self.batch_size - 1) // self.batch_size if self.n_val else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def train_order(self, epoch: int) -> list[list[int]]:
        return _chunks(epoch_order(self.n_train, self.seed, epoch), self.batch_size)

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Batches start_batch.. of epoch `epoch` (positional: empty batches are skipped, not renumbered)."""
        chunks = self.train_order(epoch)[int(start_batch):]
        src, pool = self._train_src, self._pool
        return _prefetch(lambda b: src.raw_batch(chunks[b], epoch, True, pool), len(chunks), self.threads,
                         finish=src.finish)

    def val_batches(self) -> Iterator[Batch]:
        n, bs = self.n_val, self.batch_size
        chunks = [list(range(i, min(n, i + bs))) for i in range(0, n, bs)]
        src, pool = self._val_src, self._pool
        return _prefetch(lambda b: src.raw_batch(chunks[b], 0, False, pool), len(chunks), self.threads,
                         finish=src.finish)

    def warm_cache(self, stop: threading.Event | None = None, chunk: int = 64) -> Iterator[Any]:
        """Optional: decode every train and val image into the decoded cache now, on all decode
        threads, yielding Progress events (task "cache"). Epoch 1 then trains at warm speed instead
        of decoding alongside the training step. Unreadable files land in `failures` as usual.
        Does nothing without a cache."""
        from tlstudio.core.events import Progress

        if self.cache is None:
            return
        jobs = [(self._train_src, i) for i in range(self.n_train)] + [(self._val_src, i) for i in range(self.n_val)]
        total = len(jobs)
        yield Progress(task="cache", done=0, total=total, message="Decoding images into the cache")
        for s in range(0, total, chunk):
            if stop is not None and stop.is_set():
                return
            part = jobs[s:s + chunk]
            if self._pool is not None:
                list(self._pool.map(lambda j: j[0]._image(j[1]), part))
            else:
                for src, i in part:
                    src._image(i)
            yield Progress(task="cache", done=min(total, s + chunk), total=total,
                           message="Decoding images into the cache")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def working_set_bytes(batch_size: int, data_cfg: dict, threads: int) -> int:
    """Memory the pipeline needs besides the cache, independent of the data set's size: the float
    batch being trained on plus the one being finished, the uint8 batches queued and being built,
    and one decoded full-size image per decode thread. Counted inside the cache budget, so the
    pipeline as a whole stays within it."""
    size = int(data_cfg["input_size"][-1])
    short = scale_size(data_cfg)
    item = 3 * size * size
    # 3 float batches (4 bytes a value: trained on, being finished, a layout/pinned copy);
    # uint8 batches queued + being built + being finished; decode buffers; allocator slack
    return (int(batch_size) * item * (4 * 3 + PREFETCH_DEPTH + 2)
            + max(1, int(threads)) * 3 * short * 2 * short * 2 + _SLACK_BYTES)


def _make_cache(data_cfg: dict, ram_bytes: int) -> DecodedCache:
    dc = DecodedCache(scale_size(data_cfg), str(data_cfg.get("interpolation") or "bilinear"),
                      budget_bytes=ram_bytes)
    if dc.disk_dir is not None:  # earlier runs' spill files: keep the disk cache bounded across runs
        from tlstudio.core.pipeline.decoded_cache import prune_dir

        prune_dir(dc.disk_dir, dc.disk_budget_bytes)
    return dc


def build_loaders(split: Any, data_cfg: dict, *, batch_size: int, augment: str, seed: int,
                  workers: int | None = None, cache: str = "auto", cache_budget_mb: int = 2048,
                  device: Any = "cpu", channels_last: bool = False) -> Loaders:
    """Train/val loaders for a Split. `workers` = decode threads (None: up to 4, one per core);
    `cache` auto|off (decoded-image cache in RAM within cache_budget_mb, overflow on disk).
    `cache_budget_mb` bounds the whole pipeline: the batches in flight (working_set_bytes) are
    taken from it first, the decoded cache gets the rest (RAM; beyond it, the disk cache).
    `channels_last` = batches in NHWC memory (for a model in channels_last)."""
    import torch

    threads = default_threads() if workers is None else max(1, int(workers))
    bounded_memory()  # freed batch buffers go back to the OS (allocator.py)
    reserve = working_set_bytes(batch_size, data_cfg, threads)
    # a budget too small for the batches in flight still caches, on disk only (RAM part 0)
    ram = max(0, (int(cache_budget_mb) << 20) - reserve)
    dc = None if cache == "off" or cache_budget_mb <= 0 else _make_cache(data_cfg, ram)
    failures: list = []
    failed: set[str] = set()
    pin = torch.device(device).type == "cuda"
    common = dict(cache=dc, threads=threads, failures=failures, failed=failed, pin=pin,
                  channels_last=channels_last)
    train_src = _Source(split.train, data_cfg, augment=augment, seed=seed, **common)
    val_src = _Source(split.val, data_cfg, augment="none", seed=seed, **common)
    n_train = len(train_src)
    loaders = Loaders(n_train=n_train, n_val=len(val_src), failures=failures,
                      batch_size=int(batch_size), seed=int(seed), cache=dc, threads=threads,
                      reserve_bytes=reserve,
                      _train_src=train_src, _val_src=val_src,
                      _pool=ThreadPoolExecutor(threads, thread_name_prefix="tlstudio-decode") if threads > 1 else None)
    loaders.batches_per_epoch = len(_chunks(range(n_train), loaders.batch_size)) if n_train else 0
    return loaders


class _EvalIterable:
    def __init__(self, src: _Source, batch_size: int, pool: ThreadPoolExecutor | None):
        self._src, self._bs, self._pool = src, int(batch_size), pool
        self.failures = src.failures

    def __len__(self) -> int:
        return (len(self._src) + self._bs - 1) // self._bs

    def __iter__(self) -> Iterator[Batch]:
        n = len(self._src)
        chunks = [list(range(i, min(n, i + self._bs))) for i in range(0, n, self._bs)]
        return _prefetch(lambda b: self._src.raw_batch(chunks[b], 0, False, self._pool), len(chunks),
                         self._src.threads, finish=self._src.finish)


def eval_loader(samples: Sequence[Any], data_cfg: dict, *, batch_size: int, workers: int | None = None) -> _EvalIterable:
    """Deterministic eval batches (resize short side to input/crop_pct, centre crop, normalise).
    Unreadable files are dropped and listed in `.failures`; no caching (one pass)."""
    threads = default_threads() if workers is None else max(1, int(workers))
    src = _Source(samples, data_cfg, augment="none", seed=0, cache=None, threads=threads,
                  failures=[], failed=set())
    pool = ThreadPoolExecutor(threads, thread_name_prefix="tlstudio-eval") if threads > 1 else None
    return _EvalIterable(src, batch_size, pool)
