"""The training charts stay readable when a run has many of them (one chart per metric of a
multi-task run, one curve per task): every plot area keeps a usable height (the charts scroll
instead of shrinking), and no legend covers the plot area it belongs to."""

from __future__ import annotations

import pytest

from tlstudio.gui.widgets.curves import CurvesWidget

READABLE_PX = 80  # a plot area (inside the axes) lower than this is hard to read

TASKS = ("object", "colour", "noise")


def _feed(w: CurvesWidget, epochs: int = 6) -> None:
    for e in range(epochs):
        for b in range(4):
            w.add_batch(e, b, 4, 2.0 / (e + 1), 1e-3)
        m = {"val_score": 0.5 + 0.05 * e}
        for t in TASKS:
            m.update({f"val_acc/{t}": 0.4 + 0.05 * e, f"val_macro_f1/{t}": 0.3 + 0.05 * e,
                      f"weight/{t}": 1.0, f"val_loss/{t}": 1.0 / (e + 1)})
        w.add_epoch(e, 1.0, m)
    w.flush()


def _shown_curves(qtbot) -> CurvesWidget:
    # the curves' share of the Train step in a 1280x800 window (right of the settings, above the
    # warnings and log): about 670 x 450 px
    w = CurvesWidget()
    qtbot.addWidget(w)
    w.resize(670, 450)
    w.show()
    qtbot.waitExposed(w)
    return w


@pytest.fixture
def multitask_curves(qtbot):
    w = _shown_curves(qtbot)
    _feed(w)
    qtbot.wait(50)
    return w


def test_every_chart_keeps_a_readable_plot_area(multitask_curves):
    w = multitask_curves
    assert set(w.charts) == {"loss", "val_score", "val_acc", "val_macro_f1", "weight"}
    for key, plot in [*w.charts.items(), ("lr", w.lr_plot)]:
        h = plot.getViewBox().height()
        assert h >= READABLE_PX, (key, h)  # was about 40 px: the legends covered the curves
    # they do not all fit: the charts scroll (the scroll bar reaches the last one)
    assert w.overflowing()
    bar = w.scroll.verticalScrollBar()
    bar.setValue(bar.maximum())
    lr_bottom = w.view.mapTo(w, w.view.mapFromScene(w.lr_plot.getViewBox().sceneBoundingRect().bottomLeft()))
    assert 0 <= lr_bottom.y() <= w.height(), lr_bottom


def test_no_legend_covers_its_plot(multitask_curves):
    w = multitask_curves
    shown = [k for k, lg in w.legends.items() if lg.isVisible()]
    assert set(shown) == {"loss", "val_acc", "val_macro_f1", "weight"}  # val_score has one curve: no legend
    for key in shown:
        legend, vb = w.legends[key], w.charts[key].getViewBox()
        assert legend.items and legend.width() > 0
        assert not legend.sceneBoundingRect().intersects(vb.sceneBoundingRect()), key
        # all entries fit the chart's width
        assert legend.sceneBoundingRect().width() <= w.charts[key].sceneBoundingRect().width() + 1, key
    # a metric chart's title names the metric: its legend names the tasks only
    assert w.legend_texts("val_acc") == list(TASKS)
    assert sorted(w.chart_curves("val_acc")) == sorted(f"val acc {t}" for t in TASKS)  # the curves' own names
    assert w.legend_texts("loss")[:2] == ["batch loss", "smoothed"]


def test_wheel_scrolls_the_charts_when_they_overflow_and_ctrl_wheel_zooms(multitask_curves, qtbot):
    from PySide6.QtCore import QPoint, QPointF, Qt
    from PySide6.QtGui import QWheelEvent
    from PySide6.QtWidgets import QApplication

    w = multitask_curves
    bar = w.scroll.verticalScrollBar()
    bar.setValue(0)
    before = w._ranges[w.loss_plot]
    vp = w.view.viewport()
    pos = QPointF(vp.width() / 2, 60)

    def wheel(mods):
        ev = QWheelEvent(pos, vp.mapToGlobal(pos), QPoint(0, 0), QPoint(0, -120), Qt.MouseButton.NoButton,
                         mods, Qt.ScrollPhase.NoScrollPhase, False)
        QApplication.sendEvent(vp, ev)

    wheel(Qt.KeyboardModifier.NoModifier)
    assert bar.value() > 0  # scrolled down
    assert w._ranges[w.loss_plot] == before and w.loss_plot not in w._user_ranged  # nothing zoomed
    v = bar.value()
    wheel(Qt.KeyboardModifier.ControlModifier)
    assert bar.value() == v and w.loss_plot in w._user_ranged  # Ctrl+wheel: the chart under the mouse zooms


def test_few_charts_fit_without_scrolling(qtbot):
    """Classification (loss, accuracy, learning rate) in the same room: no scroll bar."""
    w = _shown_curves(qtbot)
    w.add_charts(["val_acc"])
    for b in range(4):
        w.add_batch(0, b, 4, 1.0, 1e-3)
    w.add_epoch(0, 1.0, {"val_loss": 0.9, "val_acc": 0.6})
    w.flush()
    qtbot.wait(50)
    assert not w.overflowing()
    assert w.charts["val_acc"].getViewBox().height() > READABLE_PX
