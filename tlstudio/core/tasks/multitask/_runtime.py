"""Small run plumbing of the multi-task driver (thread with progress, run folder, log, LR
schedule, loaders). Kept here so the driver does not reach into the engine's private names
while the shared loop (training/loop.py) is being built; the behaviour is the engine's."""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Generator
from datetime import datetime
from pathlib import Path
from typing import Any

from tlstudio.core.errors import UserError
from tlstudio.core.events import Event, Log, Progress, Warn
from tlstudio.core.runs import folder as runs

MAX_SKIPPED_LISTED = 50


class RunStopped(UserError):
    """Stop was pressed: a resumable checkpoint inside the loop, one line before it."""


def in_thread(fn: Callable[..., Any], task: str, cancel: threading.Event | None, **kwargs) -> Generator[Event, None, Any]:
    """Run fn(progress=cb, **kwargs) in a thread; yield its progress callbacks as Progress events."""
    q: queue.Queue = queue.Queue()
    out: dict[str, Any] = {}

    def progress(done: int, total: int | None = None) -> None:
        q.put(Progress(task=task, done=int(done), total=None if total is None else int(total)))

    def target() -> None:
        try:
            out["value"] = fn(progress=progress, **kwargs)
        except BaseException as exc:  # re-raised in the generator's thread
            out["error"] = exc
        finally:
            q.put(None)

    t = threading.Thread(target=target, name=f"tlstudio-mt-{task}", daemon=True)
    t.start()
    last = 0.0
    while True:
        if cancel is not None and cancel.is_set() and task == "download":
            raise RunStopped("Stopped during the download of the starting weights; nothing was trained yet.")
        try:
            item = q.get(timeout=0.1)
        except queue.Empty:
            continue
        if item is None:
            break
        now = time.monotonic()
        if now - last > 0.1 or (item.total and item.done >= item.total):
            last = now
            yield item
    t.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


def new_run_dir(config: Any, suffix: str = "mtl") -> Path:
    from tlstudio.core.paths import default_runs_dir

    if config.out_dir:
        return Path(config.out_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = default_runs_dir() / f"{stamp}-{config.backbone}-{suffix}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def mark_failed(run_dir: Path) -> None:
    try:
        info = runs.read_run(run_dir)
        if info.status == "running":
            info.status = "failed"
            runs.write_run(run_dir, info)
    except (OSError, UserError):
        pass


class Logger:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / runs.LOG_TXT

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, Log | Warn):
            kind = "WARNING" if isinstance(ev, Warn) else "INFO"
            try:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(f"{datetime.now().isoformat(timespec='seconds')} {kind} {ev.message}\n")
            except OSError:
                pass


def schedule(config: Any, batches_per_epoch: int) -> tuple[int, Callable[[int], float]]:
    """Linear warm-up, then cosine to 1% over the run (as the engine)."""
    spe = max(1, batches_per_epoch)
    warmup = int(round(config.warmup_epochs * spe))
    total = spe * config.epochs

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))

    return spe, f


def head_lr(opt) -> float:
    return max(g["lr"] for g in opt.param_groups)


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
