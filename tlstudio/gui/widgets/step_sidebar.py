"""The sidebar of workflow steps, each with a status icon (to do, done, needs attention, busy).

Icons are painted here (no icon files, nothing fetched). The sidebar observes
``AppState.step_status_changed`` and emits ``step_selected(index)`` when clicked.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QIcon, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QListWidget, QListWidgetItem, QWidget

from tlstudio.gui.state import AppState
from tlstudio.gui.steps import StepSpec, shortcut_for

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
    """One row per step of ``tlstudio.gui.steps.STEPS``; rows of steps the current task kind does
    not use are hidden, and the visible ones are numbered 1, 2, ... with their shortcut."""

    step_selected = Signal(int)  # row = index in STEPS (hidden rows are never selected)

    def __init__(self, state: AppState, steps: list[StepSpec], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.specs = list(steps)
        self.steps = [s.id for s in self.specs]
        self.setObjectName("stepSidebar")
        self.setAccessibleName("Workflow steps")
        self.setIconSize(QSize(18, 18))
        self.setSpacing(2)
        self.setFixedWidth(170)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.1)
        self.setFont(font)
        for spec in self.specs:
            item = QListWidgetItem(spec.title)
            item.setData(Qt.ItemDataRole.UserRole, spec.id)
            item.setSizeHint(QSize(150, 36))
            self.addItem(item)
        self.apply_kind(state.task_kind)
        self.currentRowChanged.connect(self.step_selected)
        state.step_status_changed.connect(self._show)
        state.task_kind_changed.connect(self.apply_kind)

    def visible_steps(self) -> list[str]:
        return [s for i, s in enumerate(self.steps) if not self.isRowHidden(i)]

    def apply_kind(self, kind: str) -> None:
        """Hide the steps ``kind`` does not use and renumber the others."""
        for i, spec in enumerate(self.specs):
            self.setRowHidden(i, not spec.shown_for(kind))
        for step in self.steps:
            self._show(step, self.state.step_status.get(step, "todo"))
        if 0 <= self.currentRow() and self.isRowHidden(self.currentRow()):
            self.setCurrentRow(0)

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
        spec = self.specs[i]
        visible = self.visible_steps()
        pos = visible.index(step) if step in visible else -1
        item.setText(f"{pos + 1}  {spec.title}" if pos >= 0 else spec.title)
        key = shortcut_for(pos) if pos >= 0 else None
        what = f" {spec.tip}." if spec.tip else ""
        item.setToolTip(f"Step {pos + 1}: {spec.title} ({STATUS_TEXT.get(status, status)}).{what}"
                        + (f" Shortcut {key}." if key else ""))
        item.setData(Qt.ItemDataRole.AccessibleTextRole,
                     f"Step {pos + 1}, {spec.title}, {STATUS_TEXT.get(status, status)}")
