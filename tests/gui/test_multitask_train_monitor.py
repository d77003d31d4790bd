"""The Train step during a multi-task run with "also train a separate model per task": the separate
models' sub-runs (phase "baseline:<task>") stay out of the main charts and the metrics line, and
the headline is the mean task score, named so (not "val acc")."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Literal

import pytest

from tlstudio.core import events as ev
from tlstudio.core.config import TrainConfig
from tlstudio.core.tasks import registry
from tlstudio.gui.panels.train_monitor import fmt_metric, sub_run_task


class ToyMTConfig(TrainConfig):
    """A stand-in for the multi-task kind: the event sequence of its trainer with baselines."""

    task: Literal["toy_mt"] = "toy_mt"


def _epochs(run_dir, phase, epochs, tasks, score):
    yield ev.RunStarted(run_dir=run_dir, backbone="b", device="cpu", precision="fp32", classes=(), n_train=20,
                        n_val=10, epochs=epochs, batches_per_epoch=2, trainable_params=10, total_params=100,
                        phase=phase)
    for e in range(epochs):
        for b in range(2):
            yield ev.BatchEnd(epoch=e, batch=b, batches=2, step=2 * e + b, loss=5.0, lr=1e-3, images_per_s=50.0,
                              phase=phase)
        metrics = {"val_loss": 0.9, "val_score": score, "val_acc": score}
        metrics.update({f"val_acc/{t}": score for t in tasks})
        yield ev.EpochEnd(epoch=e, epochs=epochs, train_loss=1.0 + e, metrics=metrics, lr=1e-3, seconds=0.1,
                          best=True, trainable_params=10, best_metric="val_score", phase=phase)


def toy_mt_run(config, stop=None, pause=None):
    main = config.out_dir
    yield from _epochs(main, "main", config.epochs, ("object", "noise"), 0.917)
    best = {"val_score": 0.917, "val_acc": 0.917}
    yield ev.Finished(main, "finished", config.epochs - 1, 0.917, metrics=best)
    for t in ("object", "noise"):  # the separate single-task models, in sub-folders, 4 epochs
        sub = f"{main}/single_task/{t}"
        yield from _epochs(sub, f"baseline:{t}", 4, (t,), 0.5)
        yield ev.Finished(sub, "finished", 3, 0.5, metrics={"val_score": 0.5, "val_acc": 0.5})
    yield ev.Finished(main, "finished", config.epochs - 1, 0.917, message="Multi-task matches.", metrics=best)
    return SimpleNamespace(status="finished", best_val_acc=0.917, metrics=best, config={"out_dir": main})


@pytest.fixture
def panel(kind_train_panel, monkeypatch):
    kind = registry.TaskKind(kind="toy_mt", title="Multi-task (test)", summary="a test kind",
                             config_cls=ToyMTConfig, run=toy_mt_run, best_metric=("val_score", "max"))
    registry.all_kinds()
    monkeypatch.setitem(registry._REGISTRY, kind.kind, kind)
    return kind_train_panel  # tests/gui/conftest.py


def test_sub_run_phase_names():
    assert sub_run_task("baseline:noise") == "noise" and sub_run_task("baseline:a:b") == "a:b"
    assert sub_run_task("baseline") is None and sub_run_task("main") is None and sub_run_task("baseline:") is None
    assert fmt_metric("val_score", 0.9167) == "mean task score 0.917"
    assert fmt_metric("val_acc", 0.5) == "val acc 50.0%"  # other metrics unchanged


def test_separate_models_stay_out_of_the_main_charts(qtbot, panel, tmp_path):
    st = panel.state
    st.set_dataset(str(tmp_path), None)
    st.set_task_kind("toy_mt")
    panel.epochs.setValue(3)
    said: list[str] = []
    st.status_message.connect(said.append)
    with qtbot.waitSignal(panel.run_finished, timeout=30_000):
        assert panel.start()
    c = panel.curves
    for chart in c.charts:
        assert not any("baseline" in name for name in c.chart_curves(chart)), (chart, c.chart_curves(chart))
    assert set(c.phases) == {"main"}
    assert c.points("val_score") == 3 and c.points("val_acc/noise") == 3  # the multi-task run's 3 epochs
    # the metrics line keeps the multi-task run's last epoch, not the last separate model's
    # the epoch, then the metric that picks the best epoch, then the rest (the line is cut at the
    # panel's width: what matters comes first)
    line = panel.metrics_label.text()
    assert line.startswith("Epoch 3/3 (") and line.index("mean task score 0.917") < line.index("train loss 3.0000")
    final = panel.status_label.text()
    assert "best mean task score 0.917" in final and "val acc" not in final, final
    assert said and "best mean task score 0.917" in said[-1] and "val acc" not in said[-1]
    assert panel.epoch_bar.maximum() == 3 and panel.epoch_bar.value() == 3  # not the last separate model's 4
    log = panel.log_view.toPlainText()
    assert "Separate model 'noise': Epoch 4/4" in log and "Separate model for 'object' started" in log


def test_a_kept_head_epoch_shows_the_kept_heads_score(panel):
    """Multi-task with a frozen body: each task keeps the head of its own best epoch, so an epoch
    marked best shows the score of the kept heads, not only its own (0.833 here, kept 0.917)."""
    panel._on_epoch(ev.EpochEnd(epoch=7, epochs=8, train_loss=0.5, metrics={"val_score": 0.833, "val_loss": 0.4},
                               lr=1e-3, seconds=0.1, best=True, trainable_params=10, best_metric="val_score",
                               kept_score=0.917))
    line = panel.metrics_label.text()
    assert line.startswith("Epoch 8/8") and "mean task score 0.833" in line
    assert line.endswith("★ head kept · kept heads' mean task score 0.917"), line
    panel._on_epoch(ev.EpochEnd(epoch=0, epochs=3, train_loss=0.5, metrics={"val_acc": 0.8}, lr=1e-3, seconds=0.1,
                               best=True, trainable_params=10))
    assert panel.metrics_label.text().endswith("★ best")  # one model, one score: unchanged
