"""Which ordering rule puts the candidate that fine-tunes best first? Offline, on saved check runs.

  python benchmarks/bench_rank.py check --seed S --dump DIR_S --json CHECK_S.json   # for several S
  python benchmarks/bench_rank_rules.py CHECK_0.json:DIR_0 CHECK_1.json:DIR_1 ...

For each rule (LogME on raw features or on unit-length rows; with or without the k-fold probe
deciding between neighbours within LogME's noise) and each fine-tuning regime of the check runs:
how often the top-ranked candidate fine-tuned best, and how often Spearman(order, accuracy) >= 0.6,
over all candidates and over every 4-candidate subset of the issue's shape (two ImageNet bodies,
the earlier run, random weights). No training: the saved features and test accuracies are reused.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_rank import spearman  # noqa: E402

from tlstudio.core.tasks.ranking.logme import logme, logme_subsets  # noqa: E402
from tlstudio.core.tasks.ranking.scoring import TIE_Z, difference_noise, draw_subsets, unit_rows  # noqa: E402


def _scored(rows, dump: Path, target: str):
    """Each check row with LogME and its subset draws on raw and on unit-length features."""
    out = []
    for r in rows:
        d = np.load(dump / f"{target}_{r['rank']}.npz")
        f, y = d["f"].astype(np.float64), d["y"]
        subsets = draw_subsets(y, seed=0)
        out.append({**r, "raw": float(logme(f, y)), "raw_draws": logme_subsets(f, y, subsets),
                    "unit": float(logme(unit_rows(f), y)), "unit_draws": logme_subsets(unit_rows(f), y, subsets)})
    return out


def order(rows, key: str, probe_decides: bool):
    s = sorted(rows, key=lambda r: -r[key])
    swapped = probe_decides
    while swapped:
        swapped = False
        for i in range(len(s) - 1):
            a, b = s[i], s[i + 1]
            se = difference_noise(a[f"{key}_draws"], b[f"{key}_draws"])
            if b["probe"] > a["probe"] and se is not None and abs(a[key] - b[key]) <= TIE_Z * se:
                s[i], s[i + 1] = b, a
                swapped = True
    return s


def _tally(ordered, reg: str) -> tuple[bool, bool]:
    acc = [r["acc"][reg] for r in ordered]
    return acc[0] >= max(acc) - 1e-9, spearman(list(range(len(acc), 0, -1)), acc) >= 0.6


def main() -> None:
    measurements = []
    for arg in sys.argv[1:]:
        check, dump = arg.split(":", 1)
        rep = json.loads(Path(check).read_text())
        for target, t in rep["targets"].items():
            measurements.append((rep.get("seed"), target, _scored(t["rows"], Path(dump), target)))
    regimes = sorted({k for _, _, rows in measurements for k in rows[0]["acc"]})
    rules = {"raw LogME (shipped)": ("raw", False), "unit-row LogME": ("unit", False),
             "unit-row LogME + probe in noise (before)": ("unit", True), "raw LogME + probe in noise": ("raw", True)}
    for reg in regimes:
        for name, (key, probe) in rules.items():
            top = sp = top4 = sp4 = n4 = 0
            for _, _, rows in measurements:
                t, s = _tally(order(rows, key, probe), reg)
                top, sp = top + t, sp + s
                imagenet = [r for r in rows if r["candidate"].startswith("tf_")]
                for pair in itertools.combinations(imagenet, 2):
                    sub = [r for r in rows if not r["candidate"].startswith("tf_") or r in pair]
                    t, s = _tally(order(sub, key, probe), reg)
                    top4, sp4, n4 = top4 + t, sp4 + s, n4 + 1
            n = len(measurements)
            print(f"{reg:8s} {name:42s} top one best {top}/{n}, Spearman>=0.6 {sp}/{n} | "
                  f"4 candidates: top {top4}/{n4}, Spearman {sp4}/{n4}")


if __name__ == "__main__":
    main()
