"""The classes of a scanned data set: a table (name, images, share, train, val) and a bar chart.

pyqtgraph is imported when the first chart is drawn, not at startup (the window opens faster).
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from tlstudio.gui.tooltips import tip

BAR_COLOR = "#4a86c8"
SMALL_COLOR = "#e8710a"  # classes flagged as tiny
TINY = 10  # fewer images than this in a class is worth a look


class ClassTable(QTableWidget):
    HEADERS = ("Class", "Images", "Share", "Train", "Val")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(self.HEADERS), parent)
        self.setHorizontalHeaderLabels(self.HEADERS)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.setSortingEnabled(False)
        h = self.horizontalHeader()
        h.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for c in range(1, len(self.HEADERS)):
            h.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        self.setToolTip(tip("class"))
        self.horizontalHeaderItem(3).setToolTip(tip("split"))
        self.horizontalHeaderItem(4).setToolTip(tip("val_fraction"))

    def set_counts(self, classes: list[str], counts: dict[str, int],
                   train: dict[str, int] | None = None, val: dict[str, int] | None = None) -> None:
        total = max(1, sum(counts.get(c, 0) for c in classes))
        self.setRowCount(len(classes))
        for r, name in enumerate(classes):
            n = counts.get(name, 0)
            cells = [name, str(n), f"{100 * n / total:.1f} %",
                     str((train or {}).get(name, "")), str((val or {}).get(name, ""))]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c > 0:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if n < TINY:
                    item.setForeground(QColor(SMALL_COLOR))
                    item.setToolTip(f"Only {n} images in {name!r}: a tiny class is hard to learn and to validate.")
                self.setItem(r, c, item)


class ClassBarChart(QWidget):
    """Images per class as bars (pyqtgraph BarGraphItem), tiny classes in orange."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._plot = None
        self._bars = None
        self.values: list[int] = []
        self.names: list[str] = []
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self._empty = QLabel("Images per class appear here after a scan.")
        self._empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._empty.setStyleSheet("color: #777;")
        lay.addWidget(self._empty)
        self.setMinimumHeight(140)
        self.setToolTip("Images per class. " + tip("imbalance"))

    def _ensure_plot(self) -> None:
        if self._plot is not None:
            return
        import pyqtgraph as pg

        self._plot = pg.PlotWidget(background="w")
        self._plot.setMenuEnabled(False)
        self._plot.setMouseEnabled(x=False, y=False)
        self._plot.hideButtons()
        self._plot.getPlotItem().showGrid(y=True, alpha=0.25)
        self._plot.setLabel("left", "images")
        for ax in ("left", "bottom"):
            a = self._plot.getAxis(ax)
            a.setPen(pg.mkPen("#555"))
            a.setTextPen(pg.mkPen("#333"))
        self.layout().addWidget(self._plot)

    def set_counts(self, classes: list[str], counts: dict[str, int]) -> None:
        self.names = list(classes)
        self.values = [int(counts.get(c, 0)) for c in classes]
        if not classes:
            if self._plot is not None:
                self._plot.clear()
            self._empty.show()
            return
        self._ensure_plot()
        import pyqtgraph as pg

        self._empty.hide()
        self._plot.clear()
        x = list(range(len(classes)))
        brushes = [pg.mkBrush(SMALL_COLOR if v < TINY else BAR_COLOR) for v in self.values]
        self._bars = pg.BarGraphItem(x=x, height=self.values, width=0.7, brushes=brushes, pen=pg.mkPen(None))
        self._plot.addItem(self._bars)
        step = max(1, len(classes) // 20)  # at most ~20 labels so they stay readable
        ticks = [(i, _short(n)) for i, n in enumerate(classes) if i % step == 0]
        self._plot.getAxis("bottom").setTicks([ticks, []])
        self._plot.setXRange(-0.6, len(classes) - 0.4, padding=0)
        self._plot.setYRange(0, max(self.values) * 1.1 or 1, padding=0)


def _short(name: str, n: int = 12) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"
