"""Classification metrics from class probabilities: accuracy, macro-F1, top-k, per-class
precision/recall/F1, the confusion matrix and the most confident mistakes (an `EvalReport`).

Pure numpy, so every kind that ends in class probabilities (the classifier, k-NN, the int8
check) scores them the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class EvalReport:
    accuracy: float
    macro_f1: float
    top_k: dict[int, float]
    per_class: list[dict[str, Any]]  # name, precision, recall, f1, support
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    classes: list[str]
    misclassified: list[dict[str, Any]]  # path, true, pred, confidence (of pred)
    n: int
    failures: list[dict[str, str]] = field(default_factory=list)  # path, reason: files that could not be read
    source: str = ""  # "validation split" or the folder evaluated
    # correctly classified images, as misclassified (path, true, pred, confidence): per class the
    # CORRECT_PER_CLASS least sure first (the close calls), so a diagonal cell of the confusion
    # matrix can be browsed and explained; empty in reports written before it was kept
    correct: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["top_k"] = {str(k): v for k, v in self.top_k.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EvalReport":
        d = dict(d)
        d["top_k"] = {int(k): float(v) for k, v in d.get("top_k", {}).items()}
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


CORRECT_PER_CLASS = 200  # bounds eval.json on a big test set (~30 KB per class)


def report_from_probs(
    probs: np.ndarray,
    labels: Sequence[int],
    classes: Sequence[str],
    paths: Sequence[str] | None = None,
    failures: list[dict[str, str]] | None = None,
    source: str = "",
) -> EvalReport:
    """All metrics from class probabilities (N, C) and true labels. Pure numpy."""
    classes = list(classes)
    c = len(classes)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, c)
    labels_a = np.asarray(labels, dtype=np.int64)
    n = int(labels_a.shape[0])
    paths = list(paths) if paths is not None else [""] * n
    pred = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    conf = np.zeros((c, c), dtype=np.int64)
    np.add.at(conf, (labels_a, pred), 1)

    per_class = []
    f1s = []
    for i, name in enumerate(classes):
        tp = int(conf[i, i])
        predicted = int(conf[:, i].sum())
        support = int(conf[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append(
            {"name": name, "precision": precision, "recall": recall, "f1": f1, "support": support}
        )
        if support:  # macro-F1 over classes present in the evaluated data
            f1s.append(f1)

    top_k: dict[int, float] = {}
    if n:
        order = np.argsort(-probs, axis=1, kind="stable")
        for k in (1, 3, 5):
            if k <= c and (k == 1 or k < c):  # top-c is always 1.0: not informative
                hit = (order[:, :k] == labels_a[:, None]).any(axis=1)
                top_k[k] = float(hit.mean())

    mis = []
    for i in np.nonzero(pred != labels_a)[0]:
        mis.append(
            {
                "path": paths[i],
                "true": classes[labels_a[i]],
                "pred": classes[pred[i]],
                "confidence": float(probs[i, pred[i]]),
            }
        )
    mis.sort(key=lambda m: -m["confidence"])  # most confident mistakes first: likely label errors
    right = []
    for k in range(c):
        rows = np.nonzero((pred == labels_a) & (labels_a == k))[0]
        rows = rows[np.argsort(probs[rows, k], kind="stable")][:CORRECT_PER_CLASS]  # least sure first
        right += [{"path": paths[i], "true": classes[k], "pred": classes[k], "confidence": float(probs[i, k])}
                  for i in rows if paths[i]]
    return EvalReport(
        accuracy=float((pred == labels_a).mean()) if n else 0.0,
        macro_f1=float(np.mean(f1s)) if f1s else 0.0,
        top_k=top_k,
        per_class=per_class,
        confusion=conf.tolist(),
        classes=classes,
        misclassified=mis,
        n=n,
        failures=list(failures or []),
        source=source,
        correct=right,
    )
