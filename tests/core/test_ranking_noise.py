"""Noise of the ranking: LogME on subsets, the jackknife noise of a difference, ties in the table."""

from __future__ import annotations

import numpy as np
import pytest

from tlstudio.core.tasks.ranking.logme import logme, logme_subsets
from tlstudio.core.tasks.ranking.results import RankRow
from tlstudio.core.tasks.ranking.scoring import difference_noise, draw_subsets, order_rows, within_noise


def _features(rng, y, signal: float, d: int = 48) -> np.ndarray:
    f = rng.normal(size=(len(y), d))
    f[:, : y.max() + 1] += signal * np.eye(y.max() + 1)[y]
    return f


def test_subsets_are_stratified_and_repeatable():
    y = np.array([0] * 10 + [1] * 5 + [2] * 2)
    subs = draw_subsets(y, draws=4, fraction=0.8, seed=3)
    assert len(subs) == 4
    for s in subs:
        assert len(set(s.tolist())) == len(s) and np.all(np.diff(s) > 0)
        assert [int(np.sum(y[s] == c)) for c in range(3)] == [8, 4, 2]  # 80%, at least 2
    again = draw_subsets(y, draws=4, fraction=0.8, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(subs, again))


@pytest.mark.parametrize("d", [8, 200])  # D < m (SVD of each subset) and D > N (one Gram matrix)
def test_logme_on_subsets_is_logme_of_each_subset(d):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    f = _features(rng, y, 2.0, d)
    subs = draw_subsets(y, draws=3, seed=1)
    got = logme_subsets(f, y, subs)
    assert got == pytest.approx([logme(f[s], y[s]) for s in subs], rel=1e-9, abs=1e-12)


def test_difference_noise_by_hand():
    # d = [1, 2, 3, 4]: sample sd 1.2910; jackknife factor sqrt(0.8 / 0.2) = 2
    assert difference_noise([1, 2, 3, 4], [0, 0, 0, 0], fraction=0.8) == pytest.approx(2 * 1.2909944, rel=1e-6)
    assert difference_noise([5, 5, 5], [1, 1, 1]) == 0.0  # a constant gap has no noise
    assert difference_noise(None, [1, 2]) is None and difference_noise([1, 2], [1, 2, 3]) is None


def _row(name, f, y):
    subs = draw_subsets(y, seed=0)
    return RankRow(candidate={"spec": name}, logme=logme(f, y), logme_draws=logme_subsets(f, y, subs))


def test_clearly_better_extractor_is_not_a_tie_equal_ones_are():
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(4), 30)
    good, bad = _features(rng, y, 4.0), _features(rng, y, 0.0)
    twin = good[:, ::-1].copy()  # the same features in another order: the same LogME on every subset
    rows = order_rows([_row("bad", bad, y), _row("twin", twin, y), _row("good", good, y)])
    by = {r.candidate["spec"]: r for r in rows}
    assert by["bad"].rank == 3 and by["bad"].tie is None
    assert {by["good"].rank, by["twin"].rank} == {1, 2}
    second = rows[1]
    assert second.tie == 1 and within_noise(rows[0], second)
    assert not within_noise(rows[0], by["bad"])


def test_order_puts_unscored_rows_last():
    rows = order_rows([RankRow(candidate={"spec": "x"}, error="cannot load"),
                       RankRow(candidate={"spec": "a"}, logme=-0.5), RankRow(candidate={"spec": "b"}, logme=0.2)])
    assert [(r.candidate["spec"], r.rank, r.tie) for r in rows] == [("b", 1, None), ("a", 2, None), ("x", None, None)]
