"""Issue 6, "Faults during training": killed, NaN, out of memory, disk full, files vanishing.

Each test drives the real engine (or the real CLI in a subprocess) on a tiny synthetic folder
and checks that nothing is lost: the last checkpoint stays loadable and resumable, the best
weights survive, and the user gets a message that says what happened.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tlstudio.core import events as E
from tlstudio.core.runs import folder as runs
from tlstudio.core.models.run_model import load_run_model
from tlstudio.core.atomic import atomic_torch_save, atomic_write
from tlstudio.core.config import TrainConfig
from tlstudio.core.training.engine import fit, resume
from tlstudio.core.errors import UserError
from tlstudio.core.events import drive
from tlstudio.core.data.synthetic import make_synthetic_folder

REPO = Path(__file__).resolve().parents[2]


def run_all(gen, on_event=None):
    """Drive ``gen`` to its end; return (its value, every event)."""
    evs = []

    def seen(ev):
        evs.append(ev)
        if on_event:
            on_event(ev)

    return drive(gen, seen), evs


def cfg(data, out, **kw) -> TrainConfig:
    base = dict(data_dir=str(data), out_dir=str(out), backbone="test_resnet", init="scratch", image_size=48,
                epochs=2, batch_size=8, freeze="none", lr=3e-3, augment="none", seed=0, warmup_epochs=0.0,
                early_stop_patience=None, precision="fp32", workers=0, cache="off",
                # one torch thread: two threads crawl (10x slower) on a shared, oversubscribed CPU
                leave_one_core=True)
    base.update(kw)
    return TrainConfig(**base)


def load_ckpt(run_dir: Path) -> dict:
    return torch.load(run_dir / runs.LAST_CKPT, map_location="cpu", weights_only=True)


def no_temp_files(run_dir: Path) -> list[str]:
    return [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


# ---- SIGKILL ---------------------------------------------------------------------------------
@pytest.mark.slow  # a real `tlstudio train` process, then `resume`: ~100 s on the loaded 2-core machine
@pytest.mark.timeout(900)
def test_sigkill_mid_epoch_leaves_resumable_checkpoint(tmp_path):
    data = make_synthetic_folder(tmp_path / "d", per_class=4, size=48, easy=True)
    run = tmp_path / "run"
    env = {**os.environ, "TLSTUDIO_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # --config carries what has no flag: one torch thread (two crawl on a shared, busy CPU)
    (tmp_path / "base.json").write_text('{"leave_one_core": true}', encoding="utf-8")
    cmd = [sys.executable, "-m", "tlstudio", "train", str(data), "--config", str(tmp_path / "base.json"),
           "--backbone", "test_resnet", "--scratch",
           "--image-size", "48", "--workers", "0", "--precision", "fp32", "--epochs", "4", "--batch-size", "2",
           "--freeze", "none", "--augment", "none", "--cache", "off", "--lr", "0.003", "--warmup-epochs", "0",
           "--early-stop-patience", "50", "--seed", "0", "--out", str(run)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: err_chunks.extend(iter(lambda: proc.stderr.read1(4096), b"")),
                              daemon=True)
    reader.start()
    try:
        # watch the run folder, not the progress bar: once epoch 1 is in history.csv, epoch 2 is
        # training; kill at once (a busy machine may land anywhere in it, or in a checkpoint write)
        killed = False
        while proc.poll() is None:
            if len(runs.read_history(run)) >= 1:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    assert killed, "the run ended before it could be killed:\n" + b"".join(err_chunks).decode("utf-8", "replace")[-2000:]
    assert proc.returncode == -signal.SIGKILL

    ckpt = load_ckpt(run)  # weights_only=True: the atomic write left a complete, safe file
    done = ckpt["epoch"]  # epochs completed when killed (1 unless the machine raced ahead)
    assert 1 <= done < 4 and ckpt["batch"] == 0, (done, ckpt["batch"])
    # run.json and history.csv are written after last.pt (it is the source of truth): a kill
    # between the writes leaves them at most one epoch behind, never ahead
    info = runs.read_run(run)
    assert info.status == "running" and done - 1 <= info.epochs_done <= done
    assert done - 1 <= len(runs.read_history(run)) <= done

    # what a kill inside a checkpoint write leaves behind: cleaned up by the resume
    (run / ".last.pt.k1ll3d.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    res = subprocess.run([sys.executable, "-m", "tlstudio", "resume", str(run), "--json"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    import json

    out = json.loads(res.stdout)
    assert out["status"] == "finished"
    assert [r["epoch"] for r in runs.read_history(run)] == [1.0, 2.0, 3.0, 4.0]
    assert load_ckpt(run)["epoch"] == 4
    assert no_temp_files(run) == []
    assert runs.read_run(run).status == "finished"


_WRITER = """
import sys, torch
from tlstudio.core.atomic import atomic_torch_save
i = 0
while True:
    i += 1
    atomic_torch_save(sys.argv[1], {"epoch": i, "w": torch.full((4_000_000,), float(i))})  # 16 MB
    print(i, flush=True)
"""


def test_sigkill_during_checkpoint_write_keeps_a_loadable_file(tmp_path):
    """A real process killed while torch.save is writing: the target is always a whole checkpoint."""
    script = tmp_path / "writer.py"
    script.write_text(_WRITER, encoding="utf-8")
    target = tmp_path / "ck" / "last.pt"
    target.parent.mkdir()
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(target)], cwd=REPO, stdout=subprocess.PIPE,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            assert proc.stdout.readline().strip() == b"1"  # one complete checkpoint exists
            deadline = time.monotonic() + 30
            mid_write = False
            while time.monotonic() < deadline:
                tmps = [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
                if tmps and tmps[0].stat().st_size > 0:  # the next checkpoint is being written
                    os.kill(proc.pid, signal.SIGKILL)
                    mid_write = True
                    break
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert mid_write
        ck = torch.load(target, weights_only=True)
        assert ck["epoch"] >= 1 and bool((ck["w"] == float(ck["epoch"])).all())
        if any(p.name.endswith(".tmp") for p in target.parent.iterdir()):
            return  # the kill really landed inside a write (its partial temp file is left over)
    pytest.fail("could not kill the writer in the middle of a write in 3 attempts")


def test_atomic_save_interrupted_midway_keeps_old_file(tmp_path):
    path = tmp_path / "last.pt"
    old = {"epoch": 1, "w": torch.arange(1000, dtype=torch.float32)}
    atomic_torch_save(path, old)
    before = path.read_bytes()

    def half_then_fail(tmp: str) -> None:
        torch.save({"epoch": 2, "w": torch.zeros(1000)}, tmp)
        with open(tmp, "r+b") as fh:  # a partially written file, as a crash mid-write leaves it
            fh.truncate(os.path.getsize(tmp) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == before
    back = torch.load(path, weights_only=True)
    assert back["epoch"] == 1 and torch.equal(back["w"], old["w"])
    assert no_temp_files(tmp_path) == []

    # the writer itself killed (BaseException, like KeyboardInterrupt) midway: same guarantee
    def interrupted(tmp: str) -> None:
        Path(tmp).write_bytes(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert path.read_bytes() == before and no_temp_files(tmp_path) == []


# ---- NaN / inf loss --------------------------------------------------------------------------
class PoisonedLoss:
    """Wraps the classification objective: from a chosen moment on the loss is `value`."""

    def __init__(self, value: float) -> None:
        from tlstudio.core.training.objectives import ClassificationObjective

        self.inner = ClassificationObjective()
        self.value = value
        self.poisoned = False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss(self, model, x, y, idx):
        loss, parts = self.inner.loss(model, x, y, idx)
        if self.poisoned:
            loss = loss * 0 + self.value  # still attached to the graph, as a real blow-up is
        return loss, parts


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_loss_stops_with_message_and_keeps_best(tmp_path, value):
    data = make_synthetic_folder(tmp_path / "d", per_class=6, size=48, easy=True)
    obj = PoisonedLoss(value)

    def poison_after_first_epoch(ev):
        if isinstance(ev, E.EpochEnd) and ev.epoch == 0:
            obj.poisoned = True

    run = tmp_path / "run"
    info, evs = run_all(fit(cfg(data, run, epochs=3), objective=obj), poison_after_first_epoch)
    assert info.status == "failed"
    fin = [e for e in evs if isinstance(e, E.Finished)][-1]
    assert fin.status == "failed"
    assert f"loss became {value}" in fin.message and "epoch 2" in fin.message, fin.message
    assert "best weights" in fin.message
    assert any(isinstance(e, E.Warn) and "loss became" in e.message for e in evs)
    assert not [e for e in evs if isinstance(e, E.EpochEnd) and e.epoch > 0]  # no epoch 2 on garbage
    back = runs.read_run(run)
    assert back.status == "failed" and back.best_epoch == 0
    # the best weights (epoch 1) still load, are finite, and are exactly the epoch-1 weights
    model, _ = load_run_model(run)
    best = model.state_dict()
    last = load_ckpt(run)["model"]  # written at the end of epoch 1; the NaN step never reached it
    assert load_ckpt(run)["epoch"] == 1
    for k, v in best.items():
        assert torch.isfinite(v.float()).all(), k
        assert torch.equal(v, last[k]), k
    assert "loss became" in (run / runs.LOG_TXT).read_text(encoding="utf-8")


# ---- out of memory ---------------------------------------------------------------------------
def _oom_on_first_big_batch(monkeypatch, limit: int, make_error, always: bool = False):
    """The first (or, with always=True, every) training forward pass of a batch larger than
    `limit` fails to allocate."""
    from tlstudio.core.models import backbones

    real_create = backbones.create_model
    state = {"raised": 0, "sizes": []}

    def create(*a, **kw):
        model = real_create(*a, **kw)
        real_forward = model.forward

        def forward(x):
            if not model.training:  # validation and final evaluation are not under test
                return real_forward(x)
            state["sizes"].append(int(x.shape[0]))
            if x.shape[0] > limit and (always or not state["raised"]):
                state["raised"] += 1
                raise make_error()
            return real_forward(x)

        model.forward = forward
        return model

    monkeypatch.setattr(backbones, "create_model", create)
    return state


def _real_cpu_alloc_failure() -> RuntimeError:
    try:  # a genuine allocator failure: its message is what a real CPU OOM looks like
        torch.empty(1 << 50, dtype=torch.uint8)
    except RuntimeError as exc:
        return exc
    raise AssertionError("allocating a petabyte succeeded?")


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_out_of_memory_halves_batch_size_and_finishes(tmp_path, monkeypatch, kind):
    make_error = _real_cpu_alloc_failure if kind == "cpu" else \
        (lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    state = _oom_on_first_big_batch(monkeypatch, limit=4, make_error=make_error)
    data = make_synthetic_folder(tmp_path / "d", per_class=6, size=48, easy=True)
    run = tmp_path / "run"
    info, evs = run_all(fit(cfg(data, run, epochs=2, batch_size=8)))
    assert state["raised"] == 1
    warns = [e.message for e in evs if isinstance(e, E.Warn) and "memory" in e.message.lower()]
    assert len(warns) == 1 and "batch size 4" in warns[0], warns
    assert info.status == "finished"
    assert len(runs.read_history(run)) == 2
    assert max(state["sizes"][1:]) <= 4  # every training batch after the failure is halved
    assert load_ckpt(run)["batch_size"] == 4  # a resume keeps the smaller batch


def test_out_of_memory_retry_continues_as_if_started_with_the_smaller_batch(tmp_path, monkeypatch):
    """Halving the batch doubles the steps per epoch: the LR schedule must be rescaled, else it
    ends (minimum LR) half-way through training."""
    data = make_synthetic_folder(tmp_path / "d", per_class=6, size=48, easy=True)
    kw = dict(epochs=2, warmup_epochs=0.5)
    run_all(fit(cfg(data, tmp_path / "small", batch_size=4, **kw)))
    state = _oom_on_first_big_batch(monkeypatch, limit=4, make_error=_real_cpu_alloc_failure)
    info, _ = run_all(fit(cfg(data, tmp_path / "oom", batch_size=8, **kw)))
    assert state["raised"] == 1 and info.status == "finished"
    keys = ("epoch", "train_loss", "val_loss", "val_acc", "lr")
    small = [[r[k] for k in keys] for r in runs.read_history(tmp_path / "small")]
    assert [[r[k] for k in keys] for r in runs.read_history(tmp_path / "oom")] == small
    a, b = load_ckpt(tmp_path / "small"), load_ckpt(tmp_path / "oom")
    assert a["step"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_out_of_memory_at_batch_size_one_fails_clearly(tmp_path, monkeypatch):
    state = _oom_on_first_big_batch(monkeypatch, limit=0, make_error=_real_cpu_alloc_failure, always=True)
    data = make_synthetic_folder(tmp_path / "d", per_class=5, size=48, easy=True)
    evs: list = []
    with pytest.raises(UserError) as err:
        run_all(fit(cfg(data, tmp_path / "run", batch_size=4)), evs.append)
    msg = str(err.value)
    assert "out of memory" in msg.lower() and "batch size 1" in msg, msg
    halvings = [e.message for e in evs if isinstance(e, E.Warn) and "memory" in e.message.lower()]
    assert [m.split("batch size ")[-1] for m in halvings] == ["2", "1"], halvings
    assert state["sizes"][-1] == 1 and state["raised"] == 3
    assert runs.read_run(tmp_path / "run").status == "failed"


# ---- disk full -------------------------------------------------------------------------------
def test_disk_full_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from tlstudio.core.training import loop as engine  # where the loop saves

    data = make_synthetic_folder(tmp_path / "d", per_class=6, size=48, easy=True)
    run = tmp_path / "run"
    calls = {"n": 0}
    real_save = engine.atomic_torch_save

    def save(path, obj):
        calls["n"] += 1
        if calls["n"] == 2:  # the end-of-epoch-2 checkpoint: the disk fills up halfway through
            def partial_write(tmp):
                Path(tmp).write_bytes(b"PK\x03\x04" + b"\0" * 100)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return atomic_write(path, partial_write)
        return real_save(path, obj)

    monkeypatch.setattr(engine, "atomic_torch_save", save)
    evs: list = []
    gen = fit(cfg(data, run, epochs=3))
    with pytest.raises(UserError) as err:
        run_all(gen, evs.append)
    msg = str(err.value)
    assert str(run / runs.LAST_CKPT) in msg, msg
    assert "disk full" in msg.lower() or "no space left" in msg.lower(), msg
    assert "\n" not in msg and "Traceback" not in msg
    # the checkpoint from epoch 1 is intact and loadable; the best weights too; no temp litter
    ckpt = load_ckpt(run)
    assert ckpt["epoch"] == 1
    load_run_model(run)
    assert no_temp_files(run) == []
    # space freed: the run resumes from the surviving checkpoint and finishes
    monkeypatch.setattr(engine, "atomic_torch_save", real_save)
    info, _ = run_all(resume(run))
    assert info.status == "finished"
    assert [r["epoch"] for r in runs.read_history(run)] == [1.0, 2.0, 3.0]


def test_disk_full_saving_best_weights_is_reported(tmp_path, monkeypatch):
    from tlstudio.core.training import loop as engine  # where the loop saves

    data = make_synthetic_folder(tmp_path / "d", per_class=5, size=48, easy=True)
    run = tmp_path / "run"

    def full(path, tensors, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(engine, "atomic_save_safetensors", full)
    with pytest.raises(UserError) as err:
        run_all(fit(cfg(data, run, epochs=1)))
    msg = str(err.value)
    assert str(run / runs.BEST_WEIGHTS) in msg and "disk full" in msg.lower(), msg
    # the run is marked failed (not left "running") and the log file has the reason
    assert runs.read_run(run).status == "failed"
    assert msg in (run / runs.LOG_TXT).read_text(encoding="utf-8")


def test_torch_save_failing_on_a_full_disk_is_reported_as_disk_full(tmp_path, monkeypatch):
    """On a really full disk torch.save raises a RuntimeError ("unexpected pos ..."), not ENOSPC:
    the engine recognises it from the free space left."""
    import collections
    import shutil

    from tlstudio.core.training import loop as engine  # where the loop saves

    def torch_style_failure(path, obj):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: collections.namedtuple("u", "total used free")(
        real_usage(p).total, real_usage(p).total - 4096, 4096))
    monkeypatch.setattr(engine, "atomic_torch_save", torch_style_failure)
    data = make_synthetic_folder(tmp_path / "d", per_class=5, size=48, easy=True)
    with pytest.raises(UserError) as err:
        run_all(fit(cfg(data, tmp_path / "run", epochs=1)))
    assert "disk full" in str(err.value) and str(tmp_path / "run" / runs.LAST_CKPT) in str(err.value)
    # with plenty of space the same RuntimeError is a bug, not a full disk: it is not disguised
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        run_all(fit(cfg(data, tmp_path / "run2", epochs=1)))


# ---- a file deleted between scan and training ---------------------------------------------
@pytest.mark.parametrize("freeze", ["none", "head"])
def test_file_deleted_after_scan_is_skipped_with_warning(tmp_path, monkeypatch, freeze):
    from tlstudio.core.data import dataset

    data = make_synthetic_folder(tmp_path / "d", per_class=6, size=48, easy=True)
    real_split = dataset.make_split
    deleted: list[str] = []

    def split_then_delete(report, *a, **kw):
        split = real_split(report, *a, **kw)
        for s in (split.train[0], split.val[0]):  # one training and one validation image vanish
            os.remove(s.path)
            deleted.append(s.path)
        return split

    monkeypatch.setattr(dataset, "make_split", split_then_delete)
    # one epoch: a validation file lost in the last epoch must still be reported
    info, evs = run_all(fit(cfg(data, tmp_path / "run", epochs=1, freeze=freeze, cache="auto")))
    assert info.status == "finished"
    warned = {e.path for e in evs if isinstance(e, E.Warn) and e.path}
    for p in deleted:
        assert p in warned, (p, [e.message for e in evs if isinstance(e, E.Warn)])
    msgs = [e.message for e in evs if isinstance(e, E.Warn) and e.path == deleted[0]]
    assert len(msgs) == 1 and deleted[0] in msgs[0]


# ---- stop mid-epoch, resume: the same result as never stopping ---------------------------------
def _assert_stop_resume_equals_uninterrupted(tmp_path, **kw):
    data = make_synthetic_folder(tmp_path / "d", per_class=6, size=48, easy=True)
    full_info, full_evs = run_all(fit(cfg(data, tmp_path / "full", epochs=3, batch_size=4, **kw)))
    assert full_info.status == "finished"

    stop = threading.Event()

    def stop_mid_epoch_2(ev):
        if isinstance(ev, E.BatchEnd) and ev.epoch == 1 and ev.batch == 1:
            stop.set()

    info, _ = run_all(fit(cfg(data, tmp_path / "part", epochs=3, batch_size=4, **kw), stop=stop), stop_mid_epoch_2)
    assert info.status == "stopped"
    assert load_ckpt(tmp_path / "part")["epoch"] == 1 and load_ckpt(tmp_path / "part")["batch"] == 2
    info2, evs2 = run_all(resume(tmp_path / "part"))
    assert info2.status == "finished"
    assert next(e for e in evs2 if isinstance(e, E.RunStarted)).start_epoch == 1

    a, b = load_ckpt(tmp_path / "full"), load_ckpt(tmp_path / "part")
    assert a["trainable"] == b["trainable"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    from safetensors.torch import load_file

    best_a = load_file(str(tmp_path / "full" / runs.BEST_WEIGHTS))
    best_b = load_file(str(tmp_path / "part" / runs.BEST_WEIGHTS))
    assert best_a.keys() == best_b.keys() and all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    keys = ("epoch", "train_loss", "val_loss", "val_acc", "val_macro_f1", "lr", "trainable_params")
    hist = [[r[k] for k in keys] for r in runs.read_history(tmp_path / "full")]
    assert hist == [[r[k] for k in keys] for r in runs.read_history(tmp_path / "part")]
    return full_evs, evs2


def test_stop_resume_equals_uninterrupted_with_gradual_unfreezing(tmp_path):
    full_evs, resumed_evs = _assert_stop_resume_equals_uninterrupted(tmp_path, freeze="gradual:1", augment="light")
    assert [e.epoch for e in full_evs if isinstance(e, E.Unfrozen)] == [1, 2]
    # the resumed run starts in epoch 2 with its group already open, and opens the next one at epoch 3
    assert [e.epoch for e in resumed_evs if isinstance(e, E.Unfrozen)] == [2]


def test_stop_resume_equals_uninterrupted_head_only_feature_cache(tmp_path):
    full_evs, _ = _assert_stop_resume_equals_uninterrupted(tmp_path, freeze="head", augment="light", cache="auto")
    started = next(e for e in full_evs if isinstance(e, E.RunStarted))
    assert started.trainable_params < started.total_params / 10  # only the head trains (feature cache path)
    assert any(isinstance(e, E.Log) and e.message.startswith("Feature cache") for e in full_evs)


# ---- the data folder changed between stop and resume -------------------------------------------
def test_resume_refuses_changed_classes_with_a_clear_message(tmp_path):
    """split.json stores labels as indices into the run's classes: resuming on a folder whose
    classes changed must be refused (not a shape-mismatch crash, nor silently shifted labels)."""
    import shutil

    from tlstudio.core.data.synthetic import make_image

    data = make_synthetic_folder(tmp_path / "d", per_class=5, size=48, easy=True)
    run = tmp_path / "run"
    stop = threading.Event()
    info, _ = run_all(fit(cfg(data, run, epochs=2, batch_size=4), stop=stop),
                      lambda ev: stop.set() if isinstance(ev, E.BatchEnd) else None)
    assert info.status == "stopped"
    before = (run / runs.LAST_CKPT).read_bytes()

    import random

    rng = random.Random(0)
    (data / "bar").mkdir()  # a new class: sorts first, so every old label index would shift
    for i in range(5):
        make_image("bar", 48, rng).save(data / "bar" / f"bar_{i}.png")
    with pytest.raises(UserError) as err:
        run_all(resume(run))
    msg = str(err.value)
    assert "classes" in msg and "bar" in msg and str(data) in msg, msg
    assert (run / runs.LAST_CKPT).read_bytes() == before

    shutil.rmtree(data / "bar")  # the folder restored: the run resumes and finishes
    info, _ = run_all(resume(run))
    assert info.status == "finished"


# ---- stopped before training started ---------------------------------------------------------------
def test_stop_during_model_download_ends_with_a_clear_message(tmp_path, monkeypatch):
    """Ctrl+C / Stop while the weights download: a user-facing message, not a bare exception."""
    from tlstudio.core.models import backbones

    def slow_download(*a, progress=None, **kw):
        for i in range(300):  # a download that would take 30 s
            if progress:
                progress(i, 300)
            time.sleep(0.1)
        raise AssertionError("the stop was not honoured")

    monkeypatch.setattr(backbones, "create_model", slow_download)
    data = make_synthetic_folder(tmp_path / "d", per_class=4, size=32, easy=True)
    stop = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(UserError) as err:
        run_all(fit(cfg(data, tmp_path / "run"), stop=stop),
                lambda ev: stop.set() if isinstance(ev, E.Progress) and ev.task == "download" else None)
    assert time.monotonic() - t0 < 20
    assert "stopped" in str(err.value).lower() and "download" in str(err.value).lower(), str(err.value)
