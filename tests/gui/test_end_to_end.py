"""End to end through the GUI: synthetic folder -> train (REAL worker, REAL engine) -> stop ->
continue -> evaluate -> predict -> runs table. Tiny model (timm test_resnet, scratch, 32 px)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlstudio.core import events as ev
from tlstudio.core.runs.folder import LAST_CKPT, read_history, read_run
from tlstudio.core.data.synthetic import make_synthetic_folder
from tlstudio.gui.panels.evaluate_panel import EvaluatePanel
from tlstudio.gui.panels.predict_panel import PredictPanel
from tlstudio.gui.panels.runs_panel import RunsPanel
from tlstudio.gui.panels.train_panel import TrainPanel
from tlstudio.gui.runner import JobRunner
from tlstudio.gui.state import AppState
from tlstudio.gui.widgets import error_dialog

pytestmark = pytest.mark.slow


def test_train_stop_continue_evaluate_predict(qtbot, tmp_path, monkeypatch):
    errors: list = []
    monkeypatch.setattr(error_dialog, "CAPTURE", errors)
    data = make_synthetic_folder(tmp_path / "data", per_class=8, size=32, easy=True)
    from tlstudio.core.data.dataset import scan

    state = AppState()
    state.runs_dir = str(tmp_path / "runs")
    state.set_dataset(str(data), scan(data))
    state.update_settings({"backbone": "test_resnet", "init": "scratch", "image_size": 32, "freeze": "none",
                           "workers": 0})
    runner = JobRunner()
    train = TrainPanel(state, runner)
    evaluate, predict, runs = EvaluatePanel(state), PredictPanel(state), RunsPanel(state)
    for w in (train, evaluate, predict, runs):
        qtbot.addWidget(w)
    train.epochs.setValue(3)
    train.batch_size.setValue(4)  # 18 training images -> 5 batches per epoch

    # --- train, and stop after the first batch arrives on the curves
    seen: list = []

    def on_event(e):
        seen.append(e)
        if isinstance(e, ev.BatchEnd) and train.stop_btn.isEnabled():
            train.stop_btn.click()

    runner.event.connect(on_event)
    with qtbot.waitSignal(train.run_finished, timeout=240_000) as blocker:
        assert train.start()
    runner.event.disconnect(on_event)
    assert not errors, errors
    run_dir, status = blocker.args
    assert status == "stopped", [type(e).__name__ for e in seen]
    assert Path(run_dir).parent == tmp_path / "runs"
    assert (Path(run_dir) / LAST_CKPT).is_file()
    assert read_run(run_dir).status == "stopped"
    n_before = train.curves.points("loss")
    assert n_before >= 1  # points arrived on the curve before the stop
    assert train.continue_btn.isEnabled()
    assert state.current_run == run_dir

    # --- continue the stopped run to the end
    with qtbot.waitSignal(train.run_finished, timeout=240_000) as blocker:
        train.continue_btn.click()
    assert not errors, errors
    assert blocker.args == [run_dir, "finished"]
    info = read_run(run_dir)
    assert info.status == "finished" and info.epochs_done == 3
    assert len(read_history(run_dir)) == 3
    assert train.curves.points("loss") == 15  # 3 epochs x 5 batches, none duplicated by the resume
    assert train.curves.points("val_acc") == 3
    assert "finished" in train.notifications[-1]
    assert not train.continue_btn.isEnabled()

    # --- evaluate: the engine's eval.json is shown; evaluating again runs the real evaluate
    assert evaluate.run_dir == run_dir
    assert evaluate.table.rowCount() == 3
    assert evaluate.report.n == sum(map(sum, evaluate.confusion.matrix)) == 6  # 20% of 3 x 8 held out
    with qtbot.waitSignal(evaluate.report_shown, timeout=120_000):
        assert evaluate.evaluate()
    assert not errors, errors
    assert 0.0 <= evaluate.report.accuracy <= 1.0 and evaluate.report.n == sum(map(sum, evaluate.report.confusion))
    with qtbot.waitSignal(evaluate.report_shown, timeout=120_000):
        assert evaluate.evaluate(str(data))  # "another folder": the whole synthetic set
    assert not errors, errors
    assert evaluate.report.n == 24

    # --- predict two images
    imgs = sorted(str(p) for p in data.rglob("*.png"))[:2]
    with qtbot.waitSignal(predict.predictions_shown, timeout=120_000) as blocker:
        assert predict.predict_paths(imgs)
    assert blocker.args == [2]
    assert all(len(p.top) == 3 and abs(sum(pr for _, pr in p.top) - 1) < 1e-3 for p in predict.predictions)

    # --- the runs table lists it
    assert runs.table.rowCount() == 1
    assert runs.table.item(0, 4).text() == "finished"
    assert runs.table.item(0, 6).text() == "3/3"
