"""Generated anomaly data sets for the anomaly tests: striped noisy 'parts' and painted defects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def texture(rng, size: int) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size]
    base = 0.5 + 0.25 * np.sin(x / 3.0 + rng.uniform(0, 6.28)) + 0.05 * rng.standard_normal((size, size))
    img = np.stack([base * 0.9, base * 0.8, base * 0.6], -1)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


def paint_defect(img: Image.Image, rng, kind: str) -> tuple[Image.Image, Image.Image]:
    s = img.size[0]
    mask = Image.new("L", img.size, 0)
    d, dm = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    cx, cy = (int(v) for v in rng.integers(s // 4, 3 * s // 4, 2))
    r = max(3, s // 8)
    if kind == "blob":
        box = [cx - r, cy - r, cx + r, cy + r]
        d.ellipse(box, fill=(20, 160, 220))
        dm.ellipse(box, fill=255)
    else:
        pts = [(cx - 2 * r, cy - r), (cx + 2 * r, cy + r)]
        d.line(pts, fill=(255, 255, 255), width=max(2, s // 20))
        dm.line(pts, fill=255, width=max(2, s // 20))
    return img, mask


def make_mvtec(root, n_train: int = 16, n_good: int = 4, n_defect: int = 4, size: int = 64, seed: int = 0,
               masks: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    root = Path(root)
    for i in range(n_train):
        (root / "train" / "good").mkdir(parents=True, exist_ok=True)
        texture(rng, size).save(root / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        (root / "test" / "good").mkdir(parents=True, exist_ok=True)
        texture(rng, size).save(root / "test" / "good" / f"{i:03d}.png")
    for kind in ("blob", "scratch"):
        (root / "test" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n_defect):
            img, m = paint_defect(texture(rng, size), rng, kind)
            img.save(root / "test" / kind / f"{i:03d}.png")
            if masks:
                (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                m.save(root / "ground_truth" / kind / f"{i:03d}_mask.png")
    return root
