"""PaDiM (Defard et al. 2020): one Gaussian per patch position over a random subset of the
concatenated stage features; the anomaly of a patch is its Mahalanobis distance. Fitting is a
single pass of running sums (no bank, no coreset), so it is the light alternative to
PatchCore; memory is positions x d x d (784 x 100 x 100 floats = 31 MB at 224 px)."""

from __future__ import annotations

import torch

from tlstudio.core.tasks.anomaly.model import PadimHead


class PadimAccumulator:
    def __init__(self, dim_in: int, dims: int, positions: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        d = min(dims, dim_in)
        self.channels = torch.randperm(dim_in, generator=g)[:d].sort().values
        self.n = 0
        self.sum = torch.zeros(positions, d, dtype=torch.float64)
        self.outer = torch.zeros(positions, d, d, dtype=torch.float64)

    @staticmethod
    def bytes_needed(dim_in: int, dims: int, positions: int) -> int:
        d = min(dims, dim_in)
        return positions * d * d * 8 * 2 + positions * d * 8

    def add(self, f: torch.Tensor) -> None:
        """f: (B, D, h, w) patch features of normal images."""
        x = f.index_select(1, self.channels).flatten(2).permute(2, 0, 1).double()  # (P, B, d)
        self.sum += x.sum(1)
        self.outer += torch.einsum("pbd,pbe->pde", x, x)
        self.n += f.shape[0]

    def finish(self, eps: float = 0.01) -> PadimHead:
        if self.n < 2:
            raise ValueError("PaDiM needs at least two normal images")
        mean = self.sum / self.n
        cov = (self.outer - self.n * torch.einsum("pd,pe->pde", mean, mean)) / (self.n - 1)
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype)
        inv = torch.linalg.inv(cov + eps * eye)
        return PadimHead(self.channels, mean.float(), inv.float())
