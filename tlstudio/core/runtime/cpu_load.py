"""What other programs take from the CPU cores this process may use (issue 18).

Sampled from /proc/stat over a short window: busy jiffies of the whole machine minus this
process's own CPU time is what other programs got. What they want (their demand) can be more
when the cores are saturated: they and we then share the cores in proportion to runnable threads,
so their demand is our runnable threads x their share / ours. Only cumulative counters enter
that estimate. An earlier one, the machine's runnable threads (procs_running) minus ours, read
the two counts at different instants; with a training run's threads switching between running
and waiting it read a median of 0.25-0.75 cores of "other programs" on an idle machine, up to
2.0 (benchmarks/bench_load_reading.py; the new estimate: at most 0.07), and a quiet run dropped
to one thread. The load average stands in where /proc is missing.
runtime/contention.py decides threads and OpenMP waiting from it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuLoad:
    """What other programs take from the cores this process may use, over one sample window."""

    cores: int
    other_busy: float  # cores' worth of CPU time other programs got (0..cores)
    # their demand in cores: what they got, or more when no core was idle (may exceed cores)
    other_runnable: float

    @property
    def others(self) -> float:
        """Demand of other programs in cores (capped at `cores`): what we compete with."""
        return min(float(self.cores), max(self.other_busy, self.other_runnable))


def _read_proc_stat() -> tuple[float, float] | None:
    """(busy jiffies, total jiffies) of the whole machine from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("cpu "):
            v = [float(x) for x in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
            v += [0.0] * (8 - len(v))
            total = sum(v)
            if total <= 0:
                return None
            return total - v[3] - v[4], total  # steal counts as busy: another VM had the core
    return None


def _own_running_threads() -> int:
    """Threads of this process in state R (running or ready), from /proc/self/task."""
    n = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii", errors="replace") as f:
                s = f.read()
        except OSError:
            continue
        state = s[s.rfind(")") + 2:s.rfind(")") + 3]
        if state == "R":
            n += 1
    return n


SATURATED_IDLE = 0.2  # cores left idle below which the machine counts as saturated
MIN_OWN_CORES = 0.05  # less of our own use says too little about the split


def _system_cpus() -> int:
    return max(1, os.cpu_count() or 1)


def sample_load(window_s: float = 0.3, polls: int = 6, cores: int | None = None) -> CpuLoad | None:
    """Measure other programs' CPU use over `window_s`; None where /proc is not available."""
    from tlstudio.core.runtime.precision import available_cores

    cores = cores or available_cores()
    a = _read_proc_stat()
    if a is None:
        return None
    own0 = time.process_time()
    ours = []  # our runnable threads, less this sampling one
    for _ in range(max(1, polls)):
        time.sleep(window_s / max(1, polls))
        ours.append(max(0, _own_running_threads() - 1))
    b = _read_proc_stat()
    own = time.process_time() - own0
    if b is None:
        return None
    d_total = b[1] - a[1]
    if d_total <= 0:
        return None
    ncpu = _system_cpus()
    wall_jiffies = d_total / ncpu
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = (b[0] - a[0]) / wall_jiffies  # cores' worth, whole machine
    own_cores = own * hz / wall_jiffies
    other = max(0.0, busy - own_cores)
    demand = other
    threads = sum(ours) / len(ours)
    if ncpu - busy < SATURATED_IDLE and own_cores > MIN_OWN_CORES and threads > 0:
        # no idle core: they and we split the cores by runnable threads (the scheduler's fair share)
        demand = max(other, threads * other / own_cores)
    # the machine may have more CPUs than we may use: scale to our share of them
    scale = cores / ncpu
    return CpuLoad(cores=cores, other_busy=round(other * scale, 2), other_runnable=round(demand * scale, 2))


class LoadSample:
    """`sample_load` running in the background while a run sets itself up (scan, model), so the
    thread choice does not wait out its window. The sample subtracts this process's own CPU time
    and running threads, so the set-up work does not count as other programs' load."""

    # half the monitor's window: a short run's set-up (scan, model) is often over before 0.3 s,
    # and the readings stay apart at 0.15 s (bench_load_reading.py --window 0.15: idle at most
    # 0.13 cores, 1 busy loop at least 0.66, 2 at least 1.64; shared from 0.6)
    WINDOW_S, POLLS = 0.15, 3

    def __init__(self, **kw) -> None:
        import threading

        kw = {"window_s": self.WINDOW_S, "polls": self.POLLS, **kw}
        self._load: CpuLoad | None = None
        self._done_at = 0.0
        self._thread = threading.Thread(target=self._run, kwargs=kw, name="tlstudio-cpu-sample", daemon=True)
        self._thread.start()

    MAX_AGE_S = 10.0  # older (a long download, a big scan): the monitor samples afresh

    def _run(self, **kw) -> None:
        try:
            self._load = sample_load(**kw)
        except Exception:  # noqa: BLE001 - no sample: the monitor samples again itself
            self._load = None
        self._done_at = time.monotonic()

    def result(self, timeout: float = 2.0) -> CpuLoad | None:
        """The sample, or None when it is not there (yet), failed, or is too old to decide on."""
        self._thread.join(timeout)
        if self._thread.is_alive() or time.monotonic() - self._done_at > self.MAX_AGE_S:
            return None
        return self._load


def load_from_loadavg(cores: int, own_threads: float = 0.0) -> CpuLoad | None:
    """A coarse stand-in where /proc/stat is missing (macOS): the 1-minute load average."""
    try:
        la = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    other = max(0.0, la - own_threads)
    return CpuLoad(cores=cores, other_busy=min(float(cores), other), other_runnable=other)
