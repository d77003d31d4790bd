"""The Data step's task table for multi-task data: one row per label column.

Column -> type (editable: categorical / multi-label / numeric), classes, labelled and missing
counts, imbalance, a "use" tick and a weight; below it the loss weighting, PCGrad and sharing
choices, with a plain note on their cost. Every change is written to ``state.task_settings``
(the MultiTaskConfig fields) and sets ``state.task_kind = "multitask"``. The scan runs in a
worker thread (no torch); a refused column (one class, no labels) is shown as one red line.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

TYPES = ("categorical", "multilabel", "numeric")
TYPE_TITLES = {"categorical": "categorical", "multilabel": "multi-label (a;b)", "numeric": "numeric (regression)"}
WEIGHTINGS = [
    ("equal", "Equal (default)"),
    ("manual", "Manual weights (the Weight column)"),
    ("initial", "Normalise by each task's first loss"),
    ("uncertainty", "Uncertainty (learned per task, Kendall et al.)"),
    ("dwa", "Dynamic weight average (DWA, T = 2)"),
    ("gradnorm", "GradNorm (balances gradient sizes)"),
]
COST_NOTE = ("GradNorm and PCGrad take about one extra backward pass per task per training step "
             "(slower steps). Equal weights, tuned, are a strong baseline: try them first and compare "
             "with the single-task baselines.")
COLS = ["Use", "Column", "Type", "Classes", "Labelled", "Missing", "Imbalance", "Weight"]


class TaskTable(QWidget):
    scanned = Signal(object)  # the MultiTaskReport (or None when the data is not multi-task)

    def __init__(self, state: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.report: Any = None
        self.path: str | None = None
        self.types: dict[str, str] = {}
        self._loading = False
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.title = QLabel("<b>Tasks</b> (one per label column; an empty cell means no label for that task)")
        lay.addWidget(self.title)
        self.table = QTableWidget(0, len(COLS))
        self.table.setAccessibleName("Tasks: label columns with their type, classes, missing labels and weight")
        self.table.setHorizontalHeaderLabels(COLS)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        lay.addWidget(self.table)
        self.problem = QLabel()
        self.problem.setStyleSheet("color: #b00020;")
        self.problem.setWordWrap(True)
        self.problem.hide()
        lay.addWidget(self.problem)
        form = QFormLayout()
        self.weighting = QComboBox()
        for key, title in WEIGHTINGS:
            self.weighting.addItem(title, key)
        self.pcgrad = QCheckBox("PCGrad: remove the conflicting part of task gradients")
        self.sharing = QComboBox()
        self.sharing.addItem("Hard: one shared backbone, a head per task (default)", "hard")
        self.sharing.addItem("Soft: one backbone per task, pulled together (more memory)", "soft")
        self.baseline = QCheckBox("Also train a separate model per task and compare (same budget)")
        form.addRow("Loss weighting", self.weighting)
        form.addRow("", self.pcgrad)
        form.addRow("Sharing", self.sharing)
        form.addRow("", self.baseline)
        lay.addLayout(form)
        self.note = QLabel(COST_NOTE)
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: palette(mid);")
        lay.addWidget(self.note)
        lay.addStretch(1)  # in a tall tab: everything at the top, the space below
        for w in (self.weighting, self.sharing):
            w.currentIndexChanged.connect(self._emit)
        for w in (self.pcgrad, self.baseline):
            w.toggled.connect(self._emit)
        self.table.itemChanged.connect(lambda _i: self._emit())
        state.dataset_changed.connect(self._data_changed)
        state.task_kind_changed.connect(lambda k: self._data_changed() if k == "multitask" and not self.report else None)
        if getattr(state, "data_dir", None):
            self._data_changed()

    # --- scanning ------------------------------------------------------------------------------
    def _data_changed(self) -> None:
        path = getattr(self.state, "data_dir", None)
        if path and path != self.path:
            self.scan(path)

    def scan(self, path: str, types: dict[str, str] | None = None, wait: bool = False) -> None:
        """Scan ``path`` for label columns (in a worker thread unless ``wait``)."""
        self.path = path
        self.types = dict(types or {})
        from tlstudio.core.data.multitask import is_multitask_data, scan_multitask

        def job():
            if not is_multitask_data(path):
                return None
            return scan_multitask(path, types=self.types or None)

        if wait:
            try:
                self._show(job())
            except Exception as exc:  # noqa: BLE001 - a refused column: one line
                self._failed(exc)
            return
        from tlstudio.gui.workers import start_worker

        self.problem.setText("Reading the label columns…")
        self.problem.setStyleSheet("")
        self.problem.show()
        start_worker(self, job, returned=self._show, errored=self._failed)

    def _failed(self, exc: BaseException) -> None:
        self.report = None
        self.problem.setStyleSheet("color: #b00020;")
        self.problem.setText(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        self.problem.show()
        self.scanned.emit(None)

    def _set_shown(self, shown: bool) -> None:
        """As a tab of the Data step the tab is shown or hidden: setVisible(True) on a page of a
        QTabWidget draws it over whichever tab is current (the Images grid)."""
        from PySide6.QtWidgets import QStackedWidget, QTabWidget

        stack = self.parentWidget()
        tabs = stack.parentWidget() if isinstance(stack, QStackedWidget) else None
        if isinstance(tabs, QTabWidget) and tabs.indexOf(self) >= 0:
            tabs.setTabVisible(tabs.indexOf(self), shown)
        else:
            self.setVisible(shown)

    def _show(self, report: Any) -> None:
        self.report = report
        self.problem.hide()
        if report is None:
            self.table.setRowCount(0)
            self._set_shown(False)
            if self.state.task_kind == "multitask":  # new data without several label columns
                from tlstudio.gui.state import DEFAULT_KIND

                self.state.set_task_kind(DEFAULT_KIND)
            self.scanned.emit(None)
            return
        self._set_shown(True)
        self._loading = True
        self.table.setRowCount(len(report.tasks))
        for r, t in enumerate(report.tasks):
            use = QTableWidgetItem()
            use.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled)
            use.setCheckState(Qt.CheckState.Checked)
            self.table.setItem(r, 0, use)
            self.table.setItem(r, 1, _ro(t.name))
            combo = QComboBox()
            for k in TYPES:
                combo.addItem(TYPE_TITLES[k], k)
            combo.setCurrentIndex(TYPES.index(t.type))
            combo.currentIndexChanged.connect(lambda _i, name=t.name, c=combo: self._type_changed(name, c.currentData()))
            self.table.setCellWidget(r, 2, combo)
            if t.type == "numeric":
                classes = f"numeric: mean {t.mean:.4g}, std {t.std:.4g}"
            else:
                classes = ", ".join(f"{c} ({t.counts[c]})" for c in t.classes[:8]) + (" …" if len(t.classes) > 8 else "")
                classes = f"{len(t.classes)}: {classes}"
            self.table.setItem(r, 3, _ro(classes))
            self.table.setItem(r, 4, _ro(str(t.labelled)))
            miss = _ro(str(t.missing))
            if t.missing:
                miss.setToolTip("Rows without a label for this task still train the other tasks")
            self.table.setItem(r, 5, miss)
            imb = t.imbalance
            it = _ro(f"{imb:.1f}x" if imb else "-")
            if imb and imb > 10:
                it.setForeground(QColor("#b00020"))
                it.setToolTip("Very imbalanced: consider more images of the rare classes")
            self.table.setItem(r, 6, it)
            w = QDoubleSpinBox()
            w.setRange(0.0, 100.0)
            w.setSingleStep(0.5)
            w.setValue(1.0)
            w.valueChanged.connect(self._weight_changed)
            self.table.setCellWidget(r, 7, w)
        self._loading = False
        rows_h = sum(self.table.rowHeight(r) for r in range(self.table.rowCount()))
        self.table.setFixedHeight(self.table.horizontalHeader().height() + rows_h + 2 * self.table.frameWidth() + 2)
        n = len(report.samples)
        self.title.setText(f"<b>Tasks</b>: {len(report.tasks)} label columns over {n} images "
                           f"(an empty cell means no label for that task; the row still trains the others)")
        self.scanned.emit(report)
        self._emit()

    def _type_changed(self, name: str, kind: str) -> None:
        if self._loading or not self.path:
            return
        types = {t.name: t.type for t in self.report.tasks} if self.report else {}
        types[name] = kind
        self.scan(self.path, types)

    def _weight_changed(self, _v: float) -> None:
        if self.weighting.currentData() != "manual":
            self.weighting.setCurrentIndex([k for k, _ in WEIGHTINGS].index("manual"))
        else:
            self._emit()

    # --- settings --------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        if self.report is None:
            return {}
        tasks, weights = [], []
        for r, t in enumerate(self.report.tasks):
            if self.table.item(r, 0).checkState() == Qt.CheckState.Checked:
                tasks.append(t.name)
                weights.append(float(self.table.cellWidget(r, 7).value()))
        weighting = self.weighting.currentData()
        return {"tasks": tasks, "task_types": {t.name: t.type for t in self.report.tasks if t.name in tasks},
                "weighting": weighting, "task_weights": weights if weighting == "manual" else None,
                "pcgrad": self.pcgrad.isChecked(), "sharing": self.sharing.currentData(),
                "baseline": self.baseline.isChecked()}

    def _emit(self) -> None:
        if self._loading or self.report is None:
            return
        values = self.settings()
        if not values["tasks"]:
            self.problem.setStyleSheet("color: #b00020;")
            self.problem.setText("Tick at least one task.")
            self.problem.show()
            return
        self.problem.hide()
        self.state.set_task_kind("multitask")
        self.state.set_task_settings(values, replace=True)


def _ro(text: str) -> QTableWidgetItem:
    it = QTableWidgetItem(text)
    it.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
    return it
