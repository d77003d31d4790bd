"""Issue 6, "Load": many epochs must not grow memory (no leaked tensors, no per-batch history).

A run of many short epochs is measured after epoch 3 (caches warm, optimiser state allocated)
and after the last epoch: live tensors, Python allocations made in between that are still alive
(tracemalloc), and the process RSS.
"""

from __future__ import annotations

import dataclasses
import gc
import tracemalloc
import warnings

import torch

from tlstudio.core import events as E
from tlstudio.core.runtime.background_writer import wait_all_idle
from tlstudio.core.config import TrainConfig
from tlstudio.core.training.engine import fit
from tlstudio.core.data.synthetic import make_synthetic_folder

EPOCHS = 15


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096
    except OSError:  # not Linux: fall back to the peak, which can only over-report growth
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def live_tensors() -> int:
    # checkpoints are written in the background from snapshots of the weights: count after they
    # are on disk, else a queued snapshot (a copy of every weight) shows up as a swing
    assert wait_all_idle()
    gc.collect()
    n = 0
    with warnings.catch_warnings():  # isinstance on deprecated torch proxies warns
        warnings.simplefilter("ignore")
        for o in gc.get_objects():
            try:
                if isinstance(o, torch.Tensor):
                    n += 1
            except Exception:  # objects whose __class__ lookup fails
                pass
    return n


def holds_tensor(ev) -> bool:
    for f in dataclasses.fields(ev):
        v = getattr(ev, f.name)
        vals = v.values() if isinstance(v, dict) else v if isinstance(v, list | tuple) else [v]
        if any(isinstance(x, torch.Tensor) for x in vals):
            return True
    return False


def measure(tmp_path, epochs: int, objective=None) -> dict:
    """Train `epochs` short epochs; growth between the end of epoch 3 and the end of the last."""
    data = make_synthetic_folder(tmp_path / "d", classes=("circle", "square"), per_class=8, size=32, easy=True)
    config = TrainConfig(data_dir=str(data), out_dir=str(tmp_path / "run"), backbone="test_resnet", init="scratch",
                         image_size=32, epochs=epochs, batch_size=4, freeze="none", lr=1e-3, augment="light",
                         seed=0, warmup_epochs=0.0, early_stop_patience=None, precision="fp32", workers=0,
                         leave_one_core=True)  # one torch thread: two crawl on a shared, busy CPU
    marks: dict[str, dict[str, int]] = {}
    n_events = {"batch": 0, "with_tensor": 0}
    gen = fit(config, objective=objective)
    info = None
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as done:
                info = done.value
                break
            if isinstance(ev, E.BatchEnd):
                n_events["batch"] += 1
                assert isinstance(ev.loss, float) and isinstance(ev.lr, float)
            if holds_tensor(ev):
                n_events["with_tensor"] += 1
            if isinstance(ev, E.EpochEnd) and ev.epoch in (2, epochs - 1):
                tensors = live_tensors()
                if ev.epoch == 2:
                    tracemalloc.start()
                    marks["early"] = {"tensors": tensors, "rss": rss_bytes()}
                else:
                    py_alive, _ = tracemalloc.get_traced_memory()
                    marks["late"] = {"tensors": tensors, "rss": rss_bytes(), "py": py_alive}
    finally:
        tracemalloc.stop()
    assert info is not None and info.status == "finished"
    early, late = marks["early"], marks["late"]
    return {"tensors": late["tensors"] - early["tensors"], "rss_mb": (late["rss"] - early["rss"]) / 2**20,
            "python_kb": late["py"] / 1024, "batches": n_events["batch"], "events_with_tensors": n_events["with_tensor"]}


def test_many_epochs_do_not_grow_memory(tmp_path):
    growth = measure(tmp_path, EPOCHS)
    print(f"memory growth over {EPOCHS - 3} epochs:", growth)
    assert growth["batches"] >= EPOCHS * 3
    assert growth["events_with_tensors"] == 0, "events must carry plain numbers, never tensors"
    # a per-batch leak of one tensor alone would add >= 36 here (see the leak test below)
    assert growth["tensors"] <= 2, growth
    # Python objects allocated after epoch 3 and still alive: history rows, log lines (~KB)
    assert growth["python_kb"] < 512, growth
    # the allocator may keep a little more, but not a per-epoch copy of model + optimizer
    assert growth["rss_mb"] < 40, growth


class LeakyObjective:
    """Keeps every batch's loss, graph and all: the mistake the test above must catch."""

    def __init__(self) -> None:
        from tlstudio.core.training.objectives import ClassificationObjective

        self.inner = ClassificationObjective()
        self.kept: list = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss(self, model, x, y, idx):
        loss, parts = self.inner.loss(model, x, y, idx)
        self.kept.append(loss)
        return loss, parts


def test_the_measurement_catches_a_per_batch_leak(tmp_path):
    growth = measure(tmp_path, 5, objective=LeakyObjective())
    per_epoch = growth["batches"] // 5
    assert growth["tensors"] >= 2 * per_epoch, growth  # 2 epochs x (at least) one tensor per batch
