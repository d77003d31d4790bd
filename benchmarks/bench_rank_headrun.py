"""An earlier run that trained only its head (the app's default) as a ranking candidate.

  python benchmarks/bench_rank_headrun.py SEED

Trains a source run with the app's defaults on crops of 6 other photos (bench_rank.SOURCE), ranks
Lite0, Lite1, that run and random weights on bench_rank's "objects" target (24 crops a class),
fine-tunes each non-random candidate with "train the top one"'s settings and prints the accuracy
on 300 held-out crops. The run's body is Lite0's, so it must score exactly like Lite0, be listed
after it, and fine-tune like it (its head is fitted as Lite0's is).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":
    tmp = Path(tempfile.mkdtemp(prefix="bench_rank_headrun_"))
    os.environ.setdefault("TLSTUDIO_HOME", str(tmp / "home"))
    from bench_rank import PHOTOS_A, SOURCE, _rank, _train, make_crops, test_accuracies

    from tlstudio.core.tasks.ranking.results import train_settings

    sd = 100 * int(sys.argv[1] if len(sys.argv) > 1 else 18)
    src = make_crops(tmp / "source", SOURCE, 24, size=160, seed=1 + sd)
    _train(src, {"backbone": "tf_efficientnet_lite0", "init": "pretrained"}, tmp / "src_run")  # app defaults
    data = make_crops(tmp / "objects", PHOTOS_A, 24, seed=2 + sd, grey=True, crop=(0.1, 0.3))
    test = make_crops(tmp / "objects_test", PHOTOS_A, 60, seed=12 + sd, grey=True, crop=(0.1, 0.3))
    res, _ = _rank(data, ["tf_efficientnet_lite0", "tf_efficientnet_lite1", f"run:{tmp / 'src_run'}",
                          "random:tf_efficientnet_lite0"], tmp / "rank")
    runs = {}
    for r in res.ranked():
        print(r.rank, r.candidate["label"], r.logme, "tie with", r.tie, "same features as", r.same_as, flush=True)
        if r.candidate["source"] != "random":
            out = tmp / f"ft_{r.rank}"
            _train(data, train_settings(r), out)
            runs[r.candidate["label"]] = out
    print("test accuracies:", test_accuracies(runs, test), flush=True)
