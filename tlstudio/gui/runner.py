"""JobRunner: runs one engine generator at a time in a background thread.

The engine's generators (``engine.fit``, ``engine.resume``, ``distill...``) take a ``stop`` and a
``pause`` ``threading.Event`` and check them every batch. Stop sets ``stop``: the engine saves a
checkpoint and returns, so nothing is lost; we never kill the thread. Pause sets ``pause``; the
runner also holds the generator between two events while paused, so pausing works even for
generators that do not look at ``pause``.

A dedicated QThread (not the global QThreadPool) keeps a long training from starving other
background jobs (scans, thumbnails) and lets ``wait()`` wait for exactly this job.

Events are handed over through a deque with a single "wake" signal in flight, so a fast engine
never floods the UI event queue with one queued call per batch; the UI thread drains the deque
and emits ``event`` once per engine event, in order, followed by ``finished`` or ``failed``.
"""

from __future__ import annotations

import collections
import threading
import time
import traceback
from typing import Any, Callable, Generator

from PySide6.QtCore import QObject, QThread, Signal, Slot

Factory = Callable[[threading.Event, threading.Event], Generator[Any, None, Any]]

# Strong references to job threads until they have ended: a QThread destroyed while running
# aborts the process ("QThread: Destroyed while thread is still running"), which would happen
# if a panel owning a JobRunner went away (or the app quit) in the middle of a job.
_LIVE: set["_JobThread"] = set()
_QUIT_HOOKED = False


def wait_all(timeout_ms: int = 30_000) -> bool:
    """Wait for every job thread to end (the app is quitting). True if all ended in time."""
    deadline = time.monotonic() + timeout_ms / 1000
    ok = True
    for t in list(_LIVE):
        ok = t.wait(max(0, int((deadline - time.monotonic()) * 1000))) and ok
    return ok


def stop_all() -> None:
    """Set the stop flag of every running job (the app is quitting): each saves what it must
    and returns after its current batch."""
    for t in list(_LIVE):
        t._stop.set()
        t._pause.clear()


def _hook_quit() -> None:
    global _QUIT_HOOKED
    if _QUIT_HOOKED:
        return
    from PySide6.QtCore import QCoreApplication

    app = QCoreApplication.instance()
    if app is not None:
        # e.g. an evaluation still running when the window closes: stop it, wait a little
        app.aboutToQuit.connect(lambda: (stop_all(), wait_all(5_000)))
        _QUIT_HOOKED = True


class _JobThread(QThread):
    wake = Signal()  # events are waiting in the deque
    done = Signal(bool, object, str, str)  # ok, return value, message, traceback

    def __init__(self, factory: Factory, stop: threading.Event, pause: threading.Event,
                 queue: collections.deque, lock: threading.Lock, needs_torch: bool = True,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._factory, self._stop, self._pause = factory, stop, pause
        self._needs_torch = needs_torch
        self._queue, self._lock = queue, lock
        self._wake_pending = False

    def clear_wake(self) -> None:
        with self._lock:
            self._wake_pending = False

    def _push(self, item: Any) -> None:
        with self._lock:
            self._queue.append(item)
            need_wake = not self._wake_pending
            self._wake_pending = True
        if need_wake:
            self.wake.emit()

    def run(self) -> None:  # worker thread
        try:
            if self._needs_torch:
                # the first import of torch must not race the window's background preload
                # (two threads importing torch at once fail half-way): wait for it, or do it
                from tlstudio.gui.heavy import ensure_imported

                ensure_imported()
            gen = self._factory(self._stop, self._pause)
            while True:
                try:
                    item = next(gen)
                except StopIteration as exc:
                    result = exc.value
                    break
                self._push(item)
                # Hold here while paused (the engine may also hold inside its batch loop).
                while self._pause.is_set() and not self._stop.is_set():
                    self._stop.wait(0.05)
        except BaseException as exc:  # noqa: BLE001 - everything must reach the UI, never a silent crash
            msg = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.done.emit(False, None, msg, traceback.format_exc())
            return
        self.done.emit(True, result, "", "")


class JobRunner(QObject):
    """Run ``factory(stop, pause)`` -> generator of events in a background thread.

    Signals (all delivered on the UI thread):
      event(object)          every yielded event, in order
      finished(object)       the generator's return value (after the last ``event``)
      failed(str, str)       message, traceback text (after the last ``event``)
      running_changed(bool)
      paused_changed(bool)
    """

    event = Signal(object)
    finished = Signal(object)
    failed = Signal(str, str)
    running_changed = Signal(bool)
    paused_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread: _JobThread | None = None
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._queue: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._running = False
        self.owner: Any = None  # who started the current/last job (panels filter on it)

    # --- state -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._running

    @property
    def paused(self) -> bool:
        return self._running and self._pause.is_set()

    @property
    def stopping(self) -> bool:
        return self._running and self._stop.is_set()

    # --- control ---------------------------------------------------------------------------
    def start(self, factory: Factory, owner: Any = None, *, needs_torch: bool = True) -> None:
        """Run the job. ``needs_torch``: import torch/timm first (serialised with the preload);
        only jobs that never touch torch (tests' fakes) pass False."""
        if self._running:
            raise RuntimeError("a job is already running; stop it first")
        if self._thread is not None:  # the previous thread has emitted done; let it exit
            self._thread.wait(5000)
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._queue = collections.deque()
        self.owner = owner
        th = _JobThread(factory, self._stop, self._pause, self._queue, self._lock, needs_torch)
        for old in [t for t in _LIVE if t.isFinished()]:
            _LIVE.discard(old)
        _LIVE.add(th)
        _hook_quit()
        th.wake.connect(self._drain)
        th.done.connect(self._on_done)
        self._thread = th
        self._running = True
        self.running_changed.emit(True)
        th.start(QThread.Priority.LowPriority)

    def pause(self) -> None:
        if self._running and not self._pause.is_set():
            self._pause.set()
            self.paused_changed.emit(True)

    def resume(self) -> None:
        if self._pause.is_set():
            self._pause.clear()
            self.paused_changed.emit(False)

    def stop(self) -> None:
        """Ask the job to stop; it saves a checkpoint and returns (``finished`` follows)."""
        if self._running:
            self._stop.set()
            if self._pause.is_set():  # a paused engine must wake up to see the stop
                self._pause.clear()
                self.paused_changed.emit(False)

    def wait(self, timeout_ms: int = 30_000) -> bool:
        """Block until the job's thread has ended (True) or the timeout passed (False).

        Pending events, ``finished``/``failed`` and ``running_changed`` are delivered before
        returning, so callers (e.g. closeEvent) see the final state.
        """
        th = self._thread
        if th is None:
            return True
        ok = th.wait(max(0, int(timeout_ms)))
        if ok:
            from PySide6.QtCore import QCoreApplication

            # deliver the queued wake/done signals now
            QCoreApplication.sendPostedEvents(self)
            QCoreApplication.sendPostedEvents(th)
            QCoreApplication.processEvents()
        return ok and not self._running

    # --- UI thread side ----------------------------------------------------------------------
    @Slot()
    def _drain(self) -> None:
        th = self._thread
        if th is not None:
            th.clear_wake()
        while True:
            with self._lock:
                if not self._queue:
                    break
                item = self._queue.popleft()
            self.event.emit(item)

    @Slot(bool, object, str, str)
    def _on_done(self, ok: bool, result: Any, message: str, tb: str) -> None:
        if not self._running:
            return
        self._drain()  # events yielded before the end come first
        self._running = False
        self._pause.clear()
        self.running_changed.emit(False)
        if ok:
            self.finished.emit(result)
        else:
            self.failed.emit(message, tb)
