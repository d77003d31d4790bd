"""The Distill step's results: live loss-component and accuracy curves, the trade-off table
of teacher vs students, and the accuracy-vs-latency scatter of every distillation so far.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)
from superqt.utils import qthrottled

from tlstudio.gui.panels.distill_inputs import TIPS

_COLORS = {"soft": (31, 119, 180), "hard": (255, 127, 14), "feature": (44, 160, 44), "total": (120, 120, 120),
           "baseline": (150, 150, 150)}
_ROLE_BRUSH = {"teacher": (214, 39, 40), "student": (31, 119, 180), "student_baseline": (160, 160, 160)}


class DistillReportMixin:
    """The right-hand side of the Distill panel: curves, trade-off table and scatter.
    The panel provides ``self.state`` and ``self.runner``."""

    # ------------------------------------------------------------------ building
    def _build_report(self, rl: QVBoxLayout) -> None:
        """The three plots, the summary line and the trade-off table, added to ``rl``."""
        self.plots = pg.GraphicsLayoutWidget()
        self.plots.setBackground("w")
        self.plots.setToolTip(TIPS["curves"])
        self.plots.setAccessibleName("Distillation charts")
        self.loss_plot = self.plots.addPlot(row=0, col=0, title="Loss components")
        self.acc_plot = self.plots.addPlot(row=0, col=1, title="Validation accuracy")
        # two per row: three plots side by side were cut off at 1024 px (issue 17 item 19)
        self.scatter_plot = self.plots.addPlot(row=1, col=0, colspan=2, title="Accuracy vs latency")
        for p in (self.loss_plot, self.acc_plot):
            p.showGrid(x=True, y=True, alpha=0.25)
            p.setLabel("bottom", "epoch")
        self.scatter_plot.showGrid(x=True, y=True, alpha=0.25)
        self.scatter_plot.setLabel("bottom", "ms / image (batch 1)")
        self.scatter_plot.setLabel("left", "accuracy (%)")
        self.scatter_plot.getAxis("left").enableAutoSIPrefix(False)
        self.scatter_plot.getViewBox().setDefaultPadding(0.12)
        self.acc_plot.setYRange(0, 1)
        self.loss_plot.addLegend(offset=(-5, 5))
        self.acc_plot.addLegend(offset=(-5, -5))
        self._series: dict[str, tuple[list[float], list[float]]] = {}
        self._items: dict[str, pg.PlotDataItem] = {}
        self._curve_specs = {
            "soft": (self.loss_plot, "soft (teacher)", _COLORS["soft"], None),
            "hard": (self.loss_plot, "hard (labels)", _COLORS["hard"], None),
            "feature": (self.loss_plot, "feature hint", _COLORS["feature"], None),
            "baseline_loss": (self.loss_plot, "no teacher: loss", _COLORS["baseline"], Qt.PenStyle.DashLine),
            "val_acc": (self.acc_plot, "distilled", _COLORS["soft"], None),
            "baseline_acc": (self.acc_plot, "no teacher", _COLORS["baseline"], Qt.PenStyle.DashLine),
        }
        self._scatter = pg.ScatterPlotItem(size=11, pen=pg.mkPen("k", width=0.5))
        self.scatter_plot.addItem(self._scatter)
        self._scatter_labels: list[pg.TextItem] = []
        self.scatter_points: list[dict] = []
        self._redraw_throttled = qthrottled(self._redraw, timeout=100, leading=False, parent=self)
        self.plots.setMinimumHeight(330)
        rl.addWidget(self.plots, 3)

        self.summary_label = QLabel("The trade-off report appears here when a distillation finishes.")
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        rl.addWidget(self.summary_label)
        from tlstudio.core.tasks.tradeoff import TABLE_COLUMNS

        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setAccessibleName("Trade-off report")
        self.table.setHorizontalHeaderLabels(TABLE_COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(110)
        self.table.setMaximumHeight(170)
        rl.addWidget(self.table, 1)

    # ------------------------------------------------------------------ curves
    def _append(self, name: str, x: float, y: float) -> None:
        if not np.isfinite(y):
            return
        xs, ys = self._series.setdefault(name, ([], []))
        while xs and xs[-1] >= x:  # a resumed run replays from its checkpoint
            xs.pop()
            ys.pop()
        xs.append(float(x))
        ys.append(float(y))
        self._redraw_throttled()

    def _redraw(self) -> None:
        for name, (xs, ys) in self._series.items():
            item = self._items.get(name)
            if item is None:
                plot, label, color, style = self._curve_specs[name]
                pen = pg.mkPen(color, width=2, style=style or Qt.PenStyle.SolidLine)
                sym = dict(symbol="o", symbolSize=6, symbolBrush=color) if plot is self.acc_plot else {}
                item = self._items[name] = plot.plot(pen=pen, name=label, **sym)
            item.setData(np.asarray(xs), np.asarray(ys))

    def flush(self) -> None:
        self._redraw_throttled.cancel()
        self._redraw()

    def clear_curves(self) -> None:
        self._redraw_throttled.cancel()
        for name, item in self._items.items():
            self._curve_specs[name][0].removeItem(item)
        for p in (self.loss_plot, self.acc_plot):
            if p.legend is not None:
                p.legend.clear()
        self._items.clear()
        self._series.clear()

    def curve_points(self, name: str) -> int:
        item = self._items.get(name)
        return 0 if item is None or item.xData is None else len(item.xData)

    # ------------------------------------------------------------------ report
    def _on_current_run(self, run_dir: str) -> None:
        """A distillation selected elsewhere (Runs step): show its saved trade-off."""
        if not run_dir or self.runner.running:
            return
        from tlstudio.core.tasks.tradeoff import read_tradeoff

        report = read_tradeoff(run_dir)
        if report:
            self.show_report(report)

    def show_report(self, report: dict) -> None:
        from tlstudio.core.tasks.tradeoff import ROLE_TITLES, table_rows

        self.last_report = report
        rows = table_rows(report)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            role = report["rows"][r]["role"]
            row[0] = ROLE_TITLES.get(role, role)  # the run folder goes in the tooltip: keeps the table narrow
            for c, text in enumerate(row):
                item = QTableWidgetItem(text)
                item.setToolTip(report["rows"][r].get("run_dir", ""))
                if c >= 2:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if role == "student":
                    f = item.font()
                    f.setBold(True)
                    item.setFont(f)
                self.table.setItem(r, c, item)
        self.summary_label.setText(" ".join([report.get("summary", ""), *report.get("notes", [])]))
        self.status_label.setText("Distillation finished: trade-off measured on this machine.")
        self.refresh_scatter()

    def refresh_scatter(self, root: str | None = None, extra: list[dict] | None = None) -> None:
        """Accuracy vs latency of every model measured by any distillation in the runs folder."""
        from tlstudio.core.tasks.tradeoff import read_tradeoff

        reports = list(extra or [])
        if self.last_report is not None:
            reports.append(self.last_report)
        root = root or self.state.runs_dir
        if root and Path(root).is_dir():
            from tlstudio.core.runs.folder import list_runs

            for run in list_runs(root):
                rep = read_tradeoff(run)
                if rep:
                    reports.append(rep)
        seen: set[tuple[str, str]] = set()
        points = []
        for rep in reports:
            for row in rep.get("rows", []):
                key = (row["role"], row["run_dir"])
                if key in seen or row.get("latency_ms_b1") is None:
                    continue
                seen.add(key)
                points.append(row)
        self.scatter_points = points
        self._scatter.setData(
            [{"pos": (p["latency_ms_b1"], 100.0 * p["accuracy"]), "brush": pg.mkBrush(*_ROLE_BRUSH.get(p["role"], (0, 0, 0))),
              "data": p["name"]} for p in points])
        for t in self._scatter_labels:
            self.scatter_plot.removeItem(t)
        self._scatter_labels = []
        x_max = max((p["latency_ms_b1"] for p in points), default=0.0)
        for p in points:
            right_half = p["latency_ms_b1"] > 0.6 * x_max
            t = pg.TextItem(p["backbone"], color=(60, 60, 60), anchor=(1, 1) if right_half else (0, 1))
            t.setPos(p["latency_ms_b1"], 100.0 * p["accuracy"])
            self.scatter_plot.addItem(t)
            self._scatter_labels.append(t)
        self.scatter_plot.setToolTip(TIPS["scatter"])
