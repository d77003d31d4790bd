"""Ranking: which backbone or earlier run to start from, scored on the user's data before training.

Registers the "ranking" TaskKind (no gradient training; not offered in the kind chooser: it is
classification's Rank step and ``tlstudio rank``). The job is ``job.rank``; candidate parsing in
``candidates``; a candidate's features and latency in ``extract``; the scores in ``logme`` (with
its noise on subsets) and ``probes``; the order of the table and ties within noise in ``scoring``;
rows, ``rank.json`` and the settings "train the top one" uses in ``results``; the words in ``text``.
"""

from __future__ import annotations

from tlstudio.core.tasks.registry import TaskKind, register


def _run(config, stop=None, pause=None):
    from tlstudio.core.runs.folder import read_run
    from tlstudio.core.tasks.ranking.job import rank

    result = yield from rank(config, stop=stop, pause=pause)
    return read_run(result.out_dir)


def _config_cls():
    from tlstudio.core.tasks.ranking.job import RankConfig

    return RankConfig


KIND = register(TaskKind(
    kind="ranking",
    title="Rank starting points",
    summary="Scores backbones and earlier runs on your labelled images (LogME, linear probe, k-NN, "
            "speed) before training, so you start from the one that fits best",
    config_cls=_config_cls(),
    run=_run,
    best_metric=("logme", "max"),
    gui_steps=("data", "rank"),
    trains=False,
    in_chooser=False,
))
