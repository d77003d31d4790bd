"""Predict with a real (tiny) run: model picker, buttons after a model appears, stale predictions
cleared, chunked prediction with progress and cancel, Grad-CAM overlay for any top-k class."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from tlstudio.core.events import Progress, drive
from tlstudio.gui.panels import predict_panel as pp
from tlstudio.gui.state import AppState


@pytest.fixture(scope="module", autouse=True)
def _torch_imported():
    from tlstudio.gui.heavy import ensure_imported

    ensure_imported()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tlstudio.core.config import TrainConfig
    from tlstudio.core.data.synthetic import make_synthetic_folder
    from tlstudio.core.training.engine import fit

    tmp = tmp_path_factory.mktemp("pred")
    data = make_synthetic_folder(tmp / "data", per_class=5, size=40, easy=True)
    root = tmp / "runs"
    drive(fit(TrainConfig(data_dir=str(data), out_dir=str(root / "r1"), backbone="test_resnet", init="scratch",
                          epochs=1, batch_size=8, image_size=32, freeze="none", augment="none")))
    shutil.copytree(root / "r1", root / "r2")
    return data, root


@pytest.fixture
def panel(qtbot, runs):
    state = AppState()
    state.runs_dir = str(runs[1])
    p = pp.PredictPanel(state)
    qtbot.addWidget(p)
    p.resize(1000, 650)
    p.show()
    return p


def test_model_picker_and_buttons_follow_the_model(panel, runs, tmp_path):
    _, root = runs
    # two trained runs, none open yet: a "choose" entry first, not a run that is not really open
    assert panel.model_box.count() == 3 and panel.model_box.currentData() is None
    assert "Choose one of 2" in panel.model_box.currentText() and not panel.files_btn.isEnabled()
    assert "Pick a model" in panel.run_label.text()
    picked = panel.model_box.itemData(2)
    panel.model_box.activated.emit(2)
    assert panel.state.current_run == picked and panel.files_btn.isEnabled()
    assert panel.model_box.count() == 2 and panel.model_box.currentData() == panel.state.current_run
    # a distillation sets its run folder when it starts, before the weights exist
    new = tmp_path / "distilled"
    shutil.copytree(root / "r1", new)
    (new / "model.safetensors").rename(new / "later.safetensors")
    panel.state.set_current_run(str(new))
    assert not panel.files_btn.isEnabled()
    (new / "later.safetensors").rename(new / "model.safetensors")
    panel.state.set_training(False)  # the job ended
    assert panel.files_btn.isEnabled()
    assert panel.model_box.currentData() == str(new)


def test_predict_overlay_and_stale_predictions(panel, runs, qtbot):
    data, root = runs
    panel.state.set_current_run(str(root / "r1"))
    imgs = sorted(str(p) for p in data.rglob("*.png"))[:3]
    with qtbot.waitSignal(panel.explain.explained, timeout=120_000) as sig:
        with qtbot.waitSignal(panel.predictions_shown, timeout=120_000):
            assert panel.predict_paths(imgs)
    e = sig.args[0]
    assert panel.results.count() == 3 and not e.error
    assert e.path == imgs[0] and e.class_name == panel.predictions[0].top[0][0]
    heat = panel.explain.overlay.heatmap()
    assert heat is not None and heat.shape == (40, 40) and 0 <= np.nanmin(heat) and np.nanmax(heat) <= 1
    assert np.isnan(heat).any() and np.isfinite(heat).any()  # outside the centre crop: no value
    classes = [panel.explain.class_box.itemText(i) for i in range(panel.explain.class_box.count())]
    assert set(classes) == {"circle", "square", "triangle"}
    other = next(c for c in classes if c != e.class_name)
    panel.explain.class_box.setCurrentText(other)
    with qtbot.waitSignal(panel.explain.explained, timeout=60_000) as sig2:
        panel.explain.class_box.activated.emit(panel.explain.class_box.currentIndex())
    assert sig2.args[0].class_name == other
    panel.explain.overlay.slider.setValue(0.8)
    assert panel.explain.overlay.opacity() == pytest.approx(0.8)
    panel.state.set_current_run(str(root / "r2"))  # another model: the old predictions go
    assert panel.results.count() == 0 and panel.predictions == [] and panel.explain.overlay.image() is None


def test_big_folder_in_chunks_with_progress_and_cancel(panel, runs, qtbot, monkeypatch):
    data, root = runs
    monkeypatch.setattr(pp, "CHUNK", 4)
    events = []
    out = drive(pp.predict_job(str(root / "r1"), [str(data)], 2), events.append)
    assert len(out) == 15 and all(len(p.top) == 2 for p in out)
    prog = [e for e in events if isinstance(e, Progress)]
    assert [e.done for e in prog] == [0, 4, 8, 12, 15] and prog[-1].total == 15
    stop = threading.Event()
    gen = pp.predict_job(str(root / "r1"), [str(data)], 2, stop)
    next(gen), next(gen)  # loaded, first chunk done
    stop.set()
    assert len(drive(gen)) == 4  # cancelled: what was done is kept
    panel.state.set_current_run(str(root / "r1"))
    seen = []
    panel.job.event.connect(seen.append)
    with qtbot.waitSignal(panel.predictions_shown, timeout=120_000):
        panel.predict_paths([str(data)])
        assert panel.progress.isVisible() and panel.cancel_btn.isVisible()
    assert panel.results.count() == 15 and not panel.progress.isVisible()
    assert any(isinstance(e, Progress) for e in seen)


def test_rows_shown_by_a_taller_window_get_their_thumbnails(panel, runs, qtbot):
    """Rows laid out while the list was short (or the step hidden) decode their thumbnails once a
    resize or the step's showing brings them into view, not only on scrolling."""
    data, root = runs
    panel.state.set_current_run(str(root / "r1"))
    panel.resize(1000, 300)
    with qtbot.waitSignal(panel.predictions_shown, timeout=120_000):
        panel.predict_paths([str(data)])
    qtbot.waitUntil(lambda: len(panel._requested) > 0, timeout=10_000)
    short = set(panel._requested)
    assert len(short) < panel.results.count() == 15
    panel.resize(1000, 1400)
    qtbot.waitUntil(lambda: len(panel._requested) > len(short), timeout=10_000)
    qtbot.waitUntil(lambda: panel.loader.pending() == 0, timeout=30_000)
    shown = [panel._rows[p] for p in panel._requested - short]
    qtbot.waitUntil(lambda: all(r.thumb.pixmap() is not None and not r.thumb.pixmap().isNull() for r in shown),
                    timeout=30_000)
