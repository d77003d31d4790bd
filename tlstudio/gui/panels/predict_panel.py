"""Step 6, Predict: drop images (or folders), see the top-k classes with probability bars.

A model picker lists the trained runs of the project (any run with weights: trained,
distilled ...); opening another run clears the old predictions. Prediction runs in a background
job, in chunks with a progress bar and Cancel for big folders (the model is loaded once);
unreadable files get a row with their reason instead of breaking the batch. Selecting a result
shows the picture with its Grad-CAM map (toggle, opacity, any class of the top-k), computed in
the background.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.runner import JobRunner
from tlstudio.gui.state import AppState
from tlstudio.gui.views.heatmap_overlay import ExplainPane
from tlstudio.gui.widgets.prob_bars import ProbBars
from tlstudio.gui.widgets.thumbnails import THUMB, ThumbnailLoader

log = logging.getLogger("tlstudio.gui")

SHOW_LIMIT = 100  # result rows drawn at most (each is a few widgets); all are saved to CSV
CHUNK = 32  # images per prediction step: progress and Cancel between steps


def predict_job(run_dir: str, paths: list[str], top_k: int, stop: Any = None):
    """(worker) Generator: Progress events, returns the predictions. A short list is one call of
    ``evaluate.predict``; a long one loads the model once and predicts chunk by chunk, stopping
    between chunks when ``stop`` is set (the predictions so far are returned)."""
    from tlstudio.core import events as ev
    from tlstudio.core.evaluation import evaluate

    from tlstudio.core.tasks import classification
    from tlstudio.core.tasks.registry import kind_of_run

    files = evaluate.expand_paths(paths)
    kind = kind_of_run(run_dir)
    if kind.predict is not classification.predict:  # its own model (a k-NN bank ...): its own predict
        out: list[Any] = []
        for start in range(0, len(files), CHUNK):
            if stop is not None and stop.is_set():
                break
            rows = kind.predict(run_dir, files[start:start + CHUNK], top_k=top_k)
            out += [evaluate.Prediction(r["path"], [(t["class"], t["prob"]) for t in r.get("top", [])], r.get("error"))
                    for r in rows]
            yield ev.Progress(task="predict", done=len(out), total=len(files), message="Classifying")
        return out
    if len(files) <= CHUNK:
        return evaluate.predict(run_dir, list(paths), top_k=top_k)
    from tlstudio.core.models.run_model import load_run_model

    yield ev.Progress(task="predict", done=0, total=len(files), message="Loading the model")
    model, info = load_run_model(run_dir)
    forward = evaluate.torch_forward(model)
    out = []
    for start in range(0, len(files), CHUNK):
        if stop is not None and stop.is_set():
            break
        out += evaluate.predict_with(forward, info.model, files[start:start + CHUNK], top_k=top_k)
        yield ev.Progress(task="predict", done=len(out), total=len(files), message="Classifying")
    return out


def trained_runs(runs_dir: str | None, current: str | None) -> list[tuple[str, str]]:
    """(label, run folder) of runs with trained weights, newest first; the current run always."""
    from tlstudio.core.runs.folder import BEST_WEIGHTS, RunError, list_runs, read_run

    dirs = [str(d) for d in list_runs(runs_dir)] if runs_dir else []
    if current and current not in dirs:
        dirs.insert(0, current)
    out = []
    for d in dirs:
        if not (Path(d) / BEST_WEIGHTS).is_file():
            continue
        try:
            info = read_run(d)
        except (RunError, OSError):
            continue
        acc = info.metrics.get("val_acc", info.best_val_acc)
        what = {"distillation": "distilled", "classification": ""}.get(info.task, info.task)
        label = f"{Path(d).name} · {info.model.backbone}" + (f" · {what}" if what else "") + (
            f" · {acc:.0%}" if isinstance(acc, (int, float)) else "")
        out.append((label, d))
    return out


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
        self._pred_run: str | None = None  # the run that made the predictions shown
        self._asked = 0
        self.job.finished.connect(self._on_done)
        self.job.failed.connect(self._on_failed)
        self.job.event.connect(self._on_event)
        self.job.running_changed.connect(lambda _: self._update())
        state.current_run_changed.connect(self._on_run_changed)
        # a model appears when a training or distillation ends, not when its run folder is set
        state.training_changed.connect(lambda _r: self.refresh_models())
        state.runs_changed.connect(self.refresh_models)
        state.run_event.connect(self._on_engine_event)
        self.refresh_models()

    def _build(self) -> None:
        root = QVBoxLayout(self)
        pick = QHBoxLayout()
        pick.addWidget(QLabel("Model"))
        self.model_box = QComboBox()
        self.model_box.setAccessibleName("Model to predict with")
        self.model_box.setToolTip("Every run of this project with trained weights (trained, distilled ...)")
        self.model_box.setMinimumContentsLength(30)
        self.model_box.activated.connect(self._pick_model)
        pick.addWidget(self.model_box, 1)
        self.open_btn = QPushButton("Open run…")
        self.open_btn.setToolTip("Use the model of a run folder elsewhere on disk")
        self.open_btn.clicked.connect(self._open_run)
        pick.addWidget(self.open_btn)
        root.addLayout(pick)
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
        prow = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("Stop after the current images (the ones done are kept)")
        self.cancel_btn.setVisible(False)
        self.cancel_btn.clicked.connect(self.cancel)
        prow.addWidget(self.progress, 1)
        prow.addWidget(self.cancel_btn)
        root.addLayout(prow)
        self.summary = QLabel("")
        root.addWidget(self.summary)
        self.results = QListWidget()
        self.results.setSpacing(2)
        self.results.setToolTip("Each image with its most likely classes; the bar is the model's probability.")
        self.results.setVerticalScrollMode(QListWidget.ScrollMode.ScrollPerPixel)
        self.results.verticalScrollBar().valueChanged.connect(lambda _: self._request_visible())
        self._requested: set[str] = set()
        self.results.currentItemChanged.connect(lambda cur, _prev: self._explain_item(cur))
        self.explain = ExplainPane()
        self.explain.setMinimumWidth(280)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.results)
        split.addWidget(self.explain)
        split.setSizes([520, 420])
        root.addWidget(split, 1)

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
            return predict_job(run_dir, list(paths), k, stop)

        self._job_run = run_dir
        self.summary.setText(f"Classifying {len(paths)} item(s)…")
        self.progress.setRange(0, 0)  # busy until the first count arrives
        self.job.start(factory)
        return True

    def cancel(self) -> None:
        if self.job.running:
            self.job.stop()
            self.summary.setText("Cancelling after the current images…")

    def _on_event(self, e: Any) -> None:
        from tlstudio.core import events as ev

        if isinstance(e, ev.Progress) and e.total:
            self.progress.setRange(0, e.total)
            self.progress.setValue(e.done)
            self.progress.setFormat(f"{e.done} / {e.total} images")
            self._asked = e.total

    def _on_done(self, preds: list[Any]) -> None:
        if getattr(self, "_job_run", None) != self.state.current_run:
            self._update()  # another model was opened meanwhile: these belong to the old one
            return
        asked, self._asked = self._asked, 0
        self.show_predictions(preds, run_dir=self._job_run)
        if asked and len(preds) < asked:
            self.summary.setText(f"Cancelled: {len(preds)} of {asked} images classified")

    def _on_failed(self, message: str, tb: str) -> None:
        from tlstudio.gui.widgets.error_dialog import show_error

        self.summary.setText(f"Prediction failed: {message}")
        show_error(self, "Prediction failed", message, tb, modal=False)

    def show_predictions(self, preds: list[Any], run_dir: str | None = None) -> None:
        self.clear()
        self.predictions = list(preds)
        self._pred_run = run_dir or self.state.current_run
        self.explain.set_run(self._pred_run)
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
        if self.results.count():
            self.results.setCurrentRow(0)
        self.predictions_shown.emit(len(self.predictions))

    def _explain_item(self, item: Any) -> None:
        row = self.results.itemWidget(item) if item is not None else None
        if row is None or row.pred.error:
            self.explain.clear()
            return
        classes = [c for c, _ in row.pred.top]
        self.explain.show_image(row.pred.path, classes, classes[0] if classes else None)

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
        self._pred_run = None
        if hasattr(self, "explain"):
            self.explain.clear()
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

    # ------------------------------------------------------------------ model
    def refresh_models(self) -> None:
        root = self.state.runs_dir
        if not root:  # no project open: the default runs folder, as the Runs step
            from tlstudio.core.paths import default_runs_dir

            root = str(default_runs_dir())
        runs = trained_runs(root, self.state.current_run)
        self.model_box.blockSignals(True)
        self.model_box.clear()
        for label, d in runs:
            self.model_box.addItem(label, d)
            self.model_box.setItemData(self.model_box.count() - 1, d, Qt.ItemDataRole.ToolTipRole)
        if not runs:
            self.model_box.addItem("No trained model yet")
        cur = self.state.current_run
        idx = self.model_box.findData(cur) if cur else -1
        if idx < 0 and runs:  # models exist but none is open: say so, do not pretend one is
            self.model_box.insertItem(0, f"Choose one of {len(runs)} trained models…")
            idx = 0
        self.model_box.setCurrentIndex(max(0, idx))
        self.model_box.blockSignals(False)
        self.model_box.setEnabled(bool(runs))
        self._update()

    def _pick_model(self, index: int) -> None:
        d = self.model_box.itemData(index)
        if d and d != self.state.current_run:
            self.state.set_current_run(d)

    def _open_run(self) -> None:
        from tlstudio.core.runs.folder import is_run_dir

        d = QFileDialog.getExistingDirectory(self, "Run folder (contains run.json)")
        if d and is_run_dir(d):
            self.state.set_current_run(d)
        elif d:
            self.summary.setText(f"{d} is not a TL Studio run folder (no run.json).")

    def _on_run_changed(self, run: str) -> None:
        if self.predictions and self._pred_run != (run or None):
            self.clear()  # predictions belong to the model that made them
        self.refresh_models()

    def _on_engine_event(self, e: Any) -> None:
        from tlstudio.core import events as ev

        if isinstance(e, (ev.Finished, ev.Checkpointed)):
            self.refresh_models()

    def showEvent(self, e: Any) -> None:  # noqa: N802 - the weights may have appeared meanwhile
        super().showEvent(e)
        self.refresh_models()
        QTimer.singleShot(0, self._request_visible)  # rows laid out while hidden come into view

    def resizeEvent(self, e: Any) -> None:  # noqa: N802 - a taller window shows more rows
        super().resizeEvent(e)
        QTimer.singleShot(0, self._request_visible)

    def _update(self) -> None:
        from tlstudio.core.runs.folder import RunError, read_run

        run = self.state.current_run
        if not run:
            self.run_label.setText("Pick a model above." if self.model_box.count() > 1 or self.model_box.itemData(0)
                                   else "No model yet: train one, or open a run in Runs.")
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
        busy = self.job.running
        self.progress.setVisible(busy)
        self.cancel_btn.setVisible(busy)
        self.cancel_btn.setEnabled(busy and not self.job.stopping)
        has_models = any(self.model_box.itemData(i) for i in range(self.model_box.count()))
        self.model_box.setEnabled(not busy and has_models)
