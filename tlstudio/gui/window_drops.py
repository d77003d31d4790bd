"""Opening data in the main window: the folder and .zip dialogs, safe .zip extraction in the
background, and drag and drop of a folder, a .zip or image files (copied into a class folder)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QInputDialog

log = logging.getLogger("tlstudio.gui")


class DataDropMixin:
    """Open a folder or archive, add dropped images to a class. MainWindow provides
    ``self.state``, ``self.panels``, ``self.panel``, ``self.show_step``, ``self.show_message`` and
    ``self.clear_message``."""

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
        """('folder'|'zip'|'csv'|'images'|'', paths) for the dropped URLs."""
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
        csvs = [p for p in paths if p.lower().endswith(".csv") and os.path.isfile(p)]
        if csvs:
            return "csv", csvs[:1]
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
                               "csv": "Drop to open the images this labels file lists",
                               "images": "Drop to add these images to a class"}[kind])
        else:
            ev.ignore()

    def dragLeaveEvent(self, ev) -> None:  # noqa: ANN001
        self.clear_message()  # "Drop to open this folder" is over when the drag leaves the window
        super().dragLeaveEvent(ev)

    def dragMoveEvent(self, ev) -> None:  # noqa: ANN001
        if ev.mimeData().hasUrls():
            ev.setDropAction(Qt.DropAction.CopyAction)
            ev.accept()

    def dropEvent(self, ev: QDropEvent) -> None:
        kind, paths = self.classify_drop(ev.mimeData().urls()) if ev.mimeData().hasUrls() else ("", [])
        self.clear_message()  # the "Drop to …" hint of the drag
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
        if kind in ("folder", "csv"):
            self.open_folder(paths[0])
        elif kind == "zip":
            self.open_zip(paths[0])
        elif kind == "images":
            # deferred: a modal dialog inside dropEvent would block the drag source
            QTimer.singleShot(0, lambda: self.add_images(paths, target_class))


def _extract_zip_job(path: str) -> str:
    import hashlib

    from tlstudio.core.data.archive import safe_extract_zip
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
