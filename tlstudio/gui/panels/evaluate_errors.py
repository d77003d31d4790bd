"""The Evaluate step's mistakes (right side): the confusion heat map and the gallery of
misclassified images, most confident first. Clicking a confusion cell lists that cell's images.
Selecting an image shows it with its Grad-CAM map (for the predicted class, the true class or
any of the top classes; toggle and opacity), computed in the background."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QModelIndex, QSize, Qt, QUrl
from PySide6.QtGui import QDesktopServices, QPixmap
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.views.heatmap_overlay import ExplainPane
from tlstudio.gui.widgets.confusion import ConfusionMatrixWidget
from tlstudio.gui.widgets.thumbnails import THUMB, ThumbnailModel, ThumbnailView

GALLERY_LIMIT = 2000  # mistakes listed at most (most confident first); the count says how many exist


@dataclass(frozen=True)
class Shot:
    """One gallery entry: what ThumbnailModel needs (path, label) plus the prediction."""

    path: str
    label: int
    true: str
    pred: str
    confidence: float


class GalleryModel(ThumbnailModel):
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


class EvalErrorsMixin:
    """Confusion matrix and mistakes gallery of the Evaluate panel, which provides
    ``self.report`` (the EvalReport shown, or None)."""

    def _build_errors_side(self) -> QSplitter:
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
        self.gallery_model = GalleryModel()
        self.gallery = ThumbnailView()
        self.gallery.setModel(self.gallery_model)
        self.gallery.setGridSize(QSize(THUMB + 24, THUMB + 34))
        self.gallery.setWordWrap(True)
        self.gallery.setToolTip("Wrong predictions, most confident first (often label mistakes). "
                                "Double-click to open the image.")
        self.gallery.doubleClicked.connect(self._open_image)
        self.gallery.clicked.connect(self.explain_index)
        self.gallery.selectionModel().currentChanged.connect(lambda cur, _prev: self.explain_index(cur))
        self.explain = ExplainPane()
        self.explain.setMinimumWidth(240)
        self.explain.caption.setText("Click an image to see what the model looked at.")
        pics = QSplitter(Qt.Orientation.Horizontal)
        pics.addWidget(self.gallery)
        pics.addWidget(self.explain)
        pics.setSizes([360, 300])
        gl.addWidget(pics, 1)
        right.addWidget(gal)
        right.setSizes([380, 300])
        return right

    def explain_index(self, index: QModelIndex) -> None:
        """Grad-CAM of one gallery image: the predicted class first, then the true one."""
        if not index.isValid():
            return
        m = self.gallery_model
        row = m._rows[index.row()] if index.row() < len(m._rows) else None
        if row is None:
            return
        shot = m._samples[row]
        self.explain.set_run(getattr(self, "run_dir", None))
        if shot.path != self.explain.path:
            self.explain.show_image(shot.path, list(dict.fromkeys([shot.pred, shot.true])), shot.pred)

    def _show_errors(self, report: Any) -> None:
        """The heat map and every mistake of ``report`` (both emptied for None)."""
        if report is None:
            self.confusion.clear()
            self.gallery_model.set_samples([], [])
            self.gallery_label.setText("Misclassified images")
            return
        self.confusion.set_matrix(report.confusion, report.classes)
        self.show_all_mistakes()

    def _set_gallery(self, items: list[dict[str, Any]], title: str, limit: int = 0) -> None:
        if hasattr(self, "explain"):
            self.explain.set_run(getattr(self, "run_dir", None))
            self.explain.clear()
        classes = list(self.report.classes) if self.report is not None else []
        index = {c: i for i, c in enumerate(classes)}
        shots = [Shot(m["path"], index.get(m["true"], -1), m["true"], m["pred"], float(m["confidence"]))
                 for m in items[:max(limit, GALLERY_LIMIT)] if m.get("path")]
        self.gallery_model.set_samples(shots, classes)
        more = f" (showing the {GALLERY_LIMIT} most confident)" if len(items) > max(limit, GALLERY_LIMIT) else ""
        self.gallery_label.setText(title + more)

    def show_all_mistakes(self) -> None:
        if self.report is None:
            return
        mis = self.report.misclassified
        self.confusion.selected = None
        self.confusion.update()
        if not mis:
            self._set_gallery([], "No misclassified images: every image was classified correctly. Click a "
                                  "diagonal cell of the matrix to see a class's images and what the model looked at.")
        else:
            self._set_gallery(mis, f"{len(mis)} misclassified images, most confident first")

    def show_cell(self, true_idx: int, pred_idx: int) -> None:
        """List the images of one confusion cell (true class row, predicted class column)."""
        if self.report is None:
            return
        t, p = self.report.classes[true_idx], self.report.classes[pred_idx]
        count = self.report.confusion[true_idx][pred_idx]
        if true_idx == pred_idx:
            right = [m for m in getattr(self.report, "correct", []) if m["true"] == t]
            if not count:
                self._set_gallery([], f"No image of {t} was classified correctly.")
            elif not right:  # a report written before correct images were kept
                self._set_gallery([], f"{count} images of {t} classified correctly; evaluate again to list them.")
            else:
                shown = f", the {len(right)} least sure" if len(right) < count else ""
                self._set_gallery(right, f"{count} images of {t} classified correctly{shown}, least sure first; "
                                         "click one to see what the model looked at", limit=len(right))
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
