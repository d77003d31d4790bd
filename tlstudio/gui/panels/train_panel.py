"""Step 4, Train: hyper-parameters, Start/Pause/Stop, live curves, progress, warnings.

The panel builds the TrainConfig from the app state, hands ``engine.fit`` (imported lazily, in
the worker thread) to the shared JobRunner, and turns the events it yields into widget updates.
The settings form lives in ``train_settings``, the live feedback (curves, progress, warnings,
log, notifications) in ``train_monitor``; this module holds run control and the runner's signals.
"""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QGridLayout,
    QHBoxLayout,
    QPushButton,
    QScrollArea,
    QSplitter,
    QSystemTrayIcon,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.panels.run_common import (
    RunStartMixin,
    kind_job,
    make_hint_label,
    resume_job,
    toggle_pause,
    why_not_ready,
)
from tlstudio.gui.panels.train_monitor import TrainMonitorMixin
from tlstudio.gui.panels.train_settings import TIPS, TrainSettingsMixin
from tlstudio.gui.runner import JobRunner
from tlstudio.gui.state import AppState

log = logging.getLogger("tlstudio.gui")


class TrainPanel(TrainSettingsMixin, TrainMonitorMixin, RunStartMixin, QWidget):
    """Hyper-parameters, run control and live feedback for one training job at a time."""

    run_finished = Signal(str, str)  # run_dir, status

    def __init__(self, state: AppState, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state, self.runner = state, runner
        self._syncing = False
        self._mine = False  # the runner's job was started by this panel
        self._phase = "main"
        self._epochs = 0
        self._reset_timing()
        self._best_text = ""
        self._last_run_dir: str | None = None
        self._finish_message = ""
        self.events_seen = 0
        self.notifications: list[str] = []  # what was announced (tests read it)
        self._tray: QSystemTrayIcon | None = None

        self._build()
        self.curves.add_charts(["val_acc"])  # classification's best metric, before any run
        self._load_settings()
        state.settings_changed.connect(self._on_settings_changed)
        state.current_run_changed.connect(self._on_current_run)
        state.dataset_changed.connect(self._update_buttons)
        state.settings_changed.connect(self._update_buttons)  # e.g. the idle epoch bar follows Epochs
        state.task_kind_changed.connect(self._kind_changed)
        runner.event.connect(self._on_event)
        runner.finished.connect(self._on_finished)
        runner.failed.connect(self._on_failed)
        runner.running_changed.connect(self._on_running_changed)
        runner.paused_changed.connect(self._on_paused_changed)
        self._update_buttons()

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        root = QHBoxLayout(self)
        split = QSplitter(Qt.Orientation.Horizontal)
        root.addWidget(split)

        # left: settings and controls (scrolls when the window is short)
        left = QWidget()
        lv = QVBoxLayout(left)
        self._build_settings(lv)

        buttons = QGridLayout()
        self.start_btn = QPushButton("Start training")
        self.start_btn.setToolTip(TIPS["start"])
        self.start_btn.setDefault(True)
        self.pause_btn = QPushButton("Pause")
        self.pause_btn.setToolTip(TIPS["pause"])
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setToolTip(TIPS["stop"])
        self.continue_btn = QPushButton("Continue stopped run")
        self.continue_btn.setToolTip(TIPS["continue"])
        buttons.addWidget(self.start_btn, 0, 0, 1, 2)
        buttons.addWidget(self.pause_btn, 1, 0)
        buttons.addWidget(self.stop_btn, 1, 1)
        buttons.addWidget(self.continue_btn, 2, 0, 1, 2)
        lv.addLayout(buttons)
        self.start_btn.clicked.connect(self.start)
        self.pause_btn.clicked.connect(self.toggle_pause)
        self.stop_btn.clicked.connect(self.stop)
        self.continue_btn.clicked.connect(self.continue_run)
        self.shortcut = QShortcut(QKeySequence("F5"), self)
        self.shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
        self.shortcut.activated.connect(self._f5)

        self.hint = make_hint_label("#8a5a00")
        lv.addWidget(self.hint)
        lv.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(left)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # wide enough for the expanded advanced form, so nothing is cut off on the right
        self.advanced.expand(animate=False)
        scroll.setMinimumWidth(left.sizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 4)
        self.advanced.collapse(animate=False)
        split.addWidget(scroll)

        # right: status, progress, curves, warnings/log
        split.addWidget(self._build_monitor())
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([scroll.minimumWidth(), 900])
        self._build_toast()

    # ------------------------------------------------------------------ run control
    def _f5(self) -> None:
        if self.start_btn.isEnabled():
            self.start()

    def make_config(self):
        """The chosen kind's config (``registry.get(state.task_kind).config_cls``) from the common
        settings and the kind's own (``state.task_settings``)."""
        # flush a half-typed learning rate
        self._write_setting("lr", self._value("lr"))
        config = self.state.make_config()
        if "leave_one_core" in type(config).model_fields:
            config.leave_one_core = True  # keep a core for the UI thread
        if "out_dir" in type(config).model_fields and self.state.runs_dir and not config.out_dir:
            # the project's runs folder (the one the Runs step lists), named like the engine does
            from datetime import datetime
            from pathlib import Path

            base = Path(self.state.runs_dir) / f"{datetime.now():%Y%m%d-%H%M%S}-{getattr(config, 'backbone', config.task)}"
            path, i = base, 1
            while path.exists():
                i += 1
                path = base.with_name(f"{base.name}-{i}")
            config.out_dir = str(path)
        return config

    def _why_not_ready(self) -> str:
        return why_not_ready(self.runner, self.state)

    def start(self) -> bool:
        """Start a new run from the current settings. Returns False (with a hint) if it cannot."""
        config = self._checked_config()
        if config is None:
            return False
        what = getattr(config, "backbone", "") or self.state.task_kind
        self._begin(f"Starting {what} ...", fresh=True, epochs=int(getattr(config, "epochs", 0) or 0))
        self._kind = self.state.task_kind
        self.runner.start(kind_job(self.state.task_kind, config), owner=self)
        return True

    def continue_run(self, run_dir: str | None = None) -> bool:
        """Resume a stopped run (engine.resume) from its last checkpoint."""
        run_dir = run_dir or self._resumable_run()
        if not run_dir or self.runner.running:
            return False
        self._begin("Continuing the stopped run ...", fresh=self._last_run_dir != run_dir)
        if self._last_run_dir != run_dir:
            from tlstudio.core.runs.folder import read_history

            try:
                self.curves.load_history(read_history(run_dir))
            except Exception:  # noqa: BLE001 - a missing/odd history only means fewer points
                log.exception("cannot read the history of %s", run_dir)
        self._last_run_dir = run_dir
        self.runner.start(resume_job(run_dir), owner=self)
        return True

    def toggle_pause(self) -> None:
        if self._mine:
            toggle_pause(self.runner)

    def stop(self) -> None:
        if self._mine and self.runner.running:
            self.runner.stop()
            self.status_label.setText("Stopping after this batch (saving a checkpoint) ...")
            self._update_buttons()

    def _begin(self, message: str, fresh: bool, epochs: int = 0) -> None:
        """A run starts: nothing of the previous run's texts stays on screen (issue 17 item 15)."""
        self._mine = True
        self._finish_message = ""
        self._best_text = ""  # ", best val acc/digit 70.0%" of the Finished event (any kind)
        self._phase = "main"
        self._reset_timing()
        self.hint.setText("")
        if fresh:
            self.curves.clear()
            self.warnings.clear()
            self.log_view.clear()
            self.metrics_label.setText("")
            self.curves.add_charts([self._best_metric()])
        if epochs:
            self._epochs = epochs
            self.epoch_bar.setRange(0, epochs)
            self.curves.set_epochs(epochs)
        self.epoch_bar.setValue(0)
        self.batch_bar.setRange(0, 1)
        self.batch_bar.setValue(0)
        self.eta_label.setText("")
        self.speed_label.setText("")
        self.status_label.setText(message)
        self.toast.hide()  # the last run's "finished" note
        self.state.status_message.emit(message)
        self.state.set_step_status("train", "busy")

    def _kind_changed(self, _kind: str) -> None:
        """Idle: the empty charts of the newly chosen kind (its best metric's chart)."""
        if not self.runner.running and not self._last_run_dir:
            self.curves.reset_charts([self._best_metric()])

    def _best_metric(self) -> str:
        """The metric that picks the best epoch of the chosen kind (its chart is shown first)."""
        try:
            from tlstudio.core.tasks.registry import get

            return get(self.state.task_kind).best_metric[0]
        except Exception:  # noqa: BLE001 - an unknown kind: the error shows when the run starts
            return "val_acc"

    def _resumable_run(self) -> str | None:
        """The run Continue would resume: this panel's last run, else the selected run, if stopped."""
        from tlstudio.core.runs.folder import LAST_CKPT, first_run

        return first_run((self._last_run_dir, self.state.current_run), lambda path, info: (
            info.kind == "train" and info.status in ("stopped", "failed", "running")
            and (path / LAST_CKPT).is_file()))

    def _on_current_run(self, run_dir: str) -> None:
        """An earlier run opened (Runs step): show its epoch curves, ready to be continued."""
        if run_dir and not self.runner.running and run_dir != self._last_run_dir:
            from pathlib import Path

            from tlstudio.core.runs.folder import RunError, read_history, read_run

            try:
                info = read_run(run_dir)
                rows = read_history(run_dir)
            except (RunError, OSError, ValueError):
                rows, info = [], None
            if info is not None:
                self.curves.clear()
                self.curves.set_epochs(int(info.config.get("epochs", 0) or 0))
                self.curves.load_history(rows)
                self.curves.flush()
                self.warnings.clear()
                self.metrics_label.setText("")
                self.status_label.setText(
                    f"Run {info.name or Path(run_dir).name}: {info.status.replace('_', ' ')}, "
                    f"{info.epochs_done} epoch(s) done (curves from its history)")
                self._last_run_dir = run_dir
        self._update_buttons()

    def _update_buttons(self, *_: Any) -> None:
        running = self.runner.running
        mine = running and self._mine
        self.start_btn.setEnabled(not running and bool(self.state.data_dir))
        self.pause_btn.setEnabled(mine and not self.runner.stopping)
        self.stop_btn.setEnabled(mine and not self.runner.stopping)
        self.pause_btn.setText("Resume" if mine and self.runner.paused else "Pause")
        self.continue_btn.setEnabled(not running and self._resumable_run() is not None)
        for w in self._fields.values():
            w.setEnabled(not running)
        if not running and not self._mine:  # idle: the bar shows the run that Start would make
            n = int(self._value("epochs") or 1)
            if self.epoch_bar.value() <= 0 and self.epoch_bar.maximum() != n:
                self.epoch_bar.setRange(0, n)
                self.epoch_bar.setValue(0)
        if not self.state.data_dir and not running:
            self.start_btn.setToolTip("Open a data folder first (step Data).")
        else:
            self.start_btn.setToolTip(TIPS["start"])

    # ------------------------------------------------------------------ runner signals
    def _on_running_changed(self, running: bool) -> None:
        if self._mine:
            self.state.set_training(running)
        self._update_buttons()

    def _on_paused_changed(self, paused: bool) -> None:
        if not self._mine:
            return
        self.status_label.setText("Paused" if paused else "Training")
        self._t_first = None  # the pause must not count as slow batches: measure afresh
        self._update_buttons()

    def _on_finished(self, result: Any) -> None:
        if not self._mine:
            return
        self._mine = False
        self.curves.flush()
        run_dir = self._last_run_dir or ""
        if not run_dir and isinstance(getattr(result, "config", None), dict):
            run_dir = str(result.config.get("out_dir") or "")
        status = getattr(result, "status", "finished")
        best = getattr(result, "best_val_acc", None)
        if status in ("finished", "early_stopped"):
            self.state.set_step_status("train", "done")
        else:
            self.state.set_step_status("train", "attention")
        name = run_dir.rstrip("/\\").rsplit("/", 1)[-1] if run_dir else "run"
        metrics = getattr(result, "metrics", None) or {}
        if isinstance(metrics, dict) and metrics.get("val_score") is not None:  # multi-task: mean task score
            from tlstudio.gui.panels.train_monitor import fmt_metric

            best_text = f", best {fmt_metric('val_score', metrics['val_score'])}"
        else:
            best_text = f", best val acc {best:.1%}" if best is not None else self._best_text
        msg = f"Training {status.replace('_', ' ')}: {name}" + best_text
        base = getattr(result, "baseline", None)
        if isinstance(base, dict) and base.get("gain") is not None:
            msg += f"; from scratch {base.get('scratch_val_acc', 0):.1%} (gain {base['gain'] * 100:+.1f} points)"
        if status == "stopped":
            msg += " (Continue stopped run resumes it)"
        elif status == "failed" and self._finish_message:
            msg += f". {self._finish_message}"  # e.g. the loss became NaN: say why and what to try
        self.status_label.setText(msg)
        if run_dir:
            self._last_run_dir = run_dir
            self.state.set_current_run(run_dir)
        self.state.runs_changed.emit()
        self.notify(msg)
        self.run_finished.emit(run_dir, status)
        self._update_buttons()

    def _on_failed(self, message: str, tb: str) -> None:
        if not self._mine:
            return
        self._mine = False
        self.state.set_step_status("train", "attention")
        self.status_label.setText(f"Failed: {message}")
        self._add_warning(f"Training failed: {message}")
        self.state.runs_changed.emit()
        from tlstudio.core.errors import UserError
        from tlstudio.gui.widgets.error_dialog import show_error

        # a UserError names the file and the problem: no traceback behind it
        kind = message.split(":", 1)[0].strip()
        user_error = kind in {t.__name__ for t in _subclasses(UserError)}
        show_error(self, "Training failed", message.split(":", 1)[1].strip() if user_error else message,
                   "" if user_error else tb, modal=False)
        self._update_buttons()


def _subclasses(cls: type) -> list[type]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_subclasses(sub))
    return out
