"""Greedy k-center coreset selection (PatchCore's memory-bank reduction), bounded.

Greedy k-center picks, one at a time, the point farthest from everything picked so far; the
picked set then covers every patch within the smallest radius the greedy 2-approximation
finds. Distances are computed on a random Gaussian projection (Johnson-Lindenstrauss: pairwise
distances kept within a small factor) so each step streams an N x d matrix with d <= 64-128.

Cost is k steps of O(N d). To bound time and memory whatever the number of images the job
reduces the bank as it goes (merge and reduce): each chunk of images is reduced to its share,
and when the running bank grows past twice the cap it is reduced back to the cap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Stopped(Exception):
    """The stop event was set during a long selection."""


def random_projection(dim_in: int, dim_out: int, seed: int = 0):
    import torch

    if dim_out >= dim_in:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim_in, dim_out, generator=g) / dim_out ** 0.5


def k_center_greedy(
    features,
    k: int,
    *,
    projection_dim: int | None = 64,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
    every: int = 256,
):
    """Indices (LongTensor, length min(k, N)) of a greedy k-center subset of ``features`` (N x D).

    Starts from a seeded random point; each step adds the point with the largest distance to
    its nearest selected point. ``projection_dim`` None or >= D: exact distances.
    """
    import torch

    x = features.detach().float()
    n = x.shape[0]
    k = int(min(k, n))
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    if k == n:
        return torch.arange(n)
    proj = random_projection(x.shape[1], projection_dim, seed) if projection_dim else None
    if proj is not None:
        x = x @ proj
    x = x.contiguous()
    sq = (x * x).sum(1)
    g = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=g))
    selected = torch.empty(k, dtype=torch.long)
    selected[0] = first
    # |x - c|^2 = |x|^2 + (|c|^2 - 2 x.c): keep m = min over picked c of (|c|^2 - 2 x.c), one fused
    # addmv per step; the squared distance to the nearest pick is |x|^2 + m
    m = torch.addmv(sq[first:first + 1], x, x[first], alpha=-2.0)
    m[first] = -sq[first]
    buf = torch.empty(n)
    d = torch.empty(n)
    for i in range(1, k):
        j = int(torch.argmax(torch.add(sq, m, out=d)))
        selected[i] = j
        torch.minimum(m, torch.addmv(sq[j:j + 1], x, x[j], alpha=-2.0, out=buf), out=m)
        m[j] = -sq[j]  # exactly 0 away from itself (never picked twice)
        if i % every == 0:
            if stop is not None and stop.is_set():
                raise Stopped
            if progress is not None:
                progress(i, k)
    if progress is not None:
        progress(k, k)
    return selected


def coverage_radius(features, selected) -> float:
    """Largest distance of any point to its nearest selected point (the k-center objective)."""
    import torch

    x = features.float()
    c = x[selected]
    best = torch.full((x.shape[0],), float("inf"))
    for s in range(0, c.shape[0], 4096):
        best = torch.minimum(best, torch.cdist(x, c[s:s + 4096]).min(1).values)
    return float(best.max())


class StreamingBank:
    """Merge-and-reduce coreset over chunks of patch features: memory stays within about
    ``2 * cap + chunk`` rows whatever the number of images.

    With ``expected_rows`` (the patches the fit will add, known from the image count) each chunk
    keeps at most its share of ``overshoot * cap`` instead of ``ratio`` of itself, so when the cap
    binds the chunks together keep about twice the cap and a single reduction to the cap follows
    at the end: the selection costs about ``overshoot * cap`` steps over a chunk plus ``cap`` steps
    over ``overshoot * cap`` rows, whatever the number of images (without it, every chunk kept
    ``ratio`` of itself and the bank was reduced again each time it passed twice the cap)."""

    def __init__(self, ratio: float, cap: int, *, projection_dim: int = 64, seed: int = 0,
                 stop: threading.Event | None = None, expected_rows: int | None = None,
                 overshoot: float = 2.0) -> None:
        self.ratio = ratio
        self.cap = cap
        self.projection_dim = projection_dim
        self.seed = seed
        self.stop = stop
        self.share = ratio if not expected_rows else min(ratio, overshoot * cap / max(1, expected_rows))
        self.parts: list = []
        self.rows = 0
        self.seen = 0
        self.reductions = 0

    def add(self, chunk, progress: Callable[[int, int], None] | None = None) -> None:
        """Add a chunk of patch features (N x D); it is reduced to its coreset share first."""
        self.seen += chunk.shape[0]
        keep = max(1, round(chunk.shape[0] * self.share))
        if keep < chunk.shape[0]:
            chunk = chunk[k_center_greedy(chunk, keep, projection_dim=self.projection_dim,
                                          seed=self.seed + self.seen, stop=self.stop, progress=progress)]
        self.parts.append(chunk.float().contiguous())
        self.rows += chunk.shape[0]
        if self.rows > 2 * self.cap:
            self._reduce(self.cap, progress)

    def _reduce(self, k: int, progress=None) -> None:
        import torch

        bank = torch.cat(self.parts) if len(self.parts) > 1 else self.parts[0]
        self.parts = []
        idx = k_center_greedy(bank, k, projection_dim=self.projection_dim, seed=self.seed,
                              stop=self.stop, progress=progress)
        self.parts = [bank[idx].contiguous()]
        self.rows = self.parts[0].shape[0]
        self.reductions += 1

    def finish(self, progress: Callable[[int, int], None] | None = None):
        """The final bank (at most ``cap`` rows)."""
        import torch

        if not self.parts:
            raise ValueError("no features were added")
        if self.rows > self.cap:
            self._reduce(self.cap, progress)
        return torch.cat(self.parts) if len(self.parts) > 1 else self.parts[0]


def expected_bank(patches_per_image: int, n_images: int, ratio: float, cap: int) -> int:
    return int(min(cap, max(1, round(patches_per_image * n_images * ratio))))
