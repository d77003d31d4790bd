"""Per-task targets, masked losses and metrics of a multi-task model.

A missing label (categorical -1, NaN row for multi-label and numeric) masks that row for that
task only. Per-task scores in 0..1 (accuracy; macro-F1 for multi-label; R^2 clipped to 0..1
for numeric) and their mean ``val_score``, which picks the best epoch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class Targets:
    """Per-task target tensors for a list of samples, looked up by batch index."""

    def __init__(self, samples: list[Any], tasks: list[dict[str, Any]]):
        self.tasks = tasks
        n = len(samples)
        self.t: dict[str, torch.Tensor] = {}
        for task in tasks:
            name, kind = task["name"], task["type"]
            vals = [(s.targets or {}).get(name) for s in samples]
            if kind == "categorical":
                self.t[name] = torch.tensor([-1 if v is None else int(v) for v in vals], dtype=torch.long)
            elif kind == "multilabel":
                m = torch.full((n, len(task["classes"])), float("nan"))
                for i, v in enumerate(vals):
                    if v is not None:
                        m[i] = 0.0
                        m[i, list(v)] = 1.0
                self.t[name] = m
            else:
                mean, std = float(task.get("mean") or 0.0), float(task.get("std") or 1.0)
                self.t[name] = torch.tensor([float("nan") if v is None else (float(v) - mean) / std for v in vals])

    def batch(self, idx: torch.Tensor, device) -> dict[str, torch.Tensor]:
        i = idx.detach().cpu().long()
        return {k: v[i].to(device) for k, v in self.t.items()}


def masked_losses(outs: dict[str, torch.Tensor], tg: dict[str, torch.Tensor], tasks: list[dict[str, Any]],
                  label_smoothing: float = 0.0, huber_delta: float = 1.0) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Per-task mean loss over the rows labelled for that task; {task: n labelled rows}."""
    losses: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for task in tasks:
        name, kind = task["name"], task["type"]
        out, y = outs[name].float(), tg[name]
        if kind == "categorical":
            mask = y >= 0
        elif kind == "multilabel":
            mask = ~torch.isnan(y[:, 0]) if y.numel() else torch.zeros(0, dtype=torch.bool, device=y.device)
        else:
            mask = ~torch.isnan(y)
        n = int(mask.sum())
        counts[name] = n
        if n == 0:
            losses[name] = out.sum() * 0.0
            continue
        if kind == "categorical":
            losses[name] = F.cross_entropy(out[mask], y[mask], label_smoothing=label_smoothing)
        elif kind == "multilabel":
            losses[name] = F.binary_cross_entropy_with_logits(out[mask], y[mask])
        else:
            losses[name] = F.huber_loss(out[mask].reshape(-1), y[mask], delta=huber_delta)
    return losses, counts


def _macro_f1(conf: list[list[int]]) -> float:
    f1s = []
    k = len(conf)
    for c in range(k):
        tp = conf[c][c]
        fn = sum(conf[c]) - tp
        fp = sum(conf[r][c] for r in range(k)) - tp
        if tp + fn + fp == 0:
            continue  # class absent from truth and predictions
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s) if f1s else 0.0


def task_metrics(task: dict[str, Any], out: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Metrics of one task on labelled rows: out/y as from the model and Targets (CPU)."""
    kind = task["type"]
    if kind == "categorical":
        mask = y >= 0
        pred, true = out[mask].argmax(1), y[mask]
        k = len(task["classes"])
        conf = torch.zeros(k, k, dtype=torch.long)
        conf.index_put_((true, pred), torch.ones_like(true), accumulate=True)
        conf_l = conf.tolist()
        n = int(mask.sum())
        acc = float((pred == true).float().mean()) if n else 0.0
        f1 = _macro_f1(conf_l)
        return {"n": n, "accuracy": acc, "macro_f1": f1, "score": acc, "confusion": conf_l}
    if kind == "multilabel":
        mask = ~torch.isnan(y[:, 0])
        pred, true = (out[mask] > 0).long(), y[mask].long()
        f1s = []
        for c in range(true.shape[1]):
            tp = int(((pred[:, c] == 1) & (true[:, c] == 1)).sum())
            fp = int(((pred[:, c] == 1) & (true[:, c] == 0)).sum())
            fn = int(((pred[:, c] == 0) & (true[:, c] == 1)).sum())
            if tp + fp + fn:
                f1s.append(2 * tp / (2 * tp + fp + fn))
        f1 = sum(f1s) / len(f1s) if f1s else 0.0
        exact = float((pred == true).all(1).float().mean()) if len(true) else 0.0
        return {"n": int(mask.sum()), "accuracy": exact, "macro_f1": f1, "score": f1}
    mask = ~torch.isnan(y)
    p, t = out[mask].reshape(-1).double(), y[mask].double()
    std = float(task.get("std") or 1.0)
    if len(t) == 0:
        return {"n": 0, "mae": 0.0, "r2": 0.0, "score": 0.0}
    mae = float((p - t).abs().mean()) * std
    var = float(((t - t.mean()) ** 2).mean())
    r2 = 1.0 - float(((p - t) ** 2).mean()) / var if var > 0 else 0.0
    return {"n": int(len(t)), "mae": mae, "r2": r2, "score": min(1.0, max(0.0, r2))}


def flat_metrics(per_task: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{val_acc/t, val_macro_f1/t, val_mae/t, val_r2/t, ...} + means: val_score, val_acc, val_macro_f1."""
    m: dict[str, float] = {}
    scores, accs, f1s = [], [], []
    for t, d in per_task.items():
        for k in ("accuracy", "macro_f1", "mae", "r2"):
            if k in d:
                m[f"val_{'acc' if k == 'accuracy' else k}/{t}"] = float(d[k])
        if "loss" in d:
            m[f"val_loss/{t}"] = float(d["loss"])
        scores.append(d["score"])
        if "accuracy" in d:
            accs.append(d["accuracy"])
            f1s.append(d["macro_f1"])
    m["val_score"] = sum(scores) / len(scores) if scores else 0.0
    if accs:
        m["val_acc"] = sum(accs) / len(accs)
        m["val_macro_f1"] = sum(f1s) / len(f1s)
    return m
