"""Model panel: searchable/filterable backbone list, weight sources, background build, offline download."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QThreadPool

from tlstudio.core.models.backbones import ModelInfo
from tlstudio.gui.panels import model_panel as mp
from tlstudio.gui.state import AppState

FAKE = [
    ModelInfo("resnet10t", "resnet", 5_400_000, 224, True, False, True, True),
    ModelInfo("test_resnet", "resnet", 1_200, 160, False, False, False, True),
    ModelInfo("test_vit", "vit", 300_000, 160, False, False, False, False),
    ModelInfo("convnext_base", "convnext", 88_000_000, 224, True, False, False, False),
    ModelInfo("efficientnet_b3", "efficientnet", 12_000_000, 300, True, False, False, False),
    ModelInfo("mystery_net", "other", 0, 224, False, False, False, False),
]


@pytest.fixture
def panel(qtbot, monkeypatch):
    monkeypatch.setattr(mp, "_quick_list_job", lambda: (list(FAKE), False))
    state = AppState()
    p = mp.ModelPanel(state)
    qtbot.addWidget(p)
    p.resize(1100, 700)
    yield p
    QThreadPool.globalInstance().waitForDone(60_000)


def _names(p) -> list[str]:
    return [p.proxy.index(r, 1).data() for r in range(p.proxy.rowCount())]


def _loaded(qtbot, p):
    with qtbot.waitSignal(p.models_loaded, timeout=10_000):
        p.show()


def test_list_search_size_filter_recommended_first(qtbot, panel):
    _loaded(qtbot, panel)
    assert panel.proxy.rowCount() == len(FAKE)
    assert _names(panel)[0] == "resnet10t"  # recommended first
    assert panel.proxy.index(0, 0).data() == "★"
    panel.search.setText("res")
    assert set(_names(panel)) == {"resnet10t", "test_resnet"}
    panel.search.setText("vit")  # matches the family too
    assert _names(panel) == ["test_vit"]
    panel.search.clear()
    panel.size_combo.setCurrentIndex(panel.size_combo.findData("large"))
    assert _names(panel) == ["convnext_base"]
    panel.size_combo.setCurrentIndex(panel.size_combo.findData("medium"))
    assert _names(panel) == ["efficientnet_b3"]
    panel.size_combo.setCurrentIndex(panel.size_combo.findData("small"))
    assert "mystery_net" not in _names(panel)  # unknown size only under "all sizes"
    assert set(_names(panel)) == {"resnet10t", "test_resnet", "test_vit"}
    # tooltips explain every column
    for c in range(panel.table_model.columnCount()):
        assert panel.table_model.headerData(c, mp.Qt.Orientation.Horizontal, mp.Qt.ItemDataRole.ToolTipRole)


def test_selecting_builds_structure_in_background(qtbot, panel):
    panel.state.set_setting("backbone", "test_resnet")
    with qtbot.waitSignal(panel.model_built, timeout=60_000):
        _loaded(qtbot, panel)
    st = panel.state
    assert st.settings["backbone"] == "test_resnet"
    assert st.model_info.name == "test_resnet"
    assert len(st.groups) >= 3 and st.groups[-1].is_head
    assert st.trainable == [g.is_head for g in st.groups]  # default preset: head only
    assert st.step_status["model"] == "done"
    assert "test_resnet" in panel.selected_label.text()
    # choose another row: the settings follow, the structure is rebuilt
    with qtbot.waitSignal(panel.model_built, timeout=60_000):
        panel._select_name("test_vit")
    assert st.settings["backbone"] == "test_vit" and st.model_info.name == "test_vit"


def test_weight_sources_write_settings(qtbot, panel, tmp_path):
    _loaded(qtbot, panel)
    panel.radios["scratch"].click()
    assert panel.state.settings["init"] == "scratch"
    assert not panel.download_btn.isEnabled()
    panel.radios["file"].click()
    assert panel.state.settings["init"] == "file"
    assert panel.state.step_status["model"] == "attention"  # no file chosen yet
    assert "weights file" in panel.message.text()
    panel.size_spin.setValue(128)
    assert panel.state.settings["image_size"] == 128
    panel.size_spin.setValue(0)
    assert panel.state.settings["image_size"] is None


def test_bad_weights_file_shows_message(qtbot, panel, tmp_path):
    panel.state.set_setting("backbone", "test_resnet")
    with qtbot.waitSignal(panel.model_built, timeout=60_000):
        _loaded(qtbot, panel)
    bad = tmp_path / "evil.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with qtbot.waitSignal(panel.model_failed, timeout=60_000) as b:
        panel.set_weights_file(str(bad))
    assert "evil.pth" in b.args[0]
    assert panel.state.step_status["model"] == "attention"
    assert "evil.pth" in panel.message.text()


def test_earlier_run_that_is_not_a_run(qtbot, panel, tmp_path):
    _loaded(qtbot, panel)
    with qtbot.waitSignal(panel.model_failed, timeout=5000):
        panel.set_init_run(str(tmp_path))
    assert panel.state.step_status["model"] == "attention"
    assert "init_run" not in panel.state.settings


def test_offline_download_gives_the_weights_error(qtbot, panel):
    _loaded(qtbot, panel)
    panel._select_name("resnet10t")
    panel.radios["pretrained"].click()
    assert panel.download_btn.isEnabled()
    said: list[str] = []
    panel.state.status_message.connect(said.append)
    with qtbot.waitSignal(panel.model_failed, timeout=60_000) as b:
        panel.download_weights()
        assert panel.dl_cancel_btn.isVisibleTo(panel)
    assert "resnet10t" in b.args[0]
    assert "offline" in b.args[0].lower() or "download" in b.args[0].lower()
    assert not panel.dl_progress.isVisibleTo(panel)
    # issue 17 item 15: the status bar kept saying "Downloading…" after the failure
    assert said[0].startswith("Downloading") and said[-1].startswith("Download failed:")


def test_cancel_download_restores_the_button(qtbot, panel, monkeypatch):
    import threading

    release = threading.Event()

    def slow_job(name, n, bridge, cancel):
        bridge.changed.emit(10, 100)
        release.wait(5)
        return "cancelled" if cancel.is_set() else "ok"

    monkeypatch.setattr(mp, "_download_job", slow_job)
    _loaded(qtbot, panel)
    panel._select_name("resnet10t")
    panel.download_weights()
    qtbot.waitUntil(lambda: panel.dl_progress.maximum() == 100, timeout=5000)
    panel.cancel_download()
    assert panel.download_btn.isEnabled() and not panel.dl_cancel_btn.isVisibleTo(panel)
    release.set()


def test_large_model_structure_is_built_without_weights(qtbot, panel):
    _loaded(qtbot, panel)
    with qtbot.waitSignal(panel.model_built, timeout=60_000) as b:
        panel._select_name("convnext_base")
    model = b.args[0]
    assert next(model.parameters()).device.type == "meta"  # no 350 MB of random weights
    st = panel.state
    assert st.model_info.name == "convnext_base" and len(st.groups) >= 4
    assert sum(g.n_params for g in st.groups) > 80_000_000
    assert "88.0 M" in panel.selected_label.text() or "M weights" in panel.selected_label.text()


def test_chained_transfer_from_an_earlier_run_sets_its_backbone(qtbot, panel, tmp_path):
    from tlstudio.core.runs.folder import ModelSpec, RunInfo, write_run

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    write_run(run, RunInfo(config={}, model=ModelSpec(backbone="test_vit", num_classes=2, classes=["a", "b"],
                                                       image_size=160), status="finished"))
    _loaded(qtbot, panel)
    panel.set_init_run(str(run))
    st = panel.state
    assert st.settings["init"] == "run" and st.settings["init_run"] == str(run)
    assert st.settings["backbone"] == "test_vit"  # the run decides the architecture
    assert panel.selected_info().name == "test_vit"
    assert panel.radios["run"].isChecked() and panel.message.text() == ""


def test_typing_in_the_search_never_changes_the_chosen_backbone(qtbot, panel):
    """Issue 17 item 12: the filter moved Qt's current row and that became the choice."""
    panel.state.set_setting("backbone", "test_resnet")
    _loaded(qtbot, panel)
    assert panel.selected_info().name == "test_resnet"
    for text in ("v", "vi", "vit", "conv", ""):
        panel.search.setText(text)
        assert panel.state.settings["backbone"] == "test_resnet", text
        assert panel.selected_info().name == "test_resnet"
    panel.search.setText("vit")
    assert "test_resnet, is hidden by the search" in panel.count_label.text()
    panel.size_combo.setCurrentIndex(panel.size_combo.findData("large"))
    assert panel.state.settings["backbone"] == "test_resnet"
    panel.size_combo.setCurrentIndex(0)
    panel.search.clear()
    # visible again: its row is selected again; a click (current row) is still a choice
    assert panel.table.selectionModel().currentIndex().data() == "test_resnet"
    panel._select_name("test_vit")
    assert panel.state.settings["backbone"] == "test_vit"


def test_model_list_needs_no_torch_and_marks_offline_weights(qtbot, monkeypatch):
    """Issue 17 item 17: the list came from timm (12-18 s of torch import after launch)."""
    import subprocess
    import sys

    code = ("import sys; from tlstudio.gui.panels.model_jobs import catalog_models, catalog_is_current;"
            "m = catalog_models(); lite = [i for i in m if i.name == 'tf_efficientnet_lite0'][0];"
            "print(len(m), lite.offline, lite.pretrained, catalog_is_current(),"
            " 'torch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    n, offline, pretrained, current, torch_loaded, timm_loaded = out.stdout.split()
    assert int(n) > 1000 and offline == pretrained == current == "True"
    assert torch_loaded == timm_loaded == "False"
    # the panel shows that list and does not ask timm when the catalogue is current
    calls = []
    monkeypatch.setattr(mp, "_list_models_job", lambda: calls.append(1) or [])
    p = mp.ModelPanel(AppState())
    qtbot.addWidget(p)
    with qtbot.waitSignal(p.models_loaded, timeout=20_000):
        p.show()
    assert p.table_model.rowCount() > 1000 and calls == []
    r = p.table_model.row_of("tf_efficientnet_lite0")
    assert p.table_model.index(r, 5).data() == "✓ offline"
    r = p.table_model.row_of("mobilenetv3_large_100")
    assert p.table_model.index(r, 5).data() == "download"
    QThreadPool.globalInstance().waitForDone(30_000)
