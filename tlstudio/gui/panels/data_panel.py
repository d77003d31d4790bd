"""Step 1, Data: open or drop a folder, scan it in the background, show classes, images, problems
and the train/validation split. The scan itself is ``tlstudio.core.data.dataset.scan`` (Qt-free).

This module has the panel, its top bar and the scan's course (start, progress, cancel, result).
The scan job and sample data are in ``data_scan`` (no Qt), the class table, chart and the
Images / Skipped files / Warnings tabs in ``data_views``, the split group in ``data_split``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.panels.data_kind import KindChooser, optional_widget
from tlstudio.gui.panels.data_scan import make_split_or_none as _make_split
from tlstudio.gui.panels.data_scan import sample_folder
from tlstudio.gui.panels.data_scan import scan_job as _scan_job
from tlstudio.gui.panels.data_scan import trainable_problem as _trainable_problem
from tlstudio.gui.panels.data_split import DataSplitMixin
from tlstudio.gui.panels.data_views import DROP_HINT, MAX_SKIPPED_ROWS, DataViewsMixin
from tlstudio.gui.state import AppState
from tlstudio.gui.tooltips import tip
from tlstudio.gui.workers import start_worker

# The old names stay importable from here; the scan job is looked up here when a scan starts,
# so a test can replace it (monkeypatch data_panel._scan_job).
__all__ = ["DROP_HINT", "MAX_SKIPPED_ROWS", "DataPanel", "_make_split", "_scan_job", "_trainable_problem",
           "sample_folder"]


class _Progress(QObject):
    """Carries scan progress from the worker thread to the UI thread (queued signal)."""

    changed = Signal(int, int)  # done, total (-1 = unknown)


class _ColumnScroll(QScrollArea):
    """A column that fills the height it is given and scrolls only when its content needs more:
    the content is as tall as the viewport, or as its minimum height at the viewport's width
    (wrapped texts whole, tables and charts at their minimum) when that is taller. A resizable
    QScrollArea would lay it out at its preferred height instead (a tall table and chart that push
    the rest of the column out of view)."""

    def __init__(self, widget: QWidget) -> None:
        super().__init__()
        self.setWidgetResizable(False)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setAccessibleName("Classes, split and unlabelled images")
        self.setWidget(widget)

    def fit(self) -> None:
        inner, lay = self.widget(), self.widget().layout()
        width = self.viewport().width()
        need = lay.totalMinimumHeightForWidth(width) if lay.hasHeightForWidth() else lay.totalMinimumSize().height()
        if need > self.height() and not self.verticalScrollBar().isVisible():  # the bar will take its width
            width = max(1, self.width() - self.verticalScrollBar().sizeHint().width())
            need = lay.totalMinimumHeightForWidth(width) if lay.hasHeightForWidth() else need
        inner.resize(width, max(self.viewport().height(), need))

    def resizeEvent(self, ev) -> None:  # noqa: ANN001
        super().resizeEvent(ev)
        self.fit()

    def viewportEvent(self, ev) -> bool:  # noqa: ANN001 - the scroll bar came or went
        from PySide6.QtCore import QEvent

        if ev.type() == QEvent.Type.Resize:
            self.fit()
        return super().viewportEvent(ev)


class DataPanel(DataViewsMixin, DataSplitMixin, QWidget):
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
        state.task_kind_changed.connect(self._kind_changed_summary)

    # --- layout -------------------------------------------------------------------------
    def _build(self) -> None:
        self.open_btn = QPushButton("Open folder…")
        self.open_btn.setToolTip("Choose a folder of images (Ctrl+O). " + tip("dataset"))
        self.open_btn.clicked.connect(self.choose_folder)
        self.sample_btn = QPushButton("Use sample data")
        self.sample_btn.setToolTip("Load the small bundled data set (3 shapes) to try the app.")
        self.sample_btn.clicked.connect(self.open_sample)
        self.csv_btn = QPushButton("Open labels CSV…")
        self.csv_btn.setToolTip("Choose a .csv of path,label rows (paths relative to the CSV's folder); "
                                "you can also drop a .csv on the window.")
        self.csv_btn.clicked.connect(self.choose_csv)
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
        for w in (self.open_btn, self.csv_btn, self.sample_btn, self.rescan_btn):
            top.addWidget(w)
        top.addWidget(self.path_label, 1)
        top.addWidget(self.progress, 1)
        top.addWidget(self.cancel_btn)

        # left: summary, class table, chart, split; right: drop hint, then images / skipped / warnings
        left = self._build_classes_side()
        right = self._build_images_side()

        # the left column scrolls when it is taller than the window (an unlabelled folder adds its
        # choices, the domain gap and the check set under the split): nothing is squeezed or cut off
        self.left_scroll = _ColumnScroll(left)
        left.installEventFilter(self)  # its minimum width follows what it shows
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.left_scroll)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setSizes([400, 600])  # 2 : 3 of the real width (the texts on the left wrap less)

        self.kind_chooser = KindChooser(self.state)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.kind_chooser)
        lay.addWidget(self.splitter, 1)
        self._embed_task_widgets(left)
        self._fit_left()

    def _fit_left(self) -> None:
        """The left column's scroll area is as wide as the column's widest row needs (no
        horizontal scrolling); heights scroll."""
        inner = self.left_scroll.widget()
        bar = self.left_scroll.verticalScrollBar().sizeHint().width()
        self.left_scroll.setMinimumWidth(inner.minimumSizeHint().width() + bar + 2)

    def eventFilter(self, obj, ev) -> bool:  # noqa: ANN001
        from PySide6.QtCore import QEvent

        if obj is self.left_scroll.widget() and ev.type() == QEvent.Type.LayoutRequest:
            self._fit_left()  # e.g. the unlabelled folder's choices appeared
            self.left_scroll.fit()
        return super().eventFilter(obj, ev)

    # --- opening and scanning -----------------------------------------------------------
    def choose_folder(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Open an image folder", self.state.data_dir or "")
        if d:
            self.open_folder(d)

    def choose_csv(self) -> None:
        f, _ = QFileDialog.getOpenFileName(self, "Open a labels CSV", self.state.data_dir or "",
                                           "CSV files (*.csv);;All files (*)")
        if f:
            self.open_folder(f)

    def _embed_task_widgets(self, left: QWidget) -> None:
        """The unlabelled-images zone (left, under the split) and the multi-task table (a tab),
        when those modules are part of this install."""
        self.unlabelled_zone = optional_widget("tlstudio.gui.panels.unlabelled_zone", "UnlabelledZone", self.state)
        if self.unlabelled_zone is not None:
            left.layout().addWidget(self.unlabelled_zone)
        self.task_table = optional_widget("tlstudio.gui.panels.task_table", "TaskTable", self.state)
        if self.task_table is not None:
            self.tabs.addTab(self.task_table, "Tasks")
            self.tabs.setTabToolTip(self.tabs.count() - 1, "One task per label column of a multi-task CSV")

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
        # a CSV data set is opened by its CSV (a folder may hold several)
        data_dir = report.csv_path if report.layout == "csv" and report.csv_path else report.root
        self.state.set_dataset(data_dir, report, split)
        self.state.set_setting("val_fraction", float(self.val_spin.value()))
        self.state.set_setting("seed", int(self.seed_spin.value()))
        self.path_label.setText(data_dir)
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

    # --- dropping onto a class -----------------------------------------------------------
    def class_at(self, global_pos) -> str | None:  # global_pos: QPoint
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


if __name__ == "__main__":  # preview on its own: python -m tlstudio.gui.panels.data_panel [FOLDER]
    import sys

    from tlstudio.gui.qt_app import make_app

    _app = make_app()
    _p = DataPanel(AppState())
    _p.resize(1200, 760)
    _p.show()
    _p.open_folder(sys.argv[1] if len(sys.argv) > 1 else str(sample_folder()))
    sys.exit(_app.exec())
