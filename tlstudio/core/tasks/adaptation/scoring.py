"""Scoring a model without training it: pooled features, the scores that choose the kept model,
and a linear head trained on cached features epoch by epoch (rank 0 only under torchrun).

The scores are the source validation accuracy, the target information-maximisation score and,
when the user labelled a check set, the check-set accuracy: check-set labels only score models.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from typing import Any

from tlstudio.core.events import EpochEnd, Event, Progress
from tlstudio.core.tasks.adaptation.ranks import Stopped


class Feats:
    """Pooled features of the source train/val (fs, fv with labels ys, yv), target (ft) and
    check (fc with labels yc) images under one body."""

    def __init__(self) -> None:
        self.fs = self.ys = self.fv = self.yv = self.ft = self.fc = self.yc = None


def _extract_part(model, samples, data_cfg, device, stop, counter: dict, label: str):
    """Features and labels of one list of samples (gradient-free, in CPU-sized chunks)."""
    import torch

    from tlstudio.core.pipeline.feature_cache import extract_features
    from tlstudio.core.pipeline.loaders import eval_loader
    from tlstudio.core.runtime.inference import forward_chunked

    feats, labels = [], []
    if samples:
        with torch.no_grad():
            for x, y, _ in eval_loader(list(samples), data_cfg, batch_size=64):
                if stop.is_set():
                    raise Stopped()
                if x.shape[0] == 0:
                    continue
                feats.append(forward_chunked(lambda c: extract_features(model, c), x.to(device)).float().cpu())
                labels.append(y)
                counter["done"] += int(x.shape[0])
                yield Progress(task="features", done=counter["done"], total=counter["total"],
                               message=f"Features of the {label}")
    f = torch.cat(feats) if feats else torch.zeros(0, int(model.num_features))
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    return f, y


def extract_all(model, split, target, check, data_cfg, device, stop, label: str) -> Generator[Event, None, Feats]:
    """Features of the source split, the target (unlabelled) and the check set under ``model``."""
    out = Feats()
    parts = (split.train, split.val, target, check)
    counter = {"done": 0, "total": sum(len(p) for p in parts)}
    model.eval()
    out.fs, out.ys = yield from _extract_part(model, split.train, data_cfg, device, stop, counter, label)
    out.fv, out.yv = yield from _extract_part(model, split.val, data_cfg, device, stop, counter, label)
    out.ft, _ = yield from _extract_part(model, target, data_cfg, device, stop, counter, label)  # no labels
    out.fc, out.yc = yield from _extract_part(model, check, data_cfg, device, stop, counter, label)  # score() only
    return out


def score(head, feats: Feats, fv=None, ft=None, fc=None) -> dict[str, Any]:
    """Source val accuracy, target information-maximisation score, check-set accuracy of a head."""
    from tlstudio.core.tasks.adaptation.features import probs_of
    from tlstudio.core.tasks.adaptation.selection import accuracy, info_max

    fv = feats.fv if fv is None else fv
    ft = feats.ft if ft is None else ft
    fc = feats.fc if fc is None else fc
    out: dict[str, Any] = {"source_val_acc": accuracy(probs_of(head, fv), feats.yv) if len(fv) else None,
                           "target_info_max": info_max(probs_of(head, ft)) if len(ft) else None,
                           "check_acc": None, "check_n": int(len(fc))}
    if len(fc):
        out["check_acc"] = accuracy(probs_of(head, fc), feats.yc)
    return out


def score_model(model, feats: Feats) -> dict[str, Any]:
    """score() of the model's own classifier on features it produced."""
    from tlstudio.core.tasks.adaptation.features import copy_linear

    return score(copy_linear(model.get_classifier()).cpu(), feats)


def as_metrics(s: dict[str, Any]) -> dict[str, float]:
    """A score dict as run metrics (val_acc = source validation accuracy)."""
    out = {"val_acc": s.get("source_val_acc"), "target_info_max": s.get("target_info_max"),
           "check_acc": s.get("check_acc")}
    return {k: float(v) for k, v in out.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


def describe(who: str, s: dict[str, Any]) -> str:
    parts = []
    if s.get("source_val_acc") is not None:
        parts.append(f"source validation accuracy {s['source_val_acc']:.1%}")
    if s.get("target_info_max") is not None:
        parts.append(f"target confidence/diversity score {s['target_info_max']:.2f}")
    if s.get("check_acc") is not None:
        parts.append(f"check-set accuracy {s['check_acc']:.1%} ({s['check_n']} images)")
    return f"{who}: " + ", ".join(parts)


def head_epochs(head, feats: Feats, ft, fc, start_epoch: int, total_epochs: int, kw: dict,
                stop) -> Generator[Event, None, list[dict]]:
    """Train the head on cached features, yielding one EpochEnd per epoch (phase "adapt")."""
    from tlstudio.core.tasks.adaptation.features import train_head_steps

    rows = []
    t0 = time.time()
    for ep, row in enumerate(train_head_steps(head, feats.fs, feats.ys, ft=ft, stop=stop, **kw)):
        s = score(head, feats, ft=ft, fc=fc)
        parts = {"source_loss": row["source_loss"], "target_loss": row["target_loss"]}
        metrics = {"val_acc": s["source_val_acc"], "target_info_max": s["target_info_max"], **parts}
        metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        rows.append({"epoch": start_epoch + ep + 1, "train_loss": row["source_loss"] + row["target_loss"], **metrics})
        yield EpochEnd(epoch=start_epoch + ep, epochs=total_epochs, train_loss=rows[-1]["train_loss"], metrics=metrics,
                       lr=row.get("lr", 0.0), seconds=time.time() - t0, best=False,
                       trainable_params=head.weight.numel() + head.bias.numel(), parts=parts, phase="adapt")
        t0 = time.time()
    if stop.is_set():
        raise Stopped()
    return rows
