"""Sharing the CPU (issue 18): thread/waiting decisions from given loads, load sampling from given
/proc numbers, the passive-waits switch, re-checks applied by the training thread, priority."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from tlstudio.core.runtime import contention as C
from tlstudio.core.runtime import cpu_load as L


@pytest.fixture(autouse=True)
def _no_monitor():
    old = torch.get_num_threads()
    yield
    C.stop_monitor()
    torch.set_num_threads(old)


def test_quiet_cpu_uses_every_core_and_spins():
    c = C.choose_threads(2, 0.1)
    assert (c.threads, c.passive) == (2, False)
    assert c.reason == "2 cores free: training with 2 threads"
    c = C.choose_threads(2, 0.1, leave_one_core=True)
    assert (c.threads, c.passive) == (1, False) and "one core kept for the window" in c.reason
    assert C.choose_threads(1, 0.0, leave_one_core=True).threads == 1


def test_shared_cpu_sleeps_instead_of_spinning():
    c = C.choose_threads(2, 2.0)
    assert (c.threads, c.passive) == (2, True)
    assert c.reason == "2 of 2 cores busy with other programs: training with 2 threads that sleep while they wait"
    c = C.choose_threads(4, 1.2, leave_one_core=True)
    assert (c.threads, c.passive) == (3, True) and c.reason.startswith("1 of 4 cores busy")


def test_without_passive_waits_fewer_threads_from_the_free_cores():
    assert C.choose_threads(2, 2.0, passive_available=False).threads == 1
    assert C.choose_threads(4, 1.0, passive_available=False).threads == 3
    assert C.choose_threads(4, 2.6, passive_available=False).threads == 1
    c = C.choose_threads(2, 1.0, passive_available=False)
    assert (c.threads, c.passive) == (1, False) and "training with 1 thread" in c.reason


def test_requested_threads_win_and_hysteresis():
    c = C.choose_threads(2, 2.0, requested=1)
    assert c.threads == 1 and c.passive and "set in the settings" in c.reason
    assert C.choose_threads(2, 0.0, requested=8).threads == 2  # never more than the cores
    # between the two thresholds the previous state is kept
    mid = (C.QUIET_BELOW + C.SHARED_FROM) / 2
    assert C.choose_threads(2, mid, was_shared=True).passive
    assert not C.choose_threads(2, mid, was_shared=False).passive


def test_cpu_load_others_is_capped_demand():
    assert C.CpuLoad(2, other_busy=0.4, other_runnable=9.0).others == 2.0
    assert C.CpuLoad(4, other_busy=1.5, other_runnable=0.2).others == 1.5


def test_sample_load_subtracts_our_own_cpu_time(monkeypatch):
    # 2 CPUs, 100 Hz: over the window the machine was busy 150 of 200 jiffies (1.5 cores);
    # we used 0.5 s of CPU (0.5 core over 1 s), so other programs used 1.0 core; half a core idle:
    # they got what they wanted
    _fake_window(monkeypatch, busy_jiffies=150, own_cpu_s=0.5, own_threads=[2, 2, 2])
    load = L.sample_load(window_s=1.0, polls=3, cores=2)
    assert load == C.CpuLoad(cores=2, other_busy=1.0, other_runnable=1.0)


def test_sample_load_infers_demand_when_no_core_is_idle(monkeypatch):
    """2 busy programs and our 1 training thread on 2 cores: each runnable thread gets 2/3 of a
    core, so they got 1.33 cores and we 0.67; their demand is 1 x 1.33 / 0.67 = 2 cores."""
    _fake_window(monkeypatch, busy_jiffies=200, own_cpu_s=2 / 3, own_threads=[2, 2, 2])  # 1 + the sampler
    load = L.sample_load(window_s=1.0, polls=3, cores=2)
    assert load.other_busy == pytest.approx(1.33, abs=0.01) and load.other_runnable == pytest.approx(2.0, abs=0.02)
    assert load.others == 2.0
    # a quiet machine that we keep busy on both cores: nobody else, whatever our thread count
    _fake_window(monkeypatch, busy_jiffies=200, own_cpu_s=2.0, own_threads=[5, 3, 4])
    assert L.sample_load(window_s=1.0, polls=3, cores=2).others == 0.0


def _fake_window(monkeypatch, busy_jiffies: float, own_cpu_s: float, own_threads: list[int]) -> None:
    """One 1 s window on 2 CPUs at 100 Hz: the machine busy ``busy_jiffies`` of 200."""
    stats = iter([(1000.0, 4000.0), (1000.0 + busy_jiffies, 4200.0)])
    clock = iter([10.0, 10.0 + own_cpu_s])
    threads = iter(own_threads)
    monkeypatch.setattr(L, "_read_proc_stat", lambda: next(stats))
    monkeypatch.setattr(L, "_own_running_threads", lambda: next(threads))
    monkeypatch.setattr(L, "_system_cpus", lambda: 2)
    monkeypatch.setattr(L.time, "process_time", lambda: next(clock))
    monkeypatch.setattr(L.time, "sleep", lambda s: None)
    monkeypatch.setattr(os, "sysconf", lambda name: 100)


def test_sample_load_none_without_proc(monkeypatch):
    monkeypatch.setattr(L, "_read_proc_stat", lambda: None)
    assert L.sample_load(cores=2) is None


def test_read_proc_stat_here():
    s = L._read_proc_stat()
    if s is None:
        pytest.skip("no /proc/stat")
    busy, total = s
    assert 0 <= busy <= total


def test_passive_waits_switch_keeps_thread_settings():
    if not C.passive_waits_available():
        pytest.skip("torch does not run on libgomp here")
    torch.set_num_threads(1)
    w = C.PassiveWaits()
    assert w.start() and w.on
    assert w.start() and w.on  # idempotent
    parked = [t for t in threading.enumerate() if t.name == "tlstudio-omp-park"]
    assert len(parked) == 1
    assert torch.get_num_threads() == 1  # the caller's setting is untouched
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [1]  # nor the default for threads created later
    w.stop()
    assert not w.on and not [t for t in threading.enumerate() if t.name == "tlstudio-omp-park"]


def test_threads_timed_faster_on_shared_cores_are_kept_only_while_shared(monkeypatch):
    c = C.choose_threads(2, 2.0, shared_threads=1)
    assert (c.threads, c.passive) == (1, False) and c.reason.endswith("training with 1 thread (timed faster than 2 here)")
    assert C.choose_threads(2, 0.0, shared_threads=1).threads == 2  # quiet again: every core
    assert C.choose_threads(2, 2.0, shared_threads=1, requested=2).threads == 2  # the user's setting wins
    monkeypatch.setattr(C, "RECHECK_S", 3600)
    monkeypatch.setattr(C, "passive_waits_available", lambda: True)
    busy = C.CpuLoad(cores=2, other_busy=2.0, other_runnable=5.0)
    assert C.start_monitor(False, load=busy).threads == 2
    mon = C.current_monitor()
    choice = mon.prefer_when_shared(1)
    assert choice.threads == 1 and torch.get_num_threads() == 1 and not mon.passive
    assert mon.decide(busy, 2).threads == 1  # re-checks keep it while the cores are shared
    assert mon.decide(C.CpuLoad(cores=2, other_busy=0.0, other_runnable=0.0), 2).threads == 2
    # a reason other than a timing (bf16's spinning convolutions) is what the log says
    choice = mon.prefer_when_shared(1, "bf16 convolutions spin-wait between threads on shared cores")
    assert choice.reason.endswith("training with 1 thread (bf16 convolutions spin-wait between threads on shared cores)")
    C.stop_monitor()


def test_monitor_decides_switches_and_applies_threads_in_the_training_thread(monkeypatch):
    monkeypatch.setattr(C, "RECHECK_S", 3600)  # no background re-check during the test
    monkeypatch.setattr(C, "passive_waits_available", lambda: False)  # thread counts change instead
    busy = C.CpuLoad(cores=2, other_busy=2.0, other_runnable=5.0)
    choice = C.start_monitor(False, load=busy)
    assert choice.threads == 1 and torch.get_num_threads() == 1
    mon = C.current_monitor()
    mon.update(mon.decide(C.CpuLoad(cores=2, other_busy=0.0, other_runnable=0.0), 2))
    # another thread (the window's) does not take the change
    t = threading.Thread(target=C.apply_thread_changes)
    t.start()
    t.join()
    assert torch.get_num_threads() == 1
    C.apply_thread_changes()  # the training thread does
    assert torch.get_num_threads() == 2
    assert C.take_log_lines() == ["CPU load changed: 2 cores free: training with 2 threads"]
    assert C.take_log_lines() == []


def test_a_load_sampled_during_set_up_is_used_without_sampling_again(monkeypatch):
    """The run starts sampling the CPU load while it scans and builds the model; the thread choice
    takes that sample instead of waiting out a window of its own."""
    from tlstudio.core.runtime import precision

    monkeypatch.setattr(C, "RECHECK_S", 3600)
    busy = C.CpuLoad(cores=2, other_busy=2.0, other_runnable=4.0)
    calls = []

    def fake_sample(**kw):
        calls.append(kw)
        return busy

    monkeypatch.setattr(L, "sample_load", fake_sample)
    monkeypatch.setattr(C, "sample_load", fake_sample)
    pending = L.LoadSample(cores=2)
    assert pending.result() == busy and len(calls) == 1
    precision.set_threads(False, load=pending.result())
    assert len(calls) == 1  # not sampled again
    mon = C.current_monitor()
    assert mon._load == busy and mon.choice.others == pytest.approx(2.0)
    C.stop_monitor()


def test_a_failed_background_sample_leaves_the_choice_to_the_monitor(monkeypatch):
    def broken(**kw):
        raise OSError("no /proc")

    monkeypatch.setattr(L, "sample_load", broken)
    assert L.LoadSample().result() is None


def test_a_stale_background_sample_is_not_used(monkeypatch):
    """Set-up that took long (a download) makes the early sample stale: the monitor samples afresh."""
    monkeypatch.setattr(L, "sample_load", lambda **kw: C.CpuLoad(cores=2, other_busy=0.0, other_runnable=0.0))
    pending = L.LoadSample()
    assert pending.result() is not None
    monkeypatch.setattr(L.LoadSample, "MAX_AGE_S", -1.0)
    assert pending.result() is None


def test_end_of_last_training_stops_the_monitor(monkeypatch):
    from tlstudio.core.runtime.allocator import training_allocator

    monkeypatch.setattr(C, "RECHECK_S", 3600)
    with training_allocator():
        C.start_monitor(False, load=C.CpuLoad(cores=2, other_busy=0.0, other_runnable=0.0))
        assert C.current_monitor() is not None
    assert C.current_monitor() is None
    assert not [t for t in threading.enumerate() if t.name == "tlstudio-cpu-monitor" and t.is_alive()]


def test_sharing_off_switch(monkeypatch):
    monkeypatch.setenv("TLSTUDIO_CPU_SHARING", "off")
    monkeypatch.setattr(C, "RECHECK_S", 3600)
    c = C.start_monitor(False, load=C.CpuLoad(cores=2, other_busy=2.0, other_runnable=9.0))
    assert not c.passive and c.threads == C.ContentionMonitor()._cap(2) and "off" in c.reason


def test_lower_priority_for_current_thread_only_that_thread():
    if not hasattr(os, "setpriority"):
        pytest.skip("no setpriority")
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    out = {}

    def job():
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        out["msg"] = C.lower_priority_for_current_thread(3)
        out["delta"] = os.getpriority(os.PRIO_PROCESS, tid) - before
        child = {}
        t2 = threading.Thread(target=lambda: child.setdefault(
            "n", os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        t2.start()
        t2.join()
        out["child"] = child["n"] - before  # threads it starts afterwards inherit it

    t = threading.Thread(target=job)
    t.start()
    t.join()
    assert out["msg"] and "priority lowered" in out["msg"]
    expected = min(19, main_nice + 3) - main_nice
    assert out["delta"] == expected and out["child"] == expected
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice
