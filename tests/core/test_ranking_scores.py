"""LogME against the Gaussian marginal likelihood computed directly; probes on known cases."""

from __future__ import annotations

import numpy as np
import pytest

from tlstudio.core.tasks.ranking.logme import _svd, evidence_at, logme
from tlstudio.core.tasks.ranking.probes import hscore, knn_accuracy, linear_probe, stratified_folds


def direct_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, F F^T / alpha + I / beta): the evidence of Bayesian linear regression."""
    n = len(y)
    cov = f @ f.T / alpha + np.eye(n) / beta
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    return float(-0.5 * (y @ np.linalg.solve(cov, y) + logdet + n * np.log(2 * np.pi)))


@pytest.mark.parametrize("n,d", [(30, 6), (12, 20)])  # D < N and D > N (zero eigenvalues)
def test_evidence_formula_matches_direct_marginal_likelihood(n, d):
    rng = np.random.default_rng(1)
    f = rng.normal(size=(n, d))
    y = (rng.random(n) > 0.5).astype(float)
    u, s = _svd(f)
    for alpha, beta in [(0.5, 2.0), (3.0, 0.7)]:
        assert evidence_at(y, u, s, d, alpha, beta) == pytest.approx(direct_log_evidence(f, y, alpha, beta), rel=1e-9)


def test_fixed_point_maximises_the_evidence():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(40, 8))
    labels = (f[:, 0] + 0.3 * rng.normal(size=40) > 0).astype(int)
    score, per = logme(f, labels, details=True)
    assert score == pytest.approx(np.mean([e.evidence for e in per]))
    for k, e in enumerate(per):
        y = (labels == k).astype(float)
        best = direct_log_evidence(f, y, e.alpha, e.beta)
        assert e.evidence * 40 == pytest.approx(best, rel=1e-9)
        for da, db in [(1.3, 1), (1 / 1.3, 1), (1, 1.3), (1, 1 / 1.3)]:  # a maximum: neighbours are lower
            assert direct_log_evidence(f, y, e.alpha * da, e.beta * db) < best


def test_informative_features_score_higher():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 25)
    noise = rng.normal(size=(100, 64))
    good = noise.copy()
    good[:, :4] += 4 * np.eye(4)[y]
    assert logme(good, y) > logme(noise, y) + 0.05
    acc_good, _ = linear_probe(good, y)
    acc_bad, _ = linear_probe(noise, y)
    assert acc_good > 0.8 and acc_bad < 0.5
    assert knn_accuracy(good, y) > 0.8 and knn_accuracy(noise, y) < 0.5
    assert hscore(good, y) > hscore(noise, y) + 0.5  # noise has a small-sample bias


def test_logme_input_checks():
    with pytest.raises(ValueError):
        logme(np.zeros((5, 3)), np.zeros(4))
    with pytest.raises(ValueError):
        logme(np.zeros((4, 3)), np.zeros(4))  # one class
    with pytest.raises(ValueError):
        logme(np.full((4, 3), np.nan), np.array([0, 1, 0, 1]))


def test_stratified_folds_cover_everything_once():
    y = np.array([0] * 7 + [1] * 5 + [2] * 3)
    folds = stratified_folds(y, 3, seed=0)
    allidx = np.sort(np.concatenate(folds))
    assert np.array_equal(allidx, np.arange(len(y)))
    for f in folds:
        assert set(y[f]) == {0, 1, 2}  # each fold sees every class
