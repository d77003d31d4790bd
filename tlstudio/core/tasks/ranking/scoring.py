"""Scores of one candidate's cached features, the order of the table, and ties within noise.

Order: LogME, best first. Where two neighbours' LogME differ by less than its noise (below), the
k-fold linear probe (held-out accuracy on the same features) decides between them: a second,
independent estimate is better than a coin flip inside the noise, and it is the one a user can
read. On the benchmark (benchmarks/RESULTS.md, 2026-12-01) it moved the top one to the candidate
that fine-tuned best twice (textures seed 0, objects seed 1; each time Lite0 over Lite1 within
noise) and changed nothing in the other two cases.

Every score is computed on unit-length feature rows. A head-only fine-tuning's softmax decides by
direction, not length, while LogME's linear-Gaussian evidence counts length variation as noise:
an earlier run fine-tuned on a related domain has features 3x more varied in length than an
ImageNet body's (coefficient of variation 0.38-0.42 against 0.11-0.14), and raw LogME ranked it
4th where it fine-tuned as well as the best. Over 15 measurements (5 crop seeds x 2 targets,
head-only and app-default fine-tuning, 300-500 test images; benchmarks/RESULTS.md, session 5)
unit rows put the best candidate first 9 times against 7 and reached Spearman >= 0.6 11 times
against 8 (mean 0.71 against 0.62). On the first 3 measurements alone (session 4) they had looked
no better, and were not shipped then.

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
    """LogME (with its subset draws), k-fold probe, k-NN and H-score of one candidate's features,
    all on unit-length rows (module docstring)."""
    from tlstudio.core.tasks.ranking.logme import logme, logme_subsets
    from tlstudio.core.tasks.ranking.probes import hscore, knn_accuracy, linear_probe

    f = unit_rows(f)
    row.logme = round(float(logme(f, y)), 5)
    row.logme_draws = [round(v, 6) for v in logme_subsets(f, y, draw_subsets(y, seed=config.seed))]
    acc, sd = linear_probe(f, y, folds=config.folds, seed=config.seed)
    row.probe_acc, row.probe_std = round(acc, 4), round(sd, 4)
    row.knn_acc = round(knn_accuracy(f, y, k=config.knn_k), 4)
    row.hscore = round(hscore(f, y), 4)


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
    """Scored rows best first (rank 1, 2, ...), then the unscored ones (rank None): by LogME, and
    between neighbours within its noise by the linear probe. A row within noise of the top one
    (or else of the row above) gets ``tie`` set to the rank it ties with."""
    scored = sorted((r for r in rows if r.logme is not None), key=lambda r: -r.logme)
    swapped = True
    while swapped:  # each swap moves a higher probe up past a neighbour within noise: it ends
        swapped = False
        for i in range(len(scored) - 1):
            a, b = scored[i], scored[i + 1]
            if (b.probe_acc or 0.0) > (a.probe_acc or 0.0) and within_noise(a, b):
                scored[i], scored[i + 1] = b, a
                swapped = True
    for k, r in enumerate(scored, 1):
        r.rank = k
        r.tie = None
        if k > 1:
            if within_noise(scored[0], r):
                r.tie = 1
            elif within_noise(scored[k - 2], r):
                r.tie = k - 1
    return scored + [r for r in rows if r.logme is None]
