"""Start the desktop app: QApplication, style, logging, crash handlers, the main window.

``run_app(argv)``: argv may hold ``--sample``, a folder to open, or a ``.tlsproj`` project
(also after ``--project``). ``TLSTUDIO_SMOKE=1``: open the window, load the bundled sample,
wait for the scan, print ``SMOKE OK <n_classes> <n_images>`` and exit 0 (exit 1 on failure).

Errors never end the app silently: an uncaught exception in the UI thread goes to the log file
and to a dialog (the traceback behind "Show Details..."); faulthandler writes hard crashes
(segfaults) to the same log file.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import time
from typing import Any

from tlstudio.gui.qt_app import make_app

__all__ = ["install_excepthook", "make_app", "run_app", "setup_logging"]

_T0 = time.perf_counter()
log = logging.getLogger("tlstudio")
_fault_file: Any = None  # kept open for faulthandler for the life of the process


def setup_logging() -> str:
    """Log to tlstudio.core.paths.log_file() (rotated), and enable faulthandler there."""
    global _fault_file
    from logging.handlers import RotatingFileHandler

    from tlstudio.core.paths import log_file

    path = log_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = RotatingFileHandler(path, maxBytes=2_000_000, backupCount=2, encoding="utf-8")
    except OSError:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("tlstudio")
    if not any(getattr(h, "baseFilename", None) == getattr(handler, "baseFilename", 0) for h in root.handlers):
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        if _fault_file is None:
            _fault_file = open(path.with_suffix(".crash.log"), "a", encoding="utf-8")  # noqa: SIM115
            import atexit

            atexit.register(_close_fault_file)
        faulthandler.enable(file=_fault_file, all_threads=True)
    except (OSError, ValueError):
        faulthandler.enable()
    return str(path)


def _close_fault_file() -> None:
    global _fault_file
    if _fault_file is not None:
        faulthandler.disable()
        _fault_file.close()
        _fault_file = None


def _excepthook(etype, value, tb) -> None:  # noqa: ANN001
    """Uncaught exceptions (UI thread and Python threads): log, then show a dialog; keep running."""
    import traceback

    if issubclass(etype, KeyboardInterrupt):
        sys.__excepthook__(etype, value, tb)
        return
    details = "".join(traceback.format_exception(etype, value, tb))
    log.error("uncaught exception:\n%s", details)
    try:
        from PySide6.QtCore import QThread
        from PySide6.QtWidgets import QApplication

        app = QApplication.instance()
        if app is None:
            return
        if QThread.currentThread() is not app.thread():
            # a widget may only be made on the UI thread: hand the exception over (queued signal)
            if _bridge is not None:
                _bridge.raised.emit(etype, value, tb)
            return
        from tlstudio.core.errors import UserError
        from tlstudio.gui.widgets.error_dialog import show_error

        if isinstance(value, UserError):
            show_error(app.activeWindow(), "TL Studio", str(value))
        else:
            from tlstudio.core.paths import log_file

            show_error(app.activeWindow(), "TL Studio: unexpected error",
                       f"Something went wrong: {etype.__name__}: {value}\n\nThe app keeps running; "
                       f"details are in {log_file()}.", details)
    except Exception:  # noqa: BLE001 - the hook itself must never raise
        sys.__excepthook__(etype, value, tb)


_bridge: Any = None


def install_excepthook() -> None:
    """sys.excepthook and threading.excepthook: log + dialog. Call on the UI thread."""
    import threading

    from PySide6.QtCore import QObject, Signal

    global _bridge
    if _bridge is None:
        class _Bridge(QObject):
            raised = Signal(object, object, object)

        _bridge = _Bridge()  # lives on the UI thread: its signal is delivered there
        _bridge.raised.connect(_excepthook)
    sys.excepthook = _excepthook
    threading.excepthook = lambda a: _excepthook(a.exc_type, a.exc_value, a.exc_traceback)


def _parse(argv: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"sample": False, "project": None, "folder": None}
    it = iter(argv)
    for a in it:
        if a == "--sample":
            out["sample"] = True
        elif a == "--project":
            out["project"] = next(it, None)
        elif a.endswith(".tlsproj"):
            out["project"] = a
        elif a.endswith(".zip") and os.path.isfile(a):
            out["zip"] = a
        elif not a.startswith("-") and os.path.isdir(a):
            out["folder"] = a
    return out


def run_app(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    setup_logging()
    install_excepthook()
    log.info("starting TL Studio (args %s)", argv)
    app = make_app()
    from tlstudio.gui.main_window import MainWindow

    win = MainWindow()
    win.show()
    log.info("window shown after %.2f s", time.perf_counter() - _T0)
    smoke = os.environ.get("TLSTUDIO_SMOKE") == "1"
    opts = _parse(argv)
    if smoke:
        return _smoke(app, win)
    if opts["project"]:
        win.open_project(opts["project"])
    elif opts.get("zip"):
        win.open_zip(opts["zip"])
    elif opts["folder"]:
        win.open_folder(opts["folder"])
    elif opts["sample"]:
        win.panel("data").open_sample()
    else:
        win.reopen_last_folder()  # the data folder of the last session, when it still exists
    return leave(int(app.exec()))


def leave(rc: int, grace_ms: int = 1000) -> int:
    """After the window closed (a training run has already stopped and saved its checkpoint):
    stop the job threads, give background work ``grace_ms`` to end, and if some is still busy
    (a scan, a model build, a first torch import: all disposable) exit at once instead of waiting
    for it (quitting took 7-10 s). Returns ``rc`` when nothing was left running."""
    import threading

    from PySide6.QtCore import QThreadPool

    from tlstudio.gui.runner import stop_all

    t0 = time.perf_counter()
    stop_all()  # every JobRunner thread (an evaluation, an export) sees its stop flag
    pool = QThreadPool.globalInstance()
    pool.clear()  # queued jobs that never started
    idle = pool.waitForDone(grace_ms)
    from tlstudio.gui.runner import wait_all

    idle = wait_all(max(0, grace_ms - int((time.perf_counter() - t0) * 1000))) and idle
    importing = any(t.name == "tlstudio-preload" and t.is_alive() for t in threading.enumerate())
    if idle and not importing:
        return rc
    log.info("quitting with background work still running (%.1f s): not waiting for it", time.perf_counter() - t0)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def _smoke(app: Any, win: Any) -> int:
    from PySide6.QtCore import QTimer

    data = win.panel("data")
    result: dict[str, Any] = {}

    def done(report: Any) -> None:
        result["report"] = report
        app.quit()

    def failed(msg: str) -> None:
        result["error"] = msg
        app.quit()

    data.scan_finished.connect(done)
    data.scan_failed.connect(failed)
    QTimer.singleShot(0, data.open_sample)
    QTimer.singleShot(120_000, lambda: failed("timeout waiting for the scan"))
    app.exec()
    win.ensure_panels()
    if "report" not in result:
        print(f"SMOKE FAILED {result.get('error', '?')}", flush=True)
        return 1
    r = result["report"]
    print(f"SMOKE OK {len(r.classes)} {len(r.samples)}", flush=True)
    win.close()
    return 0
