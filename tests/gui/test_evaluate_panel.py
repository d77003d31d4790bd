"""EvaluatePanel: eval.json shown as metrics/table/heat map, cell click -> gallery, baseline, re-evaluate."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, Qt

from tests.gui.test_runs_panel import make_fake_run
from tlstudio.core.evaluation.evaluate import EvalReport
from tlstudio.core.data.synthetic import make_synthetic_folder
from tlstudio.gui.panels.evaluate_panel import EvaluatePanel
from tlstudio.gui.state import AppState
from tlstudio.gui.widgets import error_dialog


@pytest.fixture
def images(tmp_path):
    folder = make_synthetic_folder(tmp_path / "imgs", per_class=2, size=32)
    return sorted(str(p) for p in folder.rglob("*.png"))


@pytest.fixture(scope="module", autouse=True)
def _torch_imported():
    """Jobs import torch/timm first (serialised with the preload): once, before the timed waits."""
    from tlstudio.gui.heavy import ensure_imported

    ensure_imported()


@pytest.fixture
def panel(qtbot):
    state = AppState()
    p = EvaluatePanel(state)
    qtbot.addWidget(p)
    p.resize(1100, 750)
    p.show()
    return p


def test_empty_state(panel):
    assert not panel.eval_btn.isEnabled()
    assert panel.table.rowCount() == 0
    assert "No run selected" in panel.run_label.text()


def test_shows_eval_json_of_current_run(panel, tmp_path, images):
    run = make_fake_run(tmp_path / "runs", "r1", acc=0.87, images=images)
    panel.state.set_current_run(str(run))
    mv = panel.metrics_view
    assert mv.text("accuracy") == "87.0%"
    assert mv.text("macro_f1") == "0.850"
    assert mv.text("top1_accuracy") == "87.0%" and mv.text("top2_accuracy") == "98.0%"
    assert panel.table.rowCount() == 3
    assert panel.table.item(1, 0).text() == "square"
    assert panel.confusion.matrix[0] == [7, 3, 0]
    assert panel.eval_btn.isEnabled() and panel.folder_btn.isEnabled()
    assert len(panel.gallery_paths()) == 4  # every mistake, most confident first
    assert panel.gallery_paths()[0] == images[0]
    assert panel.state.step_status["evaluate"] == "done"
    assert not panel.baseline_view.isVisible()


def test_click_confusion_cell_lists_its_images(panel, qtbot, tmp_path, images):
    run = make_fake_run(tmp_path / "runs", "r1", images=images)
    panel.state.set_current_run(str(run))
    rect = panel.confusion.cell_rect(0, 1)  # true circle, predicted square: 3 images
    with qtbot.waitSignal(panel.confusion.cell_clicked) as blocker:
        qtbot.mouseClick(panel.confusion, Qt.MouseButton.LeftButton, pos=rect.center())
    assert blocker.args == [0, 1]
    assert panel.gallery_paths() == images[:3]
    assert "circle predicted as square" in panel.gallery_label.text()
    panel.show_cell(2, 0)
    assert panel.gallery_paths() == [images[3]]
    panel.show_cell(1, 1)  # diagonal of a report that kept no correct images: counted, not listed
    assert panel.gallery_paths() == [] and "evaluate again" in panel.gallery_label.text()
    panel.all_btn.click()
    assert len(panel.gallery_paths()) == 4
    assert panel.confusion.cell_at(QPoint(0, 0)) is None


def test_gallery_thumbnails_load(panel, qtbot, tmp_path, images):
    run = make_fake_run(tmp_path / "runs", "r1", images=images)
    panel.state.set_current_run(str(run))
    m = panel.gallery_model
    for r in range(m.rowCount()):
        m.data(m.index(r), Qt.ItemDataRole.DecorationRole)
    qtbot.waitUntil(lambda: m.loader.decoded >= 4, timeout=5000)
    assert "90%" in m.data(m.index(0), Qt.ItemDataRole.DisplayRole)


def test_baseline_gain_and_negative_transfer_warning(panel, tmp_path):
    good = make_fake_run(tmp_path / "runs", "good", acc=0.9,
                         baseline={"transfer_val_acc": 0.9, "scratch_val_acc": 0.6, "gain": 0.3,
                                   "negative_transfer": False})
    panel.state.set_current_run(str(good))
    assert panel.baseline_view.isVisible()
    assert "+30.0 points" in panel.baseline_view.label.text()
    assert "Negative transfer" not in panel.baseline_view.label.text()
    bad = make_fake_run(tmp_path / "runs", "bad", acc=0.5,
                        baseline={"transfer_val_acc": 0.5, "scratch_val_acc": 0.7, "gain": -0.2,
                                  "negative_transfer": True})
    panel.state.set_current_run(str(bad))
    assert "-20.0 points" in panel.baseline_view.label.text()
    assert "Negative transfer" in panel.baseline_view.label.text()


def test_evaluate_another_folder_runs_in_background(panel, qtbot, tmp_path, monkeypatch):
    run = make_fake_run(tmp_path / "runs", "r1")
    panel.state.set_current_run(str(run))
    calls = []

    def fake_evaluate(run_dir, folder=None, progress=None, **kw):
        calls.append((run_dir, folder))
        if progress:
            progress(5, 10)
        return EvalReport(accuracy=0.5, macro_f1=0.4, top_k={1: 0.5}, per_class=[
            {"name": c, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2} for c in ("circle", "square", "triangle")],
            confusion=[[1, 1, 0], [0, 1, 1], [1, 0, 1]], classes=["circle", "square", "triangle"],
            misclassified=[], n=6, source=str(folder))

    monkeypatch.setattr("tlstudio.core.evaluation.evaluate.evaluate", fake_evaluate)
    with qtbot.waitSignal(panel.report_shown, timeout=5000):
        assert panel.evaluate(str(tmp_path / "other"))
    assert calls == [(str(run), str(tmp_path / "other"))]
    assert panel.metrics_view.text("accuracy") == "50.0%"
    assert panel.metrics_view.text("source") == str(tmp_path / "other")
    assert "No misclassified" in panel.gallery_label.text()
    assert panel.eval_btn.isEnabled()


def test_evaluation_failure_shows_dialog(panel, qtbot, tmp_path, monkeypatch):
    captured: list = []
    monkeypatch.setattr(error_dialog, "CAPTURE", captured)
    run = make_fake_run(tmp_path / "runs", "r1")
    panel.state.set_current_run(str(run))

    def boom(run_dir, folder=None, **kw):
        raise ValueError(f"{folder}: class 'dog' is not one of the run's classes")

    monkeypatch.setattr("tlstudio.core.evaluation.evaluate.evaluate", boom)
    with qtbot.waitSignal(panel.job.failed, timeout=5000):
        panel.evaluate("/tmp/x")
    assert captured and "dog" in captured[0][1]
    assert panel.eval_btn.isEnabled()
    assert panel.metrics_view.text("accuracy") not in ("", "-")  # the previous report stays


def test_damaged_eval_json(panel, tmp_path):
    run = make_fake_run(tmp_path / "runs", "r1")
    (run / "eval.json").write_text("{broken", encoding="utf-8")
    panel.state.set_current_run(str(run))
    assert panel.table.rowCount() == 0
    assert "unreadable" in panel.gallery_label.text()
    assert panel.eval_btn.isEnabled()


def test_metrics_view_shows_any_metrics_dictionary(qtbot):
    """One view per task head: explicit input, names with a /task suffix, percentages for rates."""
    from tlstudio.gui.views.metrics_view import MetricsView

    v = MetricsView("Digit head")
    qtbot.addWidget(v)
    v.set_metrics({"accuracy/digit": 0.912, "val_loss": 0.12345, "image_auroc": 0.8, "mae": 3.25}, source="test/",
                  n=1797)
    assert v.box.title() == "Digit head"
    rows = [(v.form.itemAt(r, v.form.ItemRole.LabelRole).widget().text(), v.text(k))
            for r, k in enumerate(["source", "accuracy/digit", "val_loss", "image_auroc", "mae", "n"])]
    assert rows == [("Evaluated on", "test/"), ("Accuracy (digit)", "91.2%"), ("Validation loss", "0.1235"),
                    ("Image AUROC", "0.800"), ("Mean absolute error", "3.250"), ("Images", "1,797")]
    assert "ROC" in v.labels["image_auroc"].toolTip()
    v.set_metrics({})
    assert v.text("accuracy/digit") == "" and v.text("n") == "-"


def test_a_diagonal_cell_lists_the_correct_images_least_sure_first(panel, tmp_path, images):
    """The model is explained on what it gets right too: a diagonal cell lists that class's correct
    images (kept in eval.json since session 7), the closest calls first."""
    import json

    from tlstudio.core.evaluation.metrics import report_from_probs

    classes = ["circle", "square", "triangle"]
    probs = [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.7, 0.2, 0.1]]
    labels = [0, 0, 1, 1, 2, 2]
    rep = report_from_probs(probs, labels, classes, paths=images[:6])
    run = make_fake_run(tmp_path / "runs", "r1", images=images)
    (run / "eval.json").write_text(json.dumps(rep.to_json()), encoding="utf-8")
    panel.state.set_current_run(str(run))
    assert panel.gallery_paths() == [images[5]]  # the one mistake
    panel.show_cell(0, 0)
    assert panel.gallery_paths() == [images[1], images[0]]  # 0.6 before 0.9
    assert "2 images of circle classified correctly, least sure first" in panel.gallery_label.text()
    panel.show_cell(2, 2)
    assert panel.gallery_paths() == [images[4]]
