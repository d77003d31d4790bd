"""TensorBoard logging from engine events: real event files when tensorboard is installed,
a silent no-op when it is not."""

from __future__ import annotations

import builtins

import pytest

from tlstudio.core.events import BatchEnd, EpochEnd, Finished
from tlstudio.core.training.tensorboard import TBWriter, history_to_tensorboard


def _epoch(i, acc):
    return EpochEnd(epoch=i, epochs=3, train_loss=1.0 / (i + 1), metrics={"val_loss": 1.2 / (i + 1), "val_acc": acc,
                    "val_macro_f1": acc - 0.05}, lr=1e-3, seconds=1.0, best=True, trainable_params=10)


def _read_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_events_become_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    with TBWriter(tmp_path / "tb", batch_every=2) as tb:
        assert tb.active
        for s in range(4):
            tb.write(BatchEnd(epoch=0, batch=s, batches=4, step=s, loss=2.0 - s * 0.1, lr=1e-3, images_per_s=50))
        for i, acc in enumerate((0.5, 0.7, 0.9)):
            tb.write(_epoch(i, acc))
        tb.write(Finished(run_dir=str(tmp_path), status="finished", best_epoch=2, best_val_acc=0.9))
    sc = _read_scalars(tmp_path / "tb")
    assert [v for _, v in sc["val/accuracy"]] == pytest.approx([0.5, 0.7, 0.9])
    assert [s for s, _ in sc["val/accuracy"]] == [1, 2, 3]
    assert [s for s, _ in sc["batch/loss"]] == [0, 2]  # every 2nd step
    assert sc["loss/train"][0][1] == pytest.approx(1.0)


def test_history_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tlstudio.core.runs.folder import write_history

    write_history(tmp_path, [{"epoch": i, "train_loss": 1.0 - 0.1 * i, "val_loss": 1.1, "val_acc": 0.6 + 0.1 * i,
                              "val_macro_f1": 0.5, "lr": 0.01} for i in range(3)])
    out = history_to_tensorboard(tmp_path)
    sc = _read_scalars(out)
    assert [v for _, v in sc["val/accuracy"]] == pytest.approx([0.6, 0.7, 0.8])


def test_no_op_without_tensorboard(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    tb = TBWriter(tmp_path / "tb")
    assert not tb.active
    tb.write(_epoch(0, 0.5))
    tb.close()
    assert not (tmp_path / "tb").exists()
    assert history_to_tensorboard(tmp_path) is None
