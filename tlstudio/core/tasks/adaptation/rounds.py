"""Rounds of pseudo-labels, shared by self-training (adaptation) and semi-supervised learning.

Each round proposes labels for the unlabelled images with the current model, keeps the ones the
selection allows (a confidence threshold, a class cap or a class-balanced fraction), and trains
again on the labelled images plus those. Two ways:
- `head_rounds`: a fresh linear head on cached features each round (frozen body; rank 0 only);
- `finetune_rounds`: a complete engine sub-run each round (the body trains; every torchrun
  process trains it, with rank 0's pseudo-labels).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from tlstudio.core.events import Event, Log
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks.adaptation.ranks import on_main
from tlstudio.core.tasks.adaptation.scaffold import base_config, sub_run
from tlstudio.core.tasks.adaptation.scoring import Feats, head_epochs

# select(round, probabilities N x C) -> PseudoLabels (semisupervised/pseudo.py)
Select = Callable[[int, Any], Any]
# announce(round, pseudo-labels, probabilities) -> events saying what the round selected
Announce = Callable[[int, Any, Any], list[Event]]


def head_rounds(head0, feats: Feats, ft, fc, rounds: int, select: Select, announce: Announce, train_kw: dict,
                stop) -> Generator[Event, None, tuple[Any, list[dict], list[dict]]]:
    """(final head, history rows, per-round statistics): each round a fresh copy of ``head0``
    trains on the source features plus the pseudo-labelled rows of ``ft``."""
    from tlstudio.core.tasks.adaptation.features import probs_of

    current, history, stats = head0, [], []
    for r in range(1, rounds + 1):
        probs = probs_of(current, ft)
        pl = select(r, probs)
        stats.append({"round": r, **pl.to_json()})
        for ev in announce(r, pl, probs):
            yield ev
        fresh = copy.deepcopy(head0)
        fresh.train()
        history += yield from head_epochs(fresh, feats, ft, fc, len(history), train_kw["epochs"] * rounds,
                                          dict(train_kw, pseudo_idx=pl.index, pseudo_y=pl.labels), stop)
        current = fresh
    return current, history, stats


def _propose(model_dir: Path, samples: list, select: Select, r: int, domain: str | None, data_cfg, device,
             stop) -> Generator[Event, None, tuple[list, dict]]:
    """(pseudo-labelled samples, statistics) from the model in ``model_dir``."""
    from tlstudio.core.data.dataset import Sample
    from tlstudio.core.models.run_model import load_run_model
    from tlstudio.core.tasks.adaptation.features import copy_linear, extract, probs_of

    model, _ = load_run_model(model_dir)
    model.to(device)
    ft, kept = extract(model, samples, data_cfg, device=device, stop=stop)
    pl = select(r, probs_of(copy_linear(model.get_classifier()).cpu(), ft))
    labelled = [Sample(samples[kept[i]].path, lab, domain=domain) for i, lab in zip(pl.index, pl.labels)]
    return labelled, {"round": r, **pl.to_json()}
    yield  # a generator for on_main


def finetune_rounds(config, first_dir: Path, outs: list[Path], samples: list, select: Select, *,
                    domain: str | None, update: dict, phase: str, announce: Callable[[int, int, int], str],
                    data_cfg, device, stop, pause) -> Generator[Event, None, tuple[runs.RunInfo, list[dict]]]:
    """(last sub-run's RunInfo, per-round statistics): round r fine-tunes into ``outs[r-1]`` on
    the labelled images + the samples the previous round's model labels confidently. Rank 0
    proposes the labels; every process trains (``data_cfg``/``device`` are rank 0's)."""
    prev, stats, info = first_dir, [], None
    for r, out in enumerate(outs, 1):
        extra, st = yield from on_main(functools.partial(_propose, prev, samples, select, r, domain, data_cfg, device,
                                                         stop))
        stats.append(st)
        yield Log(announce(r, len(outs), len(extra)))
        info = yield from sub_run(base_config(config, out, **update), stop, pause, phase, extra_train=extra)
        if info.status == "stopped":
            break
        prev = out
    return info, stats
