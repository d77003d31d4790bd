"""Fixtures shared by the GUI tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def kind_train_panel(qtbot, tmp_path):
    """A shown Train step (1024x700) with its own runs folder and job runner, for runs of test kinds."""
    from tlstudio.gui.panels.train_panel import TrainPanel
    from tlstudio.gui.runner import JobRunner
    from tlstudio.gui.state import AppState

    state = AppState()
    state.runs_dir = str(tmp_path / "runs")
    runner = JobRunner()
    p = TrainPanel(state, runner)
    qtbot.addWidget(p)
    p.resize(1024, 700)
    p.show()
    yield p
    runner.stop()
    runner.wait(5000)
