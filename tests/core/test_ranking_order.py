"""What orders the table: LogME on length-normalised features (an image's feature length moves a
softmax head's confidence, not its decision; LogME's linear-Gaussian fit mistakes it for misfit)."""

from __future__ import annotations

import numpy as np
import pytest

from tlstudio.core.tasks.ranking.job import RankConfig
from tlstudio.core.tasks.ranking.logme import logme
from tlstudio.core.tasks.ranking.results import RankRow
from tlstudio.core.tasks.ranking.scoring import order_rows, score_row, unit_rows

Y = np.repeat(np.arange(4), 30)


def _features(rng, signal: float, d: int = 64) -> np.ndarray:
    f = rng.normal(size=(len(Y), d))
    f[:, :4] += signal * np.eye(4)[Y]
    return f


def _scored(name: str, f: np.ndarray) -> RankRow:
    row = RankRow(candidate={"spec": name})
    score_row(row, f, Y, RankConfig(data_dir="unused", folds=3))
    return row


def test_unit_rows_by_hand():
    f = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    assert np.allclose(unit_rows(f), [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])


def test_the_length_of_each_feature_vector_does_not_change_the_score():
    rng = np.random.default_rng(1)
    f = _features(rng, 2.0)
    scaled = f * np.exp(rng.normal(0, 1.0, size=(len(Y), 1)))  # every image its own length
    a, b = _scored("f", f), _scored("scaled", scaled)
    assert a.logme == pytest.approx(b.logme, abs=2e-5)
    assert a.logme_draws == pytest.approx(b.logme_draws, abs=2e-5)


def test_clearly_better_features_with_uneven_lengths_rank_first():
    rng = np.random.default_rng(0)
    good = _features(rng, 3.0) * np.exp(rng.normal(0, 1.2, size=(len(Y), 1)))
    mid = _features(rng, 1.5)
    assert logme(good, Y) < logme(mid, Y)  # raw LogME is misled by the lengths
    rows = order_rows([_scored("mid", mid), _scored("good", good)])
    assert [r.candidate["spec"] for r in rows] == ["good", "mid"]
    assert rows[0].logme > rows[1].logme + 0.1 and rows[1].tie is None
    assert rows[0].probe_acc > rows[1].probe_acc
