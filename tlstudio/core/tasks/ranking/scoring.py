"""Scores of one candidate's cached features, the order of the table, and ties within noise.

Order: LogME of the features scaled to length 1 per image. The head the app trains is a softmax
classifier: an image's feature length scales its confidence, not its decision. LogME's model is
a linear regression onto one-hot labels, in which images whose features are long or short fit
badly whatever their direction. ImageNet bodies give features of similar length (coefficient
of variation about 0.12 on the benchmark photos), but a body fine-tuned on another task gives
very uneven lengths (0.38 for an earlier run): raw LogME put such a run below every ImageNet
backbone although its head-only fine-tuning did about as well. Normalised, the run's LogME rises
the most (objects -0.20 -> 0.04, within noise of Lite0 and Lite2; textures 0.30 -> 0.63, still
4th), the ImageNet backbones keep their order (benchmarks/RESULTS.md). The linear probe and
k-NN (cosine) see the features as they are.

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


def unit_rows(f: np.ndarray) -> np.ndarray:
    """Each image's feature vector scaled to length 1 (all-zero rows stay zero)."""
    f = np.asarray(f, dtype=np.float64)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.where(norms > 0, norms, 1.0)


def score_row(row: RankRow, f, y, config: RankConfig) -> None:
    """LogME on length-normalised features (see the module doc), probes on the features as they are."""
    from tlstudio.core.tasks.ranking.logme import logme, logme_subsets
    from tlstudio.core.tasks.ranking.probes import hscore, knn_accuracy, linear_probe

    fu = unit_rows(f)
    row.logme = round(float(logme(fu, y)), 5)
    row.logme_draws = [round(v, 6) for v in logme_subsets(fu, y, draw_subsets(y, seed=config.seed))]
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
    """Scored rows best first (rank 1, 2, ...), then the unscored ones (rank None). A row whose
    score is within noise of the top one's (or else of the row above) gets ``tie`` set to the
    rank it ties with."""
    scored = sorted((r for r in rows if r.logme is not None), key=lambda r: -r.logme)
    for k, r in enumerate(scored, 1):
        r.rank = k
        r.tie = None
        if k > 1:
            if within_noise(scored[0], r):
                r.tie = 1
            elif within_noise(scored[k - 2], r):
                r.tie = k - 1
    return scored + [r for r in rows if r.logme is None]
