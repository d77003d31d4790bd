"""Augmentation on decoded uint8 tensors (CHW), with randomness that is a pure function of
(seed, epoch, sample index), so a resumed run sees exactly the images an uninterrupted one saw.

The input is the image already resized so its short side is input_size / crop_pct (what the
decoded cache stores); `none` is then timm's eval transform (center crop), `light` a random
resized crop (scale 0.6-1) + horizontal flip, `strong` adds colour jitter, a RandAugment-like
geometric/photometric op and random erasing. Normalisation happens last, on the whole batch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
    import torch

Preset = Literal["none", "light", "strong"]
PRESETS = ("none", "light", "strong")


def sample_rng(seed: int, epoch: int, index: int) -> "np.random.Generator":
    import numpy as np

    return np.random.default_rng([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, index & 0xFFFFFFFF, 0x7A5])


def scale_size(data_cfg: dict) -> int:
    """Short side the image is resized to before cropping (timm: floor(input / crop_pct))."""
    size = int(data_cfg["input_size"][-1])
    crop_pct = float(data_cfg.get("crop_pct") or 0.875)
    return max(size, int(math.floor(size / crop_pct)))


def center_crop(img: "torch.Tensor", size: int) -> "torch.Tensor":
    """torchvision CenterCrop on a CHW tensor (pads with zeros if the image is smaller)."""
    import torch.nn.functional as F

    _, h, w = img.shape
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        img = F.pad(img, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        _, h, w = img.shape
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img[:, top:top + size, left:left + size]


def _rrc_params(h: int, w: int, rng, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params with our RNG."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ar = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        cw = int(round(math.sqrt(target * ar)))
        ch = int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _strong_ops(img: "torch.Tensor", rng) -> "torch.Tensor":
    """Colour jitter plus one RandAugment-like op (uint8 CHW in, uint8 CHW out)."""
    import torchvision.transforms.v2.functional as TF

    # colour jitter 0.3 in random order, like timm's ColorJitter(0.3, 0.3, 0.3)
    for op in rng.permutation(3):
        f = float(rng.uniform(0.7, 1.3))
        if op == 0:
            img = TF.adjust_brightness(img, f)
        elif op == 1:
            img = TF.adjust_contrast(img, f)
        else:
            img = TF.adjust_saturation(img, f)
    k = int(rng.integers(0, 6))
    if k == 0:
        img = TF.rotate(img, float(rng.uniform(-20, 20)))
    elif k == 1:
        img = TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0,
                        shear=[float(rng.uniform(-12, 12)), 0.0])
    elif k == 2:
        s = img.shape[-1]
        img = TF.affine(img, angle=0.0, translate=[int(rng.integers(-s // 8, s // 8 + 1)),
                                                   int(rng.integers(-s // 8, s // 8 + 1))],
                        scale=1.0, shear=[0.0, 0.0])
    elif k == 3:
        img = TF.adjust_sharpness(img, float(rng.uniform(0.3, 1.8)))
    elif k == 4:
        img = TF.autocontrast(img)
    else:
        img = TF.posterize(img, int(rng.integers(5, 8)))
    return img


def augment_one(img: "torch.Tensor", size: int, preset: str, rng) -> tuple["torch.Tensor", tuple | None]:
    """uint8 CHW (short side = scale size) -> uint8 CHW `size` x `size`, plus an erase box or None."""
    if preset == "none" or rng is None:
        return center_crop(img, size), None
    import torch
    import torch.nn.functional as F

    _, h, w = img.shape
    top, left, ch, cw = _rrc_params(h, w, rng)
    # bilinear + antialias on uint8 in HWC memory runs torch's vectorised uint8 kernel: 0.16 ms
    # a crop vs 0.58 ms for torchvision's resized_crop on CHW memory (same maths as TF.resized_crop)
    crop = img[None, :, top:top + ch, left:left + cw]
    if not crop.is_contiguous(memory_format=torch.channels_last):
        crop = crop.contiguous(memory_format=torch.channels_last)
    out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    if rng.random() < 0.5:
        out = out.flip(-1)
    erase = None
    if preset == "strong":
        out = _strong_ops(out, rng)
        if rng.random() < 0.25:  # timm random erasing, const mode, 2-33% of the area
            for _ in range(10):
                a = size * size * rng.uniform(0.02, 1 / 3)
                ar = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
                eh, ew = int(round(math.sqrt(a * ar))), int(round(math.sqrt(a / ar)))
                if eh < size and ew < size:
                    erase = (int(rng.integers(0, size - eh + 1)), int(rng.integers(0, size - ew + 1)), eh, ew)
                    break
    return out, erase


def normalise(images, mean, std, channels_last: bool = False) -> "torch.Tensor":
    """uint8 CHW images (list or NCHW tensor) -> float32 NCHW (x/255 - mean) / std, in place.
    `channels_last` gives NHWC memory (same shape), the layout channels_last models consume."""
    import torch

    n = len(images)
    c, h, w = images[0].shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((n, c, h, w), dtype=torch.float32, memory_format=fmt)
    if isinstance(images, torch.Tensor):
        out.copy_(images)  # uint8 -> float conversion fused with the (layout) copy
    else:
        for i in range(n):
            out[i].copy_(images[i])
    s = torch.tensor([1.0 / (float(v) * 255.0) for v in std])
    m = torch.tensor([float(mu) / float(sd) for mu, sd in zip(mean, std)])
    if not channels_last:
        return out.mul_(s.view(1, -1, 1, 1)).sub_(m.view(1, -1, 1, 1))
    # NHWC memory: a per-channel broadcast would run over an innermost dimension of 3 (slow);
    # view it as rows of 64 pixels instead, with the 3 channel factors repeated to match
    flat = out.permute(0, 2, 3, 1).reshape(-1)  # a view: the memory is already NHWC
    k = 64 if flat.numel() % (64 * c) == 0 else 1
    flat.view(-1, k * c).mul_(s.repeat(k)).sub_(m.repeat(k))
    return out
