"""Interpretable scores on cached features: k-fold linear probe, k-NN, H-score.

LogME (logme.py) is the primary score; these say the same thing in words a user knows
("a linear classifier on these features gets 87% on held-out folds"). All take features
[N, D] and integer labels [N] and never touch images. Linear algebra runs in torch on one
thread: on a busy 2-core machine multi-threaded BLAS spins and is 50x slower.
"""

from __future__ import annotations

import numpy as np

from tlstudio.core.data.split import stratified_folds  # noqa: F401 (the ranking's folds; tests import it here)
from tlstudio.core.runtime.inference import one_thread  # noqa: F401 (the ranking modules import it from here)

RIDGE_GRID = tuple(10.0 ** e for e in range(-3, 4))  # relative to the mean kernel diagonal


def n_folds(labels: np.ndarray, wanted: int = 5) -> int:
    """As many folds as wanted, but no more than the smallest class has images (at least 2)."""
    _, counts = np.unique(np.asarray(labels).astype(int), return_counts=True)
    return int(max(2, min(wanted, counts.min())))


def _ridge_fold(xtr, ytr, xte, n_classes: int):
    """Predictions of a one-vs-rest ridge classifier (kernel form, N x N), its penalty picked
    from RIDGE_GRID by exact leave-one-out error on the training part."""
    import torch

    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    y = torch.nn.functional.one_hot(ytr, n_classes).double() * 2 - 1
    ym = y.mean(0)
    yc = y - ym  # intercept
    k = xtr @ xtr.T
    kte = xte @ xtr.T
    evals, evecs = torch.linalg.eigh(k)
    evals = evals.clamp_min(0.0)
    scale = float(torch.diagonal(k).mean()) or 1.0
    uty = evecs.T @ yc
    best = None
    for rel in RIDGE_GRID:
        lam = rel * scale
        inv = 1.0 / (evals + lam)
        h_diag = ((evecs**2) * (evals * inv)).sum(1)  # diag of K (K + lam I)^-1
        fit = evecs @ ((evals * inv)[:, None] * uty)
        loo = yc - (yc - fit) / (1 - h_diag).clamp_min(1e-9)[:, None]  # exact LOO predictions
        err = float((loo.argmax(1) != ytr).double().mean())
        if best is None or err < best[0]:
            best = (err, inv)
    alpha = evecs @ (best[1][:, None] * uty)  # dual coefficients
    return (kte @ alpha + ym).argmax(1)


def linear_probe(features: np.ndarray, labels: np.ndarray, *, folds: int = 5,
                 seed: int = 0) -> tuple[float, float]:
    """(mean, std) held-out accuracy of a linear (ridge) classifier over stratified k folds."""
    import torch

    f = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float64))
    _, y_np = np.unique(np.asarray(labels).astype(int), return_inverse=True)
    y = torch.from_numpy(y_np.astype(np.int64))
    n_classes = int(y.max()) + 1
    accs = []
    with one_thread():
        for test_idx in stratified_folds(y_np, n_folds(y_np, folds), seed):
            mask = np.ones(len(y_np), bool)
            mask[test_idx] = False
            tr, te = torch.from_numpy(np.flatnonzero(mask)), torch.from_numpy(test_idx)
            pred = _ridge_fold(f[tr], y[tr], f[te], n_classes)
            accs.append(float((pred == y[te]).double().mean()))
    return float(np.mean(accs)), float(np.std(accs))


def knn_accuracy(features: np.ndarray, labels: np.ndarray, *, k: int = 5) -> float:
    """Leave-one-out accuracy of a cosine k-NN vote (ties: the nearest neighbour's class)."""
    import torch

    y = np.asarray(labels).astype(int)
    n = len(y)
    if n < 2:
        raise ValueError("k-NN accuracy needs at least two images")
    f = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float64))
    with one_thread():
        f = f - f.mean(0)
        f = f / (f.norm(dim=1, keepdim=True) + 1e-12)
        sim = f @ f.T
        sim.fill_diagonal_(-float("inf"))  # leave the image itself out
        k = max(1, min(k, n - 1))
        nn = sim.topk(k, dim=1).indices.numpy()
    n_classes = int(y.max()) + 1
    correct = 0
    for i in range(n):
        votes = np.bincount(y[nn[i]], minlength=n_classes).astype(float)
        votes[y[nn[i, 0]]] += 0.5  # the nearest breaks ties
        correct += int(np.argmax(votes) == y[i])
    return correct / n


def hscore(features: np.ndarray, labels: np.ndarray, shrink: float = 0.1) -> float:
    """Regularised H-score (Bao et al. 2019; shrinkage as Ibrahim et al. 2022):
    tr((Cov(f) + lambda I)^-1 Cov(E[f | y])). Higher = classes more separable by a linear map."""
    import torch

    y = np.asarray(labels).astype(int)
    f = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float64))
    with one_thread():
        f = f - f.mean(0)
        n, d = f.shape
        if d > n:  # work in the span of the samples: same trace, N x N instead of D x D
            u, sig, _ = torch.linalg.svd(f, full_matrices=False)
            f = u * sig
            d = f.shape[1]
        cov = f.T @ f / n
        lam = shrink * float(torch.trace(cov)) / d
        g = torch.zeros_like(f)
        for c in np.unique(y):
            m = torch.from_numpy(y == c)
            g[m] = f[m].mean(0)
        cov_g = g.T @ g / n
        return float(torch.trace(torch.linalg.solve(cov + lam * torch.eye(d, dtype=f.dtype), cov_g)))
