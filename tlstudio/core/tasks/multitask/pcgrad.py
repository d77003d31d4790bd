"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning") and gradient cosines.

For each task i, its gradient on the shared parameters is projected onto the normal plane of
every other task's gradient it conflicts with (negative dot product), visiting the others in
random order; the projected gradients are summed. Cosines between the raw per-task gradients
measure how related the tasks are (1: same direction, 0: unrelated, < 0: conflicting).
"""

from __future__ import annotations

import random

import torch


def flat(grads: list[torch.Tensor | None], like: list[torch.Tensor]) -> torch.Tensor:
    """One vector from a list of per-parameter gradients (None -> zeros)."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, like)])


def unflat(vec: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for p in like:
        n = p.numel()
        out.append(vec[i:i + n].view_as(p).to(p.dtype))
        i += n
    return out


def project_conflicting(grads: list[torch.Tensor], rng: random.Random | None = None,
                        order: list[list[int]] | None = None) -> torch.Tensor:
    """Sum of PCGrad-projected task gradients. ``order[i]``: the order in which task i visits the
    others (default: shuffled with ``rng``); given explicitly in tests."""
    k = len(grads)
    rng = rng or random.Random(0)
    out = torch.zeros_like(grads[0])
    for i in range(k):
        g = grads[i].clone()
        others = order[i] if order is not None else rng.sample([j for j in range(k) if j != i], k - 1)
        for j in others:
            gj = grads[j]
            dot = torch.dot(g, gj)
            if dot < 0:
                g = g - dot / gj.dot(gj).clamp_min(1e-20) * gj
        out += g
    return out


def cosine_matrix(grads: list[torch.Tensor]) -> list[list[float]]:
    k = len(grads)
    norms = [g.norm().clamp_min(1e-20) for g in grads]
    return [[float(torch.dot(grads[i], grads[j]) / (norms[i] * norms[j])) for j in range(k)] for i in range(k)]


class Relatedness:
    """Running mean of the gradient cosine matrix between tasks (sampled every N steps)."""

    def __init__(self, tasks: list[str]):
        self.tasks = list(tasks)
        k = len(tasks)
        self.sum = [[0.0] * k for _ in range(k)]
        self.n = 0

    def add(self, m: list[list[float]]) -> None:
        for i, row in enumerate(m):
            for j, v in enumerate(row):
                self.sum[i][j] += v
        self.n += 1

    def matrix(self) -> list[list[float]] | None:
        if not self.n:
            return None
        return [[v / self.n for v in row] for row in self.sum]

    def state_dict(self) -> dict:
        return {"sum": self.sum, "n": self.n}

    def load_state_dict(self, d: dict) -> None:
        if d.get("sum") and len(d["sum"]) == len(self.tasks):
            self.sum, self.n = [list(r) for r in d["sum"]], int(d.get("n", 0))
