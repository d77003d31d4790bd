"""Small widgets shared by the anomaly Fit, Evaluate and Predict steps: the false-alarm slider
("flag at most 1 in N good parts"), heat-map thumbnails, the list of images with their heat maps
next to the selected one shown large (Evaluate's gallery, Predict's list) and the good-vs-defect
score histogram. No torch here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QImageReader, QPainter, QPixmap
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLayout,
    QListWidget,
    QListWidgetItem,
    QSlider,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.views.heatmap_overlay import HeatmapOverlay, heatmap_to_qimage

ONE_IN = (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
ANOMALY_RED = "#c62828"
NORMAL_GREEN = "#2e7d32"
SATURATED = 0.995  # a normalised score this close to 0 or 1 no longer tells images apart


def score_sort_key(row: dict) -> float:
    """Higher = more anomalous: the raw (unclipped) score when the row has one, since normalised
    scores saturate at 1.00 for every clear defect."""
    raw = row.get("raw_score")
    return float(raw) if raw is not None else float(row.get("score") or 0.0)


def score_label(norm: float, raw: float | None, threshold: float | None, digits: int = 2) -> str:
    """The normalised score (0.5 = threshold); when it saturates, the raw score as a multiple of
    the raw threshold as well ("1.00 ×3.2"), so that two clear defects still differ."""
    text = f"{norm:.{digits}f}"
    if raw is not None and threshold and threshold > 0 and not (1 - SATURATED < norm < SATURATED):
        text += f" ×{raw / threshold:.3g}"
    return text


def score_detail(norm: float, raw: float | None, threshold: float | None) -> str:
    """A sentence for the detail line / tooltip: normalised score, raw score and its multiple of the threshold."""
    text = f"score {norm:.3f}"
    if raw is not None:
        text += f" (raw {raw:.4g}"
        text += f", {raw / threshold:.3g}× the threshold)" if threshold and threshold > 0 else ")"
    return text


class FalseAlarmSlider(QWidget):
    """How many good parts may be flagged: 1 in N. Emits the rate (1/N)."""

    rate_changed = Signal(float)

    def __init__(self, rate: float = 0.01, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, len(ONE_IN) - 1)
        self.slider.setPageStep(1)
        self.slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.slider.setAccessibleName("False-alarm rate")
        self.slider.setToolTip("Lower = fewer good parts flagged by mistake, but small defects may pass. "
                               "Set on good images held out from fitting.")
        self.label = QLabel()
        self.label.setMinimumWidth(230)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.slider, 1)
        lay.addWidget(self.label)
        self.slider.valueChanged.connect(self._changed)
        self.set_rate(rate)

    @property
    def one_in(self) -> int:
        return ONE_IN[self.slider.value()]

    def rate(self) -> float:
        return 1.0 / self.one_in

    def set_rate(self, rate: float) -> None:
        n = 1.0 / max(rate, 1e-9)
        i = int(np.argmin([abs(np.log(v / n)) for v in ONE_IN]))
        if i == self.slider.value():
            self._update_label()
        self.slider.setValue(i)

    def _update_label(self) -> None:
        self.label.setText(f"flag at most 1 in {self.one_in:,} good parts ({100 / self.one_in:.2g} %)")

    def _changed(self, _v: int) -> None:
        self._update_label()
        self.rate_changed.emit(self.rate())


def load_qimage(path: str, size: int) -> QImage:
    """The picture scaled to fit size x size (decoded at that size when the format allows)."""
    reader = QImageReader(str(path))
    reader.setAutoTransform(True)
    full = reader.size()
    if full.isValid() and (full.width() > size or full.height() > size):
        reader.setScaledSize(full.scaled(QSize(size, size), Qt.AspectRatioMode.KeepAspectRatio))
    img = reader.read()
    if img.isNull():
        from PIL import Image

        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((size, size))
                data = im.tobytes()
                img = QImage(data, im.width, im.height, 3 * im.width, QImage.Format.Format_RGB888).copy()
        except (OSError, ValueError):
            return QImage()
    return img


def overlay_pixmap(image: QImage | str, heat: np.ndarray | None, size: int, opacity: float = 0.45,
                   border: str | None = None) -> QPixmap:
    """A size x size thumbnail: the picture squashed to a square (as the model sees it), the
    heat map blended over it, and an optional coloured border (the verdict)."""
    img = load_qimage(image, size) if isinstance(image, (str, Path)) else image
    pm = QPixmap(size, size)
    pm.fill(QColor("#202020"))
    p = QPainter(pm)
    if img is not None and not img.isNull():
        p.drawImage(pm.rect(), img)
    if heat is not None:
        p.setOpacity(opacity)
        p.drawImage(pm.rect(), heatmap_to_qimage(np.asarray(heat, dtype=np.float32)))
        p.setOpacity(1.0)
    if border:
        pen = p.pen()
        pen.setColor(QColor(border))
        pen.setWidth(4)
        p.setPen(pen)
        p.drawRect(pm.rect().adjusted(2, 2, -2, -2))
    p.end()
    return pm


class HeatmapList(QSplitter):
    """Images with heat-map thumbnails on the left (under whatever ``above`` holds: widgets or
    layouts, with their stretch), the selected one large with its map and a line of text on the
    right. Each item carries its row dict; ``row_selected(row)`` fires when the selection moves.
    ``gallery``: a grid of thumbnails (Evaluate), else a list with text beside each (Predict)."""

    row_selected = Signal(object)

    def __init__(self, accessible_name: str, thumb_px: int, *, gallery: bool,
                 above: list[tuple[QWidget | QLayout, int]] = (), list_stretch: int = 1,
                 sides: tuple[int, int] = (1, 1), parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.thumb_px = thumb_px
        self.list = QListWidget()
        self.list.setAccessibleName(accessible_name)
        self.list.setIconSize(QSize(thumb_px, thumb_px))
        if gallery:
            self.list.setViewMode(QListWidget.ViewMode.IconMode)
            self.list.setResizeMode(QListWidget.ResizeMode.Adjust)
            self.list.setMovement(QListWidget.Movement.Static)
            self.list.setWordWrap(True)
        self.list.setSpacing(4 if gallery else 2)
        self.overlay = HeatmapOverlay(low_label="normal", high_label="anomalous", title="Anomaly map")
        self.detail = QLabel()
        self.detail.setWordWrap(True)
        self.detail.setTextFormat(Qt.TextFormat.RichText)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        for part, stretch in above:
            (ll.addLayout if isinstance(part, QLayout) else ll.addWidget)(part, stretch)
        ll.addWidget(self.list, list_stretch)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.overlay, 1)
        rl.addWidget(self.detail)
        self.addWidget(left)
        self.addWidget(right)
        self.setStretchFactor(0, sides[0])
        self.setStretchFactor(1, sides[1])
        self.list.currentItemChanged.connect(lambda item, _prev: self._selected(item))

    def add(self, row: dict[str, Any], text: str, *, heatmap: np.ndarray | None = None, thumbnail: bool = True,
            border: str | None = None, opacity: float = 0.45, tooltip: str = "") -> QListWidgetItem:
        item = QListWidgetItem(text)
        if thumbnail:
            item.setIcon(QIcon(overlay_pixmap(row["path"], heatmap, self.thumb_px, opacity=opacity, border=border)))
        item.setData(Qt.ItemDataRole.UserRole, row)
        if tooltip:
            item.setToolTip(tooltip)
        self.list.addItem(item)
        return item

    def items(self) -> list[tuple[QListWidgetItem, dict[str, Any]]]:
        return [(self.list.item(i), self.list.item(i).data(Qt.ItemDataRole.UserRole)) for i in range(self.list.count())]

    def current_row(self) -> dict[str, Any] | None:
        item = self.list.currentItem()
        return None if item is None else item.data(Qt.ItemDataRole.UserRole)

    def select_first(self) -> None:
        if self.list.currentRow() < 0 and self.list.count():
            self.list.setCurrentRow(0)

    def show_image(self, path: str, heatmap: np.ndarray | None, html: str) -> None:
        self.overlay.set_image(path)
        self.overlay.set_heatmap(None if heatmap is None else np.asarray(heatmap, dtype=np.float32))
        self.detail.setText(html)

    def clear(self) -> None:
        self.list.clear()
        self.overlay.clear()
        self.detail.clear()

    def _selected(self, item: QListWidgetItem | None) -> None:
        if item is not None:
            self.row_selected.emit(item.data(Qt.ItemDataRole.UserRole))


class ScoreHistogram(QWidget):
    """Normalised scores of good (green) and defect (red) images, with the threshold line."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import pyqtgraph as pg

        self.plot = pg.PlotWidget(background="w")
        self.plot.setAccessibleName("Score histogram of good and defect images with the threshold")
        self.plot.setMinimumHeight(180)
        self.plot.setLabel("bottom", "anomaly score (0.5 = threshold)")
        self.plot.setLabel("left", "images")
        self.plot.addLegend(offset=(10, 5))
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self._items: list = []
        self.line = pg.InfiniteLine(0.5, angle=90, pen=pg.mkPen("#444", width=2, style=Qt.PenStyle.DashLine),
                                    label="threshold", labelOpts={"position": 0.92, "color": "#444"})
        self.plot.addItem(self.line)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.plot)
        self.counts: dict[str, list[int]] = {}

    def set_histogram(self, hist: dict, threshold: float = 0.5) -> None:
        import pyqtgraph as pg

        for it in self._items:
            self.plot.removeItem(it)
        self._items = []
        legend = self.plot.plotItem.legend
        if legend is not None:  # bars with a name add themselves to the legend
            legend.clear()
        edges = np.asarray(hist.get("edges", []), dtype=float)
        if edges.size < 2:
            return
        width = (edges[1] - edges[0]) * 0.9
        centres = (edges[:-1] + edges[1:]) / 2
        self.counts = {}
        for key, colour, name in (("good", NORMAL_GREEN, "good"), ("defect", ANOMALY_RED, "defect"),
                                  ("unknown", "#1565c0", "unlabelled")):
            counts = np.asarray(hist.get(key, []), dtype=float)
            if counts.size != centres.size or counts.sum() == 0:
                continue
            self.counts[key] = counts.astype(int).tolist()
            c = QColor(colour)
            c.setAlpha(150)
            bar = pg.BarGraphItem(x=centres, height=counts, width=width, brush=c, pen=pg.mkPen(colour), name=name)
            self.plot.addItem(bar)
            self._items.append(bar)
        self.line.setValue(threshold)
        self.plot.setXRange(float(edges[0]), float(edges[-1]), padding=0.02)
