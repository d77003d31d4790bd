"""Issue 17 item 1 in the app: choosing "From scratch" makes every layer trainable, and a run
started from scratch with frozen layers says what that means."""

from __future__ import annotations

from tlstudio.core.models.advice import scratch_freeze_warning
from tlstudio.gui.panels.model_panel import ModelPanel
from tlstudio.gui.state import AppState


def test_from_scratch_unfreezes_every_layer(qtbot):
    state = AppState()
    state.update_settings({"freeze": "head", "frozen_groups": [0, 1]})
    panel = ModelPanel(state)
    qtbot.addWidget(panel)
    panel.radios["scratch"].click()
    assert state.settings["init"] == "scratch"
    assert state.settings["freeze"] == "none" and state.settings["frozen_groups"] is None
    assert scratch_freeze_warning("scratch", state.settings["freeze"], state.settings["frozen_groups"]) is None
    # freezing again afterwards is the user's choice, and the start hint will say what it means
    assert "head" in (scratch_freeze_warning("scratch", "head") or "")
