"""The step list ticks the anomaly and multi-task Evaluate steps and the Review step once their work
is done (as it ticks the classification Evaluate step), and flags them when it failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlstudio.gui import steps as step_registry
from tlstudio.gui.state import AppState
from tlstudio.gui.widgets.step_sidebar import StepSidebar


@pytest.fixture
def ticks(qtbot):
    """An app state with the window's step list watching it."""
    state = AppState()
    bar = StepSidebar(state, list(step_registry.STEPS))
    qtbot.addWidget(bar)
    return state, bar


def _anomaly_report(n: int) -> dict:
    return {"threshold": 1.0, "n": n, "metrics": {"image_auroc": 0.9, "f1": 0.8}, "per_defect": {},
            "histogram": {}, "per_image": []}


def test_anomaly_evaluate_is_ticked_when_its_report_is_in(qtbot, ticks, tmp_path, monkeypatch):
    from tlstudio.gui.panels import anomaly_evaluate as ae

    state, bar = ticks
    state.set_task_kind("anomaly")
    state.set_current_run(str(tmp_path / "run"))
    seen: list[str] = []
    state.step_status_changed.connect(lambda step, st: seen.append(st) if step == "anomaly_evaluate" else None)
    monkeypatch.setattr(ae, "_evaluate", lambda run, folder: _anomaly_report(9))
    p = ae.AnomalyEvaluatePanel(state)
    qtbot.addWidget(p)
    assert bar.status_of("anomaly_evaluate") == "todo"
    p.start()
    qtbot.waitUntil(lambda: p.report is not None, timeout=10_000)
    assert bar.status_of("anomaly_evaluate") == "done"
    assert seen == ["busy", "done"]

    def broken(run, folder):
        raise OSError("the test folder is gone")

    monkeypatch.setattr(ae, "_evaluate", broken)
    p.start()
    qtbot.waitUntil(lambda: "Cannot evaluate" in p.status.text(), timeout=10_000)
    assert bar.status_of("anomaly_evaluate") == "attention"


def test_multitask_evaluate_is_ticked_when_an_evaluation_ends(qtbot, ticks, tmp_path, monkeypatch):
    from tests.gui.test_multitask_panels import _fake_run
    from tlstudio.core.tasks.multitask import artifacts
    from tlstudio.gui.panels.multitask_evaluate import MultiTaskEvaluatePanel

    state, bar = ticks
    state.set_task_kind("multitask")
    run = _fake_run(tmp_path)
    per = {"digit": {"type": "categorical", "n": 30, "accuracy": 0.9, "macro_f1": 0.88}}
    monkeypatch.setattr(artifacts, "evaluate", lambda run_dir, data: {
        "tasks": per, "data": "the validation split", "n": 30, "metrics": {"score": 0.9}})
    panel = MultiTaskEvaluatePanel(state)
    qtbot.addWidget(panel)
    state.set_current_run(str(run))
    assert bar.status_of("mt_evaluate") == "todo"
    panel.again_btn.click()
    qtbot.waitUntil(lambda: panel.again_btn.isEnabled(), timeout=10_000)
    assert "Evaluated on the validation split" in panel.status.text()
    assert bar.status_of("mt_evaluate") == "done"

    def broken(run_dir, data):
        raise ValueError("the table has no column 'digit'")

    monkeypatch.setattr(artifacts, "evaluate", broken)
    panel.again_btn.click()
    qtbot.waitUntil(lambda: "Evaluation failed" in panel.status.text(), timeout=10_000)
    assert bar.status_of("mt_evaluate") == "attention"


def test_review_is_ticked_when_the_labels_are_saved(qtbot, ticks, tmp_path):
    from tests.gui.test_adapt_panels import _queue
    from tlstudio.core.data.synthetic import make_synthetic_folder
    from tlstudio.gui.panels.review_queue import ReviewQueuePanel

    state, bar = ticks
    state.set_task_kind("semisupervised")
    lab = make_synthetic_folder(tmp_path / "project" / "labelled", per_class=2, size=32, seed=0)
    unl = tmp_path / "project" / "unlabelled"
    unl.mkdir()
    for i, p in enumerate(sorted(make_synthetic_folder(tmp_path / "raw", per_class=1, size=32, seed=1).rglob("*.png"))):
        (unl / f"u{i}.png").write_bytes(p.read_bytes())
    state.data_dir = str(lab)
    state.set_task_settings({"unlabeled_dir": str(unl)})
    panel = ReviewQueuePanel(state)
    qtbot.addWidget(panel)
    run = tmp_path / "run"
    run.mkdir()
    panel.set_queue(_queue(unl), str(run))
    panel.decide("accept")
    assert bar.status_of("review") == "todo"  # deciding is not done yet: the labels are not saved
    out = panel.save_csv()
    assert out is not None and Path(out).is_file()
    assert bar.status_of("review") == "done"
