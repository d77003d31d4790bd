"""PredictPanel: drop images (real QDropEvent with URLs) -> top-k probability bars; errors per file."""

from __future__ import annotations

import csv

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from tests.gui.test_runs_panel import make_fake_run
from tlstudio.core.evaluation.evaluate import Prediction
from tlstudio.core.data.synthetic import make_synthetic_folder
from tlstudio.gui.panels.predict_panel import PredictPanel
from tlstudio.gui.state import AppState
from tlstudio.gui.widgets.prob_bars import ProbBars


@pytest.fixture
def images(tmp_path):
    return sorted(str(p) for p in make_synthetic_folder(tmp_path / "imgs", per_class=1, size=32).rglob("*.png"))


@pytest.fixture(scope="module", autouse=True)
def _torch_imported():
    """Jobs import torch/timm first (serialised with the preload): once, before the timed waits."""
    from tlstudio.gui.heavy import ensure_imported

    ensure_imported()


@pytest.fixture
def panel(qtbot, tmp_path, monkeypatch):
    calls = []

    def fake_predict(run_dir, paths, top_k=5, **kw):
        calls.append((run_dir, list(paths), top_k))
        out = []
        for p in paths:
            if p.endswith(".txt"):
                out.append(Prediction(p, [], "not an image"))
            else:
                out.append(Prediction(p, [("circle", 0.7), ("square", 0.2), ("triangle", 0.1)][:top_k]))
        return out

    monkeypatch.setattr("tlstudio.core.evaluation.evaluate.predict", fake_predict)
    state = AppState()
    p = PredictPanel(state)
    p.calls = calls
    qtbot.addWidget(p)
    p.resize(900, 600)
    p.show()
    return p


def _enter_event(mime):
    """QDragEnterEvent takes a QPointF from PySide6 6.12 (QPoint deprecated), a QPoint before."""
    args = (Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    try:
        return QDragEnterEvent(QPointF(50, 50), *args)
    except TypeError:
        return QDragEnterEvent(QPointF(50, 50).toPoint(), *args)


def _drop(widget, paths):
    """A real drag: DragEnter then Drop, each with QMimeData URLs, sent through the application."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(p) for p in paths])
    enter = _enter_event(mime)
    QApplication.sendEvent(widget, enter)
    assert enter.isAccepted()
    e = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                   Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, e)
    return e


def test_needs_a_run_first(panel, images):
    assert not panel.files_btn.isEnabled()
    e = _drop(panel, images)
    assert not e.isAccepted()
    assert "Train a model" in panel.summary.text()
    assert panel.calls == []


def test_drop_images_shows_top_k_bars(panel, qtbot, tmp_path, images):
    run = make_fake_run(tmp_path / "runs", "r1")
    panel.state.set_current_run(str(run))
    assert panel.files_btn.isEnabled()
    panel.top_k.setValue(2)
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with qtbot.waitSignal(panel.predictions_shown, timeout=5000) as blocker:
        e = _drop(panel, images + [str(bad)])
    assert e.isAccepted()
    assert blocker.args == [4]
    assert panel.calls == [(str(run), images + [str(bad)], 2)]
    assert panel.results.count() == 4
    rows = [panel.results.itemWidget(panel.results.item(i)) for i in range(4)]
    bars = [r.findChild(ProbBars) for r in rows]
    assert bars[0].top == [("circle", 0.7), ("square", 0.2)]
    assert bars[3].error and "not an image" in bars[3].error
    assert "1 could not be read" in panel.summary.text()
    qtbot.waitUntil(lambda: rows[0].thumb.pixmap() is not None and not rows[0].thumb.pixmap().isNull(),
                    timeout=5000)
    out = tmp_path / "pred.csv"
    panel._save_csv(str(out))
    table = list(csv.reader(out.open(encoding="utf-8")))
    assert table[0][:4] == ["path", "error", "class1", "prob1"]
    assert table[1][2] == "circle" and float(table[1][3]) == pytest.approx(0.7)
    assert table[4][1] == "not an image"
    panel.clear_btn.click()
    assert panel.results.count() == 0


def test_drag_enter_accepts_urls_not_text(panel):
    mime = QMimeData()
    mime.setText("just text")
    e = _enter_event(mime)
    QApplication.sendEvent(panel, e)
    assert not e.isAccepted()


def test_prob_bars_widget(qtbot):
    w = ProbBars([("a", 0.5), ("b", 0.25)])
    qtbot.addWidget(w)
    assert w.sizeHint().height() >= 2 * ProbBars.ROW
    assert "a: 50.00%" in w.toolTip()
    img = w.grab()
    assert not img.isNull()
