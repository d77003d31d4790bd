"""Scores of one candidate's cached features, the order of the table, and ties within noise.

Order: LogME, best first, computed on the features as the head receives them. Neighbours whose
LogME differs by less than its noise (below) are marked tied, and the table and the summary say
that either may fine-tune better; the order between them stays LogME's.

Why raw features and no tie-breaker (benchmarks/RESULTS.md, session 9): since head-only training
fits its head to convergence (training/head_fit.py), 28 measurements of bench_rank.py's check
(14 crop seeds x 2 targets, 5 candidates: ImageNet Lite0/1/2, an earlier run, random weights;
120 images, accuracy on 300 held-out images after the app's default training) put the candidate
that fine-tuned best first
- 24 times with LogME on the raw features (Spearman >= 0.6: 28 of 28),
- 21 times with LogME on unit-length rows (26 of 28),
- 19 times with unit-row LogME and the k-fold probe deciding within LogME's noise (27 of 28),
  the order shipped before: the probe once put the earlier run first, 8.3 points below the best.
In the issue's 4-candidate shape (2 ImageNet bodies, the run, random; 84 subsets) raw LogME put
the best first in 68 against 60, with Spearman >= 0.6 in 84 against 80. Unit rows had won in
session 5, when a head-only run trained its head by 10 short epochs: an earlier run's features,
3x more varied in length than an ImageNet body's, fine-tuned as well as the best then, and raw
LogME ranked them 4th. With converged heads the ImageNet bodies gained 2.5 points and the run
(not pre-fitted) did not, and raw LogME's order is the fine-tuned one.

The probe, k-NN and H-score are shown, not used for the order; they are computed on unit-length
rows (a softmax decides by direction; the probe also standardises each column).

Noise: LogME is also computed on DRAWS stratified subsets of DRAW_FRACTION of the images (the
same subsets for every candidate, from the seed). The spread of a difference between two
candidates over the subsets, scaled by the delete-d jackknife factor sqrt(m / (N - m)), is the
sampling noise of that difference on N images; two candidates whose LogME differs by less than
TIE_Z times it are shown as tied: with other images of the same kind their order could swap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tlstudio.core.tasks.ranking.results import RankRow

if TYPE_CHECKING:
    from tlstudio.core.tasks.ranking.job import RankConfig

DRAWS = 8
DRAW_FRACTION = 0.8
TIE_Z = 1.0


def draw_subsets(labels: np.ndarray, draws: int = DRAWS, fraction: float = DRAW_FRACTION,
                 seed: int = 0) -> list[np.ndarray]:
    """``draws`` sorted index arrays, each ``fraction`` of every class (at least 2 per class)."""
    y = np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        idx: list[int] = []
        for c in np.unique(y):
            members = np.flatnonzero(y == c)
            k = min(len(members), max(2, int(round(fraction * len(members)))))
            idx += rng.choice(members, k, replace=False).tolist()
        out.append(np.array(sorted(idx), dtype=int))
    return out


def unit_rows(f) -> np.ndarray:
    """Each feature row scaled to length 1 (rows of zeros stay zero)."""
    f = np.asarray(f, dtype=np.float64)
    n = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.where(n > 0, n, 1.0)


def score_row(row: RankRow, f, y, config: RankConfig) -> None:
    """LogME (with its subset draws) on the features as they are; k-fold probe, k-NN and H-score
    on unit-length rows (module docstring)."""
    from tlstudio.core.tasks.ranking.logme import logme, logme_subsets
    from tlstudio.core.tasks.ranking.probes import hscore, knn_accuracy, linear_probe

    f = np.asarray(f, dtype=np.float64)
    row.logme = round(float(logme(f, y)), 5)
    row.logme_draws = [round(v, 6) for v in logme_subsets(f, y, draw_subsets(y, seed=config.seed))]
    u = unit_rows(f)
    acc, sd = linear_probe(u, y, folds=config.folds, seed=config.seed)
    row.probe_acc, row.probe_std = round(acc, 4), round(sd, 4)
    row.knn_acc = round(knn_accuracy(u, y, k=config.knn_k), 4)
    row.hscore = round(hscore(u, y), 4)


def difference_noise(a: list[float] | None, b: list[float] | None, fraction: float = DRAW_FRACTION) -> float | None:
    """Standard error of LogME(a) - LogME(b) on all images, from their values on the same subsets
    (delete-d jackknife). None when either has no subset values."""
    if not a or not b or len(a) != len(b) or len(a) < 2:
        return None
    d = np.asarray(a, float) - np.asarray(b, float)
    return float(d.std(ddof=1) * np.sqrt(fraction / (1.0 - fraction)))


def within_noise(better: RankRow, worse: RankRow, z: float = TIE_Z) -> bool:
    se = difference_noise(better.logme_draws, worse.logme_draws)
    if se is None or better.logme is None or worse.logme is None:
        return False
    return abs(better.logme - worse.logme) <= z * se


def order_rows(rows: list[RankRow]) -> list[RankRow]:
    """Scored rows best first by LogME (rank 1, 2, ...), then the unscored ones (rank None). A row
    within noise of the top one (or else of the row above) gets ``tie`` set to the rank it ties with.
    Equal LogME (an earlier run that trained only its head has its backbone's very features): the
    backbone goes first, as the source of those features; a training from either fits its head
    the same way (backbones.run_body_trained), and from the backbone it needs no run folder."""
    scored = sorted((r for r in rows if r.logme is not None),
                    key=lambda r: (-r.logme, r.candidate.get("source") == "run"))
    for k, r in enumerate(scored, 1):
        r.rank = k
        r.tie = None
        if k > 1:
            if within_noise(scored[0], r):
                r.tie = 1
            elif within_noise(scored[k - 2], r):
                r.tie = k - 1
    return scored + [r for r in rows if r.logme is None]
