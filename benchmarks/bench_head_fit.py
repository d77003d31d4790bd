"""Benchmark 9: the head fitted by L-BFGS before the epochs (training/head_fit.py) against the
10 epochs of AdamW it precedes, on the same cached features, quiet and beside 2 busy loops.

Features: 1,280-d class blobs, 10 classes, 100 / 1,000 / 5,000 images (what a frozen Lite0 gives).
For each: seconds of the fit (penalty chosen by 3-fold cross-validation, then the final fit, on
one thread as the engine runs it) and of 10 head epochs at the engine's head defaults (AdamW lr
1e-3, batch 32, label smoothing 0.1, weight decay 0.05), and the training loss each reaches. The
ratio says what the fit adds to a head-only run's own training time; the feature cache's
body forward pass, which comes first, costs far more (bench_feature_cache.py).

    python benchmarks/bench_head_fit.py [--sizes 100,1000,5000] [--compete 0,2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_contention import competition  # noqa: E402
from common import print_machine, report  # noqa: E402


def _features(n: int, dim: int = 1280, classes: int = 10, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 0.15
    y = rng.integers(0, classes, n)
    return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def _epochs(x, y, classes: int, epochs: int = 10, batch: int = 32):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.05)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(yt), generator=g).split(batch):
            loss = F.cross_entropy(head(xt[idx]), yt[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float(F.cross_entropy(head(xt), yt, label_smoothing=0.1))


def _fit(x, y, classes: int):
    import torch

    from tlstudio.core.runtime.inference import one_thread
    from tlstudio.core.training.head_fit import fit_linear_head

    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], classes)
    with one_thread():
        got = fit_linear_head(head, x, y, label_smoothing=0.1)
    return got


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100,1000,5000")
    p.add_argument("--compete", default="0,2")
    args = p.parse_args()
    print_machine()
    import torch

    torch.set_num_threads(1)  # the engine trains a head on cached features on one thread
    _fit(*_features(50), 10)  # warm-up: first calls pay for kernel selection
    ratios, extra = {}, {}
    print("| busy loops | images | fit s | 10 epochs s | fit / epochs | loss after fit (penalised) "
          "| loss after epochs |")
    print("|---|---|---|---|---|---|---|")
    for n_busy in (int(v) for v in args.compete.split(",")):
        with competition(n_busy, 600):
            for n in (int(v) for v in args.sizes.split(",")):
                x, y = _features(n)
                t = time.perf_counter()
                got = _fit(x, y, 10)
                fit_s = time.perf_counter() - t
                t = time.perf_counter()
                loss_epochs = _epochs(x, y, 10)
                ep_s = time.perf_counter() - t
                print(f"| {n_busy} | {n} | {fit_s:.2f} | {ep_s:.2f} | {fit_s / ep_s:.2f} | "
                      f"{got['after']:.3f} (penalty {got['l2']:g}) | {loss_epochs:.3f} |", flush=True)
                ratios[f"{n_busy}busy_{n}img_fit_over_epochs"] = round(fit_s / ep_s, 2)
                extra[f"{n_busy}busy_{n}img_fit_s"] = round(fit_s, 2)
    report("head_fit", ratios, extra)


if __name__ == "__main__":
    main()
