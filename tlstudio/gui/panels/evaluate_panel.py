"""Step 5, Evaluate: metrics, per-class table, confusion heat map, misclassified gallery.

Shows the current run's eval.json (written by the engine after training) and can evaluate again,
on the validation split or on any other folder with the same classes, in a background job.
Clicking a confusion cell lists that cell's images in the gallery. When the run also trained a
from-scratch baseline, the gain of transfer is shown, with a clear warning when it is negative.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QModelIndex, QObject, QSize, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QPixmap
from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.runner import JobRunner
from tlstudio.gui.state import AppState
from tlstudio.gui.widgets.confusion import ConfusionMatrixWidget
from tlstudio.gui.widgets.thumbnails import THUMB, ThumbnailModel, ThumbnailView

log = logging.getLogger("tlstudio.gui")

GALLERY_LIMIT = 2000  # mistakes listed at most (most confident first); the count says how many exist


@dataclass(frozen=True)
class _Shot:
    """One gallery entry: what ThumbnailModel needs (path, label) plus the prediction."""

    path: str
    label: int
    true: str
    pred: str
    confidence: float


class _GalleryModel(ThumbnailModel):
    _big: dict[str, QPixmap]

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if index.isValid() and index.row() < len(self._rows):
            s = self._samples[self._rows[index.row()]]
            if role == Qt.ItemDataRole.DecorationRole:
                return self._upscaled(s.path, super().data(index, role))
            if role == Qt.ItemDataRole.DisplayRole:
                return f"{s.pred} {s.confidence:.0%}"
            if role == Qt.ItemDataRole.ToolTipRole:
                return f"{s.path}\ntrue: {s.true}\npredicted: {s.pred} ({s.confidence:.1%} confident)"
        return super().data(index, role)


    def _upscaled(self, path: str, pm: Any) -> Any:
        """Tiny images (e.g. 32 px) are enlarged to the thumbnail size so they can be seen."""
        if not isinstance(pm, QPixmap) or pm.isNull() or path not in self._cache or max(pm.width(), pm.height()) >= THUMB:
            return pm
        big = self.__dict__.setdefault("_big", {})
        if path not in big:
            if len(big) > 3000:
                big.clear()
            big[path] = pm.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio,
                                  Qt.TransformationMode.FastTransformation)
        return big[path]


class _NumItem(QTableWidgetItem):
    """Shows a formatted number, sorts by its value."""

    def __init__(self, value: float, fmt: str) -> None:
        super().__init__(fmt.format(value))
        self.value = value
        self.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        return self.value < getattr(other, "value", 0)


class _Relay(QObject):
    progress = Signal(int, int)  # emitted from the worker thread, delivered on the UI thread


class EvaluatePanel(QWidget):
    report_shown = Signal()

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.report: Any = None  # tlstudio.core.evaluate.EvalReport
        self.info: Any = None  # tlstudio.core.runs.RunInfo
        self.run_dir: str | None = None
        self.job = JobRunner(self)
        self._relay = _Relay(self)
        self._build()
        self.job.finished.connect(self._on_eval_done)
        self.job.failed.connect(self._on_eval_failed)
        self.job.running_changed.connect(self._on_busy)
        self._relay.progress.connect(self._on_progress)
        state.current_run_changed.connect(self.load_run)
        state.training_changed.connect(lambda _: self._update_buttons())
        self.load_run(state.current_run or "")

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        root = QVBoxLayout(self)
        top = QHBoxLayout()
        self.run_label = QLabel("No run selected: train a model or open one in Runs.")
        self.run_label.setWordWrap(True)
        self.eval_btn = QPushButton("Evaluate validation split")
        self.eval_btn.setToolTip("Measure the best weights on the images held back for validation.")
        self.folder_btn = QPushButton("Evaluate another folder…")
        self.folder_btn.setToolTip("Measure the model on a different labelled folder with the same class "
                                   "names (e.g. a separate test set).")
        self.busy = QProgressBar()
        self.busy.setMaximumWidth(200)
        self.busy.hide()
        top.addWidget(self.run_label, 1)
        top.addWidget(self.busy)
        top.addWidget(self.eval_btn)
        top.addWidget(self.folder_btn)
        root.addLayout(top)
        self.eval_btn.clicked.connect(lambda: self.evaluate())
        self.folder_btn.clicked.connect(self._choose_folder)

        split = QSplitter(Qt.Orientation.Horizontal)
        root.addWidget(split, 1)

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        box = QGroupBox("Metrics")
        self.metrics_form = QFormLayout(box)
        self.source_label = QLabel("-")
        self.acc_label = QLabel("-")
        self.acc_label.setToolTip("Share of images whose most likely class is the true class.")
        self.f1_label = QLabel("-")
        self.f1_label.setToolTip("F1 (the balance of precision and recall) averaged over classes, so small "
                                 "classes count as much as big ones.")
        self.topk_label = QLabel("-")
        self.topk_label.setToolTip("Share of images whose true class is among the k most likely classes.")
        self.n_label = QLabel("-")
        self.metrics_form.addRow("Evaluated on", self.source_label)
        self.metrics_form.addRow("Accuracy", self.acc_label)
        self.metrics_form.addRow("Macro-F1", self.f1_label)
        self.metrics_form.addRow("Top-k accuracy", self.topk_label)
        self.metrics_form.addRow("Images", self.n_label)
        lv.addWidget(box)

        self.baseline_box = QGroupBox("Transfer vs from scratch")
        bl = QVBoxLayout(self.baseline_box)
        self.baseline_label = QLabel("")
        self.baseline_label.setWordWrap(True)
        self.baseline_label.setTextFormat(Qt.TextFormat.RichText)
        bl.addWidget(self.baseline_label)
        self.baseline_box.setToolTip("The same network trained from random weights on the same data: "
                                     "the difference is what the pretrained knowledge brings.")
        self.baseline_box.hide()
        lv.addWidget(self.baseline_box)

        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["Class", "Precision", "Recall", "F1", "Support"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)  # class order
        self.table.setSortingEnabled(True)
        self.table.setToolTip("Precision: of the images predicted as this class, the share that really are.\n"
                              "Recall: of the images of this class, the share found.\n"
                              "Support: how many images of this class were evaluated.")
        lv.addWidget(self.table, 1)
        split.addWidget(left)

        right = QSplitter(Qt.Orientation.Vertical)
        self.confusion = ConfusionMatrixWidget()
        self.confusion.cell_clicked.connect(self.show_cell)
        right.addWidget(self.confusion)
        gal = QWidget()
        gl = QVBoxLayout(gal)
        gl.setContentsMargins(0, 0, 0, 0)
        head = QHBoxLayout()
        self.gallery_label = QLabel("Misclassified images")
        self.gallery_label.setWordWrap(True)
        self.all_btn = QPushButton("Show all mistakes")
        self.all_btn.clicked.connect(self.show_all_mistakes)
        self.all_btn.setToolTip("List every misclassified image again (after a confusion cell was clicked).")
        head.addWidget(self.gallery_label, 1)
        head.addWidget(self.all_btn)
        gl.addLayout(head)
        self.gallery_model = _GalleryModel()
        self.gallery = ThumbnailView()
        self.gallery.setModel(self.gallery_model)
        self.gallery.setGridSize(QSize(THUMB + 24, THUMB + 34))
        self.gallery.setWordWrap(True)
        self.gallery.setToolTip("Wrong predictions, most confident first (often label mistakes). "
                                "Double-click to open the image.")
        self.gallery.doubleClicked.connect(self._open_image)
        gl.addWidget(self.gallery, 1)
        right.addWidget(gal)
        right.setSizes([380, 300])
        split.addWidget(right)
        split.setSizes([380, 700])

    # ------------------------------------------------------------------ loading
    def load_run(self, run_dir: str) -> None:
        """Show the run's eval.json (if any) and its baseline comparison."""
        from tlstudio.core.evaluate import EvalReport
        from tlstudio.core.runs import EVAL_JSON, RunError, read_run

        self.run_dir = run_dir or None
        self.info = None
        self.show_report(None)
        if not run_dir:
            self.run_label.setText("No run selected: train a model or open one in Runs.")
            self._update_buttons()
            return
        try:
            self.info = read_run(run_dir)
        except (RunError, OSError) as exc:
            self.run_label.setText(str(exc))
            self._update_buttons()
            return
        name = self.info.name or Path(run_dir).name
        self.run_label.setText(f"<b>{name}</b> · {self.info.model.backbone} · {self.info.status.replace('_', ' ')}")
        self._show_baseline()
        path = Path(run_dir) / EVAL_JSON
        if path.is_file():
            try:
                self.show_report(EvalReport.from_json(json.loads(path.read_text(encoding="utf-8"))))
            except Exception as exc:  # noqa: BLE001 - a damaged eval.json: offer to evaluate again
                log.warning("cannot read %s: %s", path, exc)
                self.gallery_label.setText(f"{path.name} is unreadable; click Evaluate to measure again.")
        else:
            self.gallery_label.setText("This run has not been evaluated yet: click Evaluate.")
        self._update_buttons()

    def _show_baseline(self) -> None:
        b = self.info.baseline if self.info is not None else None
        if not b:
            self.baseline_box.hide()
            return
        transfer = b.get("transfer_val_acc", self.info.best_val_acc)
        scratch = b.get("scratch_val_acc")
        gain = b.get("gain")
        if gain is None and transfer is not None and scratch is not None:
            gain = transfer - scratch
        if transfer is None or scratch is None or gain is None:
            self.baseline_box.hide()
            return
        text = (f"Transfer learning: <b>{transfer:.1%}</b> · from scratch: <b>{scratch:.1%}</b><br>"
                f"Gain of transfer: <b>{gain * 100:+.1f} points</b>")
        if gain < 0 or b.get("negative_transfer"):
            text += ("<br><span style='color:#b71c1c'><b>⚠ Negative transfer:</b> the pretrained weights made "
                     "the result worse on this data. Try unfreezing more layers, a lower learning rate, "
                     "or another backbone.</span>")
            self.baseline_box.setStyleSheet("QGroupBox { border: 2px solid #b71c1c; }")
        else:
            self.baseline_box.setStyleSheet("")
        self.baseline_label.setText(text)
        self.baseline_box.show()

    def show_report(self, report: Any) -> None:
        self.report = report
        self.table.setSortingEnabled(False)
        if report is None:
            for w in (self.source_label, self.acc_label, self.f1_label, self.topk_label, self.n_label):
                w.setText("-")
            self.table.setRowCount(0)
            self.confusion.clear()
            self.gallery_model.set_samples([], [])
            self.gallery_label.setText("Misclassified images")
            return
        self.source_label.setText(report.source or "validation split")
        self.acc_label.setText(f"{report.accuracy:.1%}")
        self.f1_label.setText(f"{report.macro_f1:.3f}")
        self.topk_label.setText(" · ".join(f"top-{k}: {v:.1%}" for k, v in sorted(report.top_k.items())) or "-")
        fails = len(getattr(report, "failures", []) or [])
        self.n_label.setText(f"{report.n}" + (f" ({fails} unreadable, skipped)" if fails else ""))
        self.table.setRowCount(len(report.per_class))
        for r, row in enumerate(report.per_class):
            self.table.setItem(r, 0, QTableWidgetItem(str(row["name"])))
            for c, key in enumerate(("precision", "recall", "f1"), start=1):
                self.table.setItem(r, c, _NumItem(float(row[key]), "{:.3f}"))
            self.table.setItem(r, 4, _NumItem(int(row["support"]), "{}"))
        self.table.setSortingEnabled(True)
        self.confusion.set_matrix(report.confusion, report.classes)
        self.show_all_mistakes()
        self.state.set_step_status("evaluate", "done")
        self.report_shown.emit()

    # ------------------------------------------------------------------ gallery
    def _set_gallery(self, items: list[dict[str, Any]], title: str) -> None:
        classes = list(self.report.classes) if self.report is not None else []
        index = {c: i for i, c in enumerate(classes)}
        shots = [_Shot(m["path"], index.get(m["true"], -1), m["true"], m["pred"], float(m["confidence"]))
                 for m in items[:GALLERY_LIMIT] if m.get("path")]
        self.gallery_model.set_samples(shots, classes)
        more = f" (showing the {GALLERY_LIMIT} most confident)" if len(items) > GALLERY_LIMIT else ""
        self.gallery_label.setText(title + more)

    def show_all_mistakes(self) -> None:
        if self.report is None:
            return
        mis = self.report.misclassified
        self.confusion.selected = None
        self.confusion.update()
        if not mis:
            self._set_gallery([], "No misclassified images: every image was classified correctly.")
        else:
            self._set_gallery(mis, f"{len(mis)} misclassified images, most confident first")

    def show_cell(self, true_idx: int, pred_idx: int) -> None:
        """List the images of one confusion cell (true class row, predicted class column)."""
        if self.report is None:
            return
        t, p = self.report.classes[true_idx], self.report.classes[pred_idx]
        count = self.report.confusion[true_idx][pred_idx]
        if true_idx == pred_idx:
            self._set_gallery([], f"{count} images of {t} classified correctly "
                                  "(only mistakes are kept with their file names).")
            return
        cell = [m for m in self.report.misclassified if m["true"] == t and m["pred"] == p]
        self._set_gallery(cell, f"{count} images of {t} predicted as {p}")

    def gallery_paths(self) -> list[str]:
        m = self.gallery_model
        return [m.data(m.index(r), ThumbnailModel.PathRole) for r in range(m.rowCount())]

    def _open_image(self, index: QModelIndex) -> None:
        path = index.data(ThumbnailModel.PathRole)
        if path:
            QDesktopServices.openUrl(QUrl.fromLocalFile(path))

    # ------------------------------------------------------------------ evaluating
    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Evaluate on a folder with the same classes")
        if folder:
            self.evaluate(folder)

    def evaluate(self, folder: str | None = None) -> bool:
        """Evaluate the current run (validation split, or ``folder``) in the background."""
        if not self.run_dir or self.job.running:
            return False
        run_dir, relay = self.run_dir, self._relay

        def factory(stop, pause):
            from tlstudio.core.evaluate import evaluate

            return evaluate(run_dir, folder, progress=lambda d, t: relay.progress.emit(int(d), int(t or 0)))
            yield  # noqa: unreachable - makes this a generator for the runner

        self.busy.setRange(0, 0)
        self.busy.setFormat("Evaluating… %p%")
        self.job.start(factory)
        return True

    def _on_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.busy.setRange(0, total)
            self.busy.setValue(done)

    def _on_busy(self, running: bool) -> None:
        self.busy.setVisible(running)
        self._update_buttons()

    def _on_eval_done(self, report: Any) -> None:
        self.show_report(report)
        where = getattr(report, "source", "") or "validation split"
        self.state.status_message.emit(f"Evaluated on {where}: accuracy {report.accuracy:.1%}")

    def _on_eval_failed(self, message: str, tb: str) -> None:
        from tlstudio.gui.widgets.error_dialog import show_error

        self.state.set_step_status("evaluate", "attention")
        show_error(self, "Evaluation failed", message, tb, modal=False)

    def _update_buttons(self) -> None:
        from tlstudio.core.runs import BEST_WEIGHTS

        has_weights = bool(self.run_dir) and (Path(self.run_dir) / BEST_WEIGHTS).is_file()
        idle = not self.job.running
        self.eval_btn.setEnabled(has_weights and idle)
        self.folder_btn.setEnabled(has_weights and idle)
        if not has_weights and self.run_dir:
            self.eval_btn.setToolTip("This run has no trained weights yet.")
