"""Unlabelled-images zone, Adapt panel and review queue: state in, widgets and files out."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from tlstudio.core.data.synthetic import make_synthetic_folder
from tlstudio.gui.state import AppState


@pytest.fixture
def folders(tmp_path):
    lab = make_synthetic_folder(tmp_path / "project" / "labelled", per_class=3, size=32, seed=0)
    unl = tmp_path / "project" / "unlabelled"
    unl.mkdir(parents=True)
    src = make_synthetic_folder(tmp_path / "raw", per_class=2, size=32, seed=1)
    for i, p in enumerate(sorted(src.rglob("*.png"))):
        (unl / f"u{i:02d}.png").write_bytes(p.read_bytes())
    return lab, unl


def test_unlabelled_zone_sets_the_task_kind_and_settings(qtbot, folders, tmp_path):
    from tlstudio.gui.panels.unlabelled_zone import UnlabelledZone

    lab, unl = folders
    state = AppState()
    state.set_task_settings({"tasks": ["x"]})  # another widget's setting survives
    zone = UnlabelledZone(state)
    qtbot.addWidget(zone)
    assert not zone.same.isVisibleTo(zone)
    # a real drop of the folder
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(unl))])
    ev = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                    Qt.KeyboardModifier.NoModifier)
    zone.drop.dropEvent(ev)
    assert zone.folder == str(unl) and "6 images" in zone.drop.label.text()
    assert state.task_kind == "semisupervised"
    assert state.task_settings == {"tasks": ["x"], "unlabeled_dir": str(unl)}
    state.set_task_settings({"pseudo_threshold": 0.7})  # the Adapt step's semi-supervised setting
    zone.other.setChecked(True)
    assert state.task_kind == "adaptation"
    assert state.task_settings == {"tasks": ["x"], "target_dir": str(unl)}  # no SemiConfig key left
    assert zone.check_box.isVisibleTo(zone)
    zone.set_check_dir(str(lab))
    assert state.task_settings["check_dir"] == str(lab)
    # the background gap measurement's answer: a large gap is shown and keeps "new domain"
    zone._show_gap({"folder": str(unl), "score": 0.9, "sentence": "These images look different from yours."})
    assert zone.gap_bar.value() == 90 and "look different" in zone.gap_text.text()
    zone._show_gap({"folder": "elsewhere", "score": 0.1, "sentence": "stale"})  # a late answer is ignored
    assert "stale" not in zone.gap_text.text()
    zone.clear()
    assert state.task_kind == "classification" and state.task_settings == {"tasks": ["x"]}


def test_domain_gap_is_measured_in_the_background(qtbot, folders, monkeypatch):
    from tlstudio.gui.panels import unlabelled_zone as uz

    lab, unl = folders
    calls = []

    def fake_job(src, folder, backbone, stop=None):
        calls.append((len(src), folder, stop))
        return {"score": 0.2, "sentence": "These images look like your training images."}

    monkeypatch.setattr(uz, "gap_job", fake_job)
    from tlstudio.core.data.dataset import scan

    state = AppState()
    state.set_dataset(str(lab), scan(lab))
    zone = uz.UnlabelledZone(state)
    qtbot.addWidget(zone)
    zone.other.setChecked(True)
    with qtbot.waitSignal(zone.gap_ready, timeout=10_000):
        zone.set_folder(str(unl))
    assert [c[:2] for c in calls] == [(9, str(unl))]
    stop = calls[0][2]
    assert stop is not None and not stop.is_set()
    assert zone.gap_bar.value() == 20 and zone.same.isChecked()  # small gap: suggests "same kind"
    assert state.task_kind == "semisupervised"
    zone.clear()  # a measurement still running would be told to stop
    assert stop.is_set()


def _queue(unl: Path):
    import torch

    from tlstudio.core.tasks.semisupervised.review import ReviewQueue

    paths = sorted(str(p) for p in unl.glob("*.png"))
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(len(paths), 3, generator=g) * 3, 1)
    return ReviewQueue.from_probs(["circle", "square", "triangle"], paths, probs)


def test_review_queue_keys_counts_and_csv(qtbot, folders, tmp_path):
    from tlstudio.core.data.dataset import scan
    from tlstudio.gui.panels.review_queue import ReviewQueuePanel

    lab, unl = folders
    before = {p: p.read_bytes() for p in unl.glob("*.png")}
    state = AppState()
    state.data_dir = str(lab)
    state.set_task_settings({"unlabeled_dir": str(unl)})
    panel = ReviewQueuePanel(state)
    qtbot.addWidget(panel)
    q = _queue(unl)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    panel.set_queue(q, str(run_dir))
    confs = [it.confidence for it in q.items]
    assert confs == sorted(confs, reverse=True)  # most confident first
    assert panel.current_row() == 0
    panel.show()
    qtbot.keyClick(panel.view, Qt.Key.Key_A)  # accept item 0, move to the next pending
    assert q.items[0].decision == "accepted" and panel.current_row() == 1
    qtbot.keyClick(panel.view, Qt.Key.Key_R)
    assert q.items[1].decision == "rejected"
    qtbot.keyClick(panel.view, Qt.Key.Key_3)  # it is class 3 (triangle)
    assert q.items[2].label == 2 and q.items[2].decision in ("relabelled", "accepted")
    assert "1 rejected" in panel.counts.text() and "3 to review" in panel.counts.text()
    assert "Accepted" not in panel.model.data(panel.model.index(0)) and "\u2713" in panel.model.data(panel.model.index(0))
    out = panel.save_csv()
    assert out == tmp_path / "project" / "tlstudio-reviewed-labels.csv"
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "label"] and len(rows) == 1 + 9 + 2  # labelled 9 + accepted + relabelled
    rep = scan(out)  # the data scan reads it as labelled data
    assert len(rep.samples) == 11 and set(rep.classes) <= {"circle", "square", "triangle"}
    assert {p: p.read_bytes() for p in unl.glob("*.png")} == before  # the user's files are untouched
    assert len(list(unl.iterdir())) == 6
    assert (run_dir / "review.json").is_file()  # decisions kept with the run
    # bulk accept: the button says how many pending proposals it would take, and is off at none
    pending = [it.confidence for it in q.items if it.decision == "pending"]
    panel.bulk.setValue(0.5)
    n = sum(c >= 0.5 for c in pending)
    assert panel.bulk_btn.text() == f"Accept the {n} at or above" and panel.bulk_btn.isEnabled() == (n > 0)
    assert n > 0
    panel.bulk.setValue(1.0)  # no proposal is 100% sure
    assert panel.bulk_btn.text() == "Accept the 0 at or above" and not panel.bulk_btn.isEnabled()


def test_adapt_panel_settings_curves_and_result(qtbot, tmp_path):
    from tlstudio.core.events import EpochEnd
    from tlstudio.core.runs.folder import ModelSpec, RunInfo, write_run
    from tlstudio.gui.panels.adapt_panel import AdaptPanel

    state = AppState()
    state.set_task_kind("adaptation")
    state.set_task_settings({"target_dir": "/t", "tasks": ["x"]})
    panel = AdaptPanel(state)
    qtbot.addWidget(panel)
    assert panel.adapt_box.isVisibleTo(panel) and not panel.semi_box.isVisibleTo(panel)
    panel.method.setCurrentIndex(panel.method.findData("dann"))
    assert state.task_settings["adapt"] == "dann" and state.task_settings["target_dir"] == "/t"
    assert "dann_weight" in state.task_settings and state.task_settings["tasks"] == ["x"]
    from tlstudio.core.tasks.adaptation.config import AdaptConfig

    cfg = AdaptConfig(data_dir="/d", **{k: v for k, v in state.task_settings.items() if k != "tasks"})
    assert cfg.adapt == "dann" and cfg.target_dir == "/t"  # what the panel wrote is a valid config
    for e in range(3):
        panel.on_event(EpochEnd(epoch=e, epochs=3, train_loss=1.0, metrics={"val_acc": 0.5 + 0.1 * e},
                                lr=1e-3, seconds=1.0, best=False, trainable_params=10,
                                parts={"source_loss": 1.0 - 0.1 * e, "target_loss": 0.5}, phase="adapt"))
    xs, ys = panel.curves["source_loss"].getData()
    assert list(xs) == [1, 2, 3] and list(ys) == pytest.approx([1.0, 0.9, 0.8])
    assert list(panel.curves["val_acc"].getData()[1]) == pytest.approx([0.5, 0.6, 0.7])
    # a trainable body (DANN in the engine): per-batch losses, the domain loss is the target side
    from tlstudio.core.events import BatchEnd, Finished

    panel.clear_curves()
    panel.on_event(BatchEnd(epoch=0, batch=1, batches=4, step=2, loss=1.2, lr=1e-3, images_per_s=10.0,
                            parts={"source_loss": 0.9, "domain_loss": 0.69, "grl": 0.1}, phase="adapt"))
    assert list(panel.curves["target_loss"].getData()[0]) == [0.5]
    assert list(panel.curves["target_loss"].getData()[1]) == pytest.approx([0.69])
    panel.on_event(BatchEnd(epoch=0, batch=1, batches=4, step=2, loss=1.2, lr=1e-3, images_per_s=10.0,
                            parts={"x": 1.0}, phase="source_only"))  # the baseline's batches are not plotted
    assert len(panel.curves["source_loss"].getData()[0]) == 1
    run = tmp_path / "r"
    run.mkdir()
    rep = {"method": "mcc", "domain_gap": {"score": 0.95, "sentence": "These images look different."},
           "unadapted": {"source_val_acc": 0.98, "target_info_max": 0.1, "check_acc": 0.4, "check_n": 20},
           "adapted": {"source_val_acc": 0.95, "target_info_max": 0.8, "check_acc": 0.75, "check_n": 20},
           "selection": {"selected": "adapted", "reason": "On your 20 labelled check images ..."}}
    write_run(run, RunInfo(task="adaptation", config={}, model=ModelSpec(backbone="b", num_classes=2,
                                                                         classes=["a", "b"], image_size=32),
                           extra={"adaptation": rep}))
    sub = tmp_path / "sub"  # the source-only sub-run finishing does not become the current run
    sub.mkdir()
    write_run(sub, RunInfo(config={}, model=ModelSpec(backbone="b", num_classes=2, classes=["a", "b"], image_size=32)))
    panel.on_event(Finished(run_dir=str(sub), status="finished", best_epoch=0, best_val_acc=1.0))
    assert state.current_run != str(sub)
    panel.on_event(Finished(run_dir=str(run), status="finished", best_epoch=0, best_val_acc=1.0))
    assert state.current_run == str(run)
    assert panel.table.rowCount() == 2 and panel.table.item(1, 3).text() == "75.0% of 20"
    assert "Kept: the adapted model" in panel.result_text.text()
    state.set_task_kind("semisupervised")
    assert panel.semi_box.isVisibleTo(panel) and not panel.adapt_box.isVisibleTo(panel)
    panel.threshold.setValue(0.9)
    assert state.task_settings["pseudo_threshold"] == 0.9
    assert state.task_settings["class_thresholds"] is True  # per-class bars by default
    panel.class_bars.setChecked(False)
    assert state.task_settings["class_thresholds"] is False
    panel.semi_method.setCurrentIndex(panel.semi_method.findData("fixmatch"))
    assert not panel.class_bars.isEnabled()  # FixMatch keeps its own fixed bar


def test_semi_result_shows_the_lowered_bars_of_a_round(qtbot):
    from tlstudio.gui.panels.adapt_panel import AdaptPanel

    state = AppState()
    state.set_task_kind("semisupervised")
    panel = AdaptPanel(state)
    qtbot.addWidget(panel)
    panel._show_semi({"labelled_only": {"val_acc": 0.6}, "semi": {"val_acc": 0.9}, "unlabelled_images": 30,
                      "method": "pseudolabel", "pseudo_labels": [
                          {"round": 1, "selected": 10, "per_class": [5, 5, 0], "threshold": 0.5,
                           "class_thresholds": [0.5, 0.5, 0.5]},
                          {"round": 2, "selected": 20, "per_class": [8, 7, 5], "threshold": 0.5,
                           "class_thresholds": [0.5, 0.1667, 0.0]},
                          {"round": 3, "selected": 9, "per_class": [3, 3, 3], "threshold": 0.7}]})
    assert panel.table.horizontalHeaderItem(3).text() == "Confidence bar"
    assert [panel.table.item(r, 3).text() for r in range(3)] == ["0.50", "0.50, 0.17, 0.00", "0.70"]
    assert "+30.0 points" in panel.result_text.text()
    assert panel.table.item(1, 2).toolTip() == ""  # no class names given
    panel._show_semi({"pseudo_labels": [{"round": 1, "selected": 20, "per_class": [8, 7, 5], "threshold": 0.5,
                                         "class_thresholds": [0.5, 0.1667, 0.0]}]}, ["cat", "dog", "fox"])
    assert panel.table.item(0, 2).toolTip().splitlines() == [
        "cat: 8 pseudo-labels, bar 0.50", "dog: 7 pseudo-labels, bar 0.17", "fox: 5 pseudo-labels, bar 0.00"]
    assert panel.table.horizontalHeaderItem(2).toolTip() == "In class order: cat, dog, fox"
