"""Scores of one candidate's cached features, and the order of the table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tlstudio.core.tasks.ranking.results import RankRow

if TYPE_CHECKING:
    from tlstudio.core.tasks.ranking.job import RankConfig


def score_row(row: RankRow, f, y, config: RankConfig) -> None:
    from tlstudio.core.tasks.ranking.logme import logme
    from tlstudio.core.tasks.ranking.probes import hscore, knn_accuracy, linear_probe

    row.logme = round(float(logme(f, y)), 5)
    acc, sd = linear_probe(f, y, folds=config.folds, seed=config.seed)
    row.probe_acc, row.probe_std = round(acc, 4), round(sd, 4)
    row.knn_acc = round(knn_accuracy(f, y, k=config.knn_k), 4)
    row.hscore = round(hscore(f, y), 4)


def order_rows(rows: list[RankRow]) -> list[RankRow]:
    """Scored rows best first (rank 1, 2, ...), then the unscored ones (rank None)."""
    scored = sorted((r for r in rows if r.logme is not None), key=lambda r: -r.logme)
    for k, r in enumerate(scored, 1):
        r.rank = k
    return scored + [r for r in rows if r.logme is None]
