"""The scoring model shared by the app and the exports: body stages -> patch features ->
method head (PatchCore bank or PaDiM Gaussians) -> image score and anomaly map.

The same nn.Module runs in the app and is traced into ONNX/TorchScript, so exported scores
equal the app's. ``forward`` returns the *normalised* score and map: 0.5 is the threshold,
monotone in the raw distance, 0..1 (a logistic of (raw - threshold) / scale).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tlstudio.core.models.features import feature_maps
from tlstudio.core.tasks.anomaly.threshold import NORM_SLOPE, normalise_np, raw_from_normalised  # noqa: F401

BANK_CHUNK = 4096  # bank rows per kNN block: bounds the query x bank distance matrix


def patch_features(body: nn.Module, x: torch.Tensor, indices: list[int], aggregate: int = 3) -> torch.Tensor:
    """(B, D, h, w): each stage averaged over its ``aggregate`` x ``aggregate`` neighbourhood
    (PatchCore's local context; 1 = none), resized to the finest stage's grid, concatenated
    along channels."""
    maps = [m.float() for m in feature_maps(body, x, indices)]
    if aggregate > 1:
        maps = [F.avg_pool2d(m, aggregate, stride=1, padding=aggregate // 2, count_include_pad=False) for m in maps]
    size = maps[0].shape[-2:]
    maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            for m in maps]
    return torch.cat(maps, 1)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(4.0 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


class GaussianBlur(nn.Module):
    """Separable Gaussian smoothing of (B, 1, H, W) maps (reflect padding, ONNX-friendly)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        k = gaussian_kernel(sigma)
        self.radius = (k.numel() - 1) // 2
        self.register_buffer("kx", k.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("ky", k.view(1, 1, -1, 1), persistent=False)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        r = min(self.radius, m.shape[-1] - 1, m.shape[-2] - 1)
        if r <= 0:
            return m
        kx = self.kx[..., self.radius - r:self.radius + r + 1]
        ky = self.ky[..., self.radius - r:self.radius + r + 1, :]
        m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="reflect"), kx / kx.sum())
        return F.conv2d(F.pad(m, (0, 0, r, r), mode="reflect"), ky / ky.sum())


class PatchCoreHead(nn.Module):
    """Distance of each patch to its nearest memory-bank patch."""

    def __init__(self, bank: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bank", bank.float().contiguous())
        self.register_buffer("bank_sq", (self.bank * self.bank).sum(1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        b, d, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, d)
        best = None
        m = self.bank.shape[0]
        # |q - b|^2 = |q|^2 + (|b|^2 - 2 q.b): one fused GEMM per bank block, |q|^2 added after the min
        for s in range(0, m, BANK_CHUNK):  # unrolled when traced: the bank size is fixed
            part = torch.addmm(self.bank_sq[s:s + BANK_CHUNK].unsqueeze(0), q, self.bank[s:s + BANK_CHUNK].t(),
                               alpha=-2.0).min(1).values
            best = part if best is None else torch.minimum(best, part)
        d2 = best + (q * q).sum(1)
        return d2.clamp(min=0.0).sqrt().reshape(b, h, w)


class PadimHead(nn.Module):
    """Mahalanobis distance of each patch to the Gaussian of normal patches at its position."""

    def __init__(self, channels: torch.Tensor, mean: torch.Tensor, inv_cov: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("channels", channels.long())
        self.register_buffer("mean", mean.float())  # (P, d)
        self.register_buffer("inv_cov", inv_cov.float())  # (P, d, d)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        b, _, h, w = f.shape
        f = f.index_select(1, self.channels).flatten(2).permute(0, 2, 1)  # (B, P, d)
        diff = f - self.mean.unsqueeze(0)
        left = torch.einsum("bpd,pde->bpe", diff, self.inv_cov)
        m = (left * diff).sum(-1).clamp(min=0.0).sqrt()
        return m.reshape(b, h, w)


class AnomalyModel(nn.Module):
    """Image (B, 3, S, S), normalised as the run says -> (score (B,), anomaly_map (B, 1, S, S)),
    both normalised so the threshold is 0.5."""

    def __init__(self, body: nn.Module, indices: list[int], head: nn.Module, *, sigma: float = 4.0,
                 threshold: float = 1.0, scale: float = 1.0, aggregate: int = 3) -> None:
        super().__init__()
        self.body = body
        self.indices = [int(i) for i in indices]
        self.aggregate = int(aggregate)
        self.head = head
        self.blur = GaussianBlur(sigma)
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def set_normalisation(self, threshold: float, scale: float) -> None:
        self.threshold.fill_(float(threshold))
        self.scale.fill_(max(float(scale), 1e-12))

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(patch_features(self.body, x, self.indices, self.aggregate))

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw image score (largest patch distance) and raw smoothed map at input resolution."""
        p = self.patches(x)
        score = p.flatten(1).max(1).values
        m = F.interpolate(p.unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return score, self.blur(m)

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(NORM_SLOPE * (raw - self.threshold) / self.scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score, m = self.raw(x)
        return self.normalise(score), self.normalise(m)

