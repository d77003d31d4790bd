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
from PySide6.QtGui import QColor, QImage, QLinearGradient, QPainter, QPaintEvent, QPixmap
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
    """Colour an HxW map in [0, 1] into an RGB QImage (own copy of the pixels)."""
    idx = np.clip(np.round(heatmap * 255), 0, 255).astype(np.uint8)
    rgb = np.ascontiguousarray(_LUT[idx])
    h, w = idx.shape
    img = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)
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
            img = QImage(str(image))
            if img.isNull():
                self._image = None
                self._message = f"Cannot read {Path(image).name}"
                self.canvas.update()
                return False
            self._image = img.convertToFormat(QImage.Format.Format_RGB32)
        self.canvas.update()
        return True

    def set_heatmap(self, heatmap: np.ndarray | None) -> None:
        """An HxW map in [0, 1] (any resolution: stretched over the picture), or None."""
        if heatmap is None:
            self._heatmap = self._heat_img = None
        else:
            arr = np.asarray(heatmap, dtype=np.float32)
            if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
                arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
            if arr.ndim != 2 or arr.size == 0:
                raise ValueError(f"heat map must be a 2-D array, got shape {arr.shape}")
            arr = np.clip(np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
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
        self.toggle.setEnabled(has)
        self.slider.setEnabled(has and self._visible)
        self.colour_bar.setEnabled(has)
