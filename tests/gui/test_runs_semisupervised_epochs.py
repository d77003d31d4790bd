"""Runs step, semi-supervised run with pseudo-labels on a frozen body: its Epochs cell counts the
head epochs it trained against the ones it was set to train (head_epochs x rounds, not "60/4"),
and Compare curves shows no empty Validation loss plot for runs that record no validation loss."""

from __future__ import annotations

from pathlib import Path

from tests.gui.test_runs_panel import make_fake_run
from tlstudio.core.runs.folder import ModelSpec, RunInfo, write_history, write_run
from tlstudio.gui.panels.runs_panel import RunsPanel
from tlstudio.gui.state import AppState


def _semi_run(root: Path) -> Path:
    d = root / "semi"
    d.mkdir(parents=True)
    write_run(d, RunInfo(kind="semi", task="semisupervised", name="semi", status="finished",
                         config={"epochs": 4, "head_epochs": 30, "rounds": 2},
                         model=ModelSpec(backbone="resnet10t", num_classes=2, classes=["a", "b"], image_size=32),
                         epochs_done=60, best_epoch=59, metrics={"val_acc": 1.0}, best_val_acc=1.0,
                         extra={"semisupervised": {"method": "pseudolabel", "frozen_body": True}}))
    write_history(d, [{"epoch": e + 1, "train_loss": 1.0, "val_acc": 0.9} for e in range(60)])  # no val_loss
    return d


def test_semisupervised_epochs_and_no_empty_loss_plot(qtbot, tmp_path):
    root = tmp_path / "runs"
    semi = _semi_run(root)
    plain = make_fake_run(root, "plain", epochs=3)
    state = AppState()
    state.runs_dir = str(root)
    p = RunsPanel(state)
    qtbot.addWidget(p)
    p.resize(1100, 700)
    p.show()
    cells = {p.table.item(r, 0).text(): p.table.item(r, 6).text() for r in range(p.table.rowCount())}
    assert cells["semi (semi)"] == "60/60" and cells["plain"] == "3/3"
    p.overlay([str(semi)])
    assert p.overlaid == [str(semi)] and not p.loss_plot.isVisible() and p.acc_plot.isVisible()
    qtbot.wait(100)
    p.grab().save(str(tmp_path / "runs_semi.png"))
    p.overlay([str(semi), str(plain)])  # one run with a validation loss: the plot is back
    assert p.loss_plot.isVisible() and len(p.loss_plot.listDataItems()) == 1  # only the run that has one


def test_epochs_cell_is_never_more_done_than_set(qtbot, tmp_path):
    from tlstudio.gui.panels.runs_panel import epochs_set

    spec = ModelSpec(backbone="b", num_classes=2, classes=["a", "b"], image_size=32)
    info = RunInfo(config={"epochs": 4}, model=spec, epochs_done=9, status="finished")
    assert epochs_set(info) == 9
    info = RunInfo(config={"epochs": 4}, model=spec, epochs_done=2, status="stopped")
    assert epochs_set(info) == 4
