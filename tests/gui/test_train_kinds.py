"""The Train step runs any kind of learning through the task registry and plots its metrics
dictionary generically (per-task curves); texts from a previous run or a default never linger
(issue 17 item 15)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Literal

import pytest

from tlstudio.core import events as ev
from tlstudio.core.config import TrainConfig
from tlstudio.core.tasks import registry


class ToyConfig(TrainConfig):
    """A stand-in kind's config (the kind modules of other owners are not under test here)."""

    task: Literal["toy_two_heads"] = "toy_two_heads"
    heads: tuple[str, ...] = ("digit",)


SEEN: list = []


def toy_run(config, stop=None, pause=None):
    SEEN.append(config)
    yield ev.RunStarted(run_dir=config.out_dir, backbone=config.backbone, device="cpu", precision="fp32",
                        classes=(), n_train=20, n_val=10, epochs=config.epochs, batches_per_epoch=2,
                        trainable_params=10, total_params=100)
    for e in range(config.epochs):
        for b in range(2):
            yield ev.BatchEnd(epoch=e, batch=b, batches=2, step=2 * e + b, loss=1.0, lr=1e-3, images_per_s=50.0)
        metrics = {"val_loss": 0.9}
        for i, h in enumerate(config.heads):
            metrics[f"val_acc/{h}"] = 0.5 + 0.1 * e + 0.01 * i
            metrics[f"weight/{h}"] = 1.0 + i
        yield ev.EpochEnd(epoch=e, epochs=config.epochs, train_loss=1.0, metrics=metrics, lr=1e-3, seconds=0.1,
                          best=True, trainable_params=10, best_metric="val_acc/digit")
    yield ev.Finished(config.out_dir, "finished", config.epochs - 1, None, metrics={"val_acc/digit": 0.7})
    return SimpleNamespace(status="finished", best_val_acc=None, config={"out_dir": config.out_dir})


@pytest.fixture
def toy_kind(monkeypatch):
    SEEN.clear()
    kind = registry.TaskKind(kind="toy_two_heads", title="Two heads (test)", summary="a test kind",
                             config_cls=ToyConfig, run=toy_run, best_metric=("val_acc/digit", "max"))
    registry.all_kinds()  # the real kinds first, so the stand-in is one more
    monkeypatch.setitem(registry._REGISTRY, kind.kind, kind)
    return kind


@pytest.fixture
def panel(kind_train_panel):
    return kind_train_panel  # tests/gui/conftest.py


def test_any_kind_runs_through_the_registry_with_per_task_curves(qtbot, panel, toy_kind, tmp_path):
    st = panel.state
    st.set_dataset(str(tmp_path), None)
    st.set_task_kind("toy_two_heads")
    st.set_task_settings({"heads": ("digit", "texture")})
    panel.epochs.setValue(3)
    with qtbot.waitSignal(panel.run_finished, timeout=30_000):
        assert panel.start()
    cfg = SEEN[0]
    assert isinstance(cfg, ToyConfig) and cfg.heads == ("digit", "texture")  # task settings reach the config
    assert cfg.epochs == 3 and cfg.data_dir == str(tmp_path) and cfg.leave_one_core
    assert cfg.out_dir.startswith(st.runs_dir)
    c = panel.curves
    # one chart per base metric name, one curve per task: no multi-task code in the monitor
    assert set(c.charts) == {"loss", "val_acc", "weight"}
    assert sorted(c.chart_curves("val_acc")) == ["val acc digit", "val acc texture"]
    assert sorted(c.chart_curves("weight")) == ["weight digit", "weight texture"]
    assert "val loss" in c.chart_curves("loss")
    assert c.points("val_acc/texture") == 3 and c.points("weight/digit") == 3
    assert "val acc digit 70.0%" in panel.metrics_label.text()
    assert "best val acc digit 70.0%" in panel.status_label.text()


def test_unknown_kind_is_a_hint_not_a_crash(panel, tmp_path):
    panel.state.set_dataset(str(tmp_path), None)
    panel.state.task_kind = "no_such_kind"
    with pytest.raises(Exception, match="unknown kind of learning"):
        panel.state.make_config()


def _slow_fit(run_dir, epochs=3, batches=40, delay=0.03):
    def fit(config, stop=None, pause=None):
        yield ev.RunStarted(run_dir=run_dir, backbone=config.backbone, device="cpu", precision="fp32",
                            classes=("a", "b"), n_train=40, n_val=10, epochs=epochs, batches_per_epoch=batches,
                            trainable_params=1, total_params=2)
        for e in range(epochs):
            for b in range(batches):
                if stop is not None and stop.is_set():
                    yield ev.Finished(run_dir, "stopped", None, None)
                    return SimpleNamespace(status="stopped", best_val_acc=None, config={"out_dir": run_dir})
                time.sleep(delay)
                yield ev.BatchEnd(epoch=e, batch=b, batches=batches, step=e * batches + b, loss=1.0, lr=1e-3,
                                  images_per_s=10.0)
            yield ev.EpochEnd(epoch=e, epochs=epochs, train_loss=1.0, metrics={"val_loss": 1.0, "val_acc": 0.5},
                              lr=1e-3, seconds=batches * delay, best=True, trainable_params=1)
        yield ev.Finished(run_dir, "finished", epochs - 1, 0.5)
        return SimpleNamespace(status="finished", best_val_acc=0.5, config={"out_dir": run_dir})

    return fit


def test_no_stale_texts_between_and_at_the_start_of_runs(qtbot, panel, monkeypatch, tmp_path):
    # idle: the epoch bar counts the epochs that are set, not Qt's default 100
    panel.epochs.setValue(3)
    assert panel.epoch_bar.maximum() == 3 and panel.epoch_bar.text() == "Epoch 0 / 3"
    panel.state.set_dataset(str(tmp_path), None)
    monkeypatch.setattr("tlstudio.core.training.engine.fit", _slow_fit(str(tmp_path / "r1"), epochs=1, batches=3,
                                                                       delay=0.0))
    with qtbot.waitSignal(panel.run_finished, timeout=30_000):
        panel.start()
    assert panel.toast.isVisible() and "finished" in panel.toast.text()
    said: list[str] = []
    panel.state.status_message.connect(said.append)
    etas: list[str] = []
    monkeypatch.setattr("tlstudio.core.training.engine.fit", _slow_fit(str(tmp_path / "r2")))
    panel.runner.event.connect(lambda e: etas.append(panel.eta_label.text()) if isinstance(e, ev.BatchEnd) else None)
    panel.start()
    # the new run: nothing of the finished one on screen
    assert not panel.toast.isVisible()
    assert said and "finished" not in said[-1]
    assert "finished" not in panel.status_label.text().lower()
    assert panel.epoch_bar.text() == "Epoch 0 / 3" and panel.eta_label.text() == ""
    qtbot.waitUntil(lambda: len(etas) >= 45, timeout=30_000)
    panel.runner.stop()
    qtbot.waitUntil(lambda: not panel.runner.running, timeout=10_000)
    # the first batches: an estimate is not known yet; then a real one, never "0:00" mid-run
    assert etas[0] == "ETA …"
    real = [t for t in etas if t != "ETA …"]
    assert real and all(t not in ("ETA 0:00", "ETA --:--") for t in real)
    secs = [int(t.split()[1].split(":")[0]) * 60 + int(t.split()[1].split(":")[1]) for t in real]
    assert max(secs) >= 2  # 120 batches x 0.03 s: seconds left, not zero
