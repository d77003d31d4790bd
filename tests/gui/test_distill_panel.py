"""DistillPanel: teacher list, student list, settings -> DistillConfig, live curves, trade-off view."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlstudio.core import events as E
from PySide6.QtCore import Qt

from tlstudio.core.runs.folder import ModelSpec, RunInfo, read_run, write_run
from tlstudio.core.tasks.tradeoff import compare, save_tradeoff
from tlstudio.gui.panels.distill_panel import DistillPanel
from tlstudio.gui.runner import JobRunner
from tlstudio.gui.state import AppState

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "distill.png"
CLASSES = ["circle", "square", "triangle"]


def _fake_run(root: Path, name: str, backbone: str, acc: float, classes=CLASSES, kind="train") -> Path:
    d = root / name
    d.mkdir(parents=True)
    spec = ModelSpec(backbone=backbone, num_classes=len(classes), classes=list(classes), image_size=64)
    write_run(d, RunInfo(kind=kind, name=name, status="finished", config={"out_dir": str(d)}, model=spec,
                         best_val_acc=acc))
    (d / "model.safetensors").write_bytes(b"x" * 100)
    return d


def _row(role, d, backbone, acc, params, lat1, lat32):
    return {"role": role, "name": Path(d).name, "run_dir": str(d), "backbone": backbone, "image_size": 64,
            "accuracy": acc, "macro_f1": acc - 0.01, "n_val": 60, "params": params, "file_bytes": params * 4,
            "latency_ms_b1": lat1, "latency_ms_b32": lat32}


def _report(teacher: Path, student: Path, baseline: Path) -> dict:
    rows = [_row("teacher", teacher, "resnet50", 0.95, 23_500_000, 30.0, 12.0),
            _row("student", student, "mobilenetv3_small_100", 0.92, 1_500_000, 4.0, 1.5),
            _row("student_baseline", baseline, "mobilenetv3_small_100", 0.85, 1_500_000, 4.1, 1.5)]
    rep = compare(rows)
    rep.update(device="cpu", threads=2, n_val=60)
    return rep


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    _fake_run(root, "teacher-resnet50", "resnet50", 0.95)
    _fake_run(root, "other-classes", "resnet18", 0.9, classes=["cat", "dog"])
    (root / "unfinished").mkdir()  # a folder that is not a run: not listed
    return root


@pytest.fixture
def panel(qtbot, runs_root, tmp_path):
    state = AppState()
    state.runs_dir = str(runs_root)
    state.data_dir = str(tmp_path / "data")
    state.scan_report = type("R", (), {"classes": CLASSES})()
    state.settings = {"backbone": "resnet50", "frozen_groups": [0, 1], "batch_size": 16, "image_size": 64}
    runner = JobRunner()
    w = DistillPanel(state, runner)
    w._catalog_requested = True  # no background timm import here; set_students is tested directly
    qtbot.addWidget(w)
    w.resize(1400, 820)
    return w


def test_multi_task_and_anomaly_runs_are_not_offered_as_teachers(qtbot, runs_root, tmp_path):
    for name, task in (("mt", "multitask"), ("anom", "anomaly"), ("semi", "semisupervised")):
        d = _fake_run(runs_root, name, "tf_efficientnet_lite0", 0.9)
        info = read_run(d)
        info.task = task
        write_run(d, info)
    state = AppState()
    state.runs_dir = str(runs_root)
    w = DistillPanel(state, JobRunner())
    w._catalog_requested = True
    qtbot.addWidget(w)
    listed = {Path(w.teacher_list.item(i).data(Qt.ItemDataRole.UserRole)).name for i in range(w.teacher_list.count())}
    assert listed == {"teacher-resnet50", "other-classes", "semi"}  # a distilled run teaches too (below)


def test_lists_teacher_runs_and_warns_on_class_mismatch(panel):
    names = [panel.teacher_list.item(i).text() for i in range(panel.teacher_list.count())]
    assert len(names) == 2 and any("resnet50" in n and "95.0%" in n for n in names)
    assert not panel.start_btn.isEnabled()  # no teacher selected yet
    assert "teacher" in panel.start_btn.toolTip().lower()
    other = [r for r in (panel.teacher_list.item(i) for i in range(2)) if "other" in r.text()][0]
    other.setSelected(True)
    assert "other classes" in panel.teacher_note.text() and "cat" in panel.teacher_note.text()
    panel.teacher_list.clearSelection()
    good = [r for r in (panel.teacher_list.item(i) for i in range(2)) if "resnet50" in r.text()][0]
    good.setSelected(True)
    assert "1 teacher(s) selected" in panel.teacher_note.text()
    assert panel.start_btn.isEnabled()


def test_settings_make_a_distill_config(panel, runs_root, tmp_path):
    panel.select_teachers([str(runs_root / "teacher-resnet50")])
    panel.student_combo.setCurrentText("resnet10t")
    panel.t_slider.setValue(6.0)
    panel.a_slider.setValue(0.8)
    panel.unlabelled_edit.setText(str(tmp_path / "unlab"))
    panel.feature_edit.setText("-1:-1")
    panel.baseline_check.setChecked(False)
    cfg = panel.make_config()
    assert cfg.teachers == [str(runs_root / "teacher-resnet50")]
    assert cfg.backbone == "resnet10t" and cfg.temperature == 6.0 and cfg.alpha == pytest.approx(0.8)
    assert cfg.unlabeled_dir == str(tmp_path / "unlab") and cfg.feature_loss == "-1:-1"
    assert cfg.student_baseline is False
    assert cfg.frozen_groups is None  # the Train step's frozen groups belong to the teacher's model
    assert cfg.batch_size == 16 and cfg.image_size == 64  # other Train settings carry over
    assert Path(cfg.out_dir).parent == runs_root
    # explanations of the ranges are visible next to the sliders
    assert "3..10" in panel.t_help.text() and "0.5..0.9" in panel.a_help.text()


def test_student_list_puts_small_recommended_students_first(panel):
    from tlstudio.core.models.backbones import ModelInfo

    def mi(name, params, rec=False, student=False):
        return ModelInfo(name=name, family="x", params=params, input_size=224, pretrained=True, offline=False,
                         recommended=rec, student=student)

    panel.set_students([mi("vit_huge", 600_000_000, rec=True), mi("resnet18", 11_000_000, rec=True, student=True),
                        mi("mobilenetv3_small_100", 2_500_000, student=True), mi("convnext_tiny", 28_000_000)])
    order = [panel.student_combo.itemText(i) for i in range(panel.student_combo.count())]
    assert order == ["resnet18", "mobilenetv3_small_100", "vit_huge", "convnext_tiny"]


def test_a_student_as_large_as_its_teacher_is_said_to_give_no_faster_model(panel, runs_root):
    """The default student (tf_efficientnet_lite0) distilled from a Lite0 teacher (the default
    training backbone) is no faster; the panel says so next to the student, and not otherwise."""
    from tlstudio.core.models.backbones import ModelInfo

    _fake_run(runs_root, "teacher-lite0", "tf_efficientnet_lite0", 0.9)
    panel.refresh_runs()

    def mi(name, params):
        return ModelInfo(name=name, family="x", params=params, input_size=224, pretrained=True, offline=True,
                         recommended=True, student=True)

    panel.set_students([mi("tf_efficientnet_lite0", 3_400_000), mi("mobilenetv3_small_050", 600_000),
                        mi("resnet50", 25_600_000)])
    panel.select_teachers([str(runs_root / "teacher-lite0")])
    panel.student_combo.setCurrentIndex(panel.student_combo.findData("tf_efficientnet_lite0"))
    assert "as large as the teacher tf_efficientnet_lite0" in panel.student_note.text()
    assert "will not be faster" in panel.student_note.text()
    panel.student_combo.setCurrentIndex(panel.student_combo.findData("mobilenetv3_small_050"))
    assert panel.student_note.text() == ""
    panel.student_combo.setCurrentIndex(panel.student_combo.findData("resnet50"))
    assert "larger than the teacher" in panel.student_note.text()
    panel.select_teachers([str(runs_root / "other-classes")])  # resnet18: not in this catalogue, no note
    assert panel.student_note.text() == ""


def test_default_student_works_offline_and_the_list_marks_offline_weights(qtbot, runs_root, tmp_path):
    """Issue 17 item 13: the default student (mobilenetv3_small_100) had no offline weights."""
    from tlstudio.core.models.offline_weights import offline_wheel_names
    from tlstudio.gui.panels.distill_inputs import OFFLINE_MARK

    state = AppState()
    state.runs_dir = str(runs_root)
    w = DistillPanel(state, JobRunner())
    qtbot.addWidget(w)
    assert w.student_name() in offline_wheel_names()  # before the catalogue arrives
    with qtbot.waitSignal(w.students_loaded, timeout=20_000):
        w.show()  # the catalogue loads in a worker; its result arrives on the UI thread
    qtbot.waitUntil(lambda: w.student_combo.count() > 100)
    assert w.student_name() in offline_wheel_names()
    texts = [w.student_combo.itemText(i) for i in range(w.student_combo.count())]
    assert texts[0].endswith(OFFLINE_MARK)  # small students with local weights come first
    assert "tf_efficientnet_lite0" + OFFLINE_MARK in texts and "mobilenetv3_small_100" in texts
    w.state.data_dir = str(tmp_path)
    w.select_teachers([str(runs_root / "teacher-resnet50")])
    assert w.make_config().backbone == "tf_efficientnet_lite0"
    w.student_combo.setCurrentIndex(texts.index("mobilenetv3_small_100"))
    assert w.make_config().backbone == "mobilenetv3_small_100"


def test_fake_run_through_the_runner_shows_curves_table_and_scatter(panel, qtbot, runs_root, monkeypatch):
    teacher = runs_root / "teacher-resnet50"
    student = runs_root / "20260101-distill-mobilenetv3_small_100"
    baseline = student / "student_baseline"
    report = _report(teacher, student, baseline)

    def fake_distill(config, stop=None, pause=None):
        assert config.teachers == [str(teacher)]
        yield E.RunStarted(run_dir=str(student), backbone=config.backbone, device="cpu", precision="fp32",
                           classes=tuple(CLASSES), n_train=48, n_val=12, epochs=3, batches_per_epoch=4,
                           trainable_params=1_500_000, total_params=1_500_000, phase="distill")
        yield E.Log("Teacher outputs computed once for 48 images and cached")
        step = 0
        for epoch in range(3):
            for b in range(4):
                step += 1
                soft, hard = 2.0 / step, 1.0 / (1 + 0.3 * step)
                yield E.BatchEnd(epoch=epoch, batch=b, batches=4, step=step, loss=soft + hard, lr=1e-3,
                                 images_per_s=100.0, parts={"soft": soft, "hard": hard}, phase="distill")
            yield E.EpochEnd(epoch=epoch, epochs=3, train_loss=1.0, metrics={"val_loss": 1.0, "val_acc": 0.6 + 0.1 * epoch,
                             "val_macro_f1": 0.5}, lr=1e-3, seconds=1.0, best=True, trainable_params=1, phase="distill")
        yield E.RunStarted(run_dir=str(baseline), backbone=config.backbone, device="cpu", precision="fp32",
                           classes=tuple(CLASSES), n_train=48, n_val=12, epochs=3, batches_per_epoch=4,
                           trainable_params=1, total_params=1, phase="student_baseline")
        for epoch in range(3):
            for b in range(4):
                yield E.BatchEnd(epoch=epoch, batch=b, batches=4, step=epoch * 4 + b + 1, loss=1.5 - 0.1 * epoch,
                                 lr=1e-3, images_per_s=100.0, parts={}, phase="student_baseline")
            yield E.EpochEnd(epoch=epoch, epochs=3, train_loss=1.0, metrics={"val_loss": 1.0, "val_acc": 0.5 + 0.1 * epoch,
                             "val_macro_f1": 0.5}, lr=1e-3, seconds=1.0, best=True, trainable_params=1,
                             phase="student_baseline")
        student.mkdir(parents=True, exist_ok=True)
        save_tradeoff(student, report)
        return RunInfo(kind="distill", status="finished", config={"out_dir": str(student)},
                       model=ModelSpec(backbone=config.backbone, num_classes=3, classes=CLASSES, image_size=64),
                       extra={"tradeoff": report})

    monkeypatch.setattr("tlstudio.core.tasks.distill.distill", fake_distill)
    panel.select_teachers([str(teacher)])
    panel.student_combo.setCurrentText("mobilenetv3_small_100")
    with qtbot.waitSignal(panel.runner.finished, timeout=60_000):
        assert panel.start()
    assert panel.state.step_status["distill"] == "done"
    panel.flush()
    # soft and hard components are separate curves; the no-teacher run has its own dashed loss
    assert panel.curve_points("soft") == 12 and panel.curve_points("hard") == 12
    assert panel.curve_points("feature") == 0
    assert panel.curve_points("baseline_loss") == 12
    assert panel.curve_points("val_acc") == 3 and panel.curve_points("baseline_acc") == 3
    soft_y = panel._items["soft"].yData
    assert soft_y[-1] < soft_y[0]
    # trade-off table, one row per model, the student's retained accuracy and speed-up
    assert panel.table.rowCount() == 3
    cells = {panel.table.item(1, c).text() for c in range(panel.table.columnCount())}
    assert "96.8%" in cells and "7.50x" in cells
    assert "96.8% of the teacher's accuracy" in panel.summary_label.text()
    # scatter: every measured model, from the run folders too (no duplicates)
    assert len(panel.scatter_points) == 3
    assert {p["role"] for p in panel.scatter_points} == {"teacher", "student", "student_baseline"}
    assert "Teacher outputs computed once" in panel.log_view.toPlainText()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    panel.show()
    qtbot.waitExposed(panel)
    assert panel.grab().save(str(SCREENSHOT))


def test_events_of_other_panels_are_ignored(panel):
    panel.runner.owner = object()
    panel.runner.event.emit(E.BatchEnd(epoch=0, batch=0, batches=1, step=1, loss=1.0, lr=1e-3, images_per_s=1.0,
                                       parts={"soft": 1.0, "hard": 0.5}))
    panel.flush()
    assert panel.curve_points("soft") == 0 and panel.events_seen == 0


def test_failed_run_shows_the_message(panel, qtbot, runs_root, monkeypatch):
    from tlstudio.core.tasks.distill import DistillError

    def bad(config, stop=None, pause=None):
        raise DistillError(f"teacher run {config.teachers[0]}: its classes do not match")
        yield  # pragma: no cover

    monkeypatch.setattr("tlstudio.core.tasks.distill.distill", bad)
    panel.select_teachers([str(runs_root / "teacher-resnet50")])
    with qtbot.waitSignal(panel.runner.failed, timeout=60_000):
        panel.start()
    assert "classes do not match" in panel.hint.text()
    assert panel.state.step_status["distill"] == "attention"
    assert json.loads(json.dumps(panel.state.step_status))  # state stays serialisable


def test_selecting_a_distill_run_shows_its_saved_report(panel, runs_root):
    teacher = runs_root / "teacher-resnet50"
    student = _fake_run(runs_root, "kd-run", "mobilenetv3_small_100", 0.92, kind="distill")
    save_tradeoff(student, _report(teacher, student, student / "student_baseline"))
    assert panel.table.rowCount() == 0
    panel.state.set_current_run(str(student))
    assert panel.table.rowCount() == 3
    assert "mobilenetv3_small_100" in panel.summary_label.text()
    panel.refresh_runs()  # the distilled run is a teacher candidate too, and its report feeds the scatter
    assert any("[distilled]" in panel.teacher_list.item(i).text() for i in range(panel.teacher_list.count()))
    assert len(panel.scatter_points) == 3


def test_continue_resumes_a_stopped_distillation(panel, qtbot, runs_root, monkeypatch):
    stopped = _fake_run(runs_root, "kd-stopped", "mobilenetv3_small_100", 0.5, kind="distill")
    assert not panel.continue_btn.isEnabled()
    panel.state.set_current_run(str(stopped))
    panel._update_buttons()
    assert panel.continue_btn.isEnabled() and panel.resumable_run() == str(stopped)
    calls = []

    def fake_resume(run_dir, stop=None, pause=None):
        calls.append(run_dir)
        yield E.Log("resumed")
        return RunInfo(kind="distill", status="stopped", config={}, model=ModelSpec(
            backbone="b", num_classes=3, classes=CLASSES, image_size=64))

    monkeypatch.setattr("tlstudio.core.tasks.distill.resume_distill", fake_resume)
    with qtbot.waitSignal(panel.runner.finished, timeout=60_000):
        assert panel.continue_btn.isEnabled()
        panel.continue_btn.click()
    assert calls == [str(stopped)]
    assert "without a trade-off report" in panel.status_label.text()
    assert "resumed" in panel.log_view.toPlainText()
