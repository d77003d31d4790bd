"""Choosing between the adapted and the unadapted model without target labels for training.

Without labels on the target, no method can tell for sure whether adaptation helped: this is
the known weak spot of every domain-adaptation library. So the unadapted (source-only) model is
always kept as a baseline, and the report carries
- the source validation accuracy of both (adaptation should not forget the source task),
- an unsupervised score on the target: information maximisation, (H(mean p) - mean H(p)) / log C,
  high when each target image gets a confident prediction and the classes are all used,
- with a check set (10-20 target images the user labelled) the target accuracy of both; the
  adapted model is kept only if it is better there. Check-set labels only ever score models.
"""

from __future__ import annotations

import math
from typing import Any


def info_max(probs) -> float:
    """Information-maximisation score of target predictions (N x C probabilities), 0..1."""
    import torch

    p = torch.as_tensor(probs, dtype=torch.float64)
    if p.ndim != 2 or len(p) == 0 or p.shape[1] < 2:
        return float("nan")
    eps = 1e-12
    mean = p.mean(0)
    h_mean = float(-(mean * (mean + eps).log()).sum())
    mean_h = float(-(p * (p + eps).log()).sum(1).mean())
    return max(0.0, (h_mean - mean_h) / math.log(p.shape[1]))


def accuracy(probs, labels) -> float:
    import torch

    p = torch.as_tensor(probs)
    y = torch.as_tensor(labels, dtype=torch.long)
    if len(y) == 0:
        return float("nan")
    return float((p.argmax(1) == y).double().mean())


def choose(unadapted: dict[str, Any], adapted: dict[str, Any], min_gain: float = 0.0) -> dict[str, Any]:
    """Which model the run keeps, and a sentence saying why.

    Each dict may hold source_val_acc, target_info_max and check_acc (None when no check set)."""
    ca, cu = adapted.get("check_acc"), unadapted.get("check_acc")
    n = adapted.get("check_n") or 0
    if ca is not None and cu is not None and n > 0:
        if ca > cu + min_gain:
            return {"selected": "adapted", "by": "check set",
                    "reason": f"On your {n} labelled check images the adapted model is right {ca:.0%} of the time, "
                              f"the unadapted one {cu:.0%}: keeping the adapted model."}
        return {"selected": "unadapted", "by": "check set",
                "reason": f"On your {n} labelled check images the adapted model ({ca:.0%}) is not better than the "
                          f"unadapted one ({cu:.0%}): keeping the unadapted model (the adapted weights are saved too)."}
    ia, iu = adapted.get("target_info_max"), unadapted.get("target_info_max")
    sa, su = adapted.get("source_val_acc"), unadapted.get("source_val_acc")
    notes = []
    if ia is not None and iu is not None and not (math.isnan(ia) or math.isnan(iu)):
        notes.append(f"target confidence/diversity score {iu:.2f} -> {ia:.2f}")
    if sa is not None and su is not None:
        notes.append(f"source validation accuracy {su:.0%} -> {sa:.0%}")
    warn = (ia is not None and iu is not None and ia < iu - 0.05) or (sa is not None and su is not None and sa < su - 0.15)
    reason = ("No check set, so the target accuracy is unknown; keeping the adapted model"
              + (f" ({'; '.join(notes)})" if notes else "") + ".")
    if warn:
        reason += " The unsupervised signs are not good: label 10-20 target images as a check set to be sure."
    else:
        reason += " Label 10-20 target images as a check set to measure it."
    return {"selected": "adapted", "by": "unsupervised", "reason": reason, "doubtful": bool(warn)}
