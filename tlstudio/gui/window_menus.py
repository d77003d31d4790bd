"""The main window's menu bar (File, Edit, View, Training, Help), its shortcuts and the Help
dialogs. Every action is also added to the window, so shortcuts work with the menu bar hidden."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMessageBox



class MenusMixin:
    """Builds the menus of MainWindow; the slots they call are the window's own methods."""

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
        from tlstudio.gui.steps import spec

        self.step_actions = {step: self._action(v, spec(step).title, lambda s=step: self.show_step(s))
                             for step in self.steps}
        self._update_step_actions()
        v.addSeparator()
        self._action(v, "Next step", lambda: self.step_by_offset(1), "Ctrl+PgDown")
        self._action(v, "Previous step", lambda: self.step_by_offset(-1), "Ctrl+PgUp")
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

    def _update_step_actions(self) -> None:
        """Number the shown steps 1, 2 ... with Ctrl+1..9, Ctrl+0; hide the others' actions."""
        from tlstudio.gui.steps import shortcut_for, spec

        shown = self.sidebar.visible_steps()
        for step, act in self.step_actions.items():
            pos = shown.index(step) if step in shown else -1
            act.setVisible(pos >= 0)
            title = spec(step).title
            act.setText(f"{pos + 1}. {title}" if pos >= 0 else title)
            key = shortcut_for(pos) if pos >= 0 else None
            act.setShortcut(QKeySequence(key) if key else QKeySequence())

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
