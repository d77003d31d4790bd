"""The Data step's left column at 1280x800 with an unlabelled folder dropped (domain adaptation, its
gap sentence and check set): nothing is squeezed or cut off; the column scrolls instead."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QLabel, QPushButton, QRadioButton

from tlstudio.core.data.synthetic import make_synthetic_folder
from tlstudio.gui.main_window import MainWindow

GAP_SENTENCE = ("These images look different from your training images (another camera, lighting or site): "
                "a model trained on the labelled images alone will likely do worse on them; adapt to them.")


@pytest.fixture(scope="module", autouse=True)
def _torch_imported():
    """The window's background jobs import torch/timm (serialised with the preload): once, up front."""
    from tlstudio.gui.heavy import ensure_imported

    ensure_imported()


@pytest.fixture
def data_step(qtbot, tmp_path, monkeypatch):
    from tlstudio.gui.panels import unlabelled_zone as uz

    monkeypatch.setattr(uz, "gap_job", lambda src, folder, backbone, stop=None: {"score": 0.95,
                                                                                 "sentence": GAP_SENTENCE})
    lab = make_synthetic_folder(tmp_path / "cameras" / "labelled", per_class=4, size=32, seed=0,
                                classes=("circle", "square", "triangle", "cross", "ring", "bar"))
    unl = make_synthetic_folder(tmp_path / "cameras" / "new_camera", per_class=2, size=32, seed=1)
    check = make_synthetic_folder(tmp_path / "cameras" / "check", per_class=1, size=32, seed=2)
    win = MainWindow()
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    qtbot.waitExposed(win)
    data = win.panel("data")
    win.open_folder(str(lab))
    qtbot.waitUntil(lambda: win.state.scan_report is not None and not data.scanning, timeout=60_000)
    zone = data.unlabelled_zone
    zone.set_folder(str(unl))
    zone.other.setChecked(True)  # a new domain: domain adaptation, with a check set
    qtbot.waitUntil(lambda: zone.gap is not None, timeout=30_000)
    zone.set_check_dir(str(check))
    qtbot.wait(100)  # layouts settle
    assert win.state.task_kind == "adaptation"
    yield win, data
    win.close()


def test_nothing_in_the_left_column_is_cut_off(data_step):
    win, data = data_step
    left = data.class_table.parentWidget()
    shown = [w for w in left.findChildren(QLabel) + left.findChildren(QPushButton) + left.findChildren(QRadioButton)
             if w.isVisibleTo(win) and w.text()]
    assert data.unlabelled_zone.check_label in shown and data.unlabelled_zone.gap_text in shown
    for w in shown:
        need = w.heightForWidth(w.width()) if isinstance(w, QLabel) and w.wordWrap() else w.minimumSizeHint().height()
        assert w.height() >= need - 1, (w.text()[:40], w.height(), need)  # a cut-off label or button


def test_the_class_table_keeps_three_rows_in_view(data_step):
    _win, data = data_step
    t = data.class_table
    assert t.rowCount() == 6
    assert t.viewport().height() >= 3 * t.rowHeight(0) - 1, (t.viewport().height(), t.rowHeight(0))
    assert data.chart.height() >= data.chart.minimumHeight()


def test_the_column_scrolls_to_its_last_line(data_step):
    _win, data = data_step
    scroll = data.left_scroll
    bar = scroll.verticalScrollBar()
    bar.setValue(0)
    # the table and chart keep their minimum, not more, while the column scrolls: the unlabelled
    # folder's drop zone is in view without scrolling
    drop = data.unlabelled_zone.drop
    top = drop.mapTo(scroll.viewport(), drop.rect().topLeft()).y()
    assert 0 <= top < scroll.viewport().height() - drop.height() / 2, (top, scroll.viewport().height())
    bar.setValue(bar.maximum())
    btn = data.unlabelled_zone.check_btn
    bottom = btn.mapTo(scroll.viewport(), btn.rect().bottomLeft()).y()
    assert 0 < bottom <= scroll.viewport().height()  # the last button can be scrolled into view
    # and the column is never wider than its room: no horizontal scrolling, nothing off to the right
    left = scroll.widget()
    assert left.width() <= scroll.viewport().width() and left.width() >= left.minimumSizeHint().width()
