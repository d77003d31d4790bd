"""Multi-task GUI: the Data step's task table, the Evaluate tasks and Predict tasks panels."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import Qt

from tlstudio.core.runs import folder as runs
from tlstudio.gui.panels.multitask_evaluate import MultiTaskEvaluatePanel
from tlstudio.gui.panels.multitask_predict import MultiTaskPredictPanel
from tlstudio.gui.panels.task_table import COST_NOTE, TaskTable
from tlstudio.gui.state import AppState


def _table(root: Path, header: str, rows: list[str]) -> Path:
    for r in rows:
        Image.new("RGB", (16, 16), (120, 30, 30)).save(root / r.split(",")[0])
    p = root / "labels.csv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return p


def test_task_table_shows_columns_and_sets_the_multitask_settings(qtbot, tmp_path):
    rows = [f"i{i}.png,{'cat' if i % 2 else 'dog'},{'' if i % 4 == 0 else 'in' if i < 6 else 'out'},{i * 1.5}"
            for i in range(12)]
    path = _table(tmp_path, "path,animal,place,size", rows)
    state = AppState()
    table = TaskTable(state)
    qtbot.addWidget(table)
    with qtbot.waitSignal(state.task_settings_changed):
        table.scan(str(path), wait=True)
    t = table.table
    assert t.rowCount() == 3
    assert [t.item(r, 1).text() for r in range(3)] == ["animal", "place", "size"]
    assert [t.cellWidget(r, 2).currentData() for r in range(3)] == ["categorical", "categorical", "numeric"]
    assert t.item(1, 5).text() == "3" and t.item(0, 5).text() == "0"  # empty cells = missing labels
    assert state.task_kind == "multitask"
    s = state.task_settings
    assert s["tasks"] == ["animal", "place", "size"] and s["weighting"] == "equal" and s["task_weights"] is None
    assert s["task_types"]["size"] == "numeric"
    # the settings build a valid MultiTaskConfig (what the Train step does)
    from tlstudio.core.tasks.registry import get

    cfg = get("multitask").config_cls(data_dir=str(path), **s)
    assert cfg.tasks == ["animal", "place", "size"]
    # manual weights: editing a weight switches the weighting to manual
    t.cellWidget(2, 7).setValue(2.5)
    assert state.task_settings["weighting"] == "manual" and state.task_settings["task_weights"] == [1.0, 1.0, 2.5]
    # untick a task
    t.item(1, 0).setCheckState(Qt.CheckState.Unchecked)
    assert state.task_settings["tasks"] == ["animal", "size"]
    table.pcgrad.setChecked(True)
    assert state.task_settings["pcgrad"] is True
    assert "extra backward pass per task per" in COST_NOTE and "strong baseline" in COST_NOTE
    assert table.note.text() == COST_NOTE and table.note.isVisibleTo(table)


def test_task_table_retypes_a_column_and_refuses_a_single_class(qtbot, tmp_path):
    rows = [f"i{i}.png,{'cat' if i % 2 else 'dog'},{i % 3},same" for i in range(9)]
    path = _table(tmp_path, "path,animal,digit,flag", rows)
    state = AppState()
    table = TaskTable(state)
    qtbot.addWidget(table)
    table.scan(str(path), wait=True)
    assert "column 'flag' has a single class" in table.problem.text()
    assert table.problem.isVisibleTo(table) and "\n" not in table.problem.text()
    assert state.task_kind != "multitask"  # nothing trainable was set
    table.scan(str(path), types={"flag": "categorical"}, wait=True)  # still refused
    assert table.report is None
    path.write_text("path,animal,digit\n" + "\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n", encoding="utf-8")
    table.scan(str(path), wait=True)
    assert table.table.cellWidget(1, 2).currentData() == "categorical"  # 0,1,2: classes
    table.scan(str(path), types={"digit": "numeric"}, wait=True)
    assert table.table.cellWidget(1, 2).currentData() == "numeric"
    assert "numeric: mean" in table.table.item(1, 3).text()


def _fake_run(root: Path) -> Path:
    from tlstudio.core.runs.folder import ModelSpec, RunInfo

    schema = {"tasks": [{"name": "digit", "type": "categorical", "classes": ["0", "1", "2"]},
                        {"name": "texture", "type": "categorical", "classes": ["smooth", "rough"]},
                        {"name": "size", "type": "numeric", "classes": [], "mean": 3.0, "std": 2.0}]}
    per = {"digit": {"n": 30, "accuracy": 0.9, "macro_f1": 0.89, "score": 0.9,
                     "confusion": [[9, 1, 0], [0, 10, 0], [1, 1, 8]]},
           "texture": {"n": 25, "accuracy": 0.8, "macro_f1": 0.79, "score": 0.8, "confusion": [[10, 3], [2, 10]]},
           "size": {"n": 30, "mae": 0.7, "r2": 0.6, "score": 0.6}}
    base = {"rows": [{"task": "digit", "mtl": 0.9, "single": 0.86, "delta_points": 4.0, "negative": False},
                     {"task": "texture", "mtl": 0.8, "single": 0.88, "delta_points": -8.0, "negative": True},
                     {"task": "size", "mtl": 0.6, "single": 0.6, "delta_points": 0.0, "negative": False}],
            "delta_m": -1.5, "negative_tasks": ["texture"], "unrelated_tasks": [],
            "verdict": "Negative transfer between tasks: texture did worse in the shared model than alone."}
    info = RunInfo(task="multitask", name="mt", status="finished", config={"data_dir": "x"},
                   model=ModelSpec(backbone="resnet18", num_classes=3, classes=["digit", "texture", "size"],
                                   image_size=64), label_schema=schema, best_epoch=2,
                   metrics={"val_score": 0.767}, extra={"multitask": {
                       "per_task": per, "baseline": base, "weighting": "uncertainty", "pcgrad": True,
                       "relatedness": [[1.0, 0.4, -0.2], [0.4, 1.0, 0.1], [-0.2, 0.1, 1.0]]}})
    run = root / "run"
    run.mkdir()
    runs.write_run(run, info)
    return run


def test_evaluate_panel_shows_tasks_confusions_baseline_and_relatedness(qtbot, tmp_path):
    run = _fake_run(tmp_path)
    state = AppState()
    panel = MultiTaskEvaluatePanel(state)
    qtbot.addWidget(panel)
    assert not panel.again_btn.isEnabled()
    state.set_current_run(str(run))
    assert panel.again_btn.isEnabled()
    m = panel.metrics
    assert m.rowCount() == 3 and m.item(0, 3).text() == "90.0%" and m.item(2, 5).text() == "0.7"
    assert [panel.conf_tabs.tabText(i) for i in range(panel.conf_tabs.count())] == ["digit", "texture"]
    assert panel.conf_tabs.widget(0).matrix == [[9, 1, 0], [0, 10, 0], [1, 1, 8]]
    b = panel.baseline
    assert b.rowCount() == 3 and b.item(1, 3).text() == "-8.0"
    assert b.item(1, 5).text() == "negative transfer between tasks"
    assert b.item(0, 5).text() == "same within the noise"  # the fake row has no "better" flag
    assert "texture did worse" in panel.verdict.text() and "-1.50 %" in panel.verdict.text()
    assert panel.related.rowCount() == 3 and panel.related.item(0, 2).text() == "-0.20"
    assert "uncertainty + PCGrad" in panel.status.text()
    state.set_current_run(None)
    assert not panel.again_btn.isEnabled()


def test_predict_panel_lists_every_task_answer(qtbot, tmp_path):
    img = tmp_path / "a.png"
    Image.new("RGB", (20, 20), (0, 200, 0)).save(img)
    state = AppState()
    panel = MultiTaskPredictPanel(state)
    qtbot.addWidget(panel)
    panel.predict([str(img)], wait=True)
    assert "No run selected" in panel.status.text()
    rows = [{"path": str(img), "error": None, "tasks": {
        "digit": {"class": "7", "prob": 0.93, "top": [{"class": "7", "prob": 0.93}]},
        "tags": {"classes": ["a", "b"], "probs": {}}, "size": {"value": 4.25}}},
        {"path": str(tmp_path / "gone.png"), "error": "file not found", "tasks": {}}]
    panel.show_rows(rows)
    cards = [panel.cards.itemAt(i).widget() for i in range(panel.cards.count() - 1)]
    assert len(cards) == 2
    assert cards[0].answers == {"digit": "<b>7</b> (93%)", "tags": "<b>a, b</b>", "size": "<b>4.25</b>"}
    assert "1 image(s) predicted, 1 could not be read" == panel.status.text()
