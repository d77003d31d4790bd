"""Pooled features of a frozen body, and a linear head trained on them (seconds on a CPU).

Used where the body does not train: AdaBN + head, self-training and MCC on cached features, the
domain-gap indicator and the semi-supervised pseudo-label rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def extract(model, samples: Sequence[Any], data_cfg: dict, *, batch_size: int = 64, device: Any = "cpu",
            stop: Any = None, progress: Callable[[int, int | None], None] | None = None,
            workers: int | None = None):
    """(features N x D float32 on CPU, kept row indices into ``samples``) in eval mode, forward
    passes in CPU-sized chunks. Unreadable images are left out (their indices are missing from ``kept``)."""
    import torch

    from tlstudio.core.pipeline.feature_cache import extract_features
    from tlstudio.core.pipeline.loaders import eval_loader
    from tlstudio.core.runtime.inference import forward_chunked

    model.eval()
    feats, kept = [], []
    done = 0
    loader = eval_loader(list(samples), data_cfg, batch_size=batch_size, workers=workers)
    with torch.no_grad():
        for x, _, idx in loader:
            if stop is not None and stop.is_set():
                break
            if x.shape[0] == 0:
                continue
            feats.append(forward_chunked(lambda c: extract_features(model, c), x.to(device)).float().cpu())
            kept += [int(i) for i in idx]
            done += int(x.shape[0])
            if progress is not None:
                progress(done, len(samples))
    if not feats:
        return torch.zeros(0, int(getattr(model, "num_features", 1))), []
    return torch.cat(feats), kept


def image_batches(samples: Sequence[Any], data_cfg: dict, batch_size: int = 64, workers: int | None = None):
    """Deterministic (x, y, idx) batches of ``samples`` (for AdaBN)."""
    from tlstudio.core.pipeline.loaders import eval_loader

    return eval_loader(list(samples), data_cfg, batch_size=batch_size, workers=workers)


def copy_linear(head):
    """A detached trainable copy of the model's classifier (an nn.Linear)."""
    import copy

    import torch

    lin = head if isinstance(head, torch.nn.Linear) else [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    out = copy.deepcopy(lin).float()
    for p in out.parameters():
        p.requires_grad_(True)
    return out


def probs_of(head, feats, batch: int = 4096):
    import torch

    with torch.no_grad():
        return torch.cat([torch.softmax(head(feats[i:i + batch]).float(), 1) for i in range(0, len(feats), batch)]) \
            if len(feats) else torch.zeros(0, head.out_features)


def train_head(head, fs, ys, **kw) -> list[dict]:
    """Train a linear head in place (see train_head_steps); returns one dict per epoch."""
    return list(train_head_steps(head, fs, ys, **kw))


def _target_loss(head, batch_size: int, g, pseudo, pseudo_weight: float, ft, mcc_weight: float,
                 temperature: float, label_smoothing: float):
    """The target part of one step's loss: cross-entropy on a random batch of the pseudo-labelled
    rows (``pseudo`` = (features, labels)) and/or MCC on a random target batch; None when neither."""
    import torch
    import torch.nn.functional as F

    from tlstudio.core.tasks.adaptation.mcc import mcc_loss

    t_loss = None
    if pseudo is not None:
        pf, py = pseudo
        pr = torch.randint(0, len(pf), (min(batch_size, len(pf)),), generator=g)
        t_loss = pseudo_weight * F.cross_entropy(head(pf[pr]), py[pr], label_smoothing=label_smoothing)
    if mcc_weight > 0 and ft is not None and len(ft) > 1:
        tr = torch.randint(0, len(ft), (min(batch_size, len(ft)),), generator=g)
        m = mcc_weight * mcc_loss(head(ft[tr]), temperature)
        t_loss = m if t_loss is None else t_loss + m
    return t_loss


def train_head_steps(head, fs, ys, *, ft=None, pseudo_idx=None, pseudo_y=None, pseudo_weight: float = 1.0,
                     mcc_weight: float = 0.0, temperature: float = 2.5, epochs: int = 30, lr: float = 1e-3,
                     batch_size: int = 32, weight_decay: float = 0.05, label_smoothing: float = 0.1, seed: int = 0,
                     stop: Any = None):
    """Train a linear head in place on source features (fs, ys), plus optionally pseudo-labelled
    target rows (ft[pseudo_idx] with pseudo_y) and an MCC term on random target batches.

    Yields one dict per epoch (source_loss, target_loss, lr). Cosine learning rate, AdamW."""
    import math

    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(fs)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    pseudo = None
    if pseudo_idx is not None and len(pseudo_idx) > 0:
        pseudo = (ft[torch.as_tensor(list(pseudo_idx), dtype=torch.long)], torch.as_tensor(list(pseudo_y),
                                                                                           dtype=torch.long))
    for _ in range(epochs):
        if stop is not None and stop.is_set():
            break
        head.train()
        perm = torch.randperm(n, generator=g)
        s_sum = t_sum = 0.0
        for b in range(steps_per_epoch):
            rows = perm[b * batch_size:(b + 1) * batch_size]
            loss = F.cross_entropy(head(fs[rows]), ys[rows], label_smoothing=label_smoothing)
            s_sum += float(loss.detach())
            t_loss = _target_loss(head, batch_size, g, pseudo, pseudo_weight, ft, mcc_weight, temperature,
                                  label_smoothing)
            if t_loss is not None:
                loss = loss + t_loss
                t_sum += float(t_loss.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        head.eval()
        yield {"source_loss": s_sum / steps_per_epoch, "target_loss": t_sum / steps_per_epoch,
               "lr": float(opt.param_groups[0]["lr"])}
    head.eval()
