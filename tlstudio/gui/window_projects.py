"""Projects in the main window: new / open / save (as) a .tlsproj file, the recent-projects
menu and the last folder used, kept in the window's QSettings."""

from __future__ import annotations

from pathlib import Path

MAX_RECENT = 8


class ProjectsMixin:
    """Project menu actions of MainWindow, which provides ``self.state``, ``self.settings``,
    ``self.recent_menu``, ``self.open_folder`` and ``self.show_message``."""

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
