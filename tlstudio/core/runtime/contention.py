"""Training on a CPU that other programs share: threads, OpenMP waiting, priority.

What the profiles showed (resnet18, batch 32, 2-core Zen 4 VM, two busy-loop processes plus the
other work on the machine, benchmarks/RESULTS.md "Issue 18"):

- torch's OpenMP runtime (libgomp) makes a thread that reaches a barrier first spin for ~300,000
  `pause` iterations (several ms on this CPU) before it sleeps. On a quiet machine that saves a
  wake-up; when another program holds the other core, the spinning thread burns its whole time
  slice waiting for a partner that is not running: a 32 px step with 2 threads ran at 1.1-2.5
  img/s against 10 img/s with 1 thread.
- libgomp spins only briefly (1,000 iterations) when it manages more threads than the process
  may use cores. `OMP_WAIT_POLICY=passive` has the same effect but is read once, when libgomp
  loads, before our code runs. `PassiveWaits` gets it inside a running process: it parks one
  sleeping OpenMP team of cores+1 threads, so libgomp counts more threads than cores and every
  waiting thread sleeps almost at once; stopping it restores spinning. Measured: 2 threads at
  32 px under the same load went from 1.7 to 16.5 img/s (1 thread: 9.9).
- With short spins, all cores' threads beat fewer threads even on a shared CPU (the scheduler
  shares per thread), so the thread count stays at the cap and only the waiting changes, unless
  the OpenMP runtime is not libgomp: then fewer threads is the only remedy and is chosen from
  the free cores.

`ContentionMonitor` samples the CPU (runtime/cpu_load.py: /proc/stat, our own CPU time and
runnable threads) when training starts and every few seconds while it runs, and turns
`PassiveWaits` on and off with hysteresis. `lower_priority_for_current_thread()` is for training started from the window.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field
from functools import lru_cache

from tlstudio.core.runtime.cpu_load import CpuLoad, load_from_loadavg, sample_load  # noqa: F401 (re-exported)

QUIET_BELOW = 0.35  # cores' worth of other programs' demand: below = quiet (spinning is fine)
SHARED_FROM = 0.6  # from here on = shared (hysteresis between the two)
RECHECK_S = 5.0  # the monitor re-samples this often while training runs


# --- deciding ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    passive: bool  # OpenMP threads sleep at once when they wait (the CPU is shared)
    others: float  # cores' worth of other programs' demand when decided (capped at cores)
    reason: str  # for the log: "2 of 2 cores busy with other programs: training with 2 threads ..."

    def summary(self) -> str:
        return self.reason


def _cores_phrase(others: float, cores: int) -> str:
    busy = min(cores, int(others + 0.5))
    if busy <= 0:
        return f"{cores} cores free" if cores > 1 else "the core is free"
    return f"{busy} of {cores} cores busy with other programs"


def choose_threads(cores: int, others: float, *, leave_one_core: bool = False, requested: int | None = None,
                   passive_available: bool = True, was_shared: bool | None = None,
                   shared_threads: int | None = None, shared_why: str = "") -> ThreadChoice:
    """Threads and OpenMP waiting for a CPU where other programs demand `others` cores.

    `cores`: cores we may use; `leave_one_core`: the GUI keeps one for the window;
    `requested`: a thread count the user set (wins; waiting still follows the load);
    `passive_available`: short OpenMP spins can be switched on (libgomp); otherwise fewer
    threads is the remedy; `was_shared`: the previous decision, for hysteresis;
    `shared_threads`: fewer threads a timing of this run found faster while the cores are shared
    (step_timing.measured_plan) or bf16 needs there, used only while they are; `shared_why` says why."""
    cores = max(1, int(cores))
    others = max(0.0, float(others))
    cap = max(1, cores - 1) if leave_one_core and cores > 1 else cores
    if was_shared:
        shared = others >= QUIET_BELOW
    else:
        shared = others >= SHARED_FROM
    where = _cores_phrase(others, cores) if shared else (f"{cores} cores free" if cores > 1 else "the core is free")
    if requested:
        n = max(1, min(int(requested), cores))
        return ThreadChoice(n, shared and passive_available, min(others, cores),
                            f"{where}: training with {_n_threads(n)} (set in the settings)")
    if not shared:
        why = " (one core kept for the window)" if cap < cores else ""
        return ThreadChoice(cap, False, min(others, cores), f"{where}: training with {_n_threads(cap)}{why}")
    if shared_threads and shared_threads < cap:
        n = max(1, int(shared_threads))
        why = shared_why or f"timed faster than {cap} here"
        return ThreadChoice(n, False, min(others, cores), f"{where}: training with {_n_threads(n)} ({why})")
    if passive_available:
        why = "; one core kept for the window" if cap < cores else ""
        wait = " that sleep while they wait" if cap > 1 else ""
        return ThreadChoice(cap, True, min(others, cores),
                            f"{where}: training with {_n_threads(cap)}{wait}{why}")
    free = cores - min(float(cores), others)
    n = max(1, min(cap, int(free + 0.5)))
    return ThreadChoice(n, False, min(others, cores), f"{where}: training with {_n_threads(n)}")


def _n_threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


# --- acting --------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def passive_waits_available() -> bool:
    """True when torch runs its CPU kernels on libgomp (Linux wheels): PassiveWaits then works."""
    try:
        import torch

        if "OpenMP" not in torch.__config__.parallel_info():
            return False
        with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
            return any("libgomp" in line for line in f)
    except (OSError, ImportError, AttributeError):
        return False


class PassiveWaits:
    """Process-wide short OpenMP spins while on (see the module docstring). Idempotent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def on(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    def start(self) -> bool:
        """Park the sleeping team; True when it is (or already was) in place."""
        if not passive_waits_available():
            return False
        with self._lock:
            if self.on:
                return True
            from tlstudio.core.runtime.precision import available_cores

            ready = threading.Event()
            stop = self._stop = threading.Event()
            team = available_cores() + 1

            def park() -> None:
                import torch

                # torch.set_num_threads also sets the default for threads created later: put it back
                # after the one parallel region (the team stays until this thread ends)
                saved = torch.get_num_threads()
                try:
                    torch.set_num_threads(team)
                    a = torch.ones(1 << 20)
                    float((a + a).sum())  # one parallel region: libgomp creates (and keeps) the team
                finally:
                    torch.set_num_threads(saved)
                    ready.set()
                stop.wait()

            t = threading.Thread(target=park, name="tlstudio-omp-park", daemon=True)
            t.start()
            ready.wait(10)
            self._thread = t
            return True

    def stop(self) -> None:
        with self._lock:
            t = self._thread
            self._thread = None
            self._stop.set()
        if t is not None:
            t.join(5)  # the thread's end frees its team: libgomp counts fewer threads again


@dataclass
class ContentionMonitor:
    """Decides threads and waiting when training starts and re-checks every RECHECK_S seconds.

    The thread count is applied by the thread that trains (`apply_pending()`: torch's OpenMP
    setting is per thread); the waiting mode is process-wide and switched by the monitor thread.
    """

    leave_one_core: bool = False
    requested: int | None = None
    choice: ThreadChoice | None = None
    changes: list[str] = field(default_factory=list)  # log lines not yet shown
    shared_threads: int | None = None  # fewer threads timed faster while the cores are shared
    shared_why: str = ""  # why (for the log); "" = timed faster
    _load: CpuLoad | None = None  # the last sample decided on
    _pending: int | None = None
    _owner: "weakref.ref | None" = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _waits: PassiveWaits = field(default_factory=PassiveWaits)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def decide(self, load: CpuLoad | None, cores: int) -> ThreadChoice:
        others = 0.0 if load is None else load.others
        prev = self.choice
        if os.environ.get("TLSTUDIO_CPU_SHARING", "").lower() in ("off", "0", "no"):
            # escape hatch and A/B switch: the pre-issue-18 behaviour (all threads, plain spinning)
            cap = self._cap(cores)
            return ThreadChoice(cap, False, others, f"CPU sharing adaptation off: training with {_n_threads(cap)}")
        return choose_threads(cores, others, leave_one_core=self.leave_one_core, requested=self.requested,
                              passive_available=passive_waits_available(),
                              was_shared=None if prev is None else (prev.passive or prev.threads < self._cap(cores)),
                              shared_threads=self.shared_threads, shared_why=self.shared_why)

    def prefer_when_shared(self, n: int, why: str = "") -> ThreadChoice:
        """`n` threads are faster on the shared cores (a timing found it, or `why`): decide again
        with it, now, in the training thread (the one that calls this), and at every re-check while
        the cores are shared."""
        import torch

        from tlstudio.core.runtime.precision import available_cores

        self.shared_threads, self.shared_why = int(n), why
        new = self.decide(self._load, available_cores())
        with self._lock:
            self.choice = new
        torch.set_num_threads(new.threads)
        if new.passive:
            self._waits.start()
        else:
            self._waits.stop()
        return new

    def _cap(self, cores: int) -> int:
        return max(1, cores - 1) if self.leave_one_core and cores > 1 else cores

    def start(self, load: CpuLoad | None = None) -> ThreadChoice:
        """First decision (from `load`, or sampled now), applied to the calling thread."""
        import torch

        from tlstudio.core.runtime.precision import available_cores

        cores = available_cores()
        if load is None:
            load = sample_load(cores=cores)
        self._load = load
        self.choice = self.decide(load, cores)
        torch.set_num_threads(self.choice.threads)
        if self.choice.passive:
            self._waits.start()
        self._owner = weakref.ref(threading.current_thread())
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tlstudio-cpu-monitor", daemon=True)
        self._thread.start()
        return self.choice

    def _run(self) -> None:
        from tlstudio.core.runtime.precision import available_cores

        while not self._stop.wait(RECHECK_S):
            owner = self._owner() if self._owner is not None else None
            if owner is None or not owner.is_alive():
                break
            cores = available_cores()
            self._load = sample_load(cores=cores)
            new = self.decide(self._load, cores)
            self.update(new)
        self._waits.stop()

    def update(self, new: ThreadChoice) -> None:
        """Take a new decision: switch waiting now, leave the thread count to the training thread."""
        old = self.choice
        with self._lock:
            self.choice = new
            if old is not None and (new.passive != old.passive or new.threads != old.threads):
                self.changes.append("CPU load changed: " + new.reason)
                if new.threads != old.threads:
                    self._pending = new.threads
        if new.passive:
            self._waits.start()
        else:
            self._waits.stop()

    def apply_pending(self) -> None:
        """Called by the training thread (every batch): applies a changed thread count."""
        if self._pending is None:
            return
        owner = self._owner() if self._owner is not None else None
        if owner is not threading.current_thread():
            return
        import torch

        with self._lock:
            n, self._pending = self._pending, None
        if n is not None:
            torch.set_num_threads(n)

    def take_changes(self) -> list[str]:
        with self._lock:
            out, self.changes = self.changes, []
        return out

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(5)
        self._waits.stop()

    @property
    def passive(self) -> bool:
        return self._waits.on


_current: ContentionMonitor | None = None
_current_lock = threading.Lock()


def start_monitor(leave_one_core: bool, requested: int | None = None, load: CpuLoad | None = None) -> ThreadChoice:
    """Replace the process's monitor with a new one for a run starting in this thread."""
    global _current
    with _current_lock:
        old, _current = _current, ContentionMonitor(leave_one_core=leave_one_core, requested=requested)
        mon = _current
    if old is not None:
        old.stop()
    return mon.start(load)


def current_monitor() -> ContentionMonitor | None:
    return _current


def stop_monitor() -> None:
    """The last run ended: back to plain spinning, no sampling."""
    global _current
    with _current_lock:
        mon, _current = _current, None
    if mon is not None:
        mon.stop()


def apply_thread_changes() -> None:
    """Training-thread hook (the batch pipeline calls it before each batch): applies a thread
    count changed by a re-check; a no-op in other threads and when nothing changed."""
    mon = _current
    if mon is not None:
        mon.apply_pending()


def take_log_lines() -> list[str]:
    """Log lines about load changes since the last call (the training loop shows them)."""
    mon = _current
    return [] if mon is None else mon.take_changes()


# --- priority --------------------------------------------------------------------------------

def lower_priority_for_current_thread(step: int = 5) -> str | None:
    """Raise the nice value of the calling thread by `step` (Linux: per thread), so a training
    started from the window yields to the UI thread. Threads it creates afterwards (torch's OpenMP
    team, the batch pipeline) inherit it: call it before the first torch operation in that
    thread. Returns a log line, or None where not supported. Cannot be undone without privileges:
    call it only in a thread that ends with the job."""
    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return None
    tid = threading.get_native_id()
    try:
        now = os.getpriority(os.PRIO_PROCESS, tid)
        new = min(19, now + int(step))
        os.setpriority(os.PRIO_PROCESS, tid, new)
    except OSError:
        return None
    return f"training thread priority lowered (nice {now} -> {new}) so the window stays responsive"
