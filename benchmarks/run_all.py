"""Run every benchmark (--quick by default) and print a summary of the ratios.

    python benchmarks/run_all.py            # quick versions, a few minutes each on 2 cores
    python benchmarks/run_all.py --full     # the sizes used for RESULTS.md
    python benchmarks/run_all.py --only throughput,flops

bench_scan.py (benchmark 5, owned by the data helper) runs too when it is present.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ("throughput", "bench_throughput.py", "1. engine-style training vs bare fp32 loop (target >= 2.5x resnet18)"),
    ("feature_cache", "bench_feature_cache.py", "2. head-only: cached-feature epoch vs full forward (target >= 30x)"),
    ("decoded_cache", "bench_decoded_cache.py", "3. decoded-cache epoch vs decoding JPEGs (target >= 3x)"),
    ("flops", "bench_flops.py", "4. achieved training FLOP/s / matmul peak"),
    ("scan", "bench_scan.py", "5. scan of many images (data helper)"),
    ("memory_budget", "bench_memory_budget.py", "6. peak memory, data set 4x the cache budget"),
    ("contention", "bench_contention.py", "7. training with 2 busy-loop processes competing vs bare fp32 loops (issue 18: >= 2x)"),
    ("load_reading", "bench_load_reading.py", "8. the CPU-load reading under 0/1/2 busy loops (right answers 0, 1, 2 cores)"),
    ("head_fit", "bench_head_fit.py", "9. the L-BFGS head fit before head-only epochs: seconds, and vs 10 epochs"),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="full sizes instead of --quick")
    ap.add_argument("--only", default="", help="comma-separated names: " + ",".join(b[0] for b in BENCHES))
    a = ap.parse_args()
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    summary, failed = [], []
    for name, script, what in BENCHES:
        if only and name not in only:
            continue
        path = HERE / script
        if not path.exists():
            summary.append((what, "not present"))
            continue
        quick: list[str] = []
        if not a.full:
            src = path.read_text(encoding="utf-8")
            if '"--quick"' in src:
                quick = ["--quick"]
            elif name == "scan" and '"--n"' in src:
                quick = ["--n", "20000"]  # the scan benchmark has no --quick: a smaller folder instead
        cmd = [sys.executable, str(path)] + quick
        print(f"\n=== {what}\n$ {' '.join(cmd)}", flush=True)
        t = time.time()
        proc = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
        print(proc.stdout, end="")
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            failed.append(name)
            summary.append((what, f"FAILED (exit {proc.returncode})"))
            continue
        res = None
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                res = json.loads(line[7:])
        ratios = ", ".join(f"{k}={v}" for k, v in (res or {}).get("ratios", {}).items()) or "(no ratios printed)"
        summary.append((what, f"{ratios}  [{time.time() - t:.0f} s]"))
    print("\n=== summary")
    for what, res in summary:
        print(f"- {what}: {res}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
