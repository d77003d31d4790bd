"""Synthetic labelled image folders (tests, benchmarks, the bundled sample).

Each class is a shape drawn at a random place, size and colour on a noisy background.
``easy=True`` also ties each class to a colour family, so a small model learns it in a
few CPU steps.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")
_PALETTE = [(220, 40, 40), (40, 170, 60), (40, 80, 220), (230, 180, 20), (160, 60, 200), (20, 190, 200)]


def _draw_shape(draw, shape: str, cx: float, cy: float, r: float, color, width: int) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "triangle":
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        draw.polygon(pts, fill=color)
    elif shape == "cross":
        w = max(2, r / 3)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=color)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=color)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=width)
    elif shape == "bar":
        draw.rectangle([cx - r, cy - r / 4, cx + r, cy + r / 4], fill=color)
    else:
        raise ValueError(shape)


def make_image(shape: str, size: int, rng: random.Random, color=None):
    from PIL import Image, ImageDraw, ImageFilter

    bg = tuple(rng.randint(0, 90) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    # background clutter so the task is not a single pixel statistic
    for _ in range(3):
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        s = rng.uniform(size * 0.03, size * 0.08)
        draw.ellipse([x - s, y - s, x + s, y + s], fill=tuple(rng.randint(0, 120) for _ in range(3)))
    r = rng.uniform(size * 0.18, size * 0.32)
    cx = rng.uniform(r + 2, size - r - 2)
    cy = rng.uniform(r + 2, size - r - 2)
    if color is None:
        color = tuple(rng.randint(130, 255) for _ in range(3))
    _draw_shape(draw, shape, cx, cy, r, color, width=max(2, int(r / 4)))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def make_synthetic_folder(
    root: str | Path,
    classes: tuple[str, ...] | list[str] = ("circle", "square", "triangle"),
    per_class: int = 20,
    size: int = 64,
    seed: int = 0,
    easy: bool = False,
    fmt: str = "png",
) -> Path:
    """Write ``root/<class>/<class>_NNN.<fmt>`` and return ``root``."""
    root = Path(root)
    rng = random.Random(seed)
    for ci, shape in enumerate(classes):
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            color = None
            if easy:
                base = _PALETTE[ci % len(_PALETTE)]
                color = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in base)
            img = make_image(shape, size, rng, color)
            path = folder / f"{shape}_{i:03d}.{fmt}"
            if fmt in ("jpg", "jpeg"):
                img.save(path, quality=90)
            else:
                img.save(path)
    return root
