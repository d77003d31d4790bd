"""torch and timm: imported off the UI thread, one thread at a time.

The window opens without them; shortly after it shows, ``preload()`` imports them in a
background thread so the model list and the first training start quickly. Concurrent first
imports of torch from two threads can fail half-way (partially initialised submodules), so
every background job that needs them calls ``ensure_imported()`` first, which serialises them.
"""

from __future__ import annotations

import logging
import threading
import time

_LOCK = threading.Lock()
_done = False
log = logging.getLogger("tlstudio.gui")


def ensure_imported() -> None:
    global _done
    if _done:
        return
    with _LOCK:
        if _done:
            return
        t0 = time.perf_counter()
        import timm  # noqa: F401
        import torch  # noqa: F401

        _done = True
        log.info("torch and timm imported in %.1f s", time.perf_counter() - t0)


def needing_torch(fn):
    """``fn`` for a worker thread that uses torch or timm: run after ``ensure_imported()``, as this
    module asks of every such job (the anomaly Fit step's memory plan starts as soon as a folder of
    normal images opens, possibly while the preload is still importing)."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        ensure_imported()
        return fn(*args, **kwargs)

    return run


def preload() -> None:
    """Start the import in a daemon thread (returns at once)."""
    if not _done:
        threading.Thread(target=_safe, name="tlstudio-preload", daemon=True).start()


def _safe() -> None:
    try:
        ensure_imported()
    except Exception:  # noqa: BLE001 - the job that needs them will report the problem
        log.exception("preloading torch/timm failed")
