"""The main window: assembles the panels (one per step), menus, shortcuts, drops, settings.

It holds no workflow logic of its own: panels observe ``AppState`` and do the work; this file
routes user intent (menus, shortcuts, drops, project files) to them.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, Qt, QTimer, QUrl
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QWidget,
)

from tlstudio.gui.state import STEP_TITLES, STEPS, AppState
from tlstudio.gui.widgets.step_sidebar import StepSidebar

log = logging.getLogger("tlstudio.gui")

MAX_RECENT = 8
# panels of other owners: (step, module, class, needs the runner)
_OTHER_PANELS = {
    "train": ("tlstudio.gui.panels.train_panel", "TrainPanel", True),
    "distill": ("tlstudio.gui.panels.distill_panel", "DistillPanel", True),
    "evaluate": ("tlstudio.gui.panels.evaluate_panel", "EvaluatePanel", False),
    "predict": ("tlstudio.gui.panels.predict_panel", "PredictPanel", False),
    "runs": ("tlstudio.gui.panels.runs_panel", "RunsPanel", False),
    "export": ("tlstudio.gui.panels.export_panel", "ExportPanel", False),
}


def app_settings() -> QSettings:
    """Settings persisted between launches, in tlstudio.core.paths.user_config_dir()."""
    from tlstudio.core.paths import user_config_dir

    d = user_config_dir()
    d.mkdir(parents=True, exist_ok=True)
    return QSettings(str(d / "tlstudio.ini"), QSettings.Format.IniFormat)


class MainWindow(QMainWindow):
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
        self.sidebar = StepSidebar(self.state, list(STEPS))
        self.sidebar.step_selected.connect(self.show_step)
        central = QWidget()
        lay = QHBoxLayout(central)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.sidebar)
        lay.addWidget(self.stack, 1)
        self.setCentralWidget(central)
        # every page exists from the start (a container); the panel inside may come later
        self._pages: dict[str, QWidget] = {}
        for step in STEPS:
            page = QWidget()
            page.setObjectName(f"page_{step}")
            QHBoxLayout(page).setContentsMargins(0, 0, 0, 0)
            self._pages[step] = page
            self.stack.addWidget(page)

        self._make_panel("data")  # the first page is built now, the others right after showing
        self._status = QLabel("Ready. Drop a folder of images anywhere on this window.")
        self.statusBar().addWidget(self._status, 1)
        self.state.status_message.connect(self.show_message)
        self.state.training_changed.connect(self._training_changed)
        self._build_menus()
        self._restore_settings()
        self.sidebar.setCurrentRow(0)

    # --- panels -------------------------------------------------------------------------
    def _make_panel(self, step: str) -> QWidget:
        if step in self.panels:
            return self.panels[step]
        panel: QWidget
        if step == "data":
            from tlstudio.gui.panels.data_panel import DataPanel

            panel = DataPanel(self.state)
        elif step == "model":
            from tlstudio.gui.panels.model_panel import ModelPanel

            panel = ModelPanel(self.state)
        elif step == "layers":
            from tlstudio.gui.panels.layers_panel import LayersPanel

            panel = LayersPanel(self.state)
        else:
            from importlib import import_module

            module, cls, needs_runner = _OTHER_PANELS[step]
            klass = getattr(import_module(module), cls)
            panel = klass(self.state, self.runner) if needs_runner else klass(self.state)
            self._adopt_shortcuts(panel)
        self.panels[step] = panel
        self._pages[step].layout().addWidget(panel)
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

    def ensure_panels(self) -> None:
        for step in STEPS:
            self._make_panel(step)

    def panel(self, step: str) -> QWidget:
        return self._make_panel(step)

    def showEvent(self, ev) -> None:  # noqa: ANN001
        super().showEvent(ev)
        QTimer.singleShot(0, self.ensure_panels)
        from tlstudio.gui.heavy import preload

        QTimer.singleShot(500, preload)  # torch/timm in the background, after the window is up

    def show_step(self, index: int) -> None:
        if not (0 <= index < len(STEPS)):
            return
        step = STEPS[index]
        self._make_panel(step)
        self.stack.setCurrentIndex(index)
        if self.sidebar.currentRow() != index:
            self.sidebar.setCurrentRow(index)

    def current_step(self) -> str:
        return STEPS[self.stack.currentIndex()]

    def show_message(self, text: str) -> None:
        self._status.setText(text)

    # --- menus and shortcuts ------------------------------------------------------------
    def _action(self, menu, text: str, slot, shortcut: str | QKeySequence | None = None,
                tip: str = "") -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
            a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        if tip:
            a.setStatusTip(tip)
            a.setToolTip(tip)
        a.triggered.connect(lambda _checked=False: slot())
        menu.addAction(a)
        self.addAction(a)  # shortcuts work even while the menu bar is hidden
        return a

    def _build_menus(self) -> None:
        mb = self.menuBar()
        f = mb.addMenu("&File")
        self.act_open = self._action(f, "Open image folder…", self.open_folder_dialog, QKeySequence.StandardKey.Open,
                                     "Choose a folder with one sub-folder of images per class")
        self._action(f, "Open .zip of images…", self.open_zip_dialog, None, "Extract a .zip safely and scan it")
        self._action(f, "Use sample data", lambda: self.panel("data").open_sample(), None,
                     "Load the small bundled data set")
        f.addSeparator()
        self._action(f, "New project", self.new_project, "Ctrl+N", "Start over with empty settings")
        self._action(f, "Open project…", self.open_project_dialog, "Ctrl+Shift+O", "Open a .tlsproj file")
        self._action(f, "Save project", self.save_project, QKeySequence.StandardKey.Save,
                     "Save the data set, settings and runs folder to a .tlsproj file")
        self._action(f, "Save project as…", self.save_project_as, "Ctrl+Shift+S")
        self.recent_menu = f.addMenu("Recent projects")
        f.addSeparator()
        self._action(f, "Quit", self.close, QKeySequence.StandardKey.Quit)

        e = mb.addMenu("&Edit")
        self._action(e, "Rescan data", lambda: self.panel("data").rescan(), "Ctrl+R",
                     "Scan the data folder again")
        self._action(e, "Reset settings to defaults", self.reset_settings, None,
                     "Forget the hyper-parameters chosen in this session")
        self._action(e, "Clear recent projects", self.clear_recent)

        v = mb.addMenu("&View")
        for i, step in enumerate(STEPS):
            self._action(v, f"{i + 1}. {STEP_TITLES[step]}", lambda i=i: self.show_step(i), f"Ctrl+{i + 1}")
        v.addSeparator()
        self._action(v, "Next step", lambda: self.show_step(self.stack.currentIndex() + 1), "Ctrl+PgDown")
        self._action(v, "Previous step", lambda: self.show_step(self.stack.currentIndex() - 1), "Ctrl+PgUp")
        self._action(v, "Full screen", self.toggle_full_screen, "F11")

        t = mb.addMenu("&Training")
        self.act_start = self._action(t, "Start training", self.start_training, "F5",
                                      "Start a run with the current settings")
        self.act_pause = self._action(t, "Pause / resume", self.pause_training, "Ctrl+P")
        self.act_stop = self._action(t, "Stop (keeps a checkpoint)", self.stop_training, "Esc",
                                     "Stop after this batch; the run can be continued later")

        h = mb.addMenu("&Help")
        self._action(h, "Quick start", self.show_quick_start, QKeySequence.StandardKey.HelpContents)
        self._action(h, "Glossary of terms", self.show_glossary)
        self._action(h, "Show log file", self.show_log_location)
        self._action(h, "About TL Studio", self.show_about)
        self._update_recent_menu()

    # --- opening data -------------------------------------------------------------------
    def open_folder_dialog(self) -> None:
        self.show_step(0)
        self.panel("data").choose_folder()

    def open_zip_dialog(self) -> None:
        from PySide6.QtWidgets import QFileDialog

        f, _ = QFileDialog.getOpenFileName(self, "Open a .zip of images", "", "Zip archives (*.zip)")
        if f:
            self.open_zip(f)

    def open_folder(self, path: str) -> None:
        self.show_step(0)
        self.panel("data").open_folder(path)

    def open_zip(self, path: str) -> None:
        """Extract into the user cache (safely: no traversal, no bombs, no symlinks), then scan."""
        from tlstudio.gui.workers import start_worker

        self.show_step(0)
        self.show_message(f"Extracting {path} …")
        self.state.set_step_status("data", "busy")
        start_worker(self, _extract_zip_job, path, returned=self.open_folder,
                     errored=lambda exc: self._zip_failed(path, exc))

    def _zip_failed(self, path: str, exc: BaseException) -> None:
        from tlstudio.gui.widgets.error_dialog import show_exception

        self.state.set_step_status("data", "attention" if self.state.scan_report is None else "done")
        self.show_message(f"Could not open {path}")
        show_exception(self, "Could not open the archive", exc)

    def add_images(self, files: list[str], target_class: str | None = None) -> None:
        """Image files dropped: copy them into a class folder of the data set, then rescan.
        Dropped on a class row (or on the grid filtered to a class): that class; else ask."""
        from tlstudio.gui.widgets.error_dialog import show_error

        r = self.state.scan_report
        classes = list(r.classes) if r is not None else []
        cls = target_class or self.ask_class(classes, len(files))
        if not cls:
            return
        cls = cls.strip()
        if cls in ("", ".", "..") or any(ch in cls for ch in '/\\:*?"<>|\0'):
            show_error(self, "Add images", f"{cls!r} cannot be a class name (it must be a plain folder name).")
            return
        root = Path(self.state.data_dir) if self.state.data_dir else _new_dataset_dir()
        if r is not None and r.layout != "folders":
            show_error(self, "Add images", "Images can only be added to a data set with one folder per class; "
                       f"{root} is laid out as {r.layout!r}.")
            return
        dest = root / cls
        try:
            dest.mkdir(parents=True, exist_ok=True)
            n = 0
            for f in files:
                target = _unique_path(dest / Path(f).name)
                shutil.copy2(f, target)
                n += 1
        except OSError as exc:
            show_error(self, "Add images", f"Could not copy the images into {dest}: {exc}")
            return
        self.show_message(f"Added {n} images to class {cls!r}")
        self.open_folder(str(root))

    def ask_class(self, classes: list[str], n: int) -> str | None:
        """Which class the dropped images belong to (tests replace this)."""
        name, ok = QInputDialog.getItem(self, "Add images", f"Add {n} image(s) to which class?\n"
                                        "(type a new name to create a class)", classes or ["new_class"], 0, True)
        return name if ok else None

    # --- drag and drop ------------------------------------------------------------------
    @staticmethod
    def classify_drop(urls: list[QUrl]) -> tuple[str, list[str]]:
        """('folder'|'zip'|'images'|'', paths) for the dropped URLs."""
        from tlstudio.gui.widgets.thumbnails import image_extensions

        paths = [u.toLocalFile() for u in urls if u.isLocalFile() and u.toLocalFile()]
        if not paths:
            return "", []
        dirs = [p for p in paths if os.path.isdir(p)]
        if dirs:
            return "folder", dirs[:1]
        zips = [p for p in paths if p.lower().endswith(".zip") and os.path.isfile(p)]
        if zips:
            return "zip", zips[:1]
        exts = image_extensions()
        imgs = [p for p in paths if os.path.isfile(p) and os.path.splitext(p)[1].lower() in exts]
        if imgs:
            return "images", imgs
        return "", []

    def dragEnterEvent(self, ev: QDragEnterEvent) -> None:
        kind, _ = self.classify_drop(ev.mimeData().urls()) if ev.mimeData().hasUrls() else ("", [])
        if kind:
            ev.setDropAction(Qt.DropAction.CopyAction)
            ev.accept()
            self.show_message({"folder": "Drop to open this folder",
                               "zip": "Drop to extract and open this archive",
                               "images": "Drop to add these images to a class"}[kind])
        else:
            ev.ignore()

    def dragMoveEvent(self, ev) -> None:  # noqa: ANN001
        if ev.mimeData().hasUrls():
            ev.setDropAction(Qt.DropAction.CopyAction)
            ev.accept()

    def dropEvent(self, ev: QDropEvent) -> None:
        kind, paths = self.classify_drop(ev.mimeData().urls()) if ev.mimeData().hasUrls() else ("", [])
        if not kind:
            ev.ignore()
            return
        ev.setDropAction(Qt.DropAction.CopyAction)
        ev.accept()
        target = None
        if kind == "images" and "data" in self.panels:
            target = self.panels["data"].class_at(self.mapToGlobal(ev.position().toPoint()))
        self.handle_drop(kind, paths, target)

    def handle_drop(self, kind: str, paths: list[str], target_class: str | None = None) -> None:
        log.info("drop: %s %s", kind, paths[:3])
        if kind == "folder":
            self.open_folder(paths[0])
        elif kind == "zip":
            self.open_zip(paths[0])
        elif kind == "images":
            # deferred: a modal dialog inside dropEvent would block the drag source
            QTimer.singleShot(0, lambda: self.add_images(paths, target_class))

    # --- projects -----------------------------------------------------------------------
    def new_project(self) -> None:
        if self.state.training:
            self.show_message("Stop the training first.")
            return
        from tlstudio.gui.project import reset_state

        reset_state(self.state)
        self.setWindowTitle("TL Studio")

    def open_project_dialog(self) -> None:
        from PySide6.QtWidgets import QFileDialog

        f, _ = QFileDialog.getOpenFileName(self, "Open project", self._last_dir(), "TL Studio project (*.tlsproj)")
        if f:
            self.open_project(f)

    def open_project(self, path: str) -> bool:
        from tlstudio.gui.project import open_project_into
        from tlstudio.gui.widgets.error_dialog import show_exception

        if self.state.training:
            self.show_message("Stop the training before opening another project.")
            return False
        try:
            proj = open_project_into(self.state, path)
        except Exception as exc:  # ProjectError: a message, never a crash
            show_exception(self, "Could not open the project", exc)
            self._remove_recent(path)
            return False
        self._add_recent(str(proj.path))
        self.setWindowTitle(f"TL Studio — {proj.name or proj.path.stem}")
        if proj.data_dir is not None:
            if proj.data_dir.is_dir():
                self.open_folder(str(proj.data_dir))
            else:
                from tlstudio.gui.widgets.error_dialog import show_error

                self.state.set_step_status("data", "attention")
                show_error(self, "Data folder not found", f"The project's data folder {proj.data_dir} does not "
                           "exist any more. Open the folder again (Ctrl+O) and save the project.", modal=False)
        self.show_message(f"Opened project {proj.path}")
        return True

    def save_project(self) -> bool:
        if not self.state.project_path:
            return self.save_project_as()
        return self._save_to(self.state.project_path)

    def save_project_as(self) -> bool:
        from PySide6.QtWidgets import QFileDialog

        start = self.state.project_path or str(Path(self._last_dir()) / "project.tlsproj")
        f, _ = QFileDialog.getSaveFileName(self, "Save project", start, "TL Studio project (*.tlsproj)")
        return self._save_to(f) if f else False

    def _save_to(self, path: str) -> bool:
        from tlstudio.gui.project import save_state
        from tlstudio.gui.widgets.error_dialog import show_exception

        try:
            p = save_state(self.state, path)
        except Exception as exc:  # noqa: BLE001 - ProjectError / OSError: a message
            show_exception(self, "Could not save the project", exc)
            return False
        self._add_recent(str(p))
        self.setWindowTitle(f"TL Studio — {p.stem}")
        self.show_message(f"Saved {p}")
        return True

    def _last_dir(self) -> str:
        return str(self.settings.value("last_dir", str(Path.home())))

    def recent_projects(self) -> list[str]:
        v = self.settings.value("recent_projects", [])
        if isinstance(v, str):
            v = [v]
        return [str(x) for x in (v or [])][:MAX_RECENT]

    def _add_recent(self, path: str) -> None:
        rec = [path] + [p for p in self.recent_projects() if p != path]
        self.settings.setValue("recent_projects", rec[:MAX_RECENT])
        self.settings.setValue("last_dir", str(Path(path).parent))
        self._update_recent_menu()

    def _remove_recent(self, path: str) -> None:
        self.settings.setValue("recent_projects", [p for p in self.recent_projects() if p != path])
        self._update_recent_menu()

    def clear_recent(self) -> None:
        self.settings.setValue("recent_projects", [])
        self._update_recent_menu()

    def _update_recent_menu(self) -> None:
        self.recent_menu.clear()
        rec = self.recent_projects()
        for i, p in enumerate(rec):
            a = self.recent_menu.addAction(f"&{i + 1} {Path(p).name}  —  {Path(p).parent}")
            a.setToolTip(p)
            a.triggered.connect(lambda _c=False, p=p: self.open_project(p))
        self.recent_menu.setEnabled(bool(rec))

    def reset_settings(self) -> None:
        from tlstudio.gui.project import reset_settings

        reset_settings(self.state)

    # --- training -----------------------------------------------------------------------
    def start_training(self) -> None:
        train = self.panel("train")
        if hasattr(train, "start"):
            self.show_step(STEPS.index("train"))
            if not self.runner.running:
                train.start()

    def pause_training(self) -> None:
        if not self.runner.running:
            return
        if self.runner.paused:
            self.runner.resume()
        else:
            self.runner.pause()

    def stop_training(self) -> None:
        if self.runner.running:
            self.runner.stop()
            self.show_message("Stopping after this batch; a checkpoint is saved, the run can be continued.")

    def _training_changed(self, running: bool) -> None:
        self.act_start.setEnabled(not running)
        self.act_stop.setEnabled(running)
        self.act_pause.setEnabled(running)

    # --- help ---------------------------------------------------------------------------
    def show_quick_start(self) -> None:
        QMessageBox.information(self, "Quick start", (
            "<ol><li><b>Data</b>: drop a folder with one sub-folder per class (or use the sample).</li>"
            "<li><b>Model</b>: pick a backbone (★ = good first choices) and its starting weights.</li>"
            "<li><b>Layers</b>: choose what to train; the advice suggests a strategy.</li>"
            "<li><b>Train</b>: press F5; Esc stops (a checkpoint is kept).</li>"
            "<li><b>Evaluate</b>, <b>Predict</b>, <b>Runs</b>: see how good it is and use it.</li></ol>"
            "Hover any control to see what it means."))

    def show_glossary(self) -> None:
        from tlstudio.gui.tooltips import TIPS

        terms = {k: v for k, v in TIPS.items() if not k.startswith(("preset_", "init_"))}
        html = "".join(f"<p><b>{k.replace('_', ' ')}</b>: {v}</p>" for k, v in sorted(terms.items()))
        box = QMessageBox(self)
        box.setWindowTitle("Glossary")
        box.setText("<h3>Terms used in TL Studio</h3>")
        box.setInformativeText(html)
        box.exec()

    def show_log_location(self) -> None:
        from tlstudio.core.paths import log_file

        QMessageBox.information(self, "Log file", f"Errors and details are written to:\n{log_file()}")

    def show_about(self) -> None:
        from tlstudio import __version__ as v

        QMessageBox.about(self, "About TL Studio", f"<b>TL Studio</b> {v}<br>No-code transfer learning "
                          "on images: fine-tuning, distillation, evaluation and export.")

    def toggle_full_screen(self) -> None:
        self.showNormal() if self.isFullScreen() else self.showFullScreen()

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


def _extract_zip_job(path: str) -> str:
    import hashlib

    from tlstudio.core.archive import safe_extract_zip
    from tlstudio.core.paths import user_cache_dir

    st = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    dest = user_cache_dir() / "extracted" / f"{Path(path).stem}-{key}"
    if dest.is_dir() and (dest / ".complete").exists():
        return str(dest)  # already extracted: do not redo the work
    if dest.exists():
        shutil.rmtree(dest, ignore_errors=True)
    out = safe_extract_zip(path, dest)
    (dest / ".complete").write_text("ok")
    return str(out)


def _new_dataset_dir() -> Path:
    from platformdirs import user_documents_path

    h = os.environ.get("TLSTUDIO_HOME")
    base = Path(h) / "datasets" if h else user_documents_path() / "TL Studio" / "datasets"
    d = base / time.strftime("dataset-%Y%m%d-%H%M%S")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _unique_path(p: Path) -> Path:
    if not p.exists():
        return p
    for i in range(1, 100_000):
        q = p.with_name(f"{p.stem}_{i}{p.suffix}")
        if not q.exists():
            return q
    raise OSError(f"too many files named like {p}")
