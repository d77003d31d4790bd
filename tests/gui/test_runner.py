"""JobRunner with fake event generators: order, return value, stop, pause, failures."""

from __future__ import annotations

import threading
import time

import pytest

from tlstudio.core.events import BatchEnd, Finished, Log
from tlstudio.gui.runner import JobRunner


def _batch(i: int) -> BatchEnd:
    return BatchEnd(epoch=0, batch=i, batches=1000, step=i, loss=1.0 / (i + 1), lr=1e-3, images_per_s=10.0)


def fake_fit(n: int, delay: float = 0.0, fail_at: int | None = None):
    """A stand-in for engine.fit: checks stop every batch and returns a final value."""

    def factory(stop: threading.Event, pause: threading.Event):
        done = 0
        for i in range(n):
            if stop.is_set():
                yield Finished(run_dir="x", status="stopped", best_epoch=None, best_val_acc=None)
                return {"status": "stopped", "done": done}
            if fail_at is not None and i == fail_at:
                raise ValueError("loss became NaN at batch %d" % i)
            if delay:
                time.sleep(delay)
            done += 1
            yield _batch(i)
        return {"status": "finished", "done": done}

    return factory


class _Runner(JobRunner):
    """Fake jobs never touch torch: skip the serialised torch import."""

    def start(self, factory, owner=None, *, needs_torch=False):
        super().start(factory, owner, needs_torch=needs_torch)


@pytest.fixture
def runner(qtbot):
    r = _Runner()
    yield r
    r.stop()
    r.wait(5000)


def test_events_in_order_then_finished(qtbot, runner):
    got = []
    runner.event.connect(got.append)
    with qtbot.waitSignal(runner.finished, timeout=5000) as blocker:
        runner.start(fake_fit(200))
        assert runner.running
    assert blocker.args[0] == {"status": "finished", "done": 200}
    assert [e.batch for e in got] == list(range(200))
    assert not runner.running


def test_running_changed_emitted(qtbot, runner):
    states = []
    runner.running_changed.connect(states.append)
    with qtbot.waitSignal(runner.finished, timeout=5000):
        runner.start(fake_fit(3))
    assert states == [True, False]


def test_cannot_start_twice(qtbot, runner):
    runner.start(fake_fit(1000, delay=0.005))
    with pytest.raises(RuntimeError):
        runner.start(fake_fit(1))
    with qtbot.waitSignal(runner.finished, timeout=5000):
        runner.stop()


def test_stop_is_honoured_by_the_generator(qtbot, runner):
    got = []
    runner.event.connect(got.append)
    runner.start(fake_fit(100_000, delay=0.002))
    qtbot.waitUntil(lambda: len(got) >= 5, timeout=5000)
    with qtbot.waitSignal(runner.finished, timeout=5000) as blocker:
        runner.stop()
    result = blocker.args[0]
    assert result["status"] == "stopped"
    assert 5 <= result["done"] < 100_000
    assert isinstance(got[-1], Finished) and got[-1].status == "stopped"


def test_exception_reaches_failed_with_traceback_and_runner_is_reusable(qtbot, runner):
    got = []
    runner.event.connect(got.append)
    with qtbot.waitSignal(runner.failed, timeout=5000) as blocker:
        runner.start(fake_fit(10, fail_at=4))
    message, tb = blocker.args
    assert "ValueError" in message and "NaN at batch 4" in message
    assert "Traceback" in tb and "in factory" in tb and "raise ValueError" in tb
    assert len(got) == 4  # the events before the failure were all delivered
    assert not runner.running
    # the app stays usable: a new job runs to the end
    with qtbot.waitSignal(runner.finished, timeout=5000) as blocker:
        runner.start(fake_fit(3))
    assert blocker.args[0]["done"] == 3


def test_exception_in_factory_itself(qtbot, runner):
    def bad_factory(stop, pause):
        raise FileNotFoundError("/nope: no such data folder")

    with qtbot.waitSignal(runner.failed, timeout=5000) as blocker:
        runner.start(bad_factory)
    assert "no such data folder" in blocker.args[0]


def test_pause_holds_and_resume_continues(qtbot, runner):
    got = []
    runner.event.connect(got.append)
    paused = []
    runner.paused_changed.connect(paused.append)
    runner.start(fake_fit(300, delay=0.002))
    qtbot.waitUntil(lambda: len(got) >= 3, timeout=5000)
    runner.pause()
    assert runner.paused
    qtbot.wait(150)  # let the in-flight event arrive
    n = len(got)
    qtbot.wait(300)
    assert len(got) <= n + 1  # held (at most the event being produced when pause was set)
    assert runner.running
    with qtbot.waitSignal(runner.finished, timeout=10_000) as blocker:
        runner.resume()
    assert blocker.args[0]["done"] == 300
    assert paused == [True, False]


def test_pause_flag_is_passed_to_the_generator(qtbot, runner):
    seen = {}

    def factory(stop, pause):
        seen["stop"], seen["pause"] = stop, pause
        yield Log("hello")
        return 1

    with qtbot.waitSignal(runner.finished, timeout=5000):
        runner.start(factory)
    assert isinstance(seen["stop"], threading.Event) and isinstance(seen["pause"], threading.Event)


def test_stop_while_paused_ends_the_job(qtbot, runner):
    runner.start(fake_fit(100_000, delay=0.002))
    qtbot.wait(50)
    runner.pause()
    qtbot.wait(50)
    with qtbot.waitSignal(runner.finished, timeout=5000) as blocker:
        runner.stop()
    assert blocker.args[0]["status"] == "stopped"


def test_wait_for_clean_shutdown(qtbot, runner):
    results = []
    runner.finished.connect(results.append)
    runner.start(fake_fit(100_000, delay=0.002))
    qtbot.wait(30)
    runner.stop()
    assert runner.wait(5000)
    assert not runner.running
    assert results and results[0]["status"] == "stopped"


def test_jobs_import_torch_serialised_with_the_preload(qtbot, monkeypatch):
    """Two threads importing torch at once fail half-way: every job goes through heavy.ensure_imported."""
    import tlstudio.gui.heavy as heavy

    calls = []
    monkeypatch.setattr(heavy, "ensure_imported", lambda: calls.append(threading.current_thread().name))
    r = JobRunner()
    with qtbot.waitSignal(r.finished, timeout=5000):
        r.start(fake_fit(2))
    assert len(calls) == 1 and calls[0] != threading.main_thread().name
    with qtbot.waitSignal(r.finished, timeout=5000):
        r.start(fake_fit(2), needs_torch=False)
    assert len(calls) == 1


def test_runner_deleted_mid_job_does_not_abort(qtbot):
    """A panel (and its runner) going away during a job must not destroy the running QThread."""
    import gc

    from PySide6.QtWidgets import QWidget

    from tlstudio.gui import runner as runner_mod

    owner = QWidget()
    r = JobRunner(owner)
    r.start(fake_fit(50, delay=0.01), needs_torch=False)
    th = r._thread
    r.stop()
    owner.deleteLater()
    del owner, r
    qtbot.wait(50)
    gc.collect()
    assert th in runner_mod._LIVE  # still referenced while it runs
    assert th.wait(5000)  # it ends by itself (stop was set); no abort


def test_wait_all_waits_for_every_job():
    from tlstudio.gui import runner as runner_mod

    r1, r2 = JobRunner(), JobRunner()
    r1.start(fake_fit(20, delay=0.01), needs_torch=False)
    r2.start(fake_fit(20, delay=0.01), needs_torch=False)
    t1, t2 = r1._thread, r2._thread
    assert runner_mod.wait_all(10_000)
    assert t1.isFinished() and t2.isFinished()
