"""TrainPanel (placeholder being filled in by gui-train; the constructor is final)."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from tlstudio.gui.runner import JobRunner
from tlstudio.gui.state import AppState


class TrainPanel(QWidget):
    def __init__(self, state: AppState, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state, self.runner = state, runner
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Train (coming)"))
