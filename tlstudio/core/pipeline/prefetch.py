"""Batches built ahead in a background thread while the model trains on the previous one.

The queue holds uint8 batches (a quarter of the float bytes); each becomes a float batch in the
consuming thread just before use. Torch ops in the data thread run single-threaded so they do
not fight the training step for the cores.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

from tlstudio.core.runtime import contention

PREFETCH_DEPTH = 1  # raw batches queued ahead (building one takes ~1/40 of a resnet18 step)

_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 0


class _data_thread_torch:
    """Torch ops in data threads run single-threaded: small ops split over cores only fight the
    training step's own threads (10x slower per op on a busy 2-core box). torch keeps one
    per-thread setting (OpenMP) plus a global default for threads created later; the global is
    restored when the last data thread ends."""

    def __enter__(self):
        global _threads_users, _threads_saved
        import torch

        with _threads_lock:
            if _threads_users == 0:
                _threads_saved = torch.get_num_threads()
            _threads_users += 1
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        global _threads_users
        import torch

        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0 and _threads_saved > 0:
                torch.set_num_threads(_threads_saved)


def _prefetch(make: Callable[[int], Any], count: int, threads: int, depth: int = PREFETCH_DEPTH,
              finish: Callable[[Any], Any] | None = None) -> Iterator[Any]:
    """Yield make(0..count-1) in order (skipping None), built `depth` items ahead in a thread;
    `finish` runs on each item in the consuming thread (turns raw uint8 batches into float ones
    just before use: the queue holds uint8, a quarter of the bytes)."""
    if count <= 0:
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for b in range(count):
                if stop.is_set():
                    return
                item = make(b)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
            q.put(done)
        except BaseException as e:  # surfaced in the consumer thread
            q.put(("__error__", e))

    def run() -> None:
        with _data_thread_torch():
            work()

    t = threading.Thread(target=run, name="tlstudio-batches", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, tuple) and len(item) == 2 and item[0] == "__error__":
                raise item[1]
            if item is not None:
                contention.apply_thread_changes()  # a re-check of the CPU load changed the thread count
                yield item if finish is None else finish(item)
                item = None  # drop the reference before the next one is built
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)
