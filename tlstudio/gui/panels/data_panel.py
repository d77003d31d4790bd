"""Step 1, Data: open or drop a folder, scan it in the background, show classes, images, problems
and the train/validation split. The scan itself is ``tlstudio.core.dataset.scan`` (Qt-free)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.state import AppState
from tlstudio.gui.tooltips import tip
from tlstudio.gui.widgets.class_table import ClassBarChart, ClassTable
from tlstudio.gui.widgets.thumbnails import ThumbnailModel, ThumbnailView
from tlstudio.gui.workers import start_worker

MAX_SKIPPED_ROWS = 5000  # the full list stays in the scan report; the table shows the first ones

DROP_HINT = (
    "<h2>Drop a folder of images here</h2>"
    "<p>One sub-folder per class (for example <i>cats/</i> and <i>dogs/</i>),<br>"
    "or a folder with <i>train/</i> and <i>val/</i>, or a .zip of such a folder.</p>"
    "<p>You can also click <b>Open folder…</b> (Ctrl+O) or try the <b>sample data</b>.</p>"
)


class _Progress(QObject):
    """Carries scan progress from the worker thread to the UI thread (queued signal)."""

    changed = Signal(int, int)  # done, total (-1 = unknown)


class DataPanel(QWidget):
    scan_started = Signal(str)
    scan_finished = Signal(object)  # ScanReport
    scan_failed = Signal(str)

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self._worker: Any = None
        self._stop: threading.Event | None = None
        self._generation = 0
        self._progress = _Progress(self)
        self._progress.changed.connect(self._on_progress)
        self._scan_t0 = 0.0
        self._build()
        self._split_timer = QTimer(self, singleShot=True, interval=200)
        self._split_timer.timeout.connect(self._remake_split)
        state.dataset_changed.connect(self._show_report)
        state.split_changed.connect(self._show_split)

    # --- layout -------------------------------------------------------------------------
    def _build(self) -> None:
        self.open_btn = QPushButton("Open folder…")
        self.open_btn.setToolTip("Choose a folder of images (Ctrl+O). " + tip("dataset"))
        self.open_btn.clicked.connect(self.choose_folder)
        self.sample_btn = QPushButton("Use sample data")
        self.sample_btn.setToolTip("Load the small bundled data set (3 shapes) to try the app.")
        self.sample_btn.clicked.connect(self.open_sample)
        self.rescan_btn = QPushButton("Rescan")
        self.rescan_btn.setToolTip("Scan the folder again (after adding or removing images).")
        self.rescan_btn.clicked.connect(self.rescan)
        self.rescan_btn.setEnabled(False)
        self.path_label = QLabel("No data set yet.")
        self.path_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.cancel_btn = QPushButton("Cancel scan")
        self.cancel_btn.setToolTip("Stop scanning; nothing is changed on disk.")
        self.cancel_btn.clicked.connect(self.stop_scan)
        self.cancel_btn.hide()
        self.progress = QProgressBar()
        self.progress.setToolTip(tip("scan"))
        self.progress.setTextVisible(True)
        self.progress.hide()

        top = QHBoxLayout()
        for w in (self.open_btn, self.sample_btn, self.rescan_btn):
            top.addWidget(w)
        top.addWidget(self.path_label, 1)
        top.addWidget(self.progress, 1)
        top.addWidget(self.cancel_btn)

        # left: summary, class table, chart, split
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setToolTip(tip("dataset"))
        self.class_table = ClassTable()
        self.class_table.itemSelectionChanged.connect(self._table_selected)
        self.chart = ClassBarChart()
        self.val_spin = QDoubleSpinBox()
        self.val_spin.setRange(0.05, 0.5)
        self.val_spin.setSingleStep(0.05)
        self.val_spin.setDecimals(2)
        self.val_spin.setValue(float(self.state.settings.get("val_fraction", 0.2)))
        self.val_spin.setToolTip(tip("val_fraction"))
        self.val_spin.valueChanged.connect(self._split_params_changed)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(int(self.state.settings.get("seed", 0)))
        self.seed_spin.setToolTip(tip("seed"))
        self.seed_spin.valueChanged.connect(self._split_params_changed)
        self.split_label = QLabel("")
        self.split_label.setToolTip(tip("split"))
        split_box = QGroupBox("Train / validation split")
        split_box.setToolTip(tip("split"))
        form = QFormLayout(split_box)
        form.addRow("Validation fraction", self.val_spin)
        form.addRow("Seed", self.seed_spin)
        form.addRow(self.split_label)

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(self.summary)
        lv.addWidget(self.class_table, 2)
        lv.addWidget(self.chart, 2)
        lv.addWidget(split_box)

        # right: drop hint until a data set exists, then images / skipped / warnings
        self.class_filter = QComboBox()
        self.class_filter.setToolTip(tip("class_filter"))
        self.class_filter.currentIndexChanged.connect(self._filter_changed)
        self.thumb_model = ThumbnailModel(parent=self)
        self.thumbs = ThumbnailView()
        self.thumbs.setModel(self.thumb_model)
        self.thumbs.setToolTip(tip("thumbnails") + " Double-click to open an image.")
        self.thumbs.doubleClicked.connect(self._open_image)
        images = QWidget()
        iv = QVBoxLayout(images)
        iv.setContentsMargins(4, 4, 4, 4)
        fl = QHBoxLayout()
        fl.addWidget(QLabel("Show class:"))
        fl.addWidget(self.class_filter, 1)
        iv.addLayout(fl)
        iv.addWidget(self.thumbs, 1)

        self.skipped_table = QTableWidget(0, 2)
        self.skipped_table.setHorizontalHeaderLabels(("File", "Reason"))
        self.skipped_table.verticalHeader().setVisible(False)
        self.skipped_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.skipped_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.skipped_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.skipped_table.setToolTip(tip("skipped"))
        self.warnings_list = QListWidget()
        self.warnings_list.setWordWrap(True)
        self.warnings_list.setToolTip(tip("warnings"))
        self.tabs = QTabWidget()
        self.tabs.addTab(images, "Images")
        self.tabs.addTab(self.skipped_table, "Skipped files")
        self.tabs.addTab(self.warnings_list, "Warnings")
        self.tabs.setTabToolTip(1, tip("skipped"))
        self.tabs.setTabToolTip(2, tip("warnings"))

        self.hint = QLabel(DROP_HINT)
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hint.setWordWrap(True)
        self.hint.setObjectName("dropHint")
        self.hint.setStyleSheet("#dropHint { border: 2px dashed #9aa0a6; border-radius: 12px; color: #444; }")
        self.right = QStackedWidget()
        self.right.addWidget(self.hint)
        self.right.addWidget(self.tabs)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.right)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)

        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.splitter, 1)

    # --- opening and scanning -----------------------------------------------------------
    def choose_folder(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Open an image folder", self.state.data_dir or "")
        if d:
            self.open_folder(d)

    def open_sample(self) -> None:
        self.open_folder(str(sample_folder()))

    def rescan(self) -> None:
        if self.state.data_dir:
            self.open_folder(self.state.data_dir)

    @property
    def scanning(self) -> bool:
        return self._stop is not None

    def open_folder(self, path: str) -> None:
        """Scan ``path`` in a background thread; a scan already running is stopped first."""
        self.stop_scan()
        self._generation += 1
        gen = self._generation
        stop = threading.Event()
        self._stop = stop
        self._scan_t0 = time.perf_counter()
        self._pending_path = path
        self.path_label.setText(path)
        self.progress.setRange(0, 0)
        self.progress.setFormat("Scanning… %v")
        self.progress.show()
        self.cancel_btn.show()
        self.path_label.hide()
        self.state.set_step_status("data", "busy")
        self.state.status_message.emit(f"Scanning {path} …")
        last = [0.0]

        def progress(done: int, total: int | None) -> None:
            now = time.monotonic()
            if now - last[0] > 0.05 or (total is not None and done >= total):
                last[0] = now  # throttled: the UI gets at most ~20 updates a second
                self._progress.changed.emit(int(done), -1 if total is None else int(total))

        self.scan_started.emit(path)
        self._worker = start_worker(
            self, _scan_job, path, progress, stop, float(self.val_spin.value()), int(self.seed_spin.value()),
            returned=lambda rep, g=gen: self._scan_done(g, rep),
            errored=lambda exc, g=gen: self._scan_error(g, exc))

    def stop_scan(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._generation += 1  # whatever the stopped scan returns is ignored
            self._scan_ended()
            self.state.set_step_status("data", "done" if self.state.scan_report is not None else "todo")

    def _scan_ended(self) -> None:
        self._stop = None
        self.progress.hide()
        self.cancel_btn.hide()
        self.path_label.show()
        self.path_label.setText(self.state.data_dir or "No data set yet.")

    def _on_progress(self, done: int, total: int) -> None:
        if total < 0:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, max(1, total))
            self.progress.setValue(done)
            self.progress.setFormat(f"Scanning… {done} / {total}")

    def _scan_done(self, gen: int, result: tuple[Any, Any]) -> None:
        if gen != self._generation:
            return
        report, split = result
        secs = time.perf_counter() - self._scan_t0
        self._scan_ended()
        self.rescan_btn.setEnabled(True)
        self.state.set_dataset(report.root, report, split)
        self.state.set_setting("val_fraction", float(self.val_spin.value()))
        self.state.set_setting("seed", int(self.seed_spin.value()))
        self.path_label.setText(report.root)
        self.state.status_message.emit(
            f"Scanned {len(report.samples)} images in {len(report.classes)} classes in {secs:.1f} s"
        )
        self.scan_finished.emit(report)

    def _scan_error(self, gen: int, exc: BaseException) -> None:
        if gen != self._generation:
            return
        from tlstudio.core.errors import UserError

        self._scan_ended()
        self.state.set_step_status("data", "attention")
        msg = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        self.summary.setText(f"<b style='color:#c5221f'>Could not scan the folder.</b><br>{msg}")
        self.state.status_message.emit("Scan failed: " + msg)
        self.scan_failed.emit(msg)
        if not isinstance(exc, UserError):
            from tlstudio.gui.widgets.error_dialog import show_exception

            show_exception(self, "Scan failed", exc)

    # --- showing a report ---------------------------------------------------------------
    def _show_report(self) -> None:
        report = self.state.scan_report
        if report is None:
            self.right.setCurrentWidget(self.hint)
            self.class_table.set_counts([], {})
            self.chart.set_counts([], {})
            self.summary.setText("")
            return
        self.right.setCurrentWidget(self.tabs)
        self.path_label.setText(report.root)
        self.rescan_btn.setEnabled(True)
        problem = _trainable_problem(report)
        n = len(report.samples)
        text = (f"<b>{len(report.classes)}</b> classes · <b>{n:,}</b> images · "
                f"<b>{len(report.skipped):,}</b> skipped · layout: {report.layout}")
        if problem:
            text += f"<br><b style='color:#c5221f'>{problem}</b>"
        self.summary.setText(text)
        self.chart.set_counts(report.classes, report.counts)
        self.class_filter.blockSignals(True)
        self.class_filter.clear()
        self.class_filter.addItem(f"All classes ({n:,})", None)
        for i, c in enumerate(report.classes):
            self.class_filter.addItem(f"{c} ({report.counts.get(c, 0):,})", i)
        self.class_filter.blockSignals(False)
        self.thumb_model.set_samples(report.samples, report.classes)
        self._show_skipped(report.skipped)
        self.warnings_list.clear()
        self.warnings_list.addItems(list(report.warnings))
        self.tabs.setTabText(1, f"Skipped files ({len(report.skipped):,})")
        self.tabs.setTabText(2, f"Warnings ({len(report.warnings)})")
        from PySide6.QtGui import QColor

        bar = self.tabs.tabBar()
        bar.setTabTextColor(1, QColor("#c5221f") if report.skipped else bar.palette().text().color())
        bar.setTabTextColor(2, QColor("#e8710a") if report.warnings else bar.palette().text().color())
        presplit = report.presplit is not None
        self.val_spin.setEnabled(not presplit)
        self.val_spin.setToolTip(
            "The folder already has train/ and val/ sub-folders: that split is used as it is."
            if presplit else tip("val_fraction"))
        self._show_split()
        status = "attention" if problem else "done"
        self.state.set_step_status("data", status)

    def _show_skipped(self, skipped: list[Any]) -> None:
        rows = skipped[:MAX_SKIPPED_ROWS]
        self.skipped_table.setRowCount(len(rows))
        for r, s in enumerate(rows):
            a, b = QTableWidgetItem(s.path), QTableWidgetItem(s.reason)
            a.setToolTip(s.path)
            b.setToolTip(s.reason)
            self.skipped_table.setItem(r, 0, a)
            self.skipped_table.setItem(r, 1, b)

    def _show_split(self) -> None:
        report, split = self.state.scan_report, self.state.split
        if report is None:
            return
        if split is None:
            self.class_table.set_counts(report.classes, report.counts)
            self.split_label.setText("No split (the data set cannot be trained as it is).")
            return
        tr = Counter(s.label for s in split.train)
        va = Counter(s.label for s in split.val)
        names = report.classes
        self.class_table.set_counts(
            names, report.counts,
            {c: tr.get(i, 0) for i, c in enumerate(names)}, {c: va.get(i, 0) for i, c in enumerate(names)},
        )
        test = f" · test: {len(split.test):,}" if split.test else ""
        self.split_label.setText(f"train: <b>{len(split.train):,}</b> · validation: <b>{len(split.val):,}</b>{test}")

    def _split_params_changed(self) -> None:
        self.state.set_setting("val_fraction", float(self.val_spin.value()))
        self.state.set_setting("seed", int(self.seed_spin.value()))
        self._split_timer.start()

    def _remake_split(self) -> None:
        report = self.state.scan_report
        if report is None:
            return
        self.state.set_split(_make_split(report, float(self.val_spin.value()), int(self.seed_spin.value())))

    def _filter_changed(self) -> None:
        self.thumb_model.set_class_filter(self.class_filter.currentData())
        self.thumbs.scrollToTop()

    def class_at(self, global_pos) -> str | None:  # noqa: ANN001 - QPoint
        """The class under a screen position (a class row, or the grid while filtered to a class):
        images dropped there go to that class without asking."""
        report = self.state.scan_report
        if report is None or not self.isVisible():
            return None
        vp = self.class_table.viewport()
        local = vp.mapFromGlobal(global_pos)
        if vp.rect().contains(local):
            row = self.class_table.rowAt(local.y())
            return report.classes[row] if 0 <= row < len(report.classes) else None
        tv = self.thumbs.viewport()
        label = self.class_filter.currentData()
        if label is not None and tv.isVisible() and tv.rect().contains(tv.mapFromGlobal(global_pos)):
            return report.classes[label]
        return None

    def _open_image(self, index) -> None:  # noqa: ANN001
        from PySide6.QtCore import QUrl
        from PySide6.QtGui import QDesktopServices

        path = self.thumb_model.data(index, ThumbnailModel.PathRole)
        if path:
            QDesktopServices.openUrl(QUrl.fromLocalFile(path))

    def _table_selected(self) -> None:
        rows = {i.row() for i in self.class_table.selectedItems()}
        if len(rows) == 1:
            self.class_filter.setCurrentIndex(rows.pop() + 1)
            self.tabs.setCurrentIndex(0)


def _trainable_problem(report: Any) -> str:
    try:
        report.require_trainable()
    except Exception as exc:  # noqa: BLE001 - DatasetError: shown as the step's problem
        return str(exc)
    return ""


def _make_split(report: Any, val_fraction: float, seed: int) -> Any:
    from tlstudio.core.dataset import make_split

    if _trainable_problem(report):
        return None
    try:
        return make_split(report, val_fraction=val_fraction, seed=seed)
    except Exception:  # noqa: BLE001 - e.g. a class too small to split: the summary shows the problem
        return None


def _scan_job(path: str, progress: Any, stop: threading.Event, val_fraction: float, seed: int) -> tuple[Any, Any]:
    """Runs in a worker thread: scan, then the split (both Qt-free)."""
    from tlstudio.core.dataset import scan
    from tlstudio.core.precision import available_cores

    # one core stays with the UI: big folders scan in cores - 1 worker processes
    report = scan(path, progress=progress, stop=stop, workers=max(1, available_cores() - 1))
    return report, _make_split(report, val_fraction, seed)


def sample_folder():  # -> Path
    """The bundled sample data set, or a synthetic one made once in the user cache."""
    from tlstudio.core import paths

    d = paths.sample_dir()
    if d.is_dir() and any(p.is_dir() for p in d.iterdir()):
        return d
    target = paths.user_cache_dir() / "sample"
    if not target.is_dir():
        from tlstudio.core.synthetic import make_synthetic_folder

        make_synthetic_folder(target, per_class=16, size=64, easy=True)
    return target


if __name__ == "__main__":  # preview on its own: python -m tlstudio.gui.panels.data_panel [FOLDER]
    import sys

    from tlstudio.gui.app import make_app

    _app = make_app()
    _p = DataPanel(AppState())
    _p.resize(1200, 760)
    _p.show()
    _p.open_folder(sys.argv[1] if len(sys.argv) > 1 else str(sample_folder()))
    sys.exit(_app.exec())
