"""What orders the table: LogME, and between neighbours within its noise the linear probe."""

from __future__ import annotations

import numpy as np

from tlstudio.core.tasks.ranking.results import RankRow
from tlstudio.core.tasks.ranking.scoring import order_rows
from tlstudio.core.tasks.ranking.text import explain, summary


def _row(name: str, logme: float, draws: list[float], probe: float) -> RankRow:
    return RankRow(candidate={"spec": name, "label": name, "source": "imagenet"}, logme=logme, logme_draws=draws,
                   probe_acc=probe, probe_std=0.01, knn_acc=probe)


# by hand: A - B on the subsets = [0, .2, -.2, 0]: sd .1633, x2 (80% subsets) = .327 > |0.50 - 0.49|
NOISY_A = [0.5, 0.6, 0.4, 0.5]
NOISY_B = [0.5, 0.4, 0.6, 0.5]
# A - C = [.3, .31, .29, .3]: sd .0082, x2 = .016 < 0.30
STEADY_C = [0.2, 0.2, 0.2, 0.2]


def test_within_noise_the_probe_decides():
    a = _row("A", 0.50, NOISY_A, probe=0.90)
    b = _row("B", 0.49, NOISY_B, probe=0.95)
    rows = order_rows([a, b])
    assert [(r.candidate["spec"], r.rank, r.tie) for r in rows] == [("B", 1, None), ("A", 2, 1)]
    explain(rows, n_classes=2)
    assert "Within noise of #1" in rows[1].explanation and "linear probe decides" in rows[1].explanation
    assert "A is within noise of it" in summary(rows, [], 100)


def test_outside_the_noise_logme_decides_whatever_the_probe_says():
    a = _row("A", 0.50, [0.5, 0.51, 0.49, 0.5], probe=0.80)
    c = _row("C", 0.20, STEADY_C, probe=0.95)
    rows = order_rows([c, a])
    assert [(r.candidate["spec"], r.rank, r.tie) for r in rows] == [("A", 1, None), ("C", 2, None)]
    explain(rows, n_classes=2)
    assert "above the top one" in rows[1].explanation and "Within noise" not in rows[1].explanation


def test_the_probe_only_reorders_inside_the_noise():
    # B and A are within noise of each other, C is clearly below both: C stays last although its
    # probe is the best, B (better probe) goes above A
    a = _row("A", 0.50, NOISY_A, probe=0.90)
    b = _row("B", 0.49, NOISY_B, probe=0.93)
    c = _row("C", -0.40, [-0.4, -0.4, -0.4, -0.4], probe=0.99)
    rows = order_rows([c, a, b])
    assert [r.candidate["spec"] for r in rows] == ["B", "A", "C"]
    assert [r.rank for r in rows] == [1, 2, 3] and rows[2].tie is None


def test_equal_probes_keep_the_logme_order():
    a = _row("A", 0.50, NOISY_A, probe=0.90)
    b = _row("B", 0.49, NOISY_B, probe=0.90)
    assert [r.candidate["spec"] for r in order_rows([b, a])] == ["A", "B"]
    assert np.isclose(order_rows([b, a])[1].logme, 0.49)


def test_scores_do_not_depend_on_each_image_feature_length():
    """A fine-tuned run's features vary more in length per image than an ImageNet body's; a softmax
    head decides by direction, so the scores are taken on unit-length rows: scaling each image's
    features by its own factor changes nothing, while raw LogME would move."""
    from tlstudio.core.tasks.ranking.job import RankConfig
    from tlstudio.core.tasks.ranking.logme import logme
    from tlstudio.core.tasks.ranking.scoring import score_row

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    f = rng.normal(size=(60, 16)) + 2.0 * np.eye(3, 16)[y]
    scaled = f * rng.uniform(0.3, 3.0, size=(60, 1))
    a, b = RankRow(candidate={"spec": "a"}), RankRow(candidate={"spec": "b"})
    cfg = RankConfig(data_dir="x")
    score_row(a, f, y, cfg)
    score_row(b, scaled, y, cfg)
    assert abs(a.logme - b.logme) < 1e-4 and a.probe_acc == b.probe_acc and a.knn_acc == b.knn_acc
    assert a.logme_draws == b.logme_draws
    assert abs(logme(f, y) - logme(scaled, y)) > 0.05  # what raw LogME does with it
