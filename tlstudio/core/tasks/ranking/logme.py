"""LogME: how well a frozen feature extractor suits a labelled data set, without training.

You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning" (ICML 2021). For each class k, the one-hot column y_k is modelled as a Bayesian
linear regression on the features F (N x D): w ~ N(0, 1/alpha I), y = F w + N(0, 1/beta).
The score is the log marginal likelihood (evidence) per sample, maximised over alpha and beta
by MacKay's fixed-point iteration, averaged over classes. Higher is better; values are
comparable between extractors on the same data (different D is fine), not across data sets.

Everything runs on the SVD of F once (O(N D min(N, D))), then each class costs O(min(N, D))
per iteration. The log-determinant counts the D - rank zero eigenvalues of F^T F too (the
reference code drops them when D > N; the evidence formula below is exact either way, which
tests check against the Gaussian marginal likelihood computed directly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ITER = 100
TOL = 1e-5


@dataclass(frozen=True)
class Evidence:
    evidence: float  # log p(y | F, alpha, beta) / N
    alpha: float
    beta: float
    iterations: int


def _svd(features: np.ndarray, gram: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(U [N, k], s = sigma^2 [k]) of F = U diag(sigma) V^T, k = min(N, D). ``gram``: F F^T
    when the caller already has it (subsets of one Gram matrix)."""
    import torch

    from tlstudio.core.tasks.ranking.probes import one_thread

    n, d = features.shape
    with one_thread():  # multi-threaded BLAS on a busy machine is 50x slower, not faster
        if d > n:  # cheaper through the N x N Gram matrix
            if gram is None:
                f = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float64))
                g = f @ f.T
            else:
                g = torch.from_numpy(np.ascontiguousarray(gram, dtype=np.float64))
            s, u = torch.linalg.eigh(g)
            s = s.clamp_min(0.0)
        else:
            f = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float64))
            u, sigma, _ = torch.linalg.svd(f, full_matrices=False)
            s = sigma**2
    return u.numpy(), s.numpy()


def _fixed_point(y: np.ndarray, u: np.ndarray, s: np.ndarray, n: int, d: int) -> Evidence:
    z = u.T @ y  # y in the left singular basis
    yy = float(y @ y)
    resid_out = max(yy - float(z @ z), 0.0)  # part of y outside the span of F
    alpha, beta = 1.0, 1.0
    it = 0
    for it in range(1, MAX_ITER + 1):
        denom = alpha + beta * s
        gamma = float(np.sum(beta * s / denom))
        mm = float(np.sum((beta * np.sqrt(s) * z / denom) ** 2))  # ||m||^2
        res = resid_out + float(np.sum((alpha * z / denom) ** 2))  # ||y - F m||^2
        new_alpha = gamma / max(mm, 1e-300)
        new_beta = (n - gamma) / max(res, 1e-300)
        new_alpha = float(np.clip(new_alpha, 1e-12, 1e12))
        new_beta = float(np.clip(new_beta, 1e-12, 1e12))
        done = abs(new_alpha / new_beta - alpha / beta) <= TOL * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    ev = evidence_at(y, u, s, d, alpha, beta)
    return Evidence(evidence=ev / n, alpha=alpha, beta=beta, iterations=it)


def evidence_at(y: np.ndarray, u: np.ndarray, s: np.ndarray, d: int, alpha: float, beta: float) -> float:
    """log p(y | F, alpha, beta) (not divided by N), from the SVD of F."""
    n = y.shape[0]
    z = u.T @ y
    denom = alpha + beta * s
    mm = float(np.sum((beta * np.sqrt(s) * z / denom) ** 2))
    res = max(float(y @ y) - float(z @ z), 0.0) + float(np.sum((alpha * z / denom) ** 2))
    logdet_a = float(np.sum(np.log(denom))) + (d - len(s)) * np.log(alpha)
    return (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - beta / 2 * res - alpha / 2 * mm
            - logdet_a / 2 - n / 2 * np.log(2 * np.pi))


def logme(features: np.ndarray, labels: np.ndarray, *, details: bool = False):
    """Mean LogME evidence per sample over the classes (higher = the features suit the labels).

    features: [N, D] float; labels: [N] int class indices. ``details=True`` also returns the
    per-class ``Evidence`` list.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(int).ravel()
    if f.ndim != 2 or f.shape[0] != y.shape[0]:
        raise ValueError(f"features {f.shape} and labels {y.shape} do not match")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinite values")
    n, d = f.shape
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError("LogME needs at least two classes")
    u, s = _svd(f)
    per = [_fixed_point((y == k).astype(np.float64), u, s, n, d) for k in classes]
    score = float(np.mean([e.evidence for e in per]))
    return (score, per) if details else score


def logme_subsets(features: np.ndarray, labels: np.ndarray, subsets: list[np.ndarray]) -> list[float]:
    """LogME of each subset of the images (index arrays): how much the score moves with the
    sample. With D > N every subset's spectrum comes from one Gram matrix of all images."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(int).ravel()
    d = f.shape[1]
    gram = None
    if subsets and d > max(len(i) for i in subsets):
        import torch

        from tlstudio.core.tasks.ranking.probes import one_thread

        with one_thread():
            t = torch.from_numpy(np.ascontiguousarray(f))
            gram = (t @ t.T).numpy()
    out = []
    for idx in subsets:
        fs, ys = f[idx], y[idx]
        u, s = _svd(fs, None if gram is None else gram[np.ix_(idx, idx)])
        per = [_fixed_point((ys == k).astype(np.float64), u, s, len(ys), d) for k in np.unique(ys)]
        out.append(float(np.mean([e.evidence for e in per])))
    return out
