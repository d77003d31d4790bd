"""Layers panel: the layer strip (click to toggle, head locked), presets, advice, live counts, memory."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, QThreadPool, Qt

from tlstudio.core.models.backbones import ModelInfo
from tlstudio.core.data.dataset import scan
from tlstudio.core.models.layers import LayerGroup
from tlstudio.gui.panels.layers_panel import LayersPanel, human_bytes
from tlstudio.gui.state import AppState

INFO = ModelInfo("fake_net", "fake", 0, 224, True, False, False, False)
SIZES = [100, 1_000, 10_000, 100_000, 20_000, 500]
GROUPS = [LayerGroup(i, n, (f"{n}.w",), s, n == "head")
          for i, (n, s) in enumerate(zip(["stem", "stage1", "stage2", "stage3", "stage4", "head"], SIZES))]
TOTAL = sum(SIZES)


@pytest.fixture
def panel(qtbot):
    state = AppState()
    p = LayersPanel(state)
    qtbot.addWidget(p)
    p.resize(1000, 650)
    p.show()
    state.set_model(INFO, GROUPS, [g.is_head for g in GROUPS])
    yield p
    QThreadPool.globalInstance().waitForDone(60_000)


def _click_block(qtbot, panel, i):
    r = panel.strip.block_rect(i)
    qtbot.mouseClick(panel.strip, Qt.MouseButton.LeftButton, pos=QPoint(int(r.center().x()), int(r.center().y())))


def test_strip_shows_groups_and_counts(panel):
    assert panel.strip.groups == GROUPS
    assert panel.strip.height() >= len(GROUPS) * 34
    assert "500" in panel.params_label.text() and f"{TOTAL / 1e3:.1f} k" in panel.params_label.text()
    assert panel.rb_head.isChecked()
    assert panel.state.step_status["layers"] == "done"


def test_click_toggles_a_group_but_never_the_head(qtbot, panel):
    _click_block(qtbot, panel, 3)
    st = panel.state
    assert st.trainable == [False, False, False, True, False, True]
    assert st.settings["frozen_groups"] == [0, 1, 2, 4]
    assert panel.rb_custom.isChecked()
    assert "100.5 k" in panel.params_label.text()  # 100,000 + 500 trainable
    _click_block(qtbot, panel, 5)  # the head: locked
    assert st.trainable[5] is True
    _click_block(qtbot, panel, 3)
    assert st.trainable == [g.is_head for g in GROUPS]
    # the strip repaints from the state
    assert panel.strip.trainable == st.trainable


def test_presets(qtbot, panel):
    st = panel.state
    panel.rb_all.click()
    assert st.settings["freeze"] == "none" and st.settings.get("frozen_groups") is None
    assert all(st.trainable)
    assert "100.0 %" in panel.params_label.text()
    panel.last_spin.setValue(2)
    panel.rb_last.click()
    assert st.settings["freeze"] == "last:2"
    assert st.trainable == [False, False, False, True, True, True]
    panel.last_spin.setValue(1)  # changing the spin box re-applies
    assert st.settings["freeze"] == "last:1"
    assert st.trainable == [False, False, False, False, True, True]
    panel.gradual_spin.setValue(3)
    assert panel.rb_gradual.isChecked()
    assert st.settings["freeze"] == "gradual:3"
    assert "unfrozen during training" in panel.params_label.text()
    panel.rb_head.click()
    assert st.trainable == [g.is_head for g in GROUPS]
    # settings changed elsewhere (a project opened) move the radio buttons
    st.update_settings({"freeze": "last:3", "frozen_groups": None})
    assert panel.rb_last.isChecked() and panel.last_spin.value() == 3


def test_advice_follows_data_and_similarity(qtbot, panel, shapes3):
    st = panel.state
    assert "Load a data set" in panel.advice_label.text()
    report = scan(shapes3)
    st.set_dataset(report.root, report, None)
    text = panel.advice_label.text()
    assert st.advice is not None and st.advice.reason in text
    panel.similarity.setCurrentIndex(panel.similarity.findData("low"))
    assert st.advice.reason in panel.advice_label.text()
    panel.apply_advice()
    assert st.settings["freeze"] == st.advice.freeze
    assert st.settings["lr"] == st.advice.lr and st.settings["epochs"] == st.advice.epochs


def test_memory_estimate_with_a_real_model(qtbot, panel):
    from tlstudio.core.models.backbones import create_model
    from tlstudio.core.models.layers import layer_groups

    model = create_model("test_resnet", 3, init="scratch")
    groups = layer_groups(model)
    info = ModelInfo("test_resnet", "resnet", 0, 160, False, False, False, True)
    panel.state.set_setting("batch_size", 8)
    with qtbot.waitSignal(panel.memory_estimated, timeout=60_000) as b1:
        panel.state.set_model(info, groups, [g.is_head for g in groups], model)
    head_only = b1.args[0]
    assert head_only > 0 and "batch 8, 160 px" in panel.memory_label.text()
    with qtbot.waitSignal(panel.memory_estimated, timeout=60_000) as b2:
        panel.rb_all.click()
    assert b2.args[0] > head_only  # training everything needs more memory


def test_memory_estimate_never_touches_the_shared_model(qtbot, panel, monkeypatch):
    """Issue 12: the job registered hooks on (and ran) AppState.model from a worker thread."""
    import torch

    from tlstudio.core.models import train_memory
    from tlstudio.core.models.backbones import create_model
    from tlstudio.core.models.layers import layer_groups

    model = create_model("test_resnet", 3, init="scratch")
    shared = {id(m) for m in model.modules()}
    hooked: list[int] = []
    real = torch.nn.Module.register_forward_hook
    monkeypatch.setattr(torch.nn.Module, "register_forward_hook",
                        lambda self, *a, **k: hooked.append(id(self)) or real(self, *a, **k))
    groups = layer_groups(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    info = ModelInfo("test_resnet", "resnet", 0, 160, False, False, False, True)
    with qtbot.waitSignal(panel.memory_estimated, timeout=60_000) as b:
        panel.state.set_model(info, groups, [g.is_head for g in groups], model)
    assert b.args[0] > 0
    assert hooked and not shared & set(hooked)  # hooks went on a private twin only
    assert model not in train_memory._ACT_CACHE
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert panel.state.model is model


def test_human_bytes():
    assert human_bytes(512) == "512 B"
    assert human_bytes(3 * 1024 * 1024) == "3.0 MB"
    assert human_bytes(5 * 1024**3) == "5.0 GB"


def test_advice_counts_training_images_only_and_follows_from_scratch(qtbot, panel, tmp_path):
    """Issue 17 items 1 and 4: 20 images per class with half for validation is 10 training images
    per class (not 20); choosing "From scratch" changes the advice to every layer training."""
    from tlstudio.core.data.synthetic import make_synthetic_folder

    st = panel.state
    data = make_synthetic_folder(tmp_path / "d", classes=("circle", "square"), per_class=20, size=32)
    st.set_setting("val_fraction", 0.5)
    report = scan(data)
    st.set_dataset(report.root, report, None)
    assert "10 images per class" in st.advice.reason and "20 images" not in st.advice.reason
    st.set_setting("init", "scratch")
    assert st.advice.freeze == "none" and "From scratch with 10 training images per class" in st.advice.reason
