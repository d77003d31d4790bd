"""Anomaly Fit / Evaluate / Predict panels on a real tiny fit (test_resnet, random weights, 48 px)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from tests.core.anomaly_data import make_mvtec
from tlstudio.core.events import drive
from tlstudio.core.tasks import registry
from tlstudio.core.tasks.anomaly import AnomalyConfig
from tlstudio.gui.panels.anomaly_evaluate import AnomalyEvaluatePanel
from tlstudio.gui.panels.anomaly_fit import AnomalyFitPanel
from tlstudio.gui.panels.anomaly_predict import AnomalyPredictPanel
from tlstudio.gui.panels.anomaly_widgets import FalseAlarmSlider
from tlstudio.gui.state import AppState

TINY = {"backbone": "test_resnet", "image_size": 64}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("anom_gui")
    data = make_mvtec(root / "parts", n_train=12, n_good=3, n_defect=3, size=48)
    cfg = AnomalyConfig(data_dir=str(data), out_dir=str(root / "run"), init="scratch", batch_size=8, **TINY)
    info = drive(registry.get("anomaly").run(cfg))
    assert info.status == "finished"
    return data, str(root / "run")


def test_false_alarm_slider(qtbot):
    w = FalseAlarmSlider(0.01)
    qtbot.addWidget(w)
    assert w.one_in == 100 and "1 in 100 good parts" in w.label.text()
    with qtbot.waitSignal(w.rate_changed) as sig:
        w.slider.setValue(w.slider.value() + 1)
    assert sig.args[0] == pytest.approx(1 / 200) and "1 in 200" in w.label.text()
    w.set_rate(0.048)
    assert w.one_in == 20


def test_fit_panel_runs_and_stops(qtbot, fitted, tmp_path, monkeypatch):
    data, _ = fitted
    st = AppState()
    st.task_kind = "anomaly"
    st.runs_dir = str(tmp_path / "runs")
    st.set_dataset(str(data), None)
    p = AnomalyFitPanel(st)
    qtbot.addWidget(p)
    assert "MVTec" in p.data_label.text() and p.fit_btn.isEnabled()
    p.backbone.setText("test_resnet")
    p.image_size.setValue(64)
    p._settings_changed()
    assert st.task_settings["backbone"] == "test_resnet" and st.task_settings["image_size"] == 64
    qtbot.waitUntil(lambda: p.last_plan is not None and p.last_plan["feature_dim"] > 0, timeout=60_000)
    # 12 normal - 2 held out = 10 images x 8x8 patches, 10% -> 64
    assert p.last_plan["bank_size"] == 64 and "memory bank of 64" in p.expected.text()
    p.set_init("scratch")
    assert st.task_settings["init"] == "scratch"
    with qtbot.waitSignal(p.runner.finished, timeout=180_000):
        p.start()
        assert p.stop_btn.isEnabled()
    assert st.current_run and Path(st.current_run, "run.json").is_file()
    assert "AUROC" in p.summary.text() and "Saved" in p.status.text()
    assert p.log.toPlainText().count("Memory bank") >= 1 and not p.stop_btn.isEnabled()
    # stop as soon as the features start: the run is marked stopped, no detector saved
    seen = []

    def stop_on_features(ev):
        if type(ev).__name__ == "Progress" and ev.task == "features" and not seen:
            seen.append(ev)
            p.runner.stop()

    p.runner.event.connect(stop_on_features)
    with qtbot.waitSignal(p.runner.finished, timeout=180_000):
        p.start()
    assert seen and "Stopped" in p.status.text()


def test_evaluate_panel_shows_metrics_histogram_and_gallery(qtbot, fitted):
    data, run = fitted
    st = AppState()
    st.set_current_run(run)
    p = AnomalyEvaluatePanel(st)
    qtbot.addWidget(p)
    assert p.eval_btn.isEnabled()
    p.set_folder(str(data))
    p.start()
    qtbot.waitUntil(lambda: p.report is not None, timeout=120_000)
    rep = p.report
    assert f"{rep['metrics']['image_auroc']:.3f}" in p.m_auroc.text()
    assert rep["metrics"]["pixel_auroc"] is not None and f"{rep['metrics']['pixel_auroc']:.3f}" in p.m_pixel.text()
    assert sum(p.histogram.counts["good"]) == 3 and sum(p.histogram.counts["defect"]) == 6
    assert p.histogram.line.value() == pytest.approx(0.5)
    assert p.gallery.count() == 9
    scores = [p.gallery.item(i).data(Qt.ItemDataRole.UserRole)["score"] for i in range(9)]
    assert scores == sorted(scores, reverse=True)
    p.gallery.setCurrentRow(2)
    r = p.gallery.item(2).data(Qt.ItemDataRole.UserRole)
    assert p.overlay.heatmap() is not None and p.overlay.heatmap().shape == r["map"].shape
    assert Path(r["path"]).name in p.detail.text()
    assert "blob" in p.defects.text() and "scratch" in p.defects.text()


def test_predict_panel_threshold_slider_updates_verdicts_and_saves(qtbot, fitted, tmp_path):
    data, run = fitted
    import shutil

    run_copy = tmp_path / "run"
    shutil.copytree(run, run_copy)
    st = AppState()
    st.set_current_run(str(run_copy))
    p = AnomalyPredictPanel(st)
    qtbot.addWidget(p)
    paths = [str(x) for x in sorted((data / "test").rglob("*.png"))] + [str(tmp_path / "missing.png")]
    p.add_paths(paths)
    qtbot.waitUntil(lambda: len(p.rows) == len(paths), timeout=120_000)
    assert p.list.count() == len(paths)
    assert "cannot score" in p.list.item(len(paths) - 1).text()

    def verdicts():
        out = []
        for i in range(p.list.count()):
            r = p.list.item(i).data(Qt.ItemDataRole.UserRole)
            if r.get("raw_score") is not None:
                out.append(("ANOMALY" in p.list.item(i).text(), r["raw_score"]))
        return out

    for flagged, raw in verdicts():
        assert flagged == (raw > p.threshold)
    before = p.threshold
    held = np.array(p.meta["holdout_scores"])
    p.slider.slider.setValue(0)  # 1 in 5 good parts may be flagged: a lower threshold
    assert p.threshold <= before and (held > p.threshold).sum() <= int(0.2 * len(held))
    assert "1 in 5 good parts" in p.slider.label.text()
    for flagged, raw in verdicts():
        assert flagged == (raw > p.threshold)
    n_flag = sum(f for f, _ in verdicts())
    assert f"<b>{n_flag}</b> of {len(paths) - 1}" in p.counts.text()
    p.list.setCurrentRow(0)
    assert p.overlay.heatmap() is not None
    p.save_threshold()
    saved = json.loads((run_copy / "run.json").read_text())["extra"]["anomaly"]
    assert saved["threshold"] == pytest.approx(p.threshold) and saved["false_alarm_rate"] == pytest.approx(0.2)


def test_predict_panel_accepts_dropped_files(qtbot, fitted, monkeypatch):
    data, run = fitted
    st = AppState()
    st.set_current_run(run)
    p = AnomalyPredictPanel(st)
    qtbot.addWidget(p)
    got = []
    monkeypatch.setattr(p, "add_paths", got.append)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(data / "test" / "blob"))])
    ev = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                    Qt.KeyboardModifier.NoModifier)
    p.dropEvent(ev)
    assert got == [[str(data / "test" / "blob")]]


def test_data_step_drop_zone_asks_for_normal_images_when_anomaly_is_chosen(qtbot):
    from PySide6.QtCore import QThreadPool

    from tlstudio.gui.panels.data_panel import DataPanel

    p = DataPanel(AppState())
    qtbot.addWidget(p)
    chooser = p.kind_chooser
    qtbot.waitUntil(lambda: chooser.combo.findData("anomaly") >= 0, timeout=30_000)
    assert "One sub-folder per class" in p.hint.text()
    chooser.combo.setCurrentIndex(chooser.combo.findData("anomaly"))
    assert p.state.task_kind == "anomaly"
    assert "normal images" in p.hint.text() and "sub-folder per class" not in p.hint.text()
    p.state.set_task_kind("classification")  # set elsewhere: the hint follows too
    assert "One sub-folder per class" in p.hint.text()
    QThreadPool.globalInstance().waitForDone(30_000)
