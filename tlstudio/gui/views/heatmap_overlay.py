"""An image with a heat map laid over it: Grad-CAM explanations and anomaly maps.

Explicit inputs, no engine knowledge: ``set_image(path | QImage)``, ``set_heatmap(HxW array in
[0, 1] | None)``, ``set_opacity(float)``. The map is stretched over the whole image (whatever its
own resolution), the picture keeps its aspect ratio inside the widget, and a colour bar says
which end is "high". A toggle shows or hides the map and a labelled slider sets its opacity;
both emit signals so a gallery can keep many overlays in step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QImageReader, QLinearGradient, QPainter, QPaintEvent, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from tlstudio.core.evaluation.explain import colormap_lut  # one colour ramp for PNGs and the app

_LUT = colormap_lut()


def heatmap_to_qimage(heatmap: np.ndarray) -> QImage:
    """Colour an HxW map in [0, 1] into an RGBA QImage (own copy); NaN = transparent."""
    seen = np.isfinite(heatmap)
    idx = np.clip(np.round(np.nan_to_num(heatmap) * 255), 0, 255).astype(np.uint8)
    rgba = np.empty(idx.shape + (4,), np.uint8)
    rgba[..., :3] = _LUT[idx]
    rgba[..., 3] = np.where(seen, 255, 0)
    rgba = np.ascontiguousarray(rgba)
    h, w = idx.shape
    img = QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888)
    return img.copy()  # detach from the numpy buffer


def fit_rect(src: QSize, area: QRect) -> QRect:
    """The largest rectangle with src's aspect ratio centred inside area."""
    if src.width() <= 0 or src.height() <= 0 or area.width() <= 0 or area.height() <= 0:
        return QRect()
    scale = min(area.width() / src.width(), area.height() / src.height())
    w = max(1, int(round(src.width() * scale)))
    h = max(1, int(round(src.height() * scale)))
    return QRect(area.x() + (area.width() - w) // 2, area.y() + (area.height() - h) // 2, w, h)


class _Canvas(QWidget):
    """Paints the image, aspect-correct, and the coloured map over it."""

    def __init__(self, owner: HeatmapOverlay) -> None:
        super().__init__(owner)
        self._owner = owner
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(64, 64)

    def sizeHint(self) -> QSize:
        return QSize(320, 320)

    def image_rect(self) -> QRect:
        img = self._owner._image
        if img is None or img.isNull():
            return QRect()
        return fit_rect(img.size(), self.rect())

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt name)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        o = self._owner
        target = self.image_rect()
        if target.isNull():
            p.setPen(self.palette().placeholderText().color())
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                       o._message or "No image")
            return
        p.drawImage(target, o._image)
        if o._heat_img is not None and o._visible and o._opacity > 0:
            p.setOpacity(o._opacity)
            p.drawImage(target, o._heat_img)  # stretched over the picture, smoothly
            p.setOpacity(1.0)
        if o._message:
            # a note over the picture ("computing...", "no map for this class")
            box = QRect(target.x(), target.bottom() - 22, target.width(), 22)
            p.fillRect(box, QColor(0, 0, 0, 150))
            p.setPen(QColor("white"))
            p.drawText(box, Qt.AlignmentFlag.AlignCenter, o._message)


class _ColourBar(QWidget):
    """Horizontal gradient with its two end labels."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFixedHeight(14)
        self.setMinimumWidth(60)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        p = QPainter(self)
        r = QRectF(self.rect()).adjusted(0.5, 2.5, -0.5, -2.5)
        grad = QLinearGradient(r.left(), 0, r.right(), 0)
        for i in range(0, 256, 16):
            grad.setColorAt(i / 255, QColor(*map(int, _LUT[i])))
        grad.setColorAt(1.0, QColor(*map(int, _LUT[255])))
        p.fillRect(r, grad)
        p.setPen(self.palette().mid().color())
        p.drawRect(r)


class HeatmapOverlay(QWidget):
    """Image + heat map + show toggle + opacity slider + colour bar."""

    opacity_changed = Signal(float)
    overlay_toggled = Signal(bool)

    def __init__(self, parent: QWidget | None = None, *, low_label: str = "low",
                 high_label: str = "high", title: str = "Heat map") -> None:
        super().__init__(parent)
        self._image: QImage | None = None
        self._heatmap: np.ndarray | None = None
        self._heat_img: QImage | None = None
        self._opacity = 0.5
        self._visible = True
        self._message = ""

        self.canvas = _Canvas(self)
        self.toggle = QCheckBox(title)
        self.toggle.setChecked(True)
        self.toggle.setToolTip("Show or hide the heat map over the picture")
        self.toggle.setAccessibleName("Show heat map")
        self.toggle.toggled.connect(self.set_overlay_visible)

        self.slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0.0, 1.0)
        self.slider.setDecimals(2)
        self.slider.setSingleStep(0.05)
        self.slider.setValue(self._opacity)
        self.slider.setToolTip("Opacity of the heat map (0 = only the picture)")
        self.slider.setAccessibleName("Heat map opacity")
        self.slider.setMinimumWidth(110)
        self.slider.valueChanged.connect(self.set_opacity)

        self.colour_bar = _ColourBar()
        self.low_label = QLabel(low_label)
        self.high_label = QLabel(high_label)
        for lab in (self.low_label, self.high_label):
            lab.setStyleSheet("font-size: 10px;")

        controls = QHBoxLayout()
        controls.setContentsMargins(0, 0, 0, 0)
        controls.addWidget(self.toggle)
        controls.addWidget(QLabel("Opacity"))
        controls.addWidget(self.slider, 2)
        bar = QHBoxLayout()
        bar.setContentsMargins(0, 0, 0, 0)
        bar.addWidget(self.low_label)
        bar.addWidget(self.colour_bar, 1)
        bar.addWidget(self.high_label)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        lay.addWidget(self.canvas, 1)
        lay.addLayout(controls)
        lay.addLayout(bar)
        self._sync_controls()

    # --- inputs ----------------------------------------------------------------------------
    def set_image(self, image: str | Path | QImage | None) -> bool:
        """Show a picture (a path or a QImage). Returns False when the file cannot be read."""
        if image is None:
            self._image = None
        elif isinstance(image, QImage):
            self._image = image.convertToFormat(QImage.Format.Format_RGB32)
        else:
            reader = QImageReader(str(image))
            reader.setAutoTransform(True)  # EXIF orientation, as the engine reads images
            img = reader.read()
            if img.isNull():
                self._image = None
                self._message = f"Cannot read {Path(image).name}"
                self.canvas.update()
                return False
            self._image = img.convertToFormat(QImage.Format.Format_RGB32)
        self._sync_controls()
        self.canvas.update()
        return True

    def set_heatmap(self, heatmap: np.ndarray | None) -> None:
        """An HxW map in [0, 1] (any resolution: stretched over the picture), or None.
        NaN marks pixels without a value (drawn transparent: e.g. outside a model's crop)."""
        if heatmap is None:
            self._heatmap = self._heat_img = None
        else:
            arr = np.asarray(heatmap, dtype=np.float32)
            if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
                arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
            if arr.ndim != 2 or arr.size == 0:
                raise ValueError(f"heat map must be a 2-D array, got shape {arr.shape}")
            arr = np.clip(np.nan_to_num(arr, nan=np.nan, posinf=1.0, neginf=0.0), 0.0, 1.0)  # NaN kept
            self._heatmap = arr
            self._heat_img = heatmap_to_qimage(arr)
        self._sync_controls()
        self.canvas.update()

    def set_opacity(self, opacity: float) -> None:
        opacity = float(min(1.0, max(0.0, opacity)))
        if abs(opacity - self._opacity) < 1e-6:
            return
        self._opacity = opacity
        if abs(self.slider.value() - opacity) > 1e-6:
            self.slider.blockSignals(True)
            self.slider.setValue(opacity)
            self.slider.blockSignals(False)
        self.canvas.update()
        self.opacity_changed.emit(opacity)

    def set_overlay_visible(self, visible: bool) -> None:
        visible = bool(visible)
        if visible == self._visible:
            return
        self._visible = visible
        if self.toggle.isChecked() != visible:
            self.toggle.blockSignals(True)
            self.toggle.setChecked(visible)
            self.toggle.blockSignals(False)
        self._sync_controls()
        self.canvas.update()
        self.overlay_toggled.emit(visible)

    def set_message(self, text: str) -> None:
        """A short note drawn over the picture ("Computing the heat map..."); "" hides it."""
        self._message = text
        self.canvas.update()

    def set_range_labels(self, low: str, high: str) -> None:
        self.low_label.setText(low)
        self.high_label.setText(high)

    def clear(self) -> None:
        self._image = None
        self._message = ""
        self.set_heatmap(None)

    # --- outputs ---------------------------------------------------------------------------
    def opacity(self) -> float:
        return self._opacity

    def overlay_visible(self) -> bool:
        return self._visible

    def heatmap(self) -> np.ndarray | None:
        return self._heatmap

    def image(self) -> QImage | None:
        return self._image

    def image_rect(self) -> QRect:
        """Where the picture is drawn inside the canvas (aspect-correct, centred)."""
        return self.canvas.image_rect()

    def composited(self, size: QSize | None = None) -> QImage:
        """The picture with the map blended as shown (at the picture's size by default)."""
        if self._image is None:
            return QImage()
        size = size or self._image.size()
        out = self._image.scaled(size, Qt.AspectRatioMode.IgnoreAspectRatio,
                                 Qt.TransformationMode.SmoothTransformation)
        if self._heat_img is not None and self._visible and self._opacity > 0:
            p = QPainter(out)
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            p.setOpacity(self._opacity)
            p.drawImage(out.rect(), self._heat_img)
            p.end()
        return out

    def pixmap(self) -> QPixmap:
        return QPixmap.fromImage(self.composited())

    def _sync_controls(self) -> None:
        has = self._heatmap is not None
        # with a picture the toggle also asks for a map (owners compute it on overlay_toggled)
        self.toggle.setEnabled(has or self._image is not None)
        self.slider.setEnabled(has and self._visible)
        self.colour_bar.setEnabled(has)


# ---------------------------------------------------------------- Grad-CAM pane (Evaluate, Predict)

_EXPLAINERS: dict[tuple[str, str], object] = {}  # (run, method) -> Explainer, loaded once per run
_EXPLAIN_LOCK = None


def _explain_one(run_dir: str, path: str, class_name: str | None, method: str):
    """(worker thread) one Explanation with a cached model; one explanation at a time."""
    import threading

    global _EXPLAIN_LOCK
    if _EXPLAIN_LOCK is None:
        _EXPLAIN_LOCK = threading.Lock()
    from tlstudio.core.evaluation.explain import Explainer

    with _EXPLAIN_LOCK:
        key = (run_dir, method)
        ex = _EXPLAINERS.get(key)
        if ex is None:
            if len(_EXPLAINERS) >= 2:  # keep memory bounded: the last run or two
                _EXPLAINERS.clear()
            ex = _EXPLAINERS[key] = Explainer.from_run(run_dir, method=method)
        return ex.explain([path], class_name or None, top_k=10)[0]


def forget_explainers(run_dir: str | None = None) -> None:
    """Drop cached models (a run was retrained or deleted)."""
    for k in [k for k in _EXPLAINERS if run_dir is None or k[0] == run_dir]:
        _EXPLAINERS.pop(k, None)


class ExplainPane(QWidget):
    """One picture with its Grad-CAM map, for a run: pick the class to explain (the predicted one
    first, then the other top classes); computed in the background when the map is shown."""

    explained = Signal(object)  # Explanation (also with .error)

    def __init__(self, parent: QWidget | None = None, *, method: str = "gradcam") -> None:
        super().__init__(parent)
        from PySide6.QtWidgets import QComboBox

        self.run_dir: str | None = None
        self.path: str | None = None
        self.method = method
        self.last: object | None = None
        self._pending: tuple | None = None
        self._busy = False
        self.caption = QLabel("Select an image to see what the model looks at.")
        self.caption.setWordWrap(True)
        self.class_box = QComboBox()
        self.class_box.setAccessibleName("Class to explain")
        self.class_box.setToolTip("The class whose evidence is shown: red = regions that raised its score most")
        self.class_box.setMinimumContentsLength(10)
        self.class_box.activated.connect(lambda _i: self.request())
        self.overlay = HeatmapOverlay(title="Grad-CAM", low_label="no evidence", high_label="strong evidence")
        self.overlay.overlay_toggled.connect(lambda on: self.request() if on else None)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Explain class"))
        row.addWidget(self.class_box, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.caption)
        lay.addLayout(row)
        lay.addWidget(self.overlay, 1)
        self._set_classes([])

    def set_run(self, run_dir: str | None) -> None:
        if run_dir != self.run_dir:
            self.run_dir = run_dir
            self.clear()

    def clear(self) -> None:
        self.path = None
        self.last = None
        self.overlay.clear()
        self._set_classes([])
        self.caption.setText("Select an image to see what the model looks at.")

    def _set_classes(self, classes: list[str], current: str | None = None) -> None:
        self.class_box.blockSignals(True)
        self.class_box.clear()
        self.class_box.addItems(classes)
        if current and current in classes:
            self.class_box.setCurrentIndex(classes.index(current))
        self.class_box.blockSignals(False)
        self.class_box.setEnabled(bool(classes))

    def show_image(self, path: str, classes: list[str] | None = None, current: str | None = None) -> None:
        """Show ``path``; ``classes`` = the choices (predicted first); the map follows if shown."""
        self.path = path
        self.last = None
        self.overlay.set_heatmap(None)
        ok = self.overlay.set_image(path)
        self._set_classes(list(classes or []), current)
        self.caption.setText(Path(path).name)
        if ok:
            self.request()

    def current_class(self) -> str | None:
        return self.class_box.currentText() or None

    def request(self) -> None:
        """Compute the map for (image, class) in the background (latest request wins)."""
        if not self.path or not self.run_dir or not self.overlay.overlay_visible():
            return
        req = (self.run_dir, self.path, self.current_class(), self.method)
        if self._busy:
            self._pending = req
            return
        self._start(req)

    def _start(self, req: tuple) -> None:
        from tlstudio.gui.heavy import needing_torch
        from tlstudio.gui.workers import start_worker

        self._busy = True
        self.overlay.set_message("Computing the heat map...")
        start_worker(self, needing_torch(_explain_one), *req, returned=lambda e, r=req: self._done(r, e),
                     errored=lambda exc, r=req: self._failed(r, exc))

    def _next(self) -> None:
        self._busy = False
        req, self._pending = self._pending, None
        if req is not None:
            self._start(req)

    def _done(self, req: tuple, e) -> None:
        current = (self.run_dir, self.path, self.current_class(), self.method)
        stale = req[:2] != current[:2] or (req[2] is not None and req[2] != current[2])
        if not stale:
            self.last = e
            self.overlay.set_message("")
            if e.error:
                self.overlay.set_message(f"Cannot explain: {e.error}")
            else:
                self.overlay.set_heatmap(e.heatmap)
                names = [c for c, _ in e.top]
                if self.class_box.count() == 0 or req[2] is None:
                    extra = [self.class_box.itemText(i) for i in range(self.class_box.count())]
                    self._set_classes(list(dict.fromkeys(extra + names)) if extra else names, e.class_name)
                elif e.class_name not in [self.class_box.itemText(i) for i in range(self.class_box.count())]:
                    self._set_classes([self.class_box.itemText(i) for i in range(self.class_box.count())]
                                      + [e.class_name], e.class_name)
                probs = dict(e.top)
                self.caption.setText(
                    f"<b>{Path(e.path).name}</b>: evidence for <b>{e.class_name}</b> ({e.prob:.0%}); "
                    f"the model predicts <b>{e.predicted}</b> ({probs.get(e.predicted, 0):.0%}). "
                    f"<span style='color:gray'>{e.method}, {e.layer}</span>")
            self.explained.emit(e)
        self._next()

    def _failed(self, req: tuple, exc: BaseException) -> None:
        if req[1] == self.path:
            self.overlay.set_message(f"Cannot explain: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        self._next()
