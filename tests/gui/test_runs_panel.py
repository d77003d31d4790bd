"""RunsPanel: the table of runs, open, overlay curves, rename, delete (asks first)."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest

from tlstudio.core.runs.folder import (
    BEST_WEIGHTS,
    EVAL_JSON,
    LAST_CKPT,
    ModelSpec,
    RunInfo,
    read_history,
    read_run,
    write_history,
    write_run,
)
from tlstudio.core.atomic import atomic_write_json
from tlstudio.core.evaluation.evaluate import EvalReport
from tlstudio.gui.panels.runs_panel import RunsPanel
from tlstudio.gui.state import AppState


def make_fake_run(root: Path, name: str, *, acc: float = 0.9, epochs: int = 3, status: str = "finished",
                  classes=("circle", "square", "triangle"), baseline: dict | None = None,
                  images: list[str] | None = None, backbone: str = "resnet10t", mtime: float | None = None) -> Path:
    """A run folder with chosen numbers, written by the engine's own writers: RunInfo + write_run (the
    fields the engine fills), write_history, EvalReport -> eval.json as evaluate() saves it.
    test_fake_run_has_the_layout_of_a_real_run compares it with a folder the engine really wrote.
    The weights file is a stand-in on purpose (bytes, not weights): panels must not load it here."""
    d = root / name
    d.mkdir(parents=True)
    metrics = {"val_loss": 1.2 / epochs, "val_acc": acc, "val_macro_f1": acc}
    info = RunInfo(kind="train", task="classification", name=name, status=status,
                   config={"epochs": epochs, "backbone": backbone, "data_dir": str(root)},
                   model=ModelSpec(backbone=backbone, num_classes=len(classes), classes=list(classes), image_size=32),
                   data={"root": str(root), "n_train": 24, "n_val": 30}, epochs_done=epochs,
                   best_epoch=epochs - 1, metrics=metrics, best_metric="val_acc", best_val_acc=acc, baseline=baseline,
                   label_schema={"tasks": [{"name": "label", "type": "categorical", "classes": list(classes)}]})
    write_run(d, info)
    write_history(d, [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1),
                       "val_acc": acc * (e + 1) / epochs, "val_macro_f1": acc, "lr": 1e-3, "seconds": 2.0,
                       "trainable_params": 1000} for e in range(epochs)])
    (d / BEST_WEIGHTS).write_bytes(b"not really weights")
    if status == "stopped":
        (d / LAST_CKPT).write_bytes(b"ckpt")
    imgs = images or []
    mis = [{"path": imgs[i] if i < len(imgs) else "", "true": classes[0], "pred": classes[1], "confidence": 0.9 - 0.1 * i}
           for i in range(3)] + [{"path": imgs[3] if len(imgs) > 3 else "", "true": classes[2], "pred": classes[0],
                                  "confidence": 0.55}]
    report = EvalReport(accuracy=acc, macro_f1=acc - 0.02, top_k={1: acc, 2: 0.98},
                        per_class=[{"name": c, "precision": 0.9, "recall": 0.8 + 0.05 * i, "f1": 0.85, "support": 10}
                                   for i, c in enumerate(classes)],
                        confusion=[[7, 3, 0], [0, 10, 0], [1, 0, 9]], classes=list(classes), misclassified=mis,
                        n=30, failures=[], source="validation split")
    atomic_write_json(d / EVAL_JSON, report.to_json())
    if mtime is not None:
        os.utime(d / "run.json", (mtime, mtime))
    return d


def _history_columns(run_dir: Path) -> list[str]:
    with open(run_dir / "history.csv", encoding="utf-8") as f:
        return next(csv.reader(f))


@pytest.mark.slow  # a real (tiny) training run: ~80 s on the loaded 2-core machine
def test_fake_run_has_the_layout_of_a_real_run(tmp_path, shapes3):
    """The fixture above must not drift from what the engine writes: train a real tiny run, evaluate it,
    and compare files, run.json fields, metric names, history.csv columns and eval.json fields."""
    from tlstudio.core.config import TrainConfig
    from tlstudio.core.evaluation.evaluate import evaluate
    from tlstudio.core.events import drive
    from tlstudio.core.training.engine import fit

    real = tmp_path / "real"
    cfg = TrainConfig(data_dir=str(shapes3), out_dir=str(real), backbone="test_resnet", init="scratch",
                      image_size=32, epochs=1, batch_size=8, freeze="none", lr=3e-3, augment="none", seed=0,
                      warmup_epochs=0.0, early_stop_patience=None, precision="fp32", workers=0)
    real_info = drive(fit(cfg))
    assert real_info.status == "finished"
    evaluate(real)
    fake = make_fake_run(tmp_path / "runs", "fake", status="finished")

    real_files = {p.name for p in real.iterdir()}
    assert {p.name for p in fake.iterdir()} <= real_files
    rj = json.loads((real / "run.json").read_text(encoding="utf-8"))
    fj = json.loads((fake / "run.json").read_text(encoding="utf-8"))
    assert set(fj) == set(rj)
    for key in ("schema_version", "kind", "task", "best_metric"):
        assert fj[key] == rj[key], key
    assert set(fj["metrics"]) == set(rj["metrics"]) and set(fj["model"]) == set(rj["model"])
    assert {"n_train", "n_val", "root"} <= set(rj["data"]) and set(fj["data"]) <= set(rj["data"])
    assert fj["label_schema"]["tasks"][0].keys() == rj["label_schema"]["tasks"][0].keys()
    assert _history_columns(fake) == _history_columns(real)
    assert read_history(real)[0]["epoch"] == read_history(fake)[0]["epoch"] == 1  # epochs counted from 1
    ej = json.loads((fake / EVAL_JSON).read_text(encoding="utf-8"))
    er = json.loads((real / EVAL_JSON).read_text(encoding="utf-8"))
    assert set(ej) == set(er) and set(ej["top_k"]) <= set(er["top_k"]) | {"2"}
    assert set(ej["per_class"][0]) == set(er["per_class"][0])
    assert set(ej["misclassified"][0]) >= {"path", "true", "pred", "confidence"}
    if er["misclassified"]:
        assert set(ej["misclassified"][0]) == set(er["misclassified"][0])


@pytest.fixture
def setup(qtbot, tmp_path):
    root = tmp_path / "runs"
    now = time.time()
    a = make_fake_run(root, "run_a", acc=0.8, mtime=now - 100)
    b = make_fake_run(root, "run_b", acc=0.95, baseline={"gain": -0.05, "scratch_val_acc": 1.0,
                                                         "transfer_val_acc": 0.95}, mtime=now - 50)
    c = make_fake_run(root, "run_c", acc=0.5, status="stopped", epochs=1, mtime=now)
    (root / "not_a_run").mkdir()
    state = AppState()
    state.runs_dir = str(root)
    p = RunsPanel(state)
    qtbot.addWidget(p)
    p.resize(1000, 700)
    return p, state, (a, b, c)


def _col(panel, r, c):
    return panel.table.item(r, c).text()


def test_table_lists_runs_newest_first(setup):
    p, state, (a, b, c) = setup
    assert p.table.rowCount() == 3
    names = [_col(p, r, 0) for r in range(3)]
    assert names == ["run_c", "run_b", "run_a"]
    assert _col(p, 1, 2) == "Classification"  # the task column
    assert _col(p, 1, 3) == "resnet10t"
    assert _col(p, 1, 5) == "95.0%" and "val acc 95.0%" in p.table.item(1, 5).toolTip()
    assert _col(p, 0, 4) == "stopped"
    assert _col(p, 0, 6) == "1/1"
    assert "-5.0" in _col(p, 1, 7) and "⚠" in _col(p, 1, 7)  # negative transfer flagged
    assert _col(p, 1, 1)  # a date
    assert "val acc 95.0%" in _col(p, 1, 8)  # the run's metrics dictionary


def test_open_sets_current_run(setup, qtbot):
    p, state, (a, b, c) = setup
    p.select_dirs([str(b)])
    assert p.open_btn.isEnabled()
    with qtbot.waitSignal(state.current_run_changed):
        p.open_btn.click()
    assert state.current_run == str(b)
    assert p.table.item(1, 0).font().bold()


def test_overlay_two_runs(setup):
    p, state, (a, b, c) = setup
    p.select_dirs([str(a), str(b)])
    assert sorted(p.selected_dirs()) == sorted([str(a), str(b)])
    p.overlay_btn.click()
    assert p.overlaid == [str(b), str(a)] or p.overlaid == [str(a), str(b)]
    items = p.acc_plot.listDataItems()
    assert len(items) == 2
    ys = sorted(float(i.yData[-1]) for i in items)
    assert ys == pytest.approx([0.8, 0.95])
    assert [float(v) for v in items[0].xData] == [1.0, 2.0, 3.0]  # epochs counted from 1 as in history.csv
    assert len(p.loss_plot.listDataItems()) == 2


def test_rename_changes_display_name_only(setup):
    p, state, (a, b, c) = setup
    p.select_dirs([str(a)])
    p.ask_name = lambda current: "my best model"
    p.rename_btn.click()
    assert read_run(a).name == "my best model"
    assert a.is_dir()
    assert "my best model" in [_col(p, r, 0) for r in range(3)]


def test_delete_asks_and_cancel_keeps(setup):
    p, state, (a, b, c) = setup
    asked = []
    p.confirm = lambda text: asked.append(text) or False
    p.select_dirs([str(a)])
    p.delete_btn.click()
    assert asked and "cannot be undone" in asked[0]
    assert a.is_dir() and p.table.rowCount() == 3


def test_delete_removes_run_and_clears_current(setup):
    p, state, (a, b, c) = setup
    state.set_current_run(str(a))
    p.confirm = lambda text: True
    p.select_dirs([str(a)])
    p.delete_btn.click()
    assert not a.exists()
    assert p.table.rowCount() == 2
    assert state.current_run is None


def test_delete_refuses_paths_outside_runs_dir(setup, tmp_path, monkeypatch):
    from tlstudio.gui.widgets import error_dialog

    captured: list = []
    monkeypatch.setattr(error_dialog, "CAPTURE", captured)
    p, state, (a, b, c) = setup
    outside = make_fake_run(tmp_path / "elsewhere", "victim")
    p.confirm = lambda text: True
    p.table.item(0, 0).setData(256, str(outside))  # a crafted entry pointing elsewhere
    p.select_dirs([str(outside)])
    p.delete_selected()
    assert outside.is_dir()
    assert captured and str(outside) in captured[0][1]


def test_delete_disabled_while_training(setup):
    p, state, (a, b, c) = setup
    p.select_dirs([str(a)])
    assert p.delete_btn.isEnabled()
    state.set_training(True)
    assert not p.delete_btn.isEnabled()


def test_refresh_on_runs_changed_and_damaged_run(setup):
    p, state, (a, b, c) = setup
    bad = Path(state.runs_dir) / "damaged"
    bad.mkdir()
    (bad / "run.json").write_text("{not json", encoding="utf-8")
    state.runs_changed.emit()
    assert p.table.rowCount() == 4
    assert "unreadable" in [_col(p, r, 4) for r in range(4)]


def test_open_a_run_folder_from_elsewhere(setup, tmp_path, monkeypatch):
    from tlstudio.gui.widgets import error_dialog

    p, state, (a, b, c) = setup
    elsewhere = make_fake_run(tmp_path / "other_disk", "copied_run", acc=0.7)
    assert p.open_dir(str(elsewhere))
    assert state.current_run == str(elsewhere)
    assert p.table.rowCount() == 4 and "copied_run" in [_col(p, r, 0) for r in range(4)]
    captured: list = []
    monkeypatch.setattr(error_dialog, "CAPTURE", captured)
    assert not p.open_dir(str(tmp_path))  # not a run folder: said so, nothing changes
    assert captured and "not a TL Studio run folder" in captured[0][1]
    assert state.current_run == str(elsewhere)


def test_a_multi_task_run_shows_its_task_best_metric_and_per_task_curves(qtbot, tmp_path):
    from tlstudio.core.tasks.registry import all_kinds, get

    all_kinds()  # the Data step loads the registry in the background; titles come from it
    root = tmp_path / "runs"
    d = root / "mt"
    d.mkdir(parents=True)
    metrics = {"val_loss": 0.7, "val_acc/digit": 0.9, "val_acc/texture": 0.6, "weight/digit": 1.0}
    write_run(d, RunInfo(kind="train", task="multitask", name="mt", status="finished", config={"epochs": 2},
                         model=ModelSpec(backbone="resnet10t", num_classes=3, classes=["a", "b", "c"], image_size=32),
                         epochs_done=2, best_epoch=1, metrics=metrics, best_metric="val_acc/digit"))
    write_history(d, [{"epoch": e + 1, "train_loss": 1.0, **{k: v * (e + 1) / 2 for k, v in metrics.items()}}
                      for e in range(2)])
    state = AppState()
    state.runs_dir = str(root)
    p = RunsPanel(state)
    qtbot.addWidget(p)
    assert _col(p, 0, 2) == get("multitask").title
    assert _col(p, 0, 5) == "90.0%" and "val acc digit 90.0%" in p.table.item(0, 5).toolTip()
    assert "val acc texture 60.0%" in _col(p, 0, 8) and "weight digit 1.000" in _col(p, 0, 8)
    p.overlay([str(d)])
    (item,) = p.acc_plot.listDataItems()
    assert [float(v) for v in item.yData] == pytest.approx([0.45, 0.9])  # the run's own best metric
    assert p.acc_plot.titleLabel.text == "Validation accuracy"


def test_run_names_are_readable_next_to_long_metrics(qtbot, tmp_path):
    """A run's name (date, time, backbone) gets the width it needs, up to 40% of the table, and the
    metrics column takes what is left; before, the metrics pushed names down to '2026120...'."""
    root = tmp_path / "runs"
    name = "20261201-050243-tf_efficientnet_lite0"
    run = make_fake_run(root, name, classes=tuple(f"class_{i}" for i in range(3)))
    state = AppState()
    state.runs_dir = str(root)
    state.current_run = str(run)  # the open run's name is shown in bold, which is wider
    p = RunsPanel(state)
    qtbot.addWidget(p)
    p.resize(1100, 700)
    p.refresh()  # filled while hidden (the training ended on another step) ...
    from PySide6.QtGui import QFontMetrics

    bold = p.table.item(0, 0).font()
    assert bold.bold()
    p.show()  # ... then shown
    qtbot.waitUntil(lambda: p.table.columnWidth(0) >= QFontMetrics(bold).horizontalAdvance(name), timeout=5_000)
    assert p.table.columnWidth(0) <= max(200, int(p.table.viewport().width() * 0.4))
    right = p.table.columnViewportPosition(8) + p.table.columnWidth(8)
    assert right <= p.table.viewport().width() + 1  # the metrics fit in the view: no sideways scrolling


def _shown_panel(qtbot, root, width: int) -> RunsPanel:
    state = AppState()
    state.runs_dir = str(root)
    p = RunsPanel(state)
    qtbot.addWidget(p)
    p.resize(width, 700)
    p.show()
    return p


def test_a_long_name_leaves_the_metrics_in_view(qtbot, tmp_path):
    """An anomaly fit's name ("...-anomaly-tf_efficientnet_lite0 (fit)") took its 40% and pushed the
    metrics column to a few pixels with a sideways scroll bar; the name now gives way first."""
    from tlstudio.gui.panels.runs_panel import METRICS_MIN_PX

    root = tmp_path / "runs"
    name = "20261201-065551-anomaly-tf_efficientnet_lite0-with-a-longer-name"
    run = make_fake_run(root, name, baseline={"gain": 0.05, "scratch_val_acc": 0.9, "transfer_val_acc": 0.95})
    p = _shown_panel(qtbot, root, 1080)
    qtbot.waitUntil(lambda: p.table.viewport().width() > 900, timeout=5_000)
    p._fit_columns()
    assert not p.table.isColumnHidden(7)  # this run trained a from-scratch baseline: its gain is shown
    assert p.table.columnWidth(8) >= METRICS_MIN_PX
    assert p.table.columnViewportPosition(8) + p.table.columnWidth(8) <= p.table.viewport().width() + 1
    assert p.table.columnWidth(0) >= 200 and name in p.table.item(0, 0).toolTip() and str(run) in p.table.item(0, 0).toolTip()


def test_compared_accuracy_stops_at_one_and_epochs_are_whole(qtbot, tmp_path):
    """Curves flat at 100% used to get an axis from 0.6 to 1.4 (pyqtgraph pads a flat line) and
    ticks at epoch 1.5, 2.5; a chart of fractions now ends at 1.0 and the epoch axis has whole ticks."""
    from tlstudio.gui.panels.runs_panel import fraction_range

    root = tmp_path / "runs"
    d = make_fake_run(root, "perfect", acc=1.0, epochs=4)
    write_history(d, [{"epoch": e + 1, "train_loss": 0.1, "val_loss": 0.02, "val_acc": 1.0, "val_macro_f1": 1.0,
                       "lr": 1e-3, "seconds": 1.0, "trainable_params": 10} for e in range(4)])
    p = _shown_panel(qtbot, root, 1000)
    assert p.table.isColumnHidden(7)  # no run with a baseline: no empty "Transfer gain" column
    p.select_dirs([str(d)])
    p.overlay([str(d)])
    lo, hi = p.acc_plot.getViewBox().viewRange()[1]
    assert hi <= 1.03 and 0.8 <= lo < 1.0
    axis = p.acc_plot.getAxis("bottom")
    ticks = [v for _, values in axis.tickValues(1.0, 4.0, 400) for v in values]
    assert ticks and all(float(v).is_integer() for v in ticks)
    assert fraction_range([0.5, 0.7]) == pytest.approx((0.45, 1.0))
    assert fraction_range([0.2, 1.7]) is None  # a loss or an error keeps the automatic range
