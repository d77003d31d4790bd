"""Features of one candidate on the sampled images, with its own preprocessing, through the
engine's FeatureCache (so a following head-only training finds them), and its latency."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from typing import TYPE_CHECKING

from tlstudio.core.events import Log, Warn
from tlstudio.core.tasks.ranking.candidates import Candidate
from tlstudio.core.tasks.ranking.results import RankRow

if TYPE_CHECKING:
    from tlstudio.core.tasks.ranking.job import RankConfig


def sample_split(split, n_max: int, seed: int = 0):
    """The training split itself when it has at most n_max images (so training reuses the
    cached features), else a stratified subsample of train and val with every class kept."""
    from tlstudio.core.data.dataset import Split

    total = len(split.train) + len(split.val)
    if total <= n_max:
        return split, False
    rng = random.Random(seed)
    frac = n_max / total

    def take(samples):
        by = defaultdict(list)
        for s in samples:
            by[s.label].append(s)
        out = []
        for label in sorted(by):
            group = sorted(by[label], key=lambda s: s.path)
            k = max(min(2, len(group)), round(len(group) * frac))
            out += rng.sample(group, min(k, len(group)))
        return sorted(out, key=lambda s: (s.label, s.path))

    return Split(train=take(split.train), val=take(split.val), test=[], seed=split.seed,
                 val_fraction=split.val_fraction), True


def candidate_features(cand: Candidate, split, classes, config: RankConfig, stop, row: RankRow):
    """(features [N, D], valid mask [N]) for train+val of ``split``, or None when stopped."""
    import numpy as np
    import torch

    from tlstudio.core.models.backbones import create_model, data_config
    from tlstudio.core.models.weights import head_prefixes
    from tlstudio.core.pipeline.feature_cache import FeatureCache
    from tlstudio.core.runtime import precision

    logs: list[str] = []
    model = create_model(cand.backbone, len(classes), init=cand.init, weights_file=cand.weights_file,
                         init_run=cand.init_run, log=logs.append)
    for m in logs:
        yield Log(m)
    model.eval()
    heads = head_prefixes(model)
    row.params = sum(p.numel() for n_, p in model.named_parameters() if not any(n_.startswith(h) for h in heads))
    cfg = data_config(model, cand.image_size or config.image_size)
    row.input_size = int(cfg["input_size"][-1])
    device = precision.resolve_device(config.device)
    plan = precision.choose_precision(device, model, config.precision)
    plan.prepare_model(model)
    cache = FeatureCache(model, split, cfg, batch_size=config.batch_size, augment="none", seed=config.seed,
                         views=1, budget_mb=config.cache_budget_mb, device=device, precision=plan,
                         model_key=cand.model_key())
    loaders = yield from cache.prepare(stop=stop)
    if stop is not None and stop.is_set():
        return None
    row.cache_reused = bool(cache.reused)
    f = np.concatenate([np.asarray(loaders.feats[0]), np.asarray(loaders.val_feats)], 0).astype(np.float64)
    valid = np.concatenate([np.asarray(loaders.valid, bool), np.asarray(loaders.val_valid, bool)])
    for fail in cache.failures[:5]:
        yield Warn(f"{getattr(fail, 'path', fail)}: {getattr(fail, 'reason', '')}", path=getattr(fail, "path", None))
    row.feature_dim = int(f.shape[1])
    if config.latency:
        row.latency_ms = round(1000 * latency(model, row.input_size, device), 2)
    del model, loaders
    torch.set_grad_enabled(True)
    return f, valid


def latency(model, size: int, device, repeats: int = 5) -> float:
    """Seconds per image, batch 1, on one CPU thread (or the GPU): the best of a few runs.
    One thread keeps candidates comparable on a busy machine, where two threads spin against
    other work and time 10x worse; the best run is the least disturbed one."""
    import torch

    from tlstudio.core.tasks.ranking.probes import one_thread

    model.float()
    x = torch.randn(1, 3, size, size, device=device)
    times = []
    with one_thread(), torch.inference_mode():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # the first call pays for kernel selection
                times.append(time.perf_counter() - t0)
    return min(times)
