"""Benchmark: time from launch to the main window first shown (issue 3: within 1.5 s).

Each repeat starts a fresh Python process (nothing cached in memory from the previous one)
that builds the QApplication and the MainWindow exactly as ``run_app`` does and reports when
the window's first show event was processed. The time counts from just before the process
was spawned (interpreter start-up and every import included). Also reported: whether torch
or timm were imported before the window showed (they must not be), and the time to the
first paint of the Data panel's drop hint. Offscreen unless a display is given.

    python benchmarks/bench_gui_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys, time, json
from PySide6.QtCore import QObject, QEvent, QTimer
from tlstudio.gui.app import make_app, setup_logging, install_excepthook
setup_logging(); install_excepthook()
app = make_app()
from tlstudio.gui.main_window import MainWindow
win = MainWindow()
out = {}
class Spy(QObject):
    def eventFilter(self, obj, ev):
        if ev.type() == QEvent.Type.Show and "show" not in out:
            out["show"] = time.time()
            out["heavy_before_show"] = [m for m in ("torch", "timm") if m in sys.modules]
        if ev.type() == QEvent.Type.Paint and "paint" not in out:
            out["paint"] = time.time()
        return False
spy = Spy()
win.installEventFilter(spy)
win.panel("data").hint.installEventFilter(spy)
win.show()
QTimer.singleShot(300, app.quit)
app.exec()
print("RESULT " + json.dumps(out), flush=True)
"""


def one_run() -> dict:
    env = dict(os.environ)
    env.setdefault("QT_QPA_PLATFORM", "offscreen" if not env.get("DISPLAY") else env.get("QT_QPA_PLATFORM", "xcb"))
    env["TLSTUDIO_HOME"] = tempfile.mkdtemp(prefix="tls-bench-")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"child failed ({p.returncode}): {p.stderr[-1500:]}")
    r = json.loads(line[7:])
    return {"show_s": r["show"] - t0, "paint_s": r.get("paint", r["show"]) - t0,
            "heavy_before_show": r["heavy_before_show"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    one_run()  # warm the OS file cache (a user's second launch)
    runs = [one_run() for _ in range(args.repeats)]
    shows = [r["show_s"] for r in runs]
    paints = [r["paint_s"] for r in runs]
    heavy = sorted({m for r in runs for m in r["heavy_before_show"]})
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"window first shown: median {statistics.median(shows):.2f} s, min {min(shows):.2f} s, "
          f"max {max(shows):.2f} s over {len(runs)} launches (target < 1.5 s)")
    print(f"first paint of the Data panel: median {statistics.median(paints):.2f} s")
    print(f"torch/timm imported before the window showed: {heavy or 'no'}")
    print(f"machine load average while measuring: {load:.1f} on {os.cpu_count()} cores")
    print(json.dumps({"bench": "gui_startup", "show_median_s": round(statistics.median(shows), 3),
                      "show_min_s": round(min(shows), 3), "paint_median_s": round(statistics.median(paints), 3),
                      "heavy_before_show": heavy, "load": load}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
