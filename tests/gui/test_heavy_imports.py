"""Worker threads that use torch/timm import them one thread at a time (gui/heavy.py: concurrent
first imports can fail half-way), including the anomaly Fit step's memory plan, which starts as
soon as a folder of normal images opens, possibly while the preload is still importing."""

from __future__ import annotations

from tlstudio.gui import heavy


def test_needing_torch_imports_first(monkeypatch):
    order = []
    monkeypatch.setattr(heavy, "ensure_imported", lambda: order.append("import"))

    @heavy.needing_torch
    def job(x, y=1):
        order.append("job")
        return x + y

    assert job(1, y=2) == 3 and order == ["import", "job"]
    assert job.__wrapped__ is not None


def test_torch_workers_of_the_gui_are_wrapped(qtbot, monkeypatch):
    """The anomaly memory plan, started by the Fit step itself, goes through needing_torch."""
    from tlstudio.gui.panels import anomaly_fit
    from tlstudio.gui.state import AppState

    started = []
    monkeypatch.setattr(anomaly_fit, "start_worker", lambda owner, fn, *a, **k: started.append(fn))
    panel = anomaly_fit.AnomalyFitPanel(AppState())
    qtbot.addWidget(panel)
    panel.refresh_plan()
    assert started and getattr(started[-1], "__wrapped__", None) is anomaly_fit._plan
