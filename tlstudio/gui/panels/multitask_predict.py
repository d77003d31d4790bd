"""Predict step of a multi-task run: every task's answer for each image.

Drop images or folders (or "Choose images…"); the current run's best weights run in a worker
thread; one card per image with its thumbnail and a line per task (class and confidence,
multi-label classes, or the predicted value). Unreadable files get their reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QPixmap
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QWidget,
)

from tlstudio.gui.panels.multitask_page import page_frame, run_job

THUMB = 96
SHOW_LIMIT = 60


def answer_text(a: dict[str, Any]) -> str:
    if "class" in a:
        return f"<b>{a['class']}</b> ({a['prob']:.0%})"
    if "classes" in a:
        return "<b>" + (", ".join(a["classes"]) or "none") + "</b>"
    return f"<b>{a['value']:.4g}</b>"


class _Card(QFrame):
    def __init__(self, row: dict[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        lay = QHBoxLayout(self)
        pic = QLabel()
        pic.setFixedSize(THUMB, THUMB)
        pic.setAlignment(Qt.AlignmentFlag.AlignCenter)
        pm = QPixmap(row["path"])
        if not pm.isNull():
            pic.setPixmap(pm.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio,
                                    Qt.TransformationMode.SmoothTransformation))
        lay.addWidget(pic)
        grid = QGridLayout()
        name = QLabel(f"<b>{Path(row['path']).name}</b>")
        name.setToolTip(row["path"])
        grid.addWidget(name, 0, 0, 1, 2)
        self.answers: dict[str, str] = {}
        if row.get("error"):
            err = QLabel(f"Cannot predict: {row['error']}")
            err.setStyleSheet("color: #b00020;")
            err.setWordWrap(True)
            grid.addWidget(err, 1, 0, 1, 2)
        for i, (task, a) in enumerate(row.get("tasks", {}).items(), start=1):
            grid.addWidget(QLabel(task), i, 0)
            text = answer_text(a)
            self.answers[task] = text
            lab = QLabel(text)
            if "top" in a:
                lab.setToolTip("\n".join(f"{t['class']}: {t['prob']:.1%}" for t in a["top"]))
            grid.addWidget(lab, i, 1)
        grid.setColumnStretch(1, 1)
        lay.addLayout(grid, 1)


class MultiTaskPredictPanel(QWidget):
    def __init__(self, state: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.rows: list[dict[str, Any]] = []
        self.setAcceptDrops(True)
        self.choose_btn = QPushButton("Choose images…")
        self.title, self.status, self.cards = page_frame(
            self, "Predict every task", [self.choose_btn],
            "Drop images or folders here: each gets an answer for every task of the current run.")
        self.cards.addStretch(1)
        self.choose_btn.clicked.connect(self._choose)

    def _choose(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Images to predict", "",
                                                "Images (*.png *.jpg *.jpeg *.bmp *.tif *.tiff *.webp)")
        if files:
            self.predict(files)

    def dragEnterEvent(self, e: QDragEnterEvent) -> None:  # noqa: N802
        if e.mimeData().hasUrls():
            e.acceptProposedAction()

    def dropEvent(self, e: QDropEvent) -> None:  # noqa: N802
        paths = [u.toLocalFile() for u in e.mimeData().urls() if u.isLocalFile()]
        if paths:
            self.predict(paths)

    def predict(self, paths: list[str], wait: bool = False) -> None:
        run_dir = getattr(self.state, "current_run", None)
        if not run_dir:
            self.status.setText("No run selected: train a multi-task model or pick one in the Runs step.")
            return

        def job():
            from tlstudio.core.tasks.multitask.artifacts import predict

            return predict(run_dir, paths)

        self.status.setText(f"Predicting {len(paths)} item(s) with {Path(run_dir).name}…")
        run_job(self, job, self.show_rows, lambda exc: self.status.setText(f"Prediction failed: {exc}"), wait)

    def show_rows(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        while self.cards.count() > 1:
            w = self.cards.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        for r in rows[:SHOW_LIMIT]:
            self.cards.insertWidget(self.cards.count() - 1, _Card(r))
        bad = sum(1 for r in rows if r.get("error"))
        more = f" (first {SHOW_LIMIT} shown)" if len(rows) > SHOW_LIMIT else ""
        self.status.setText(f"{len(rows) - bad} image(s) predicted" + (f", {bad} could not be read" if bad else "")
                            + more)
