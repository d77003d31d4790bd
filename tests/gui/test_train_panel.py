"""TrainPanel: settings <-> state, run control, events -> curves/progress/warnings (fake engine)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from tlstudio.core import events as ev
from tlstudio.core.config import TrainConfig
from tlstudio.gui.panels.train_panel import TrainPanel
from tlstudio.gui.runner import JobRunner
from tlstudio.gui.state import AppState
from tlstudio.gui.widgets import error_dialog
from tlstudio.gui.widgets.curves import CurvesWidget, Series


@pytest.fixture(scope="module", autouse=True)
def _torch_imported():
    """Jobs import torch/timm before running (serialised with the preload); do it once up front
    so the first test's signal timeouts measure the panel, not a cold import on a busy machine."""
    from tlstudio.gui.heavy import ensure_imported

    ensure_imported()


@pytest.fixture
def panel(qtbot, tmp_path):
    state = AppState()
    runner = JobRunner()
    p = TrainPanel(state, runner)
    qtbot.addWidget(p)
    p.resize(1200, 800)
    yield p
    runner.stop()
    runner.wait(5000)


def fake_fit_factory(run_dir: str, n_batches: int = 50, epochs: int = 1, delay: float = 0.0, fail: bool = False):
    def fake_fit(config, stop=None, pause=None):
        yield ev.RunStarted(run_dir=run_dir, backbone=config.backbone, device="cpu", precision="fp32",
                            classes=("a", "b", "c"), n_train=400, n_val=100, epochs=epochs,
                            batches_per_epoch=n_batches, trainable_params=1234, total_params=56789)
        yield ev.Warn("2 images could not be read", path="/data/a/bad.jpg")
        step = 0
        for e in range(epochs):
            for b in range(n_batches):
                if stop is not None and stop.is_set():
                    yield ev.Finished(run_dir, "stopped", None, None)
                    return SimpleNamespace(status="stopped", best_val_acc=None, config={"out_dir": run_dir})
                if fail and b == 10:
                    raise RuntimeError("boom in the engine")
                if delay:
                    time.sleep(delay)
                yield ev.BatchEnd(epoch=e, batch=b, batches=n_batches, step=step, loss=2.0 / (1 + step),
                                  lr=1e-3, images_per_s=321.0)
                step += 1
            yield ev.EpochEnd(epoch=e, epochs=epochs, train_loss=0.5, metrics={"val_loss": 0.6, "val_acc": 0.8 + 0.01 * e,
                              "val_macro_f1": 0.79}, lr=1e-3, seconds=1.5, best=True, trainable_params=1234)
        yield ev.Finished(run_dir, "finished", epochs - 1, 0.8)
        return SimpleNamespace(status="finished", best_val_acc=0.8, config={"out_dir": run_dir})

    return fake_fit


def test_defaults_come_from_train_config(panel):
    d = TrainConfig.model_fields
    assert panel.epochs.value() == d["epochs"].default
    assert panel.batch_size.value() == d["batch_size"].default
    assert panel.lr.text() == ""  # blank = advised
    assert panel.augment.currentText() == d["augment"].default
    assert panel.optimizer.currentText() == d["optimizer"].default
    assert panel.early_stop_patience.value() == d["early_stop_patience"].default
    assert panel.fit_head.isChecked() is d["fit_head"].default is True
    assert panel.advanced is not None  # advanced settings are folded away
    assert all(w.toolTip() for w in panel._fields.values())


def test_widgets_write_state_and_state_updates_widgets(panel):
    panel.epochs.setValue(3)
    panel.augment.setCurrentText("strong")
    panel.baseline.setChecked(True)
    panel.lr.setText("3e-4")
    panel.lr.editingFinished.emit()
    panel.early_stop_patience.setValue(0)
    panel.fit_head.setChecked(False)
    s = panel.state.settings
    assert s["epochs"] == 3 and s["augment"] == "strong" and s["baseline"] is True
    assert s["lr"] == pytest.approx(3e-4)
    assert s["early_stop_patience"] is None  # 0 shows "off"
    panel.state.update_settings({"batch_size": 8, "optimizer": "sgd", "lr": None})
    assert panel.batch_size.value() == 8 and panel.optimizer.currentText() == "sgd"
    assert panel.lr.text() == ""
    panel.state.data_dir = "/x"
    cfg = panel.make_config()
    assert cfg.epochs == 3 and cfg.batch_size == 8 and cfg.lr is None and cfg.leave_one_core
    assert cfg.fit_head is False


def test_start_without_data_explains(panel):
    assert not panel.start_btn.isEnabled()
    assert panel.start() is False
    assert "data folder" in panel.hint.text()
    assert not panel.runner.running


def test_events_reach_curves_progress_and_warnings(panel, qtbot, monkeypatch, tmp_path):
    monkeypatch.setattr("tlstudio.core.training.engine.fit", fake_fit_factory(str(tmp_path / "run1")))
    panel.state.set_dataset(str(tmp_path), None)
    assert panel.start_btn.isEnabled()
    training = []
    panel.state.training_changed.connect(training.append)
    with qtbot.waitSignal(panel.run_finished, timeout=10_000) as blocker:
        assert panel.start()
    assert blocker.args == [str(tmp_path / "run1"), "finished"]
    assert panel.curves.points("loss") == 50
    assert panel.curves.points("smooth") == 50
    assert panel.curves.points("lr") == 50
    assert panel.curves.points("val_acc") == 1 and panel.curves.points("val_loss") == 1
    assert panel.batch_bar.value() == 50 and panel.batch_bar.maximum() == 50
    assert panel.epoch_bar.value() == 1
    assert "cpu" in panel.device_label.text() and "fp32" in panel.device_label.text()
    assert "321 img/s" in panel.speed_label.text()
    assert panel.warnings.count() == 1 and "bad.jpg" in panel.warnings.item(0).text()
    assert "80.0%" in panel.metrics_label.text()
    assert panel.state.current_run == str(tmp_path / "run1")
    assert training == [True, False]
    assert panel.notifications and "finished" in panel.notifications[-1]
    assert panel.state.step_status["train"] == "done"
    assert panel.start_btn.isEnabled() and not panel.stop_btn.isEnabled()


def test_stop_and_pause_buttons(panel, qtbot, monkeypatch, tmp_path):
    monkeypatch.setattr("tlstudio.core.training.engine.fit",
                        fake_fit_factory(str(tmp_path / "r"), n_batches=100_000, delay=0.002))
    panel.state.set_dataset(str(tmp_path), None)
    panel.start()
    qtbot.waitUntil(lambda: panel.batch_bar.value() >= 3, timeout=5000)
    assert panel.stop_btn.isEnabled() and panel.pause_btn.isEnabled()
    assert not panel.start_btn.isEnabled() and not panel.epochs.isEnabled()
    panel.pause_btn.click()
    assert panel.pause_btn.text() == "Resume" and panel.runner.paused
    qtbot.wait(100)
    v = panel.batch_bar.value()
    qtbot.wait(200)
    assert panel.batch_bar.value() <= v + 1
    panel.pause_btn.click()
    assert panel.pause_btn.text() == "Pause"
    qtbot.waitUntil(lambda: panel.batch_bar.value() > v + 2, timeout=5000)
    with qtbot.waitSignal(panel.run_finished, timeout=5000) as blocker:
        panel.stop_btn.click()
    assert blocker.args[1] == "stopped"
    assert "stopped" in panel.status_label.text().lower()


def test_failure_is_shown_and_panel_stays_usable(panel, qtbot, monkeypatch, tmp_path):
    captured: list = []
    monkeypatch.setattr(error_dialog, "CAPTURE", captured)
    monkeypatch.setattr("tlstudio.core.training.engine.fit", fake_fit_factory(str(tmp_path / "r"), fail=True))
    panel.state.set_dataset(str(tmp_path), None)
    with qtbot.waitSignal(panel.runner.failed, timeout=5000):
        panel.start()
    assert captured and "boom in the engine" in captured[0][1]
    assert "Traceback" in captured[0][2]
    assert "boom" in panel.status_label.text()
    assert panel.start_btn.isEnabled()
    monkeypatch.setattr("tlstudio.core.training.engine.fit", fake_fit_factory(str(tmp_path / "r2"), n_batches=5))
    with qtbot.waitSignal(panel.run_finished, timeout=5000):
        panel.start()
    assert panel.curves.points("loss") == 5  # a fresh run starts fresh curves


def test_events_of_other_jobs_are_ignored(panel, qtbot):
    """The runner is shared (distill uses it too): the train panel only shows its own job."""
    def other(stop, pause):
        for i in range(5):
            yield ev.BatchEnd(epoch=0, batch=i, batches=5, step=i, loss=1.0, lr=1e-3, images_per_s=1.0)
        return None

    with qtbot.waitSignal(panel.runner.finished, timeout=5000):
        panel.runner.start(other, owner="distill")
    assert panel.curves.points("loss") == 0 and panel.events_seen == 0


def test_curves_100k_points_stay_cheap(qtbot):
    w = CurvesWidget()
    qtbot.addWidget(w)
    t0 = time.process_time()  # CPU time of this process: a busy machine's other programs do not count
    for i in range(100_000):
        w.add_batch(i // 1000, i % 1000, 1000, float(np.exp(-i / 30_000)), 1e-3)
    feed_s = time.process_time() - t0
    assert w.redraws == 0  # nothing drawn synchronously while feeding
    t0 = time.process_time()
    w.flush()
    w.resize(900, 500)
    w.grab()
    draw_s = time.process_time() - t0
    assert w.points("loss") == 100_000
    print(f"feed 100k: {feed_s:.2f} s, draw: {draw_s:.3f} s")
    assert feed_s < 10 and draw_s < 3, (feed_s, draw_s)


def test_curves_redraw_is_throttled_and_skipped_while_hidden(qtbot):
    w = CurvesWidget(redraw_ms=100)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    t0 = time.perf_counter()
    i = 0
    # a fast engine: a point every ms, for at least one second and at least 300 points (on a loaded
    # machine each wait can take far longer than 1 ms, so the count of points is not assumed from the time)
    while time.perf_counter() - t0 < 1.0 or i < 300:
        w.add_batch(0, i, 10**6, 1.0, 1e-3)
        i += 1
        qtbot.wait(1)
    elapsed = time.perf_counter() - t0
    # throttled to one redraw per 100 ms at most (+2 for the edges), never once per point
    assert 1 <= w.redraws <= min(i, elapsed / 0.1 + 2), (w.redraws, i, elapsed)
    w.hide()
    before = w.redraws
    for j in range(50):
        w.add_batch(0, i + j, 10**6, 1.0, 1e-3)
    qtbot.wait(300)
    assert w.redraws == before  # hidden: no painting
    w.show()
    qtbot.waitUntil(lambda: w.redraws == before + 1, timeout=2000)
    assert w.points("loss") == i + 50


def test_series_is_bounded_and_rewinds():
    s = Series(capacity=16, max_points=1000)
    for i in range(10_000):
        s.append(i, i)
    assert len(s) <= 1000 and s.nbytes <= 2 * 1000 * 8
    assert np.all(np.diff(s.x) > 0) and s.x[-1] >= 9000
    s2 = Series()
    for i in range(10):
        s2.append(i, i)
    s2.append(5, -1)  # a resumed run replays from step 5
    assert list(s2.x) == [0, 1, 2, 3, 4, 5] and s2.y[-1] == -1


def test_resume_replay_does_not_duplicate_points(qtbot):
    w = CurvesWidget()
    qtbot.addWidget(w)
    for b in range(10):
        w.add_batch(0, b, 10, 1.0, 1e-3)
    for b in range(5, 10):  # resumed from the checkpoint at batch 5
        w.add_batch(0, b, 10, 0.5, 1e-3)
    w.flush()
    assert w.points("loss") == 10


def test_baseline_phase_gets_its_own_dashed_curves(qtbot):
    w = CurvesWidget()
    qtbot.addWidget(w)
    for b in range(4):
        w.add_batch(0, b, 4, 1.0, 1e-3)
        w.add_batch(0, b, 4, 2.0, 1e-3, phase="baseline")
    w.add_epoch(0, 1.0, {"val_loss": 1.1, "val_acc": 0.7})
    w.add_epoch(0, 2.0, {"val_loss": 2.1, "val_acc": 0.4}, phase="baseline")
    w.flush()
    assert w.points("loss") == 4 and w.points("loss", "baseline") == 4
    assert w.points("val_acc", "baseline") == 1
    from PySide6.QtCore import Qt

    assert w.items["baseline"]["smooth"].opts["pen"].style() == Qt.PenStyle.DashLine


def test_user_error_is_shown_plainly(panel, qtbot, monkeypatch, tmp_path):
    from tlstudio.core.errors import UserError

    captured: list = []
    monkeypatch.setattr(error_dialog, "CAPTURE", captured)

    def fit(config, stop=None, pause=None):
        raise UserError(f"{config.data_dir}: fewer than 2 classes")
        yield

    monkeypatch.setattr("tlstudio.core.training.engine.fit", fit)
    panel.state.set_dataset(str(tmp_path), None)
    with qtbot.waitSignal(panel.runner.failed, timeout=5000):
        panel.start()
    title, message, details = captured[0]
    assert message == f"{tmp_path}: fewer than 2 classes" and details == ""


def test_curve_ranges_move_in_coarse_steps(qtbot):
    """Managed ranges keep the axes' cached pictures: they change rarely, never per point."""
    from tlstudio.gui.widgets.curves import _nice_ceil

    assert [_nice_ceil(v) for v in (0.9, 1.0, 2.7, 0.0031, 47)] == [1.0, 1.0, 3.0, 0.004, 50.0]
    w = CurvesWidget()
    qtbot.addWidget(w)
    w.set_epochs(10)
    changes = []
    w.loss_plot.getViewBox().sigRangeChanged.connect(lambda *a: changes.append(1))
    for i in range(200):
        w.add_batch(i // 20, i % 20, 20, 2.5 * np.exp(-i / 100) + 0.1, 1e-3)
        w.flush()
    x0, x1, y0, y1 = w._ranges[w.loss_plot]
    assert (x0, x1) == (0.0, 10.0)  # the whole run from the start
    assert y0 == 0.0 and y1 >= 2.6
    assert len(changes) <= 4, len(changes)  # not one per redraw (200 redraws)
    w.add_batch(10, 0, 20, 7.0, 1e-3)  # a loss spike above the range: the range grows to show it
    w.flush()
    assert w._ranges[w.loss_plot][3] >= 7.0 and w._ranges[w.loss_plot][1] == 11.0


def test_failed_status_from_engine_says_why(panel, qtbot, monkeypatch, tmp_path):
    """NaN loss: the engine warns, finishes with status failed and a message; the panel shows it."""
    run = str(tmp_path / "nan")

    def fit(config, stop=None, pause=None):
        yield ev.RunStarted(run_dir=run, backbone="b", device="cpu", precision="fp32", classes=("a", "b"),
                            n_train=4, n_val=2, epochs=1, batches_per_epoch=2, trainable_params=1, total_params=1)
        msg = "The loss became nan at epoch 1, batch 2: training stopped. Try a lower learning rate."
        yield ev.Warn(msg)
        yield ev.Finished(run, "failed", None, None, message=msg)
        return SimpleNamespace(status="failed", best_val_acc=None, config={"out_dir": run})

    monkeypatch.setattr("tlstudio.core.training.engine.fit", fit)
    panel.state.set_dataset(str(tmp_path), None)
    with qtbot.waitSignal(panel.run_finished, timeout=5000) as blocker:
        panel.start()
    assert blocker.args == [run, "failed"]
    assert "lower learning rate" in panel.status_label.text()
    assert "nan" in panel.warnings.item(0).text()
    assert panel.state.step_status["train"] == "attention"
    assert "failed" in panel.notifications[-1]


def test_opening_a_stopped_run_shows_its_history_and_offers_continue(panel, tmp_path):
    from tests.gui.test_runs_panel import make_fake_run

    run = make_fake_run(tmp_path / "runs", "stopped_run", status="stopped", epochs=2)
    panel.state.set_current_run(str(run))
    assert panel.curves.points("val_acc") == 2 and panel.curves.points("loss") == 0
    assert "stopped" in panel.status_label.text()
    assert panel.continue_btn.isEnabled()
    finished = make_fake_run(tmp_path / "runs", "done_run", epochs=3)
    panel.state.set_current_run(str(finished))
    assert panel.curves.points("val_acc") == 3
    assert not panel.continue_btn.isEnabled()  # a finished run has nothing to continue


def test_every_control_of_my_panels_has_a_tooltip(qtbot):
    from PySide6.QtWidgets import QAbstractButton, QAbstractItemView, QAbstractSpinBox, QComboBox, QLineEdit

    from tlstudio.gui.panels.evaluate_panel import EvaluatePanel
    from tlstudio.gui.panels.predict_panel import PredictPanel
    from tlstudio.gui.panels.runs_panel import RunsPanel

    st = AppState()
    panels = [TrainPanel(st, JobRunner()), EvaluatePanel(st), PredictPanel(st), RunsPanel(st)]
    missing, checked = [], 0
    for p in panels:
        qtbot.addWidget(p)
        p.show()
        if isinstance(p, TrainPanel):
            p.advanced.expand(animate=False)
        # the heat-map overlay view (Grad-CAM) has another owner and its own tests
        from tlstudio.gui.views.heatmap_overlay import HeatmapOverlay

        overlays = p.findChildren(HeatmapOverlay)
        for cls in (QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit, QAbstractItemView):
            for w in p.findChildren(cls):
                if w.parent() is not None and isinstance(w.parent(), (QAbstractSpinBox, QComboBox)):
                    continue
                if any(o.isAncestorOf(w) for o in overlays):
                    continue
                if type(w).__name__ in ("QTabBar", "QHeaderView") or not w.isVisibleTo(p):
                    continue
                checked += 1
                if not w.toolTip():
                    missing.append(f"{type(p).__name__}: {type(w).__name__} {getattr(w, 'text', lambda: '')()!r}")
    assert not missing, missing
    assert checked > 30, checked
