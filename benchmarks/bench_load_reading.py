"""Benchmark 8 (issue 18): does the CPU-load reading see other programs, and only them?

While this process trains (resnet18 bf16 steps at 64 px on 1 or 2 torch threads, plus two numpy
threads standing in for the data pipeline), N busy-loop processes (0, 1, 2) compete for the
cores, and the load is sampled as the training run samples it (`cpu_load.sample_load`, 0.3 s
windows). Printed per condition: the shipped estimate of other programs' demand (cores) and,
for comparison, the earlier estimate (the machine's runnable threads from /proc/stat minus this
process's running threads, read a moment later), as min / median / max over the samples.
The right answers are 0, 1 and 2 cores; the training run treats >= 0.6 as shared.

    python benchmarks/bench_load_reading.py              # 0, 1, 2 busy loops x 1, 2 threads, 12 samples
    python benchmarks/bench_load_reading.py --samples 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _old_estimate(cl, window_s: float = 0.3, polls: int = 6) -> float:
    """The replaced reading: mean over polls of procs_running minus our running threads."""
    demand = []
    for _ in range(polls):
        time.sleep(window_s / polls)
        with open("/proc/stat", encoding="ascii") as f:
            running = next(int(line.split()[1]) for line in f if line.startswith("procs_running"))
        demand.append(max(0, running - cl._own_running_threads()))
    return min(2.0, statistics.mean(demand))


def _train_load(threads: int, stop: threading.Event) -> threading.Thread:
    import numpy as np
    import timm
    import torch
    from concurrent.futures import ThreadPoolExecutor

    torch.set_num_threads(threads)
    model = timm.create_model("resnet18", num_classes=4)
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 4, (32,))
    pool = ThreadPoolExecutor(2)

    def pipeline_work() -> None:
        a = np.random.rand(200, 200)
        for _ in range(20):
            a = a @ a / 200

    def loop() -> None:
        torch.set_num_threads(threads)
        while not stop.is_set():
            futs = [pool.submit(pipeline_work) for _ in range(2)]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            for f in futs:
                f.result()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=12)
    p.add_argument("--compete", default="0,1,2")
    p.add_argument("--threads", default="2,1")
    p.add_argument("--window", type=float, default=0.3, help="seconds per sample (the training run's: 0.3)")
    args = p.parse_args()
    from bench_contention import competition
    from common import print_machine

    from tlstudio.core.runtime import cpu_load as cl

    print_machine()
    print("| busy loops | our torch threads | shipped estimate min / median / max | earlier estimate min / median / max |")
    print("|---|---|---|---|")
    fmt = lambda v: f"{min(v):.2f} / {statistics.median(v):.2f} / {max(v):.2f}"  # noqa: E731
    medians: dict[str, float] = {}
    for n in (int(v) for v in args.compete.split(",")):
        for threads in (int(v) for v in args.threads.split(",")):
            stop = threading.Event()
            with competition(n, 60 + 2 * args.samples):
                t = _train_load(threads, stop)
                time.sleep(2.0)  # the training load settles
                new, old = [], []
                for _ in range(args.samples):
                    new.append(cl.sample_load(window_s=args.window, cores=2).others)
                    old.append(_old_estimate(cl))
                stop.set()
                t.join()
            print(f"| {n} | {threads} | {fmt(new)} | {fmt(old)} |", flush=True)
            medians[f"{n}busy_{threads}threads_median_cores"] = round(statistics.median(new), 2)
    print("RESULT " + json.dumps({"bench": "load_reading", "ratios": medians}))


if __name__ == "__main__":
    main()
