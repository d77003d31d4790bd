"""AdaBN (Li et al. 2016): re-estimate BatchNorm running statistics on the target images.

No training and no labels: the weights stay as they are, only each BatchNorm layer's running mean
and variance (and its batch counter) are recomputed as a plain average over the target images, so
the normalisation matches the new camera, lighting or site. Seconds on a CPU. Backbones normalised
per image (ViT/ConvNeXt LayerNorm, GroupNorm) have no running statistics: not applicable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def bn_layers(model) -> list[Any]:
    """BatchNorm layers with running statistics (timm's BatchNormAct2d included)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


def applicability(model, backbone: str = "") -> tuple[bool, str]:
    """(applicable, reason) for AdaBN on this model."""
    n = len(bn_layers(model))
    name = backbone or type(model).__name__
    if n == 0:
        return False, (f"AdaBN does not apply to {name}: it has no BatchNorm layers (it normalises each "
                       "image on its own, e.g. LayerNorm in ViT/ConvNeXt), so there are no statistics "
                       "to re-estimate. Use MCC, DANN or self-training instead.")
    return True, f"{name} has {n} BatchNorm layers whose statistics will be re-estimated on the target images"


def adapt_bn(model, batches: Iterable[Any], *, device: Any = "cpu", stop: Any = None,
             progress: Callable[[int, int | None], None] | None = None, total: int | None = None) -> int:
    """Recompute every BatchNorm's running statistics from ``batches`` (image tensors, or
    (x, y, idx) tuples whose y/idx are ignored). Returns the number of images seen.

    Only BatchNorm buffers change: weights, biases and every other buffer stay bit-identical.
    The model is left in eval mode."""
    import torch

    layers = bn_layers(model)
    if not layers:
        raise ValueError("the model has no BatchNorm layers (AdaBN not applicable)")
    saved = [(m, m.momentum) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every target image counts the same
    model.eval()
    for m in layers:
        m.train()
    seen, held = 0, None
    try:
        with torch.no_grad():
            for b in batches:
                if stop is not None and stop.is_set():
                    break
                x = b[0] if isinstance(b, tuple | list) else b
                if x.shape[0] == 0:
                    continue
                if x.shape[0] == 1:  # batch statistics of one image are degenerate: pair it with the next
                    held = x if held is None else torch.cat([held, x])
                    if held.shape[0] < 2:
                        continue
                    x, held = held, None
                model(x.to(device))
                seen += int(x.shape[0])
                if progress is not None:
                    progress(seen, total)
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.eval()  # an adapted model is used for inference
    if seen == 0:
        raise ValueError("no target images could be read for AdaBN")
    return seen
