"""The main window: assembles the panels (one per step), menus, shortcuts, drops, settings.

It holds no workflow logic of its own: panels observe ``AppState`` and do the work; this file
routes user intent (menus, shortcuts, drops, project files) to them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtGui import QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QWidget,
)

from tlstudio.gui.panels.run_common import toggle_pause
from tlstudio.gui import steps as step_registry
from tlstudio.gui.state import AppState
from tlstudio.gui.widgets.step_sidebar import StepSidebar
from tlstudio.gui.window_drops import DataDropMixin
from tlstudio.gui.window_menus import MenusMixin
from tlstudio.gui.window_projects import MAX_RECENT, ProjectsMixin

__all__ = ["MAX_RECENT", "MainWindow", "app_settings"]

log = logging.getLogger("tlstudio.gui")

#: a status-bar message disappears after this long, when the user moves to another step, or when
#: the run it was shown during ends: it never describes an action that is long over
MESSAGE_MS = 15_000
IDLE_NO_DATA = "Ready. Drop a folder of images anywhere on this window."

def app_settings() -> QSettings:
    """Settings persisted between launches, in tlstudio.core.paths.user_config_dir()."""
    from tlstudio.core.paths import user_config_dir

    d = user_config_dir()
    d.mkdir(parents=True, exist_ok=True)
    return QSettings(str(d / "tlstudio.ini"), QSettings.Format.IniFormat)


class MainWindow(MenusMixin, DataDropMixin, ProjectsMixin, QMainWindow):
    def __init__(self, state: AppState | None = None, runner: Any = None,
                 settings: QSettings | None = None) -> None:
        super().__init__()
        self.state = state or AppState(self)
        if runner is None:
            from tlstudio.gui.runner import JobRunner

            runner = JobRunner(self)
        self.runner = runner
        self.settings = settings or app_settings()
        self.panels: dict[str, QWidget] = {}
        self._closing = False
        self.setWindowTitle("TL Studio")
        self.setAcceptDrops(True)
        self.resize(1280, 820)

        self.stack = QStackedWidget()
        self.steps = step_registry.step_ids()  # ids of the pages, in stack order
        self.sidebar = StepSidebar(self.state, list(step_registry.STEPS))
        self.sidebar.step_selected.connect(self.show_step)
        central = QWidget()
        lay = QHBoxLayout(central)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.sidebar)
        lay.addWidget(self.stack, 1)
        self.setCentralWidget(central)
        # every page exists from the start (a container); the panel inside may come later
        self._pages: dict[str, QWidget] = {}
        for step in self.steps:
            page = QWidget()
            page.setObjectName(f"page_{step}")
            QHBoxLayout(page).setContentsMargins(0, 0, 0, 0)
            self._pages[step] = page
            self.stack.addWidget(page)

        self._make_panel("data")  # the first page is built now, the others right after showing
        self._status = QLabel(IDLE_NO_DATA)
        self.statusBar().addWidget(self._status, 1)
        self._message_timer = QTimer(self)
        self._message_timer.setSingleShot(True)
        self._message_timer.timeout.connect(self.clear_message)
        self._message_in_run = False  # the shown message was shown while a job ran
        self.state.status_message.connect(self.show_message)
        self.state.training_changed.connect(self._training_changed)
        if hasattr(self.runner, "running_changed"):
            self.runner.running_changed.connect(self._job_running_changed)
        self.state.task_kind_changed.connect(self._kind_changed)
        self._build_menus()
        self._restore_settings()
        self.sidebar.setCurrentRow(0)

    # --- panels -------------------------------------------------------------------------
    def _make_panel(self, step: str) -> QWidget:
        """The step's panel, imported and built on first use from its StepSpec."""
        if step in self.panels:
            return self.panels[step]
        from importlib import import_module

        spec = step_registry.spec(step)
        klass = getattr(import_module(spec.module), spec.cls)
        panel = klass(self.state, self.runner) if spec.needs_runner else klass(self.state)
        if step != "data":
            self._adopt_shortcuts(panel)
        self.panels[step] = panel
        self._pages[step].layout().addWidget(panel)
        from tlstudio.gui.widgets.a11y import name_controls

        QTimer.singleShot(0, lambda p=panel: name_controls(p))  # after the panel filled itself
        return panel

    def _adopt_shortcuts(self, panel: QWidget) -> None:
        """The window owns F5/Esc (menu actions); a panel's own window-wide copies would be
        ambiguous and then fire nothing, so they are switched off."""
        from PySide6.QtGui import QShortcut

        mine = {QKeySequence("F5"), QKeySequence("Esc")}
        for sc in panel.findChildren(QShortcut):
            if sc.key() in mine and sc.context() in (Qt.ShortcutContext.WindowShortcut,
                                                       Qt.ShortcutContext.ApplicationShortcut):
                sc.setEnabled(False)

    def ensure_panels(self, shown_only: bool = False) -> None:
        """Build every panel now (tests), or those of the shown steps (right after showing, so
        switching steps is instant; a hidden step's panel is built when its kind is chosen)."""
        for step in self.sidebar.visible_steps() if shown_only else self.steps:
            self._make_panel(step)

    def panel(self, step: str) -> QWidget:
        return self._make_panel(step)

    def showEvent(self, ev) -> None:  # noqa: ANN001
        super().showEvent(ev)
        QTimer.singleShot(0, lambda: self.ensure_panels(shown_only=True))
        from tlstudio.gui.heavy import preload

        QTimer.singleShot(500, preload)  # torch/timm in the background, after the window is up

    def show_step(self, step: int | str) -> None:
        """Show a step by id or by index in self.steps; steps the task kind hides are not shown."""
        index = self.steps.index(step) if isinstance(step, str) else step
        if not (0 <= index < len(self.steps)) or self.sidebar.isRowHidden(index):
            return
        self._make_panel(self.steps[index])
        self._size_to_current(index)
        if index != self.stack.currentIndex():
            self.clear_message()  # a message about the step the user leaves is over
        self.stack.setCurrentIndex(index)
        if self.sidebar.currentRow() != index:
            self.sidebar.setCurrentRow(index)

    def _size_to_current(self, index: int) -> None:
        """Only the shown page counts for the window's minimum size: a wide page of another step
        (or another kind) must not force every page wider than a 1024 px screen."""
        from PySide6.QtWidgets import QSizePolicy

        for i, page in enumerate(self._pages.values()):
            p = QSizePolicy.Policy.Preferred if i == index else QSizePolicy.Policy.Ignored
            page.setSizePolicy(p, p)

    def step_by_offset(self, delta: int) -> None:
        """Next (+1) or previous (-1) shown step."""
        shown = self.sidebar.visible_steps()
        cur = self.current_step()
        i = shown.index(cur) + delta if cur in shown else 0
        if 0 <= i < len(shown):
            self.show_step(shown[i])

    def current_step(self) -> str:
        return self.steps[self.stack.currentIndex()]

    def _kind_changed(self, kind: str) -> None:
        self._update_step_actions()
        if self.sidebar.isRowHidden(self.stack.currentIndex()):
            self.show_step(0)

    def show_message(self, text: str, timeout_ms: int | None = None) -> None:
        """A transient message: gone after ``timeout_ms`` (None: MESSAGE_MS; 0: kept), on a step
        change, or when the job running while it was shown ends."""
        self._status.setText(text)
        self._message_in_run = bool(getattr(self.runner, "running", False))
        timeout_ms = MESSAGE_MS if timeout_ms is None else timeout_ms
        if timeout_ms > 0:
            self._message_timer.start(timeout_ms)
        else:
            self._message_timer.stop()

    def clear_message(self) -> None:
        """Back to the idle text: the drop hint while there is no data, else nothing."""
        self._message_timer.stop()
        self._message_in_run = False
        self._status.setText("" if self.state.data_dir else IDLE_NO_DATA)

    def status_text(self) -> str:
        """What the status bar says now (tests)."""
        return self._status.text()

    def _job_running_changed(self, running: bool) -> None:
        # a job ended: what was said while it ran ("Stopping after this batch…") is over; the
        # job's own end message (finished / stopped / failed) comes right after this
        if not running and self._message_in_run:
            self.clear_message()

    # --- training -----------------------------------------------------------------------
    def start_training(self) -> None:
        train = self.panel("train")
        if hasattr(train, "start"):
            self.show_step("train")
            if not self.runner.running:
                train.start()

    def pause_training(self) -> None:
        if self.runner.running:
            toggle_pause(self.runner)

    def stop_training(self) -> None:
        if self.runner.running:
            self.runner.stop()
            # kept until the run has stopped (then the run's own end message replaces it)
            self.show_message("Stopping after this batch; a checkpoint is saved, the run can be continued.", 0)

    def _training_changed(self, running: bool) -> None:
        self.act_start.setEnabled(not running)
        self.act_stop.setEnabled(running)
        self.act_pause.setEnabled(running)

    # --- settings and closing -----------------------------------------------------------
    def _restore_settings(self) -> None:
        geo = self.settings.value("window/geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        st = self.settings.value("window/state")
        if st is not None:
            self.restoreState(st)
        saved = self.settings.value("train_settings", "")
        if saved:
            from tlstudio.gui.project import apply_saved_settings

            apply_saved_settings(self.state, str(saved))

    def _save_settings(self) -> None:
        import json

        from tlstudio.gui.project import settings_for_saving

        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        self.settings.setValue("train_settings", json.dumps(settings_for_saving(self.state)))
        self.settings.setValue("last_data_dir", self.state.data_dir or "")
        self.settings.sync()

    def reopen_last_folder(self) -> bool:
        """Open the data folder (or labels CSV) of the last session, if it is still there."""
        import os

        last = str(self.settings.value("last_data_dir", "") or "")
        if last and os.path.exists(last):
            self.open_folder(last)
            self.show_message(f"Reopened the last data set: {last}")
            return True
        return False

    def confirm_close_while_training(self) -> bool:
        """Tests replace this. True: stop the run (with a checkpoint) and close."""
        r = QMessageBox.question(
            self, "Training is running",
            "A training run is in progress.\nStop it (a checkpoint is saved and the run can be continued "
            "later) and quit?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return r == QMessageBox.StandardButton.Yes

    def closeEvent(self, ev: QCloseEvent) -> None:
        if self.runner.running and not self._closing:
            if not self.confirm_close_while_training():
                ev.ignore()
                return
            self._closing = True
            self.show_message("Stopping the training and saving a checkpoint …")
            self.runner.stop()
            t0 = time.monotonic()
            QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
            try:
                ok = self.runner.wait(120_000)
            finally:
                QApplication.restoreOverrideCursor()
            log.info("training stopped on close in %.1f s (clean=%s)", time.monotonic() - t0, ok)
        data = self.panels.get("data")
        if data is not None and getattr(data, "scanning", False):
            data.stop_scan()
        self._save_settings()
        ev.accept()
