"""The Data step's views of a scan report. Left: summary line, class table and bar chart above
the split group. Right: a drop hint until a data set is open, then the tabs Images (thumbnail
grid filtered by class), Skipped files and Warnings."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.panels.data_scan import trainable_problem
from tlstudio.gui.tooltips import tip
from tlstudio.gui.widgets.class_table import ClassBarChart, ClassTable
from tlstudio.gui.widgets.thumbnails import ThumbnailModel, ThumbnailView

MAX_SKIPPED_ROWS = 5000  # the full list stays in the scan report; the table shows the first ones

DUP_TIP = ("The same picture found twice: exact copies (same bytes) and near copies (resized or "
           "re-encoded). Copies stay on one side of the train/validation split; a picture under two "
           "classes has no true label and is left out of training. Double-click to open an image.")

DROP_HINT = (
    "<h2>Drop a folder of images here</h2>"
    "<p>One sub-folder per class (for example <i>cats/</i> and <i>dogs/</i>),<br>"
    "or a folder with <i>train/</i> and <i>val/</i>, or a .zip of such a folder.</p>"
    "<p>A labels file works too: drop a <i>.csv</i> of path,label rows.</p>"
    "<p>You can also click <b>Open folder…</b> (Ctrl+O) or try the <b>sample data</b>.</p>"
)


class DataViewsMixin:
    """Both sides of the Data panel's splitter and ``_show_report``, which fills them from
    ``state.scan_report``. The panel provides ``self.state``, ``self.path_label``,
    ``self.rescan_btn`` and the split group (``DataSplitMixin``)."""

    # --- building -------------------------------------------------------------------------
    def _build_classes_side(self) -> QWidget:
        """Summary, class table, chart and the split group (the left side)."""
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setToolTip(tip("dataset"))
        self.class_table = ClassTable()
        self.class_table.itemSelectionChanged.connect(self._table_selected)
        # at least three class rows stay visible however much the column below holds (it scrolls)
        t = self.class_table
        t.setMinimumHeight(t.horizontalHeader().sizeHint().height() + 3 * t.verticalHeader().defaultSectionSize()
                           + 2 * t.frameWidth() + 2)
        self.chart = ClassBarChart()
        split_box = self._build_split_box()

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(self.summary)
        lv.addWidget(self.class_table, 2)
        lv.addWidget(self.chart, 2)
        lv.addWidget(split_box)
        return left

    def _build_images_side(self) -> QStackedWidget:
        """The drop hint, or the Images / Skipped files / Warnings tabs (the right side)."""
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
        self.dup_table = QTableWidget(0, 4)
        self.dup_table.setHorizontalHeaderLabels(("Image", "Same picture as", "Kind", "Classes"))
        self.dup_table.verticalHeader().setVisible(False)
        self.dup_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.dup_table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        for c in (0, 1):
            self.dup_table.horizontalHeader().setSectionResizeMode(c, QHeaderView.ResizeMode.Stretch)
        self.dup_table.setToolTip(DUP_TIP)
        self.dup_table.setAccessibleName("Duplicate images")
        self.dup_table.doubleClicked.connect(self._open_duplicate)
        self.tabs = QTabWidget()
        self.tabs.addTab(images, "Images")
        self.tabs.addTab(self.skipped_table, "Skipped files")
        self.tabs.addTab(self.warnings_list, "Warnings")
        self.tabs.addTab(self.dup_table, "Duplicates")
        self.tabs.setTabToolTip(1, tip("skipped"))
        self.tabs.setTabToolTip(2, tip("warnings"))
        self.tabs.setTabToolTip(3, DUP_TIP)

        self.hint = QLabel(DROP_HINT)
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hint.setWordWrap(True)
        self.hint.setObjectName("dropHint")
        self.hint.setStyleSheet("#dropHint { border: 2px dashed #9aa0a6; border-radius: 12px; color: #444; }")
        self.right = QStackedWidget()
        self.right.addWidget(self.hint)
        self.right.addWidget(self.tabs)
        return self.right

    # --- showing a report -----------------------------------------------------------------
    def _show_report(self) -> None:
        report = self.state.scan_report
        if report is None:
            self.right.setCurrentWidget(self.hint)
            self.class_table.set_counts([], {})
            self.chart.set_counts([], {})
            self.summary.setText("")
            return
        self.right.setCurrentWidget(self.tabs)
        self.path_label.setText(self.state.data_dir or report.root)
        self.rescan_btn.setEnabled(True)
        n = len(report.samples)
        problem = self._show_summary()
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
        dups = self._show_duplicates(report)
        self.tabs.setTabText(3, f"Duplicates ({dups})")
        from PySide6.QtGui import QColor

        bar = self.tabs.tabBar()
        bar.setTabTextColor(1, QColor("#c5221f") if report.skipped else bar.palette().text().color())
        bar.setTabTextColor(2, QColor("#e8710a") if report.warnings else bar.palette().text().color())
        bar.setTabTextColor(3, QColor("#e8710a") if dups else bar.palette().text().color())
        presplit = report.presplit is not None
        self.val_spin.setEnabled(not presplit)
        self.val_spin.setToolTip(
            "The folder already has train/ and val/ sub-folders: that split is used as it is."
            if presplit else tip("val_fraction"))
        self._show_split()
        self.state.set_step_status("data", "attention" if problem else "done")

    def _show_summary(self) -> str:
        """The summary line; the ">= 2 classes" problem only for kinds that classify (an anomaly
        detector learns from one folder of normal images). Returns the problem shown ("" if none)."""
        report = self.state.scan_report
        if report is None:
            return ""
        classifies = self.state.task_kind in ("classification", "distillation")
        problem = trainable_problem(report) if classifies else ""
        text = (f"<b>{len(report.classes)}</b> classes · <b>{len(report.samples):,}</b> images · "
                f"<b>{len(report.skipped):,}</b> skipped · layout: {report.layout}")
        if problem:
            text += f"<br><b style='color:#c5221f'>{problem}</b>"
        self.summary.setText(text)
        return problem

    def _kind_changed_summary(self, _kind: str) -> None:
        if self.state.scan_report is not None and not self.scanning:
            problem = self._show_summary()
            self.state.set_step_status("data", "attention" if problem else "done")

    def _show_skipped(self, skipped: list[Any]) -> None:
        rows = skipped[:MAX_SKIPPED_ROWS]
        self.skipped_table.setRowCount(len(rows))
        for r, s in enumerate(rows):
            a, b = QTableWidgetItem(s.path), QTableWidgetItem(s.reason)
            a.setToolTip(s.path)
            b.setToolTip(s.reason)
            self.skipped_table.setItem(r, 0, a)
            self.skipped_table.setItem(r, 1, b)

    def _show_duplicates(self, report: Any) -> int:
        """One row per duplicate pair the scan found (exact copies, then near copies); the number
        of pairs. Pairs across two classes come first: those images are left out of training."""
        import os

        labels = {s.path: report.classes[s.label] for s in report.samples if 0 <= s.label < len(report.classes)}

        def label_of(path: str) -> str:  # images left out of training: their class folder's name
            if path in labels:
                return labels[path]
            return os.path.basename(os.path.dirname(path)) if report.layout != "csv" else "?"

        pairs = list(getattr(report, "duplicates", None) or [])
        pairs.sort(key=lambda p: (label_of(p.a) == label_of(p.b), p.kind != "exact", p.a))
        rows = pairs[:MAX_SKIPPED_ROWS]
        self.dup_table.setRowCount(len(rows))
        root = report.root
        for r, p in enumerate(rows):
            ca, cb = label_of(p.a), label_of(p.b)
            kind = "exact copy" if p.kind == "exact" else f"near copy (difference {p.difference:.1f})"
            cells = (os.path.relpath(p.a, root) if p.a.startswith(root) else p.a,
                     os.path.relpath(p.b, root) if p.b.startswith(root) else p.b,
                     kind, ca if ca == cb else (f"{ca} / {cb}: two classes, left out" if p.kind == "exact"
                                                else f"{ca} / {cb}: two classes, check the labels"))
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip((p.a, p.b, kind, text)[c])
                item.setData(Qt.ItemDataRole.UserRole, (p.a, p.b)[min(c, 1)])
                if c == 3 and ca != cb and p.kind == "exact":
                    from PySide6.QtGui import QColor

                    item.setForeground(QColor("#c5221f"))
                self.dup_table.setItem(r, c, item)
        return len(pairs)

    def _open_duplicate(self, index) -> None:  # index: QModelIndex
        from PySide6.QtCore import QUrl
        from PySide6.QtGui import QDesktopServices

        path = index.data(Qt.ItemDataRole.UserRole)
        if path:
            QDesktopServices.openUrl(QUrl.fromLocalFile(path))

    # --- interaction ----------------------------------------------------------------------
    def _filter_changed(self) -> None:
        self.thumb_model.set_class_filter(self.class_filter.currentData())
        self.thumbs.scrollToTop()

    def _open_image(self, index) -> None:  # index: QModelIndex
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
