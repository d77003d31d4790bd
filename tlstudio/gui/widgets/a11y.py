"""Accessible names for every control a person can operate (screen readers read them).

Buttons, check boxes and tabs are named by their text, fields in a form by their label (Qt's
buddy); the rest get an explicit ``setAccessibleName``. ``name_controls(root)`` gives each
control still without a name one from what a sighted user sees next to it: its placeholder, the
first sentence of its tooltip, or its group box title. ``unnamed_controls(root)`` lists those
left (tests keep it empty).
"""

from __future__ import annotations

from PySide6.QtGui import QAccessible
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QAbstractSlider,
    QAbstractSpinBox,
    QComboBox,
    QGraphicsView,
    QGroupBox,
    QHeaderView,
    QLineEdit,
    QPlainTextEdit,
    QScrollBar,
    QTabBar,
    QTextEdit,
    QWidget,
)

CONTROL_TYPES = (QAbstractButton, QLineEdit, QAbstractSpinBox, QComboBox, QAbstractSlider, QAbstractItemView,
                 QTabBar, QTextEdit, QPlainTextEdit, QGraphicsView)


def _inside_combo(w: QWidget) -> bool:
    p = w.parentWidget()
    while p is not None:
        if isinstance(p, (QComboBox, QAbstractSpinBox)):
            return True
        p = p.parentWidget()
    return w.window() is not w and w.window().inherits("QComboBoxPrivateContainer")


def is_control(w: QWidget) -> bool:
    """Something a person operates or reads as one thing (not a plain label, a container, or a
    part of another control: scroll bars, table headers, a combo box's popup list)."""
    if isinstance(w, (QScrollBar, QHeaderView)) or w.objectName().startswith("qt_") or _inside_combo(w) \
            or isinstance(w.parentWidget(), QLineEdit):  # e.g. a line edit's clear button
        return False
    if isinstance(w, CONTROL_TYPES):
        return True
    return w.focusPolicy() != w.focusPolicy().NoFocus and type(w).__module__.startswith("tlstudio.")


def accessible_name(w: QWidget) -> str:
    if w.accessibleName():
        return w.accessibleName()
    iface = QAccessible.queryAccessibleInterface(w)
    return iface.text(QAccessible.Text.Name).strip() if iface is not None else ""


def _guess(w: QWidget) -> str:
    placeholder = getattr(w, "placeholderText", None)
    if callable(placeholder) and placeholder():
        return placeholder()
    tip = w.toolTip().strip()
    if tip:
        import re

        plain = re.sub(r"<[^>]+>", "", tip)
        return re.split(r"(?<=[.:!?])\s|\n", plain, maxsplit=1)[0][:100]
    parent = w.parentWidget()
    depth = 0
    while parent is not None:
        if isinstance(parent, QGroupBox) and parent.title():
            return parent.title().replace("&", "")
        if depth < 2 and (parent.accessibleName() or parent.toolTip()):  # part of a compound control
            return parent.accessibleName() or _guess(parent)
        parent = parent.parentWidget()
        depth += 1
    return w.objectName()


def name_controls(root: QWidget) -> int:
    """Give every unnamed control under ``root`` a name; returns how many were named here."""
    n = 0
    for w in [root, *root.findChildren(QWidget)]:
        if is_control(w) and not accessible_name(w):
            guess = _guess(w)
            if guess:
                w.setAccessibleName(guess)
                n += 1
    return n


def unnamed_controls(root: QWidget) -> list[QWidget]:
    return [w for w in [root, *root.findChildren(QWidget)] if is_control(w) and not accessible_name(w)]
