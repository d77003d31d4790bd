"""Evaluate: selecting a mistake shows its Grad-CAM map (predicted or true class) from the run's model."""

from __future__ import annotations

import shutil

import pytest

from tests.gui.test_runs_panel import make_fake_run
from tlstudio.core.events import drive
from tlstudio.gui.panels.evaluate_panel import EvaluatePanel
from tlstudio.gui.state import AppState


@pytest.fixture(scope="module", autouse=True)
def _torch_imported():
    from tlstudio.gui.heavy import ensure_imported

    ensure_imported()


def test_mistake_gallery_explains_selected_image(qtbot, tmp_path):
    from tlstudio.core.config import TrainConfig
    from tlstudio.core.data.synthetic import make_synthetic_folder
    from tlstudio.core.training.engine import fit

    data = make_synthetic_folder(tmp_path / "data", per_class=4, size=40, easy=True)
    drive(fit(TrainConfig(data_dir=str(data), out_dir=str(tmp_path / "real"), backbone="test_resnet",
                          init="scratch", epochs=1, batch_size=8, image_size=32, freeze="none", augment="none")))
    imgs = sorted(str(p) for p in data.rglob("*.png"))
    # eval.json with chosen mistakes (make_fake_run) + the real trained weights of the same model
    run = make_fake_run(tmp_path / "runs", "r1", images=imgs, backbone="test_resnet")
    shutil.copy(tmp_path / "real" / "model.safetensors", run / "model.safetensors")

    state = AppState()
    panel = EvaluatePanel(state)
    qtbot.addWidget(panel)
    panel.resize(1200, 800)
    panel.show()
    state.set_current_run(str(run))
    assert len(panel.gallery_paths()) == 4
    first = panel.gallery_model.index(0)
    with qtbot.waitSignal(panel.explain.explained, timeout=120_000) as sig:
        panel.gallery.setCurrentIndex(first)
    e = sig.args[0]
    shot = panel.gallery_model._samples[0]
    assert not e.error and e.path == shot.path and e.class_name == shot.pred
    assert [panel.explain.class_box.itemText(i) for i in range(2)] == [shot.pred, shot.true]
    assert panel.explain.overlay.heatmap() is not None
    panel.explain.class_box.setCurrentIndex(1)
    with qtbot.waitSignal(panel.explain.explained, timeout=60_000) as sig2:
        panel.explain.class_box.activated.emit(1)
    assert sig2.args[0].class_name == shot.true
    panel.explain.overlay.toggle.setChecked(False)
    assert not panel.explain.overlay.overlay_visible()
    panel.show_cell(2, 0)  # another cell: the pane is emptied
    assert panel.explain.path is None
