"""The Adapt step's status line says how the last run ended (finished / stopped / failed) instead
of keeping its pre-run text, and the sidebar marks the step as the Train step does."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from tlstudio.core import events as ev
from tlstudio.core.runs.folder import ModelSpec, RunInfo, write_run
from tlstudio.core.tasks import registry
from tlstudio.gui.runner import JobRunner
from tlstudio.gui.state import AppState
from tlstudio.gui.widgets import error_dialog


@pytest.fixture
def adapt(qtbot, tmp_path, monkeypatch):
    """An Adapt step with a labelled and an unlabelled folder; ``ending`` says how the stand-in
    adaptation job ends: "finished", "stopped" or "failed"."""
    from tlstudio.gui.panels.adapt_panel import AdaptPanel

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    rep = {"method": "mcc", "adapted": {"source_val_acc": 0.9}, "unadapted": {"source_val_acc": 0.8},
           "selection": {"selected": "adapted", "reason": "better"}}
    write_run(run, RunInfo(task="adaptation", config={}, extra={"adaptation": rep},
                           model=ModelSpec(backbone="b", num_classes=2, classes=["a", "b"], image_size=32)))
    ending = {"how": "finished"}

    def fake_run(config, stop=None, pause=None):
        yield ev.EpochEnd(epoch=0, epochs=1, train_loss=1.0, metrics={"val_acc": 0.9}, lr=1e-3, seconds=0.1,
                          best=True, trainable_params=1, parts={"source_loss": 0.5, "target_loss": 0.3},
                          phase="adapt")
        if ending["how"] == "failed":
            raise RuntimeError("the target folder vanished")
        yield ev.Finished(str(run), ending["how"], 0, 0.9)
        return SimpleNamespace(status=ending["how"], best_val_acc=0.9, config={"out_dir": str(run)})

    kind = registry.get("adaptation")
    monkeypatch.setitem(registry._REGISTRY, "adaptation", dataclasses.replace(kind, run=fake_run))
    captured: list = []
    monkeypatch.setattr(error_dialog, "CAPTURE", captured)
    lab, unl = tmp_path / "labelled", tmp_path / "unlabelled"
    lab.mkdir()
    unl.mkdir()
    state = AppState()
    state.runs_dir = str(tmp_path / "runs")
    state.data_dir = str(lab)
    state.set_task_kind("adaptation")
    state.set_task_settings({"target_dir": str(unl)})
    runner = JobRunner()
    panel = AdaptPanel(state, runner)
    qtbot.addWidget(panel)
    panel.ending, panel.captured, panel.run_dir = ending, captured, str(run)
    yield panel
    runner.stop()
    runner.wait(5000)


def _run(qtbot, panel, how: str) -> list[str]:
    panel.ending["how"] = how
    said: list[str] = []
    panel.state.status_message.connect(said.append)
    before = panel.status.text()
    assert before.startswith("Unlabelled images:")  # the pre-run text
    steps: list[str] = []
    panel.state.step_status_changed.connect(lambda step, st: steps.append(st) if step == "adapt" else None)
    signal = panel.runner.failed if how == "failed" else panel.runner.finished
    with qtbot.waitSignal(signal, timeout=30_000):
        panel.start()
    qtbot.wait(20)
    assert panel.status.text() != before and not panel.status.text().startswith("Unlabelled images:")
    assert steps[:1] == ["busy"]  # the sidebar showed the step busy while it ran
    return said


def test_status_line_says_the_run_finished(qtbot, adapt):
    said = _run(qtbot, adapt, "finished")
    text = adapt.status.text()
    assert "finished" in text and "r1" in text and "90.0%" in text, text
    assert adapt.state.step_status["adapt"] == "done"
    assert said and said[-1] == text  # the status bar says it too
    assert adapt.start_btn.isEnabled() and not adapt.stop_btn.isEnabled()


def test_status_line_says_the_run_was_stopped(qtbot, adapt):
    _run(qtbot, adapt, "stopped")
    assert "stopped" in adapt.status.text()
    assert adapt.state.step_status["adapt"] == "attention"


def test_status_line_says_the_run_failed(qtbot, adapt):
    _run(qtbot, adapt, "failed")
    assert adapt.status.text().startswith("Failed:") and "target folder vanished" in adapt.status.text()
    assert adapt.state.step_status["adapt"] == "attention"
    assert adapt.captured and "target folder vanished" in adapt.captured[-1][1]  # and an error dialog


def test_another_folder_brings_back_the_pre_run_text(qtbot, adapt, tmp_path):
    _run(qtbot, adapt, "finished")
    other = tmp_path / "other"
    other.mkdir()
    adapt.state.set_task_settings({"target_dir": str(other)})
    assert adapt.status.text() == f"Unlabelled images: {other}"
