"""Background jobs for the panels: superqt workers whose results never reach a dead widget.

A panel may be closed (or a test may end) while its job still runs; the job's ``returned`` /
``errored`` signals are then delivered later. Callbacks are wrapped so they only run while
their owner's C++ object is alive, and the owner keeps a reference to the running worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import shiboken6
from PySide6.QtCore import QObject


def _guard(owner: QObject, cb: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> None:
        if shiboken6.isValid(owner):
            cb(*args)

    return call


def start_worker(owner: QObject, fn: Callable[..., Any], *args: Any,
                 returned: Callable[[Any], Any] | None = None,
                 errored: Callable[[BaseException], Any] | None = None) -> Any:
    """Run ``fn(*args)`` in the thread pool; errors go to ``errored`` (never re-raised)."""
    from superqt.utils import create_worker

    w = create_worker(fn, *args, _start_thread=False, _ignore_errors=True)
    if returned is not None:
        w.returned.connect(_guard(owner, returned))
    if errored is not None:
        w.errored.connect(_guard(owner, errored))
    running: list[Any] = owner.__dict__.setdefault("_tls_workers", [])
    running.append(w)
    w.finished.connect(lambda: running.remove(w) if w in running else None)
    w.start()
    return w
