"""HeatmapOverlay: aspect-correct picture, map stretched over it, toggle, opacity, validation."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QRect, QSize
from PySide6.QtGui import QColor, QImage

from tlstudio.gui.views.heatmap_overlay import HeatmapOverlay, _LUT, fit_rect


def _grey(w: int, h: int) -> QImage:
    img = QImage(w, h, QImage.Format.Format_RGB32)
    img.fill(QColor(128, 128, 128))
    return img


@pytest.fixture
def overlay(qtbot):
    w = HeatmapOverlay()
    qtbot.addWidget(w)
    w.resize(400, 300)
    w.show()
    return w


def test_fit_rect_keeps_aspect_and_centres():
    r = fit_rect(QSize(200, 100), QRect(0, 0, 300, 300))
    assert (r.width(), r.height()) == (300, 150)
    assert r.y() == 75
    assert fit_rect(QSize(0, 10), QRect(0, 0, 10, 10)).isNull()


def test_map_is_stretched_over_image_and_blended(overlay):
    overlay.set_image(_grey(80, 40))
    heat = np.zeros((4, 8), np.float32)
    heat[:2, :4] = 1.0  # top-left quarter hot
    overlay.set_heatmap(heat)
    overlay.set_opacity(1.0)
    out = overlay.composited()
    assert out.size() == QSize(80, 40)
    hot = out.pixelColor(5, 5)
    cold = out.pixelColor(75, 35)
    assert (hot.red(), hot.green(), hot.blue()) == tuple(int(v) for v in _LUT[255])
    assert (cold.red(), cold.green(), cold.blue()) == tuple(int(v) for v in _LUT[0])
    overlay.set_opacity(0.5)  # half-way blend with grey 128
    mid = overlay.composited().pixelColor(5, 5)
    assert abs(mid.red() - (128 + int(_LUT[255][0])) / 2) <= 3


def test_toggle_and_opacity_zero_show_the_plain_picture(overlay, qtbot):
    overlay.set_image(_grey(20, 20))
    overlay.set_heatmap(np.ones((5, 5)))
    assert overlay.toggle.isEnabled() and overlay.slider.isEnabled()
    with qtbot.waitSignal(overlay.overlay_toggled) as sig:
        overlay.toggle.setChecked(False)
    assert sig.args == [False] and not overlay.overlay_visible()
    assert not overlay.slider.isEnabled()
    assert overlay.composited().pixelColor(10, 10) == QColor(128, 128, 128)
    overlay.toggle.setChecked(True)
    with qtbot.waitSignal(overlay.opacity_changed):
        overlay.slider.setValue(0.0)
    assert overlay.opacity() == 0.0
    assert overlay.composited().pixelColor(10, 10) == QColor(128, 128, 128)
    overlay.set_opacity(0.8)  # programmatic change moves the slider
    assert abs(overlay.slider.value() - 0.8) < 1e-6


def test_nan_is_transparent(overlay):
    overlay.set_image(_grey(20, 20))
    heat = np.full((2, 2), np.nan, np.float32)
    heat[1, 1] = 1.0  # only the bottom-right quarter has a value (e.g. inside a model's crop)
    overlay.set_heatmap(heat)
    overlay.set_opacity(1.0)
    out = overlay.composited()
    assert out.pixelColor(2, 2) == QColor(128, 128, 128)
    assert out.pixelColor(18, 18) != QColor(128, 128, 128)


def test_widget_draws_aspect_correct(overlay, qtbot):
    overlay.set_image(_grey(200, 100))
    qtbot.wait(10)
    r = overlay.image_rect()
    assert r.width() > 0 and abs(r.width() / r.height() - 2.0) < 0.05
    assert r.width() <= overlay.canvas.width() and r.height() <= overlay.canvas.height()


def test_heatmap_validation_and_clear(overlay, tmp_path):
    with pytest.raises(ValueError):
        overlay.set_heatmap(np.zeros((2, 3, 4)))
    overlay.set_heatmap(np.array([[np.nan, 2.0], [-1.0, 0.5]]))
    h = overlay.heatmap()
    assert np.nanmin(h) >= 0 and np.nanmax(h) <= 1 and np.isnan(h[0, 0]) and h[0, 1] == 1
    overlay.set_heatmap(None)
    assert not overlay.toggle.isEnabled()
    assert overlay.set_image(tmp_path / "missing.png") is False
    p = tmp_path / "a.png"
    _grey(30, 10).save(str(p))
    assert overlay.set_image(p) and overlay.image().size() == QSize(30, 10)
