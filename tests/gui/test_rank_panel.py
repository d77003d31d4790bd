"""RankPanel: candidates listed (offline first, unavailable with the reason), ranking in the
background with progress, the ranked table, "Train the top one" sets AppState and moves on."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from tlstudio.gui.panels.rank_panel import RankPanel
from tlstudio.gui.state import AppState


@pytest.fixture(scope="module", autouse=True)
def _torch_imported():
    from tlstudio.gui.heavy import ensure_imported

    ensure_imported()


@pytest.fixture
def panel(qtbot, tmp_path):
    state = AppState()
    state.runs_dir = str(tmp_path / "runs")
    p = RankPanel(state)
    qtbot.addWidget(p)
    p.resize(1100, 600)
    p.show()
    qtbot.waitUntil(lambda: p.tree.topLevelItemCount() > 0, timeout=60_000)
    return p


def test_candidates_offline_first_and_unavailable_marked(panel):
    tops = [panel.tree.topLevelItem(i).text(0) for i in range(panel.tree.topLevelItemCount())]
    assert tops[0].startswith("Offline")
    offline = panel.tree.topLevelItem(0)
    names = [offline.child(j).text(0) for j in range(offline.childCount())]
    assert names[0] == "tf_efficientnet_lite0"
    assert all(offline.child(j).text(1) == "offline" for j in range(offline.childCount()))
    assert all(offline.child(j).checkState(0) == Qt.CheckState.Checked for j in range(offline.childCount()))
    dl = next(panel.tree.topLevelItem(i) for i in range(len(tops)) if tops[i] == "Need a download")
    assert dl.childCount() > 0 and dl.child(0).text(1) == "unavailable"  # tests are offline
    assert "not downloaded" in dl.child(0).toolTip(1)
    assert dl.child(0).checkState(0) == Qt.CheckState.Unchecked
    assert not panel.rank_btn.isEnabled()  # no data yet
    assert "Data step" in panel.status.text()


def test_rank_then_train_the_top_one(panel, qtbot, shapes3):
    panel.state.set_dataset(str(shapes3), None)
    for name in ("random:test_resnet", "random:test_efficientnet", "no_such_net"):
        panel.add_edit.setText(name)
        panel.add_btn.click()
    assert "unknown backbone" in panel.status.text()
    panel.set_checked(["random:test_resnet", "random:test_efficientnet", "no_such_net"])
    assert panel.rank_btn.isEnabled()
    seen = []
    panel.runner.event.connect(lambda e: seen.append(e))
    listed = []
    panel.state.runs_changed.connect(lambda: listed.append(True))
    with qtbot.waitSignal(panel.ranked, timeout=240_000) as sig:
        panel.rank_btn.click()
        assert panel.progress.isVisible() and panel.stop_btn.isEnabled() and not panel.rank_btn.isEnabled()
    result = sig.args[0]
    assert any(getattr(e, "task", "") == "rank" for e in seen)
    assert panel.table.rowCount() == 3
    assert [panel.table.item(i, 0).text() for i in range(3)] == ["1", "2", "-"]
    assert "not ranked" in panel.table.item(2, 7).text()
    # the table follows the ranking: LogME orders it
    ranked = result.ranked()
    assert [panel.table.item(i, 2).text() for i in range(2)] == [f"{r.logme:.3f}" for r in ranked[:2]]
    assert ranked[0].logme >= ranked[1].logme
    assert result.top().candidate["label"] in panel.summary.text()
    assert panel.state.step_status["rank"] == "done"
    assert listed  # the Runs step lists the ranking's folder without a manual refresh
    assert panel.train_top_btn.isEnabled()
    panel.train_top_btn.click()
    top = result.top()
    assert panel.state.settings["backbone"] == top.candidate["backbone"]
    assert panel.state.settings["init"] == "scratch" and panel.state.settings["image_size"] == top.input_size
    panel.table.selectRow(1)
    panel.train_sel_btn.click()
    assert panel.state.settings["backbone"] == result.ranked()[1].candidate["backbone"]


def test_long_run_names_leave_the_scores_and_note_in_view(panel):
    """An earlier run's label is long; the candidate column is capped (the whole name in the
    tooltip) so every score and the note stay visible without scrolling."""
    from tlstudio.core.tasks.ranking.results import RankResult, RankRow

    long = "run 20261201-043110-tf_efficientnet_lite0-" + "x" * 80 + " (tf_efficientnet_lite0)"
    rows = [RankRow(candidate={"label": long, "spec": "run:/r", "backbone": "tf_efficientnet_lite0", "init": "pretrained"},
                    rank=1, logme=1.2, probe_acc=1.0, knn_acc=1.0, latency_ms=14.0, params=3_400_000,
                    explanation="Best fit for your data."),
            RankRow(candidate={"label": "tf_efficientnet_lite0", "spec": "tf_efficientnet_lite0",
                               "backbone": "tf_efficientnet_lite0", "init": "pretrained"},
                    rank=2, logme=0.9, probe_acc=0.99, probe_std=0.02, knn_acc=1.0, latency_ms=13.9, params=3_400_000,
                    explanation="Second.")]
    panel.show_result(RankResult(rows=rows, classes=["a", "b"], n_images=120, data_dir="", out_dir="",
                                 summary="Start from the run.", seconds=8.0))
    view = panel.table.viewport().width()
    assert panel.table.columnWidth(1) <= max(160, view // 3)
    note = panel.table.columnViewportPosition(7)
    assert 0 <= note < view - 40  # the note column starts inside the visible table
    assert panel.table.horizontalScrollBar().maximum() == 0 or panel.table.horizontalScrollBar().isHidden()
    assert long in panel.table.item(0, 1).toolTip()
