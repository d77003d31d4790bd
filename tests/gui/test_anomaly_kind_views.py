"""What the anomaly kind shows outside its own steps: saturated scores that still rank (Evaluate,
Predict), an Export step with only the formats the anomaly export writes and no torchrun, a Data
step without the unlabelled-images zone and with the anomaly split, Runs without empty plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.core.anomaly_data import make_mvtec
from tlstudio.core.events import drive
from tlstudio.core.tasks import registry
from tlstudio.core.tasks.anomaly import AnomalyConfig
from tlstudio.gui.panels.anomaly_evaluate import AnomalyEvaluatePanel
from tlstudio.gui.panels.anomaly_widgets import score_label, score_sort_key
from tlstudio.gui.state import AppState


@pytest.fixture(scope="module")
def anomaly_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("anom_views")
    data = make_mvtec(root / "parts", n_train=12, n_good=3, n_defect=3, size=48)
    run = root / "runs" / "20260101-000000-anomaly-test_resnet"
    cfg = AnomalyConfig(data_dir=str(data), out_dir=str(run), init="scratch", batch_size=8,
                        backbone="test_resnet", image_size=64)
    info = drive(registry.get("anomaly").run(cfg))
    assert info.status == "finished"
    return data, run


def _images(tmp_path: Path, n: int) -> list[str]:
    out = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((32, 32, 3), 40 * i % 255, np.uint8)).save(p)
        out.append(str(p))
    return out


def test_saturated_scores_rank_by_raw_score_and_differ(qtbot, tmp_path):
    paths = _images(tmp_path, 4)
    # normalised scores all saturate at 1.0 (clear defects) but the raw distances differ
    rows = [{"path": paths[0], "label": 1, "defect": "hole", "mask": None, "score": 1.0, "raw_score": 3.0,
             "verdict": "anomaly"},
            {"path": paths[1], "label": 1, "defect": "stain", "mask": None, "score": 1.0, "raw_score": 9.0,
             "verdict": "anomaly"},
            {"path": paths[2], "label": 1, "defect": "scratch", "mask": None, "score": 1.0, "raw_score": 5.0,
             "verdict": "anomaly"},
            {"path": paths[3], "label": 0, "defect": "good", "mask": None, "score": 0.3, "raw_score": 0.8,
             "verdict": "normal"}]
    st = AppState()
    p = AnomalyEvaluatePanel(st)
    qtbot.addWidget(p)
    p.resize(1200, 820)
    p.set_report({"threshold": 1.0, "scale": 0.5, "n": 4, "metrics": {}, "per_defect": {}, "histogram": {},
                  "per_image": rows})
    shown = [r for _item, r in p.browser.items()]
    assert [r["raw_score"] for r in shown] == [9.0, 5.0, 3.0, 0.8]  # most anomalous first, by raw score
    texts = [item.text() for item, _r in p.browser.items()]
    assert len(set(texts[:3])) == 3, texts  # three saturated defects are told apart
    assert texts[0].startswith("1.00 ×9") and texts[3] == "0.30 good"
    p.sort.setCurrentIndex(1)  # mistakes first: none here, then by raw score
    assert [r["raw_score"] for _i, r in p.browser.items()] == [9.0, 5.0, 3.0, 0.8]
    p.grab().save("/tmp/anomaly_views_evaluate.png")


def test_score_label_helpers():
    assert score_label(0.62, 1.1, 1.0) == "0.62"
    assert score_label(1.0, 4.0, 2.0) == "1.00 ×2"
    assert score_label(0.0, 0.25, 1.0) == "0.00 ×0.25"
    assert score_label(1.0, None, None) == "1.00"
    assert score_sort_key({"score": 1.0, "raw_score": 7.5}) == 7.5
    assert score_sort_key({"score": 0.4}) == 0.4


def test_export_step_offers_the_anomaly_formats_and_no_torchrun(qtbot, anomaly_run, tmp_path):
    from tlstudio.core.tasks.anomaly.export import SUPPORTED
    from tlstudio.gui.panels.export_panel import ExportPanel

    _data, run = anomaly_run
    st = AppState()
    st.runs_dir = str(run.parent)
    st.current_run = str(run)
    p = ExportPanel(st)
    qtbot.addWidget(p)
    p.resize(1150, 760)
    p.show()
    assert p.run_dir == str(run)
    shown = [f for f, cb in p.format_checks.items() if cb.isVisible()]
    assert shown == [f for f in ("safetensors", "onnx", "torchscript", "int8") if f in SUPPORTED]
    assert set(p.selected_formats()) <= set(SUPPORTED) and p.selected_formats()
    assert "classes" not in p.run_label.text() and "anomaly score" in p.run_label.text()
    assert "torchrun" not in p.command_text.toPlainText() and "tlstudio train" in p.command_text.toPlainText()
    assert not p.nproc_spin.isVisible() and not p.nnodes_spin.isVisible()
    p.grab().save("/tmp/anomaly_views_export.png")
    # a kind that trains gets every format and torchrun back
    p._apply_kind(("safetensors", "onnx", "torchscript", "int8"), True)
    assert all(cb.isVisible() for cb in p.format_checks.values()) and p.nproc_spin.isVisible()
    assert "torchrun" in p.command_text.toPlainText()


def test_data_step_for_anomaly_hides_the_unlabelled_zone_and_says_what_the_fit_uses(qtbot, tmp_path):
    from PySide6.QtCore import QThreadPool

    from tlstudio.gui.panels.data_panel import DataPanel

    data = make_mvtec(tmp_path / "parts", n_train=10, n_good=3, n_defect=2, size=32)
    st = AppState()
    p = DataPanel(st)
    qtbot.addWidget(p)
    p.resize(1100, 700)
    p.show()
    try:
        with qtbot.waitSignal(p.scan_finished, timeout=30_000):
            p.open_folder(str(data))
        zone = p.unlabelled_zone
        assert zone is not None and zone.isVisible()  # classification: offered
        st.set_task_kind("anomaly")
        assert not zone.isVisible()
        text = p.split_label.text()
        assert "No split" not in text
        # 10 normal images: 2 held out (20 %) for the threshold, 8 into the bank; test/ holds the rest
        assert "<b>8</b> normal images for the memory bank" in text and "<b>2</b> held out" in text
        n_test = sum(st.scan_report.counts.values()) - 10
        assert n_test > 0 and f"test: <b>{n_test}</b>" in text
        assert p.split_box.title() == "What the fit uses" and not p.val_spin.isVisible()
        qtbot.wait(50)
        p.grab().save("/tmp/anomaly_views_data.png")
        st.set_task_kind("multitask")
        assert not zone.isVisible()
        st.set_task_kind("classification")
        assert zone.isVisible() and p.split_box.title() == "Train / validation split" and p.val_spin.isVisible()
        assert "memory bank" not in p.split_label.text()
    finally:
        p.stop_scan()
        QThreadPool.globalInstance().waitForDone(30_000)


def test_runs_step_says_why_an_anomaly_run_has_no_curves(qtbot, anomaly_run, tmp_path):
    import shutil

    from tlstudio.core.runs.folder import ModelSpec, RunInfo, write_history, write_run
    from tlstudio.gui.panels.runs_panel import RunsPanel

    _data, run = anomaly_run
    root = tmp_path / "runs"
    shutil.copytree(run, root / run.name)
    trained = root / "20260101-000001-clf"
    trained.mkdir()
    write_run(trained, RunInfo(kind="train", task="classification", name="clf", status="finished",
                               config={"epochs": 2}, model=ModelSpec(backbone="resnet10t", num_classes=2,
                                                                     classes=["a", "b"], image_size=32),
                               epochs_done=2, best_epoch=2, metrics={"val_acc": 0.8, "val_loss": 0.5}))
    write_history(trained, [{"epoch": e + 1, "val_acc": 0.4 * (e + 1), "val_loss": 1.0 / (e + 1)} for e in range(2)])
    st = AppState()
    st.runs_dir = str(root)
    p = RunsPanel(st)
    qtbot.addWidget(p)
    p.resize(1100, 700)
    p.show()
    anom_row = next(r for r in range(p.table.rowCount()) if "anomaly" in p.table.item(r, 0).text())
    assert p.table.item(anom_row, 6).text() == "–"  # no epochs, not "1/"
    p.overlay([str(root / run.name)])
    assert p.curves_stack.currentWidget() is p.no_curves and not p.plots.isVisible()
    text = p.no_curves.text()
    assert "no finished epoch" in text and registry.get("anomaly").title in text
    qtbot.wait(50)
    p.grab().save("/tmp/anomaly_views_runs.png")
    p.overlay([str(trained)])  # a run with epochs: the plots are back
    assert p.curves_stack.currentWidget() is p.plots and len(p.acc_plot.listDataItems()) == 1
