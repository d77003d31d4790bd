"""Forward passes without gradients, in CPU-friendly chunks.

On this project's CPUs a batch of 32-64 images at 224 px runs 1.4-3x slower per image than the
same images in chunks of 4-8: the activations of a big batch no longer fit the caches, and
depthwise convolutions (EfficientNet) suffer most. Measured with 2 threads on the quiet 2-core
box, ms per image at 224 px, chunk 4 / 8 / 64: tf_efficientnet_lite0 19.8 / 26.4 / 46.0,
resnet18 27.9 / 26.5 / 38.0, resnet50 60.5 / 69.9 / 115.3, convnext_atto 12.0 / 10.5 / 17.5,
vit_tiny 18.6 / 17.8 / 23.1; at 112 px the best chunk was 16 (benchmarks/RESULTS.md).
So every gradient-free forward (feature caches, validation, evaluation, anomaly features, ranking)
goes through `forward_chunked`, which keeps the activation volume of a chunk near 6 images at
224 px. GPUs keep whole batches (they want them large). Training steps are not chunked here:
that would change BatchNorm's batch statistics.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Callable, Iterator

# images of 224 x 224 per chunk: the sweet spot of the measurements above
_PIXELS_224 = 224 * 224
_CHUNK_AT_224 = 6


def cpu_chunk(height: int, width: int, batch: int) -> int:
    """Images per forward chunk on a CPU for inputs of height x width (at least 4, at most batch).
    `TLSTUDIO_INFER_CHUNK` overrides it (0 = whole batches)."""
    env = os.environ.get("TLSTUDIO_INFER_CHUNK", "").strip()
    if env:
        n = int(env)
        return batch if n <= 0 else max(1, min(batch, n))
    per = max(4, round(_CHUNK_AT_224 * _PIXELS_224 / max(1, height * width)))
    return max(1, min(batch, per))


def _cat(parts: list[Any]) -> Any:
    import torch

    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, 0)
    if isinstance(first, (list, tuple)):
        return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _cat([p[k] for p in parts]) for k in first}
    raise TypeError(f"cannot join outputs of type {type(first).__name__}")


# Other programs' CPU use, sampled at most every _LOAD_TTL_S seconds: (time, shared?)
_LOAD_TTL_S = 5.0
_load_cache: list[tuple[float, bool]] = []
_load_lock = threading.Lock()


def cpu_shared() -> bool:
    """Whether other programs keep at least SHARED_FROM of a core busy now (sampled over 0.1 s,
    remembered for a few seconds so that a stream of small batches does not pay it each time)."""
    from tlstudio.core.runtime import contention
    from tlstudio.core.runtime.cpu_load import sample_load

    now = time.monotonic()
    with _load_lock:
        if _load_cache and now - _load_cache[0][0] < _LOAD_TTL_S:
            return _load_cache[0][1]
    load = sample_load(window_s=0.1, polls=2)
    shared = load is not None and load.others >= contention.SHARED_FROM
    with _load_lock:
        _load_cache[:] = [(time.monotonic(), shared)]
    return shared


@contextlib.contextmanager
def _threads_for_shared_cpu() -> Iterator[None]:
    """One torch thread for a gradient-free forward while other programs share the CPU.

    With the default OpenMP spin-waiting, two threads whose partner waits for a core burn their
    time slices: an anomaly map (score + map of one 224 px image) took 385-1,425 CPU ms with 2
    threads at load 10 against 80 CPU ms with one. Anomaly predict of 12 images (measured in one
    run, 2 busy loops): 132-137 -> 86-88 CPU ms per image, wall 130-143 -> 145-154 ms; with more
    programs than that (load 14): CPU 158-168 -> 87-91 ms, wall 209-224 -> 189-197 ms. A training
    run of this process already adapts the threads and waiting (contention.ContentionMonitor):
    then nothing changes here.
    `TLSTUDIO_CPU_SHARING=off` switches it off as for training."""
    import torch

    from tlstudio.core.runtime import contention

    if (torch.get_num_threads() <= 1 or contention.current_monitor() is not None
            or os.environ.get("TLSTUDIO_CPU_SHARING", "").lower() in ("off", "0", "no") or not cpu_shared()):
        yield
        return
    with one_thread():
        yield


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside the block (the caller's count restored after)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def forward_chunked(fn: Callable[[Any], Any], x: Any) -> Any:
    """`fn(x)` for a batch `x` [N, C, H, W], run chunk by chunk on a CPU and joined along dim 0
    (on one thread while other programs share the CPU and no training run adapts it).
    The outputs may be a tensor or a (nested) tuple, list or dict of tensors with the batch first.
    Call it inside `torch.inference_mode()` / `no_grad()` as you would call `fn`."""
    if getattr(x, "dim", None) is None or x.dim() != 4 or x.device.type != "cpu":
        return fn(x)
    n = int(x.shape[0])
    chunk = cpu_chunk(int(x.shape[-2]), int(x.shape[-1]), n)
    with _threads_for_shared_cpu():
        if chunk >= n:
            return fn(x)
        return _cat([fn(x[i:i + chunk]) for i in range(0, n, chunk)])


@contextlib.contextmanager
def compute_scope(leave_one_core: bool = False, threads: int | None = None) -> Iterator[int]:
    """A job without a training loop (ranking features, explanations, memory banks) computes as a
    run does: torch threads from the CPU load, OpenMP threads that sleep instead of spinning when
    other programs share the cores (runtime/contention.py, issue 18), heap reuse for the big
    activation buffers. Yields the thread count."""
    from tlstudio.core.runtime import allocator, contention, precision

    with allocator.training_allocator():
        n = precision.set_threads(leave_one_core, threads)
        mine = contention.current_monitor()
        try:
            yield n
        finally:  # the job is over: no monitor left behind (unless another job replaced it)
            if contention.current_monitor() is mine:
                contention.stop_monitor()
