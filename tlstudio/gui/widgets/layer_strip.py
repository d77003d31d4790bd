"""The network drawn as its layer groups, stem at the top, head at the bottom.

One painted block per group: name, parameter count, and a bar whose length shows the group's
share of the weights. Frozen groups are blue-grey, trainable ones orange; the head is always
trainable (drawn with a lock). Clicking a block emits ``toggled(index)``; the owner decides.
From the keyboard: Tab focuses the strip, Up/Down/Home/End move between blocks, Space or Enter
toggles the focused block (screen readers hear the block's name, size and state).
Painted in one widget (not one widget per group) so a 40-group ViT is as cheap as a ResNet.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

FROZEN = QColor("#6f8fb3")
FROZEN_BG = QColor("#e3eaf3")
TRAIN = QColor("#e8710a")
TRAIN_BG = QColor("#fde7d2")
HEAD_BG = QColor("#fbd5b0")
BLOCK_H = 34
GAP = 10  # room for the arrow between blocks
MARGIN = 8


def human_count(n: int) -> str:
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f} B"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} M"
    if n >= 1_000:
        return f"{n / 1e3:.1f} k"
    return str(n)


class LayerStrip(QWidget):
    toggled = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.groups: list[Any] = []
        self.trainable: list[bool] = []
        self._hover = -1
        self.focus_index = 0  # the block Space toggles
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAccessibleName("Layer groups")
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMinimumWidth(260)

    def set_groups(self, groups: list[Any], trainable: list[bool]) -> None:
        self.groups, self.trainable = list(groups), list(trainable)
        self.focus_index = min(self.focus_index, max(0, len(self.groups) - 1))
        self.setFixedHeight(self.sizeHint().height())
        self._describe()
        self.update()

    def set_trainable(self, trainable: list[bool]) -> None:
        self.trainable = list(trainable)
        self._describe()
        self.update()

    def describe_block(self, i: int) -> str:
        g = self.groups[i]
        on = self.trainable[i] if i < len(self.trainable) else True
        extra = "the output layer, always trained" if g.is_head else "Space toggles it"
        return f"Group {i + 1} of {len(self.groups)}: {g.name}, {human_count(g.n_params)} weights, " \
               f"{'trainable' if on else 'frozen'}; {extra}"

    def _describe(self) -> None:
        self.setAccessibleDescription(self.describe_block(self.focus_index) if self.groups else "No model yet")

    def keyPressEvent(self, ev) -> None:  # noqa: ANN001
        n = len(self.groups)
        key = ev.key()
        moves = {Qt.Key.Key_Up: -1, Qt.Key.Key_Down: 1, Qt.Key.Key_PageUp: -5, Qt.Key.Key_PageDown: 5}
        if n and key in moves:
            self.move_focus(self.focus_index + moves[key])
        elif n and key in (Qt.Key.Key_Home, Qt.Key.Key_End):
            self.move_focus(0 if key == Qt.Key.Key_Home else n - 1)
        elif n and key in (Qt.Key.Key_Space, Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.toggled.emit(self.focus_index)
        else:
            super().keyPressEvent(ev)
            return
        ev.accept()

    def move_focus(self, i: int) -> None:
        self.focus_index = max(0, min(len(self.groups) - 1, i))
        self._describe()
        r = self.block_rect(self.focus_index).toRect()
        from PySide6.QtWidgets import QScrollArea

        parent = self.parent()
        while parent is not None and not isinstance(parent, QScrollArea):
            parent = parent.parent()
        if parent is not None:  # keep the focused block on screen
            parent.ensureVisible(r.center().x(), r.center().y(), 10, BLOCK_H)
        self.update()

    def focusInEvent(self, ev) -> None:  # noqa: ANN001
        super().focusInEvent(ev)
        self.update()

    def focusOutEvent(self, ev) -> None:  # noqa: ANN001
        super().focusOutEvent(ev)
        self.update()

    def sizeHint(self) -> QSize:
        n = len(self.groups)
        return QSize(360, max(BLOCK_H, 2 * MARGIN + n * BLOCK_H + max(0, n - 1) * GAP))

    def block_rect(self, i: int) -> QRectF:
        y = MARGIN + i * (BLOCK_H + GAP)
        return QRectF(MARGIN, y, self.width() - 2 * MARGIN, BLOCK_H)

    def index_at(self, pos: QPointF) -> int:
        for i in range(len(self.groups)):
            if self.block_rect(i).contains(pos):
                return i
        return -1

    def mousePressEvent(self, ev: QMouseEvent) -> None:
        i = self.index_at(ev.position())
        if i >= 0 and ev.button() == Qt.MouseButton.LeftButton:
            self.focus_index = i
            self._describe()
            self.toggled.emit(i)
        super().mousePressEvent(ev)

    def mouseMoveEvent(self, ev: QMouseEvent) -> None:
        i = self.index_at(ev.position())
        if i != self._hover:
            self._hover = i
            if i >= 0:
                g = self.groups[i]
                state = "trainable" if self.trainable[i] else "frozen"
                what = ("The new output layer: always trained." if g.is_head
                        else f"Click to make it {'frozen' if self.trainable[i] else 'trainable'}.")
                self.setToolTip(f"{g.name}: {g.n_params:,} weights, {state}. {what}")
                self.setCursor(Qt.CursorShape.ArrowCursor if g.is_head else Qt.CursorShape.PointingHandCursor)
            self.update()
        super().mouseMoveEvent(ev)

    def leaveEvent(self, ev) -> None:  # noqa: ANN001
        self._hover = -1
        self.update()
        super().leaveEvent(ev)

    def paintEvent(self, ev: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        if not self.groups:
            p.setPen(QColor("#777"))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Choose a model to see its layers.")
            return
        biggest = max(1, max(g.n_params for g in self.groups))
        bold = QFont(self.font())
        bold.setBold(True)
        for i, g in enumerate(self.groups):
            r = self.block_rect(i)
            on = self.trainable[i] if i < len(self.trainable) else True
            fg = TRAIN if on else FROZEN
            bg = (HEAD_BG if g.is_head else TRAIN_BG) if on else FROZEN_BG
            p.setPen(QPen(fg.darker(115) if i == self._hover else fg, 2 if i == self._hover else 1.2))
            p.setBrush(bg)
            p.drawRoundedRect(r, 6, 6)
            if i == self.focus_index and self.hasFocus():  # keyboard focus ring
                p.setPen(QPen(QColor("#1a73e8"), 2, Qt.PenStyle.DashLine))
                p.setBrush(Qt.BrushStyle.NoBrush)
                p.drawRoundedRect(r.adjusted(-3, -3, 3, 3), 8, 8)
            # share-of-weights bar along the bottom edge of the block
            frac = g.n_params / biggest
            bar = QRectF(r.left() + 6, r.bottom() - 7, max(2.0, (r.width() - 12) * frac), 3)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(fg)
            p.drawRoundedRect(bar, 1.5, 1.5)
            # texts
            p.setPen(QColor("#202124"))
            p.setFont(bold)
            text_r = r.adjusted(10, 0, -10, -6)
            label = g.name + ("  (head, always trained)" if g.is_head else "")
            p.drawText(text_r, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                       p.fontMetrics().elidedText(label, Qt.TextElideMode.ElideRight, int(text_r.width() * 0.62)))
            p.setFont(self.font())
            state = "trainable" if on else "frozen"
            p.setPen(fg.darker(130))
            p.drawText(text_r, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight,
                       f"{human_count(g.n_params)}  ·  {state}")
            if i < len(self.groups) - 1:  # arrow to the next group: data flows stem -> head
                x = r.center().x()
                p.setPen(QPen(QColor("#9aa0a6"), 1.5))
                p.drawLine(QPointF(x, r.bottom() + 1), QPointF(x, r.bottom() + GAP - 2))
                p.drawLine(QPointF(x - 3, r.bottom() + GAP - 5), QPointF(x, r.bottom() + GAP - 2))
                p.drawLine(QPointF(x + 3, r.bottom() + GAP - 5), QPointF(x, r.bottom() + GAP - 2))
        p.end()
