"""What orders the table: LogME alone; neighbours within its noise are marked tied, not reordered."""

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


def test_within_noise_logme_keeps_the_order_and_the_tie_is_said():
    # B's probe is better, but the probe does not reorder (scoring.py: it once put an earlier run
    # first, 8.3 points below the best); the tie is marked and explained instead
    a = _row("A", 0.50, NOISY_A, probe=0.90)
    b = _row("B", 0.49, NOISY_B, probe=0.95)
    rows = order_rows([b, a])
    assert [(r.candidate["spec"], r.rank, r.tie) for r in rows] == [("A", 1, None), ("B", 2, 1)]
    explain(rows, n_classes=2)
    assert rows[1].explanation.startswith("#2 (tied with #1): ")
    assert "Within noise of #1" in rows[1].explanation and "either may fine-tune better" in rows[1].explanation
    assert "probe decides" not in rows[1].explanation
    assert "B is within noise of it" in summary(rows, [], 100)


def test_outside_the_noise_no_tie_is_marked():
    a = _row("A", 0.50, [0.5, 0.51, 0.49, 0.5], probe=0.80)
    c = _row("C", 0.20, STEADY_C, probe=0.95)
    rows = order_rows([c, a])
    assert [(r.candidate["spec"], r.rank, r.tie) for r in rows] == [("A", 1, None), ("C", 2, None)]
    explain(rows, n_classes=2)
    assert "above the top one" in rows[1].explanation and "Within noise" not in rows[1].explanation


def test_a_tie_with_the_row_above_when_not_with_the_top():
    # A - B steady (no tie); B - C = [.01, .21, -.19, .01]: x2 = .33 > .01, but A - C = .71 > .33
    a = _row("A", 0.90, [0.9, 0.91, 0.89, 0.9], probe=0.90)
    b = _row("B", 0.20, [0.2, 0.21, 0.19, 0.2], probe=0.93)
    c = _row("C", 0.19, [0.19, 0.0, 0.38, 0.19], probe=0.99)
    rows = order_rows([c, a, b])
    assert [r.candidate["spec"] for r in rows] == ["A", "B", "C"]
    assert [(r.rank, r.tie) for r in rows] == [(1, None), (2, None), (3, 2)]


def test_scores_take_the_features_as_the_head_sees_them():
    """LogME (the order) takes the features as they are: a softmax head fitted to them sees their
    lengths, and with converged heads raw LogME followed the fine-tuned order best (scoring.py).
    The probe and k-NN (shown, not ordering) are taken on unit-length rows."""
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
    assert np.isclose(a.logme, logme(f, y), atol=1e-5) and np.isclose(b.logme, logme(scaled, y), atol=1e-5)
    assert abs(a.logme - b.logme) > 0.05 and a.logme_draws != b.logme_draws
    assert a.probe_acc == b.probe_acc and a.knn_acc == b.knn_acc


def test_explanations_count_points_and_do_not_contradict_a_tie():
    a = _row("A", 0.50, NOISY_A, probe=0.95)
    b = _row("B", 0.49, NOISY_B, probe=0.95)  # tied, the same probe
    c = _row("C", 0.20, STEADY_C, probe=0.94)  # not tied, 1 point below
    rows = order_rows([c, b, a])
    explain(rows, n_classes=2)
    assert rows[1].tie == 1 and "the same as the top one" in rows[1].explanation
    assert "LogME separates them" not in rows[1].explanation
    assert rows[2].tie is None and ", 1 point below the top one" in rows[2].explanation


def test_a_run_with_its_backbones_very_features_goes_after_the_backbone():
    # a head-only earlier run keeps its backbone's body: the same features, the same LogME; the
    # backbone, where those features come from, goes first
    run = RankRow(candidate={"spec": "run:/r", "label": "my run", "source": "run"}, logme=0.5,
                  logme_draws=NOISY_A, probe_acc=0.9, probe_std=0.01, knn_acc=0.9)
    net = _row("tf_efficientnet_lite0", 0.5, NOISY_A, probe=0.9)
    rows = order_rows([run, net])
    assert [r.candidate["spec"] for r in rows] == ["tf_efficientnet_lite0", "run:/r"]
    assert rows[1].tie == 1
