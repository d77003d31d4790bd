"""The sidebar of workflow steps, each with a status icon (to do, done, needs attention, busy).

Icons are painted here (no icon files, nothing fetched). The sidebar observes
``AppState.step_status_changed`` and emits ``step_selected(index)`` when clicked.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QIcon, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QListWidget, QListWidgetItem, QWidget

from tlstudio.gui.state import STEP_TITLES, AppState

STATUS_COLORS = {
    "todo": QColor("#9aa0a6"),
    "done": QColor("#2e9e44"),
    "attention": QColor("#e8710a"),
    "busy": QColor("#1a73e8"),
}
STATUS_TEXT = {"todo": "to do", "done": "done", "attention": "needs attention", "busy": "working"}


def status_icon(status: str, size: int = 18) -> QIcon:
    pm = QPixmap(size * 2, size * 2)  # drawn at 2x for high-dpi screens
    pm.setDevicePixelRatio(2.0)
    pm.fill(Qt.GlobalColor.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    color = STATUS_COLORS.get(status, STATUS_COLORS["todo"])
    r = size - 4
    if status == "todo":
        p.setPen(QPen(color, 2))
        p.drawEllipse(2, 2, r, r)
    else:
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(color)
        p.drawEllipse(2, 2, r, r)
        p.setPen(QPen(QColor("white"), 2.2, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
        c = 2 + r / 2
        if status == "done":  # check mark
            p.drawPolyline([_pt(c - r * 0.25, c), _pt(c - r * 0.05, c + r * 0.2), _pt(c + r * 0.27, c - r * 0.18)])
        elif status == "attention":  # exclamation mark
            p.drawLine(_pt(c, c - r * 0.25), _pt(c, c + r * 0.05))
            p.drawPoint(_pt(c, c + r * 0.25))
        elif status == "busy":  # three dots
            for dx in (-0.22, 0.0, 0.22):
                p.drawPoint(_pt(c + r * dx, c))
    p.end()
    return QIcon(pm)


def _pt(x: float, y: float):
    from PySide6.QtCore import QPointF

    return QPointF(x, y)


class StepSidebar(QListWidget):
    step_selected = Signal(int)

    def __init__(self, state: AppState, steps: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.steps = list(steps)
        self.setObjectName("stepSidebar")
        self.setIconSize(QSize(18, 18))
        self.setSpacing(2)
        self.setFixedWidth(170)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.1)
        self.setFont(font)
        for i, step in enumerate(self.steps):
            item = QListWidgetItem(f"{i + 1}  {STEP_TITLES.get(step, step.title())}")
            item.setData(Qt.ItemDataRole.UserRole, step)
            item.setSizeHint(QSize(150, 36))
            self.addItem(item)
            self._show(step, state.step_status.get(step, "todo"))
        self.currentRowChanged.connect(self.step_selected)
        state.step_status_changed.connect(self._show)

    def status_of(self, step: str) -> str:
        item = self.item(self.steps.index(step))
        return item.data(Qt.ItemDataRole.UserRole + 1) or "todo"

    def _show(self, step: str, status: str) -> None:
        if step not in self.steps:
            return
        i = self.steps.index(step)
        item = self.item(i)
        item.setIcon(status_icon(status))
        item.setData(Qt.ItemDataRole.UserRole + 1, status)
        title = STEP_TITLES.get(step, step.title())
        item.setToolTip(f"Step {i + 1}: {title} ({STATUS_TEXT.get(status, status)}). Shortcut Ctrl+{i + 1}.")
