"""Confusion-matrix heat map: rows = true class, columns = predicted class; click a cell.

Painted directly (one widget, no item per cell), so 100+ classes stay cheap. Colour is the
row-normalised rate (recall per true class), the number is the count. Counts are hidden and
labels shortened when cells get too small; the tooltip always tells the full story.
"""

from __future__ import annotations

from PySide6.QtCore import QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget


def _heat(rate: float, diagonal: bool) -> QColor:
    """White -> blue on the diagonal (good), white -> red off it (mistakes)."""
    rate = max(0.0, min(1.0, rate))
    if diagonal:
        base = (33, 102, 172)
    else:
        base = (203, 24, 29)
    return QColor(*(int(255 + (b - 255) * rate) for b in base))


class ConfusionMatrixWidget(QWidget):
    cell_clicked = Signal(int, int)  # true class index, predicted class index

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.classes: list[str] = []
        self.matrix: list[list[int]] = []
        self.selected: tuple[int, int] | None = None
        self.setMouseTracking(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(220, 200)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # arrows move a cell, Enter opens it
        self.setAccessibleName("Confusion matrix")
        self.setToolTip("Rows: the true class. Columns: what the model predicted. "
                        "The diagonal is correct; click a cell (or use the arrow keys and Enter) "
                        "to see its images.")

    def set_matrix(self, matrix: list[list[int]], classes: list[str]) -> None:
        n = len(classes)
        if len(matrix) != n or any(len(r) != n for r in matrix):
            raise ValueError(f"confusion matrix is not {n}x{n}")
        self.matrix = [list(map(int, r)) for r in matrix]
        self.classes = list(classes)
        self.selected = None
        self.updateGeometry()
        self.update()

    def clear(self) -> None:
        self.matrix, self.classes, self.selected = [], [], None
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(420, 380)

    # --- geometry --------------------------------------------------------------------------
    def _layout(self) -> tuple[int, int, float]:
        """(left margin, top margin, cell size)"""
        n = max(1, len(self.classes))
        fm = QFontMetrics(self.font())
        label_w = min(140, max((fm.horizontalAdvance(c) for c in self.classes), default=40) + 10)
        left = label_w + 18
        top = 34
        avail_w = self.width() - left - 8
        avail_h = self.height() - top - 8 - fm.height()
        cell = max(2.0, min(avail_w / n, avail_h / n, 80.0))
        return left, top, cell

    def cell_at(self, pos: QPoint) -> tuple[int, int] | None:
        if not self.classes:
            return None
        left, top, cell = self._layout()
        c = int((pos.x() - left) // cell)
        r = int((pos.y() - top) // cell)
        n = len(self.classes)
        if 0 <= r < n and 0 <= c < n and pos.x() >= left and pos.y() >= top:
            return r, c
        return None

    def cell_rect(self, r: int, c: int) -> QRect:
        left, top, cell = self._layout()
        return QRect(int(left + c * cell), int(top + r * cell), max(1, int(cell)), max(1, int(cell)))

    # --- events ----------------------------------------------------------------------------
    def cell_text(self, r: int, c: int) -> str:
        row_total = sum(self.matrix[r]) or 1
        return (f"true {self.classes[r]}, predicted {self.classes[c]}: {self.matrix[r][c]} images "
                f"({100 * self.matrix[r][c] / row_total:.1f}% of {self.classes[r]})")

    def keyPressEvent(self, ev) -> None:  # noqa: ANN001
        n = len(self.classes)
        moves = {Qt.Key.Key_Up: (-1, 0), Qt.Key.Key_Down: (1, 0), Qt.Key.Key_Left: (0, -1), Qt.Key.Key_Right: (0, 1)}
        if n and ev.key() in moves:
            r, c = self.selected or (0, 0)
            if self.selected is not None:
                dr, dc = moves[ev.key()]
                r, c = max(0, min(n - 1, r + dr)), max(0, min(n - 1, c + dc))
            self.selected = (r, c)
            self.setAccessibleDescription(self.cell_text(r, c))
            self.update()
        elif n and ev.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Space) and self.selected:
            self.cell_clicked.emit(*self.selected)
        else:
            super().keyPressEvent(ev)
            return
        ev.accept()

    def mousePressEvent(self, ev: QMouseEvent) -> None:
        hit = self.cell_at(ev.position().toPoint())
        if hit is not None:
            self.selected = hit
            self.update()
            self.cell_clicked.emit(*hit)

    def mouseMoveEvent(self, ev: QMouseEvent) -> None:
        hit = self.cell_at(ev.position().toPoint())
        if hit is None:
            return
        r, c = hit
        row_total = sum(self.matrix[r]) or 1
        QToolTip.showText(
            ev.globalPosition().toPoint(),
            f"true: {self.classes[r]}\npredicted: {self.classes[c]}\n"
            f"{self.matrix[r][c]} images ({100 * self.matrix[r][c] / row_total:.1f}% of {self.classes[r]})",
            self,
        )

    def paintEvent(self, ev: QPaintEvent) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), self.palette().base())
        if not self.classes:
            p.setPen(self.palette().text().color())
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "No evaluation yet")
            return
        n = len(self.classes)
        left, top, cell = self._layout()
        fm = QFontMetrics(self.font())
        text_col = self.palette().text().color()
        # axis titles
        p.setPen(text_col)
        bold = QFont(self.font())
        bold.setBold(True)
        p.setFont(bold)
        p.drawText(QRect(int(left), 2, int(cell * n), 16), Qt.AlignmentFlag.AlignCenter, "predicted →")
        p.save()
        p.translate(12, top + cell * n / 2)
        p.rotate(-90)
        p.drawText(QRect(-60, -12, 120, 16), Qt.AlignmentFlag.AlignCenter, "true →")
        p.restore()
        p.setFont(self.font())
        show_counts = cell >= fm.horizontalAdvance("0000") + 4
        show_labels = cell >= fm.height() - 2
        for r in range(n):
            total = sum(self.matrix[r]) or 1
            for c in range(n):
                v = self.matrix[r][c]
                rate = v / total
                rect = self.cell_rect(r, c)
                p.fillRect(rect, _heat(rate, r == c))
                if show_counts and v:
                    p.setPen(QColor("white") if rate > 0.55 else QColor(30, 30, 30))
                    p.drawText(rect, Qt.AlignmentFlag.AlignCenter, str(v))
        # grid + selection
        p.setPen(QPen(QColor(200, 200, 200), 1))
        p.drawRect(QRect(int(left), int(top), int(cell * n), int(cell * n)))
        if self.selected is not None:
            p.setPen(QPen(QColor("#1a73e8") if self.hasFocus() else QColor(0, 0, 0), 2))
            p.drawRect(self.cell_rect(*self.selected).adjusted(1, 1, -1, -1))
        if show_labels:
            p.setPen(text_col)
            label_w = int(left) - 22
            for i, name in enumerate(self.classes):
                y = int(top + i * cell)
                p.drawText(QRect(18, y, label_w, int(cell)), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                           fm.elidedText(name, Qt.TextElideMode.ElideRight, label_w))
            # column labels: short (first letters) to fit under each cell
            for i, name in enumerate(self.classes):
                x = int(left + i * cell)
                p.drawText(QRect(x, int(top - 16), int(cell), 16), Qt.AlignmentFlag.AlignCenter,
                           fm.elidedText(name, Qt.TextElideMode.ElideRight, max(4, int(cell) - 2)))
