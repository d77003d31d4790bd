"""Head-only training on cached features: the frozen body runs once per image (per view).

When every group but the head is frozen, the body's output for an image never changes, so
``model.forward_head(model.forward_features(x), pre_logits=True)`` (pooled pre-logits, under
inference_mode + the precision plan) is computed once and training only runs the classifier:
epochs 2..N cost almost nothing (benchmarks/RESULTS.md).

Augmentation: with a preset other than `none`, V augmented views per image are cached
(default 4) and epoch e uses view e % V. View v is exactly what the uncached pipeline feeds at
epoch v (same per-sample RNG), so runs of up to V epochs see the very same inputs; longer runs
reuse views (said in the log). Validation uses the deterministic eval transform.

Storage: a float32 array [V, N, D] (+ val [N_val, D]) in RAM when it fits the budget, else a
disk memmap under user_cache_dir()/features. Both persist on disk keyed by the model key,
a hash of the weights, the data config (input size...), the augmentation, seed, views and the
content hash of every image, so re-training the head on the same data skips the forward pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator, Iterator, Sequence

from tlstudio.core.events import Log, Progress
from tlstudio.core.pipeline.loaders import Loaders, _chunks, _sample_fields, _Source, default_threads
from tlstudio.core.runtime.inference import forward_chunked

if TYPE_CHECKING:
    import torch

DEFAULT_VIEWS = 4
KEEP_FEATURE_SETS = 8  # feature sets of earlier runs kept on disk (newest first)
_FORMAT = "feat-v1"


def head_module(model: Any) -> "torch.nn.Module":
    """The module that maps cached pre-logits to logits: the classifier (shared with `model`,
    so training it trains the model), preceded by the model's head dropout if it has one."""
    import torch

    clf = model.get_classifier()
    p = float(getattr(model, "drop_rate", 0.0) or 0.0)
    hd = getattr(model, "head_drop", None)
    if isinstance(hd, torch.nn.Dropout):
        p = float(hd.p)
    if p > 0:
        return torch.nn.Sequential(torch.nn.Dropout(p), clf)
    return clf


def extract_features(model: Any, x: "torch.Tensor") -> "torch.Tensor":
    """Pooled pre-logits of a timm model (what `head_module` consumes)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def weights_hash(model: Any, exclude_prefixes: Sequence[str] = ()) -> str:
    """Hash of every parameter and buffer except the head's (the frozen body decides the features)."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    for name, t in list(model.state_dict().items()):
        if any(name.startswith(p) for p in exclude_prefixes):
            continue
        h.update(name.encode())
        t = t.detach().to("cpu").contiguous()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        if t.numel():
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def file_hash(path: str) -> str:
    """Content hash of a file ("" if unreadable: the decoder reports why)."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return ""
    return h.hexdigest()


def _prune_feature_sets(parent: Path, keep: Path) -> None:
    """Keep the newest KEEP_FEATURE_SETS feature sets (plus the one in use); caches are rebuildable."""
    import shutil

    try:
        sets = sorted((d for d in parent.iterdir() if d.is_dir() and d != keep),
                      key=lambda d: d.stat().st_mtime, reverse=True)
    except OSError:
        return
    for d in sets[KEEP_FEATURE_SETS - 1:]:
        shutil.rmtree(d, ignore_errors=True)


class _FeatureBatches:
    def __init__(self, make, count):
        self._make, self._count = make, count

    def __iter__(self):
        return self._make()

    def __len__(self):
        return self._count


@dataclass
class FeatureLoaders(Loaders):
    """Loaders whose batches are (features [B, D] float32, y, idx)."""

    feats: Any = None  # [V, N, D]
    val_feats: Any = None  # [N_val, D]
    labels: Any = None
    val_labels: Any = None
    valid: Any = None  # bool [N]: images that loaded
    val_valid: Any = None
    views: int = 1
    in_ram: bool = True
    _feat_dev: Any = None

    def __post_init__(self) -> None:
        self.train = _FeatureBatches(lambda: self.train_batches(self.epoch), self.batches_per_epoch)
        self.val = _FeatureBatches(self.val_batches, self.val_batches_count)

    def _take(self, arr, rows):
        import numpy as np
        import torch

        if isinstance(arr, torch.Tensor):
            return arr[torch.as_tensor(rows, dtype=torch.long)]
        return torch.from_numpy(np.ascontiguousarray(arr[np.asarray(rows)]))

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator:
        import torch

        v = int(epoch) % self.views
        feats = self.feats[v]
        with _one_thread():
            for chunk in self.train_order(epoch)[int(start_batch):]:
                rows = [i for i in chunk if self.valid[i]]
                if not rows:
                    continue
                yield (self._take(feats, rows), self.labels[torch.as_tensor(rows)],
                       torch.as_tensor(rows, dtype=torch.long))

    def val_batches(self) -> Iterator:
        import torch

        n, bs = self.n_val, self.batch_size
        with _one_thread():
            for s in range(0, n, bs):
                rows = [i for i in range(s, min(n, s + bs)) if self.val_valid[i]]
                if rows:
                    yield (self._take(self.val_feats, rows), self.val_labels[torch.as_tensor(rows)],
                           torch.as_tensor(rows, dtype=torch.long))


class _one_thread:
    """While a feature epoch is iterated, the consuming thread (which runs the head's training
    step between batches) uses one torch thread: [B, D] x [D, C] matmuls are too small to split,
    and OpenMP hand-offs cost more than the work (up to 100x on a busy machine). Restored when the
    epoch ends or the iterator is closed."""

    def __enter__(self):
        import torch

        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.saved)


class FeatureCache:
    """Build (or reuse) cached features for a split; `prepare()` yields progress, returns loaders."""

    def __init__(self, model: Any, split: Any, data_cfg: dict, *, batch_size: int, augment: str, seed: int,
                 views: int | None = None, budget_mb: int = 2048, device: Any = "cpu", precision: Any = None,
                 model_key: str = "", workers: int | None = None):
        import torch

        self.model = model
        self.split = split
        self.data_cfg = dict(data_cfg)
        self.batch_size = int(batch_size)
        self.augment = augment
        self.seed = int(seed)
        self.views = max(1, int(views if views is not None else (1 if augment == "none" else DEFAULT_VIEWS)))
        if augment == "none":
            self.views = 1  # identical every epoch: one view is exact
        self.budget_bytes = max(0, int(budget_mb)) << 20
        self.device = torch.device(device)
        self.precision = precision
        self.model_key = model_key
        self.threads = default_threads() if workers is None else max(1, int(workers))
        self.failures: list = []
        self.reused = False
        self.path: Path | None = None

    # ------------------------------------------------------------------------------------
    def _key(self, hashes_train: list[str], hashes_val: list[str]) -> str:
        from tlstudio.core.models.weights import head_prefixes

        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(self.data_cfg.items())}
        parts = {
            "format": _FORMAT, "model": self.model_key, "weights": weights_hash(self.model, head_prefixes(self.model)),
            "cfg": cfg, "augment": self.augment, "seed": self.seed, "views": self.views,
            "prefix": "forward_head(pre_logits=True)", "precision": getattr(self.precision, "name", "fp32"),
            "device": self.device.type, "train": hashes_train, "val": hashes_val,
        }
        return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()

    def prepare(self, stop: threading.Event | None = None) -> Generator[Any, None, FeatureLoaders]:
        import numpy as np
        import torch

        from tlstudio.core.pipeline.decoded_cache import DecodedCache
        from tlstudio.core.pipeline.augment import scale_size
        from tlstudio.core.paths import user_cache_dir

        train, val = list(self.split.train), list(self.split.val)
        n, nv = len(train), len(val)
        yield Progress(task="cache", done=0, total=None, message="Hashing images for the feature cache")
        hashes_t = [file_hash(_sample_fields(s)[0]) for s in train]
        hashes_v = [file_hash(_sample_fields(s)[0]) for s in val]
        key = self._key(hashes_t, hashes_v)
        root = user_cache_dir() / "features" / key
        _prune_feature_sets(root.parent, keep=root)
        self.path = root
        labels = torch.tensor([_sample_fields(s)[1] for s in train], dtype=torch.long)
        val_labels = torch.tensor([_sample_fields(s)[1] for s in val], dtype=torch.long)

        done_marker = root / "complete.json"
        meta = None
        if done_marker.exists():
            try:
                meta = json.loads(done_marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                meta = None
        if meta is not None:
            try:
                feats = np.load(root / "train.npy", mmap_mode="r")
                vfeats = np.load(root / "val.npy", mmap_mode="r")
                valid = np.load(root / "valid.npy")
                vvalid = np.load(root / "val_valid.npy")
                self.failures = [self._skipped(p, r) for p, r in meta.get("failures", [])]
                self.reused = True
                os.utime(root)  # most recently used: pruned last
            except (OSError, ValueError):
                meta = None
        if meta is None:
            built = yield from self._build(train, val, root, stop, DecodedCache, scale_size)
            if built is None:  # stopped: hand back empty-but-valid loaders; the engine stops at its first check
                feats = np.zeros((self.views, n, 1), np.float32)
                vfeats = np.zeros((nv, 1), np.float32)
                valid, vvalid = np.ones(n, bool), np.ones(nv, bool)
            else:
                feats, vfeats, valid, vvalid = built

        dim = feats.shape[-1]
        total_bytes = feats.nbytes + vfeats.nbytes
        in_ram = total_bytes <= self.budget_bytes
        if in_ram:
            feats_t = torch.from_numpy(np.array(feats))
            vfeats_t = torch.from_numpy(np.array(vfeats))
        else:
            feats_t, vfeats_t = feats, vfeats  # memmap: pages come from disk as needed
        where = "in RAM" if in_ram else f"on disk ({root})"
        if self.augment == "none":
            aug = "no augmentation: one view per image, exact"
        else:
            aug = (f"'{self.augment}' augmentation: {self.views} cached views per image, epoch e uses view e % "
                   f"{self.views} (epochs beyond {self.views} repeat views instead of drawing new ones)")
        yield Log(f"Feature cache ({'reused' if self.reused else 'built'}): {n} train + {nv} val images, "
                  f"{dim}-d features, {total_bytes / 2**20:.1f} MB {where}; {aug}")

        loaders = FeatureLoaders(
            n_train=n, n_val=nv, failures=list(self.failures), batch_size=self.batch_size, seed=self.seed,
            threads=1, feats=feats_t, val_feats=vfeats_t, labels=labels, val_labels=val_labels,
            valid=np.asarray(valid, bool), val_valid=np.asarray(vvalid, bool), views=self.views, in_ram=in_ram)
        loaders.batches_per_epoch = len(_chunks(range(n), self.batch_size)) if n else 0
        loaders.__post_init__()
        return loaders

    @staticmethod
    def _skipped(path, reason):
        from tlstudio.core.pipeline.loaders import _skipped

        return _skipped(path, reason)

    def _build(self, train, val, root: Path, stop, DecodedCache, scale_size):
        import numpy as np
        import torch
        from concurrent.futures import ThreadPoolExecutor

        model = self.model
        was_training = model.training
        model.eval()
        plan = self.precision
        dc = DecodedCache(scale_size(self.data_cfg), str(self.data_cfg.get("interpolation") or "bilinear"),
                          budget_bytes=self.budget_bytes, disk=False)  # views re-read the decoded image
        failures: list = []
        failed: set[str] = set()
        common = dict(cache=dc, threads=self.threads, failures=failures, failed=failed)
        src_t = _Source(train, self.data_cfg, augment=self.augment, seed=self.seed, **common)
        src_v = _Source(val, self.data_cfg, augment="none", seed=self.seed, **common)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tlstudio-feat") if self.threads > 1 else None
        n, nv, V, bs = len(train), len(val), self.views, self.batch_size
        jobs = [(v, list(range(s, min(n, s + bs)))) for v in range(V) for s in range(0, n, bs)]
        jobs += [(-1, list(range(s, min(nv, s + bs)))) for s in range(0, nv, bs)]
        total = V * n + nv
        feats = vfeats = None
        root.mkdir(parents=True, exist_ok=True)
        done = 0
        t0 = time.perf_counter()
        try:
            from tlstudio.core.pipeline.loaders import _prefetch

            def make(j):
                v, rows = jobs[j]
                if v < 0:
                    return (v, src_v.batch(rows, 0, False, pool), len(rows))
                # view v = what the uncached pipeline gives at epoch v
                return (v, src_t.batch(rows, v, True, pool) if self.augment != "none" else
                        src_t.batch(rows, 0, False, pool), len(rows))

            for v, b, count in _prefetch(make, len(jobs), self.threads):
                if stop is not None and stop.is_set():
                    return None
                done += count
                if b is not None:
                    x, _, idx = b
                    if plan is not None:
                        x = plan.prepare_input(x)
                        ctx = plan.autocast()
                    else:
                        x = x.to(self.device)
                        import contextlib

                        ctx = contextlib.nullcontext()
                    with torch.inference_mode(), ctx:
                        f = forward_chunked(lambda c: extract_features(model, c), x).float().cpu().numpy()
                    if feats is None:
                        d = f.shape[1]
                        feats = np.lib.format.open_memmap(root / "train.npy.tmp", "w+", np.float32, (V, n, d))
                        vfeats = np.lib.format.open_memmap(root / "val.npy.tmp", "w+", np.float32, (nv, d))
                    rows = idx.numpy()
                    if v < 0:
                        vfeats[rows] = f
                    else:
                        feats[v, rows] = f
                rate = done / max(1e-6, time.perf_counter() - t0)
                yield Progress(task="cache", done=done, total=total,
                               message=f"Caching features ({rate:.0f} img/s)")
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            model.train(was_training)
        if feats is None:  # every image failed: nothing to train on (the engine reports failures)
            feats = np.zeros((V, n, 1), np.float32)
            vfeats = np.zeros((nv, 1), np.float32)
        else:
            feats.flush()
            vfeats.flush()
            del feats, vfeats
            os.replace(root / "train.npy.tmp", root / "train.npy")
            os.replace(root / "val.npy.tmp", root / "val.npy")
            feats = np.load(root / "train.npy", mmap_mode="r")
            vfeats = np.load(root / "val.npy", mmap_mode="r")
        bad = {f.path if hasattr(f, "path") else f[0] for f in failures}
        valid = np.array([_sample_fields(s)[0] not in bad for s in train], bool)
        vvalid = np.array([_sample_fields(s)[0] not in bad for s in val], bool)
        np.save(root / "valid.npy", valid)
        np.save(root / "val_valid.npy", vvalid)
        self.failures = failures
        meta = {"failures": [[f.path, f.reason] if hasattr(f, "path") else list(f) for f in failures],
                "views": V, "n": n, "n_val": nv}
        (root / "complete.json").write_text(json.dumps(meta), encoding="utf-8")
        return feats, vfeats, valid, vvalid
