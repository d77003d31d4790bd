"""EvaluatePanel (placeholder being filled in by gui-train; the constructor is final)."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from tlstudio.gui.state import AppState


class EvaluatePanel(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Evaluate (coming)"))
