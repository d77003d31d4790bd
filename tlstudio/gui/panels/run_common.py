"""What the Train and Distill panels share: count and progress text, the settings-error hint,
the readiness checks, the read-only log view, the engine job handed to the JobRunner and
pause/resume (also used by the main window's Training menu).

The engine function is imported in the worker thread when the job starts (never at import
time here), so torch and timm stay out of the GUI's startup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtWidgets import QLabel, QPlainTextEdit

LOG_LINES = 2000  # a log view keeps at most this many lines: bounded memory on long runs


def fmt_count(n: int, digits: int = 1) -> str:
    """12.34 M / 5.6 k / 789: ``digits`` decimals for thousands, one more for millions."""
    if n >= 1e6:
        return f"{n / 1e6:.{digits + 1}f} M"
    return f"{n / 1e3:.{digits}f} k" if n >= 1e3 else str(n)


def progress_text(e: Any) -> str:
    """The status line of an ``events.Progress``: task, done[/total] and its message."""
    total = f"/{e.total}" if e.total else ""
    return f"{e.task}: {e.done}{total} {e.message}".strip()


def settings_error(exc: Exception) -> str:
    """The hint for a config that does not validate (pydantic ValidationError): which setting is wrong."""
    lines = str(exc).splitlines()
    return "Invalid settings: " + " ".join(lines[1:3] if len(lines) > 2 else lines)


def why_not_ready(runner: Any, state: Any) -> str:
    """Why no run can start now ("" when one can): a job is running, or there is no data yet."""
    if runner.running:
        return "A job is already running."
    if not state.data_dir:
        return "Open a data folder first (step Data)."
    return ""


def toggle_pause(runner: Any) -> None:
    """Pause the running job after its current batch, or resume it if it is paused."""
    if runner.paused:
        runner.resume()
    else:
        runner.pause()


def engine_job(module: str, func: str, arg: Any) -> Callable[[Any, Any], Any]:
    """A JobRunner factory: ``module.func(arg, stop, pause)``, imported in the worker thread."""

    def factory(stop: Any, pause: Any) -> Any:
        from importlib import import_module

        return getattr(import_module(module), func)(arg, stop, pause)

    return factory


def kind_job(kind: str, config: Any) -> Callable[[Any, Any], Any]:
    """A JobRunner factory that runs a kind of learning through the task registry:
    ``registry.get(kind).run(config, stop, pause)``, looked up in the worker thread."""

    def factory(stop: Any, pause: Any) -> Any:
        from tlstudio.core.tasks.registry import get

        return get(kind).run(config, stop, pause)

    return factory


def resume_job(run_dir: str) -> Callable[[Any, Any], Any]:
    """A JobRunner factory that continues a stopped run with its own kind's ``resume``."""

    def factory(stop: Any, pause: Any) -> Any:
        from tlstudio.core.tasks.registry import kind_of_run

        k = kind_of_run(run_dir)
        if k.resume is None:
            from tlstudio.core.errors import UserError

            raise UserError(f"{k.title} runs cannot be continued; start a new one.")
        return k.resume(run_dir, stop, pause)

    return factory


def make_log_view(max_height: int | None = None, name: str = "Log") -> QPlainTextEdit:
    view = QPlainTextEdit()
    view.setAccessibleName(name)
    view.setReadOnly(True)
    view.setMaximumBlockCount(LOG_LINES)
    if max_height is not None:
        view.setMaximumHeight(max_height)
    return view


def make_hint_label(color: str) -> QLabel:
    """The word-wrapped line that says why a button did nothing."""
    hint = QLabel("")
    hint.setWordWrap(True)
    hint.setStyleSheet(f"color: {color};")
    return hint


class RunStartMixin:
    """Start-button checks of the Train and Distill panels, which provide ``self.hint``,
    ``self._why_not_ready()`` and ``self.make_config()``."""

    def _checked_config(self) -> Any | None:
        """The config to start a run with; None, with the reason shown in the hint, when the
        panel is not ready or a setting does not validate."""
        reason = self._why_not_ready()
        if reason:
            self.hint.setText(reason)
            return None
        try:
            config = self.make_config()
        except Exception as exc:  # pydantic ValidationError: show which setting is wrong
            self.hint.setText(settings_error(exc))
            return None
        from tlstudio.core.models.advice import scratch_freeze_warning

        warning = scratch_freeze_warning(getattr(config, "init", ""), getattr(config, "freeze", "") or "",
                                         getattr(config, "frozen_groups", None))
        if warning:  # said, not refused: the user may mean it (a fixed random projection)
            self.hint.setText(warning)
        return config
