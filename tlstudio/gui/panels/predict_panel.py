"""Step 6, Predict: drop images (or folders), see the top-k classes with probability bars.

Prediction runs ``evaluate.predict`` with the current run's best weights in a background job;
unreadable files get a row with their reason instead of breaking the batch.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage, QPixmap
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.runner import JobRunner
from tlstudio.gui.state import AppState
from tlstudio.gui.widgets.prob_bars import ProbBars
from tlstudio.gui.widgets.thumbnails import THUMB, ThumbnailLoader

log = logging.getLogger("tlstudio.gui")

SHOW_LIMIT = 100  # result rows drawn at most (each is a few widgets); all are saved to CSV


class _ResultRow(QWidget):
    def __init__(self, pred: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.pred = pred
        lay = QHBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        self.thumb = QLabel()
        self.thumb.setFixedSize(THUMB, THUMB)
        self.thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumb.setAutoFillBackground(True)
        lay.addWidget(self.thumb)
        col = QVBoxLayout()
        name = QLabel(f"<b>{Path(pred.path).name}</b>")
        name.setToolTip(pred.path)
        col.addWidget(name)
        self.bars = ProbBars()
        if pred.error:
            self.bars.set_error(f"Cannot predict: {pred.error}")
        else:
            self.bars.set_top(pred.top)
        col.addWidget(self.bars)
        col.addStretch(1)
        lay.addLayout(col, 1)

    def set_image(self, img: QImage) -> None:
        if not img.isNull():
            self.thumb.setPixmap(QPixmap.fromImage(img))


class PredictPanel(QWidget):
    predictions_shown = Signal(int)

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.predictions: list[Any] = []
        self.job = JobRunner(self)
        self._rows: dict[str, _ResultRow] = {}
        self.loader = ThumbnailLoader(parent=self)
        self.loader.loaded.connect(self._on_thumb)
        self.setAcceptDrops(True)
        self._build()
        self.job.finished.connect(self._on_done)
        self.job.failed.connect(self._on_failed)
        self.job.running_changed.connect(lambda _: self._update())
        state.current_run_changed.connect(lambda _: self._update())
        self._update()

    def _build(self) -> None:
        root = QVBoxLayout(self)
        top = QHBoxLayout()
        self.run_label = QLabel()
        self.run_label.setWordWrap(True)
        top.addWidget(self.run_label, 1)
        top.addWidget(QLabel("Top-k"))
        self.top_k = QSpinBox()
        self.top_k.setRange(1, 20)
        self.top_k.setValue(5)
        self.top_k.setToolTip("How many of the most likely classes to show for each image.")
        top.addWidget(self.top_k)
        self.files_btn = QPushButton("Choose images…")
        self.files_btn.setToolTip("Pick image files to classify with the current run's model.")
        self.folder_btn = QPushButton("Choose folder…")
        self.folder_btn.setToolTip("Classify every image in a folder (and its sub-folders).")
        self.save_btn = QPushButton("Save as CSV…")
        self.save_btn.setToolTip("Save every prediction (file, top classes, probabilities) to a CSV file.")
        self.clear_btn = QPushButton("Clear")
        self.clear_btn.setToolTip("Remove the listed predictions.")
        for b in (self.files_btn, self.folder_btn, self.save_btn, self.clear_btn):
            top.addWidget(b)
        root.addLayout(top)
        self.files_btn.clicked.connect(self._choose_files)
        self.folder_btn.clicked.connect(self._choose_folder)
        self.save_btn.clicked.connect(self._save_csv)
        self.clear_btn.clicked.connect(self.clear)

        self.drop_hint = QLabel("Drop images or a folder here to classify them")
        self.drop_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.drop_hint.setFrameShape(QFrame.Shape.StyledPanel)
        self.drop_hint.setMinimumHeight(60)
        self.drop_hint.setStyleSheet("QLabel { border: 2px dashed #90a4ae; border-radius: 8px; color: #546e7a; "
                                     "font-size: 14px; }")
        root.addWidget(self.drop_hint)
        self.summary = QLabel("")
        root.addWidget(self.summary)
        self.results = QListWidget()
        self.results.setSpacing(2)
        self.results.setToolTip("Each image with its most likely classes; the bar is the model's probability.")
        self.results.setVerticalScrollMode(QListWidget.ScrollMode.ScrollPerPixel)
        self.results.verticalScrollBar().valueChanged.connect(lambda _: self._request_visible())
        self._requested: set[str] = set()
        root.addWidget(self.results, 1)

    # ------------------------------------------------------------------ input
    # URLs are accepted even without a model, so the drop can say what is missing
    def dragEnterEvent(self, e: QDragEnterEvent) -> None:
        if e.mimeData().hasUrls():
            e.acceptProposedAction()
        else:
            e.ignore()

    def dragMoveEvent(self, e: Any) -> None:
        if e.mimeData().hasUrls():
            e.acceptProposedAction()

    def dropEvent(self, e: QDropEvent) -> None:
        paths = [u.toLocalFile() for u in e.mimeData().urls() if u.isLocalFile()]
        if paths and self.predict_paths(paths):
            e.acceptProposedAction()
        else:
            e.ignore()

    def _choose_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Images to classify", "", "Images (*.jpg *.jpeg *.png *.bmp *.gif *.tif *.tiff *.webp);;All files (*)")
        if files:
            self.predict_paths(files)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of images to classify")
        if folder:
            self.predict_paths([folder])

    # ------------------------------------------------------------------ predicting
    def _can_predict(self) -> bool:
        from tlstudio.core.runs.folder import BEST_WEIGHTS

        run = self.state.current_run
        return bool(run) and (Path(run) / BEST_WEIGHTS).is_file() and not self.job.running

    def predict_paths(self, paths: list[str]) -> bool:
        if not self._can_predict():
            self.summary.setText("Train a model or open a run first (step Runs)." if not self.job.running
                                 else "Still busy with the previous images…")
            return False
        run_dir, k = self.state.current_run, self.top_k.value()

        def factory(stop, pause):
            from tlstudio.core.evaluation.evaluate import predict

            return predict(run_dir, list(paths), top_k=k)
            yield  # noqa: unreachable - makes this a generator for the runner

        self.summary.setText(f"Classifying {len(paths)} item(s)…")
        self.job.start(factory)
        return True

    def _on_done(self, preds: list[Any]) -> None:
        self.show_predictions(preds)

    def _on_failed(self, message: str, tb: str) -> None:
        from tlstudio.gui.widgets.error_dialog import show_error

        self.summary.setText(f"Prediction failed: {message}")
        show_error(self, "Prediction failed", message, tb, modal=False)

    def show_predictions(self, preds: list[Any]) -> None:
        self.clear()
        self.predictions = list(preds)
        for p in self.predictions[:SHOW_LIMIT]:
            row = _ResultRow(p)
            item = QListWidgetItem()
            item.setSizeHint(QSize(300, max(THUMB, row.sizeHint().height()) + 10))
            item.setToolTip(p.path)
            self.results.addItem(item)
            self.results.setItemWidget(item, row)
            self._rows[p.path] = row
        bad = sum(1 for p in self.predictions if p.error)
        shown = f" (showing {SHOW_LIMIT}; save as CSV for all)" if len(self.predictions) > SHOW_LIMIT else ""
        self.summary.setText(f"{len(self.predictions)} image(s) classified" + (f", {bad} could not be read" if bad else "")
                             + shown)
        self._update()
        if self.predictions:
            self.state.set_step_status("predict", "done")
        self._requested: set[str] = set()
        QTimer.singleShot(0, self._request_visible)
        self.predictions_shown.emit(len(self.predictions))

    def _request_visible(self) -> None:
        """Decode thumbnails only for the rows on screen (more as the list scrolls)."""
        view = self.results.viewport().rect()
        for i in range(self.results.count()):
            item = self.results.item(i)
            rect = self.results.visualItemRect(item)
            if rect.bottom() < view.top():
                continue
            if rect.top() > view.bottom():
                break
            row = self.results.itemWidget(item)
            if row is not None and not row.pred.error and row.pred.path not in self._requested:
                self._requested.add(row.pred.path)
                self.loader.request(row.pred.path)

    def _on_thumb(self, batch: list[tuple[str, QImage, str]]) -> None:
        for path, img, _err in batch:  # the loader hands over decoded thumbnails in bursts
            row = self._rows.get(path)
            if row is not None:
                row.set_image(img)

    def clear(self) -> None:
        self.loader.forget_pending()
        self.results.clear()
        self._rows.clear()
        self.predictions = []
        self.summary.setText("")
        self._update()

    def _save_csv(self, path: str | None = None) -> None:
        if not self.predictions:
            return
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Save predictions", "predictions.csv", "CSV (*.csv)")
        if not path:
            return
        k = max((len(p.top) for p in self.predictions), default=0)
        try:
            with open(path, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(["path", "error"] + [f"{s}{i}" for i in range(1, k + 1) for s in ("class", "prob")])
                for p in self.predictions:
                    w.writerow([p.path, p.error or ""] + [v for c, pr in p.top for v in (c, f"{pr:.6f}")])
        except OSError as exc:
            from tlstudio.gui.widgets.error_dialog import show_error

            show_error(self, "Cannot save", f"{path}: {exc}", modal=False)
            return
        self.state.status_message.emit(f"Saved {len(self.predictions)} predictions to {path}")

    def _update(self) -> None:
        from tlstudio.core.runs.folder import RunError, read_run

        run = self.state.current_run
        if not run:
            self.run_label.setText("No model yet: train one, or open a run in Runs.")
        else:
            try:
                info = read_run(run)
                self.run_label.setText(f"Model: <b>{info.name or Path(run).name}</b> · {info.model.backbone} · "
                                       f"{len(info.model.classes)} classes")
            except (RunError, OSError) as exc:
                self.run_label.setText(str(exc))
        ok = self._can_predict()
        self.files_btn.setEnabled(ok)
        self.folder_btn.setEnabled(ok)
        self.save_btn.setEnabled(bool(self.predictions))
        self.drop_hint.setEnabled(ok)
