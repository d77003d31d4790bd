"""The run plumbing the multi-task driver takes from the engine (progress thread, stop, log,
failure marking, LR schedule), plus what differs for it: its run-folder name and its loaders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tlstudio.core.training.engine import RunLogger as Logger  # noqa: F401 - the driver's names
from tlstudio.core.training.engine import mark_failed  # noqa: F401
from tlstudio.core.training.loop import head_lr, set_epoch_train_mode  # noqa: F401
from tlstudio.core.training.prepare import MAX_SKIPPED_LISTED, RunStopped, in_thread  # noqa: F401
from tlstudio.core.training.prepare import schedule as _schedule


def new_run_dir(config: Any, suffix: str = "mtl") -> Path:
    from tlstudio.core.runs.folder import fresh_run_dir

    return Path(config.out_dir) if config.out_dir else fresh_run_dir(f"{config.backbone}-{suffix}")


def schedule(config: Any, batches_per_epoch: int) -> tuple[int, Callable[[int], float]]:
    return _schedule(config, int(batches_per_epoch))


def make_loaders(config, model, split, data_cfg, device, plan, batch_size, features_mode, stop):
    """Loaders: cached pooled body features (head-only) or decoded images."""
    if features_mode:
        from tlstudio.core.pipeline.feature_cache import DEFAULT_VIEWS, FeatureCache

        cache = FeatureCache(model, split, data_cfg, batch_size=batch_size, augment=config.augment, seed=config.seed,
                             views=min(DEFAULT_VIEWS, max(1, config.epochs)), budget_mb=config.cache_budget_mb,
                             device=device, precision=plan,
                             model_key=f"{config.backbone}|{config.init}|{config.weights_file}|{config.init_run}")
        return (yield from cache.prepare(stop=stop))
    from tlstudio.core.pipeline import loaders as pipeline

    loaders = pipeline.build_loaders(split, data_cfg, batch_size=batch_size, augment=config.augment, seed=config.seed,
                                     workers=config.workers, cache=config.cache, cache_budget_mb=config.cache_budget_mb,
                                     device=device, channels_last=False)
    yield from loaders.warm_cache(stop)
    return loaders
