"""Top-k class probabilities as horizontal bars (one painted widget, no child per bar)."""

from __future__ import annotations

from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPaintEvent
from PySide6.QtWidgets import QSizePolicy, QWidget


class ProbBars(QWidget):
    ROW = 20

    def __init__(self, top: list[tuple[str, float]] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.top: list[tuple[str, float]] = []
        self.error: str | None = None
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        if top:
            self.set_top(top)

    def set_top(self, top: list[tuple[str, float]]) -> None:
        self.top = [(str(c), float(p)) for c, p in top]
        self.error = None
        self.setToolTip("\n".join(f"{c}: {100 * p:.2f}%" for c, p in self.top))
        self.updateGeometry()
        self.update()

    def set_error(self, message: str) -> None:
        self.top, self.error = [], message
        self.setToolTip(message)
        self.updateGeometry()
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(320, max(1, len(self.top)) * self.ROW + 4)

    def minimumSizeHint(self) -> QSize:
        return QSize(160, max(1, len(self.top)) * self.ROW + 4)

    def paintEvent(self, ev: QPaintEvent) -> None:
        p = QPainter(self)
        fm = QFontMetrics(self.font())
        text = self.palette().text().color()
        if self.error:
            p.setPen(QColor(180, 30, 30))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                       fm.elidedText(self.error, Qt.TextElideMode.ElideRight, self.width()))
            return
        name_w = min(int(self.width() * 0.4), max((fm.horizontalAdvance(c) for c, _ in self.top), default=0) + 8)
        pct_w = fm.horizontalAdvance("100.0%") + 8
        bar_w = max(10, self.width() - name_w - pct_w)
        for i, (name, prob) in enumerate(self.top):
            y = 2 + i * self.ROW
            p.setPen(text)
            p.drawText(QRect(0, y, name_w - 6, self.ROW), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                       fm.elidedText(name, Qt.TextElideMode.ElideRight, name_w - 6))
            p.fillRect(QRect(name_w, y + 3, bar_w, self.ROW - 6), QColor(235, 235, 235))
            colour = QColor(33, 102, 172) if i == 0 else QColor(120, 160, 210)
            p.fillRect(QRect(name_w, y + 3, max(1, int(bar_w * max(0.0, min(1.0, prob)))), self.ROW - 6), colour)
            p.setPen(text)
            p.drawText(QRect(name_w + bar_w + 4, y, pct_w, self.ROW), Qt.AlignmentFlag.AlignVCenter,
                       f"{100 * prob:.1f}%")
