"""Offline anomaly data sets from real photographs (scikit-image sample images), MVTec layout:

- textures: many random crops of one texture photo are the normal parts (each crop shows gravel
  or grass never seen in training: harder than MVTec's aligned parts);
- objects: one photo (a cup, a retina, coins) in a fixed frame with small jitter (shift,
  rotation, brightness, sensor noise): closer to MVTec's aligned objects.
Test images get painted defects (scratches, blobs, colour spots) with ground-truth masks.
Used by bench_anomaly.py and to tune the anomaly defaults on real pretrained features;
``study`` compares the product's detector with a plain reference PatchCore (anomaly_reference.py).

    python benchmarks/anomaly_textures.py OUT_DIR [--textures brick,grass] [--objects coffee] [--train 100]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TEXTURES = ("brick", "grass", "gravel", "immunohistochemistry", "hubble_deep_field")
OBJECTS = ("coffee", "retina", "coins")
DEFECTS = ("scratch", "blob", "spot")


def texture_image(name: str) -> Image.Image:
    import skimage.data as d

    a = getattr(d, name)()
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    return Image.fromarray(a[..., :3].astype(np.uint8))


def crop(src: Image.Image, rng, size: int, out: int) -> Image.Image:
    w, h = src.size
    x, y = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    return src.crop((x, y, x + size, y + size)).resize((out, out), Image.BICUBIC)


def _colour(rng, img: np.ndarray, box) -> tuple[int, int, int]:
    """A defect colour that differs from the local texture, but not always garishly."""
    x0, y0, x1, y1 = (int(v) for v in box)
    local = img[max(0, y0):y1, max(0, x0):x1].reshape(-1, 3).mean(0) if x1 > x0 and y1 > y0 else img.mean((0, 1))
    shift = rng.choice([-1, 1]) * rng.uniform(60, 110)
    tint = rng.uniform(-40, 40, 3)
    return tuple(int(v) for v in np.clip(local + shift + tint, 0, 255))


def paint(img: Image.Image, rng, kind: str, hard: bool = False) -> tuple[Image.Image, Image.Image]:
    """Paint one defect; ``hard``: thinner scratches and smaller spots (2-4 px lines, 3-6 px dots
    at 224 px, often below the stride-8 patch), else MVTec-like sizes (3-6 px lines, 5-9 px dots)."""
    s = img.size[0]
    k = 1.0 if hard else 1.6
    arr = np.asarray(img)
    layer = img.copy()
    mask = Image.new("L", img.size, 0)
    d, dm = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
    cx, cy = (int(v) for v in rng.integers(int(s * 0.15), int(s * 0.85), 2))
    if kind == "scratch":
        length = rng.uniform(0.15, 0.35) * s
        ang = rng.uniform(0, np.pi)
        pts = [(cx + np.cos(ang) * t * length / 2, cy + np.sin(ang) * t * length / 2 + 3 * np.sin(t * 3))
               for t in np.linspace(-1, 1, 12)]
        width = int(rng.integers(2, 5)) if hard else int(rng.integers(3, 7))
        col = _colour(rng, arr, (cx - 10, cy - 10, cx + 10, cy + 10))
        d.line(pts, fill=col, width=width, joint="curve")
        dm.line(pts, fill=255, width=width + 2)
    elif kind == "blob":
        rx, ry = rng.uniform(0.04, 0.09, 2) * s
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        d.ellipse(box, fill=_colour(rng, arr, box))
        dm.ellipse(box, fill=255)
    else:  # a few small colour spots
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(0.012, 0.025) * s * k
            x, y = cx + rng.normal(0, s * 0.04), cy + rng.normal(0, s * 0.04)
            d.ellipse((x - r, y - r, x + r, y + r), fill=col)
            dm.ellipse((x - r - 1, y - r - 1, x + r + 1, y + r + 1), fill=255)
    # soften the edges so the defect sits in the picture
    soft = mask.filter(ImageFilter.GaussianBlur(1.2))
    out = Image.composite(layer.filter(ImageFilter.GaussianBlur(0.6)), img, soft)
    return out, mask


def object_view(src: Image.Image, rng, out: int) -> Image.Image:
    """The object in its fixed frame (central square, 90% of the short side) with the jitter of a
    real inspection camera: shift up to 2% of the frame, rotation up to 2 degrees, brightness
    +-4%, sensor noise (sigma 2 grey levels)."""
    w, h = src.size
    side = int(min(w, h) * 0.9)
    dx, dy = rng.uniform(-0.02, 0.02, 2) * side
    x0, y0 = (w - side) / 2 + dx, (h - side) / 2 + dy
    img = src.rotate(float(rng.uniform(-2, 2)), resample=Image.BILINEAR, center=(x0 + side / 2, y0 + side / 2))
    img = img.crop((int(x0), int(y0), int(x0) + side, int(y0) + side)).resize((out, out), Image.BICUBIC)
    a = np.asarray(img).astype(np.float32) * rng.uniform(0.96, 1.04) + rng.normal(0, 2.0, (out, out, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def make_texture_set(root, texture: str, *, n_train: int = 100, n_good: int = 30, n_defect: int = 20,
                     crop_px: int = 160, size: int = 224, seed: int = 0, masks: bool = True,
                     hard: bool = False) -> Path:
    """MVTec layout under root/texture: train/good, test/good, test/<defect>, ground_truth."""
    import zlib

    rng = np.random.default_rng([seed, zlib.crc32(texture.encode())])
    src = texture_image(texture)
    root = Path(root) / (texture + ("-hard" if hard else ""))
    if (root / "test" / DEFECTS[-1]).is_dir() and len(list((root / "test" / DEFECTS[-1]).glob("*.png"))) == n_defect:
        return root  # already made (same seed, same sizes)

    def view():
        return object_view(src, rng, size) if texture in OBJECTS else crop(src, rng, crop_px, size)

    (root / "train" / "good").mkdir(parents=True, exist_ok=True)
    (root / "test" / "good").mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        view().save(root / "train" / "good" / f"{i:04d}.png")
    for i in range(n_good):
        view().save(root / "test" / "good" / f"{i:04d}.png")
    for kind in DEFECTS:
        (root / "test" / kind).mkdir(parents=True, exist_ok=True)
        if masks:
            (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n_defect):
            img, m = paint(view(), rng, kind, hard)
            img.save(root / "test" / kind / f"{i:04d}.png")
            if masks:
                m.save(root / "ground_truth" / kind / f"{i:04d}_mask.png")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--textures", default=",".join(TEXTURES + OBJECTS))
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--good", type=int, default=30)
    ap.add_argument("--defect", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hard", action="store_true", help="thinner scratches, smaller spots")
    a = ap.parse_args()
    for t in a.textures.split(","):
        print(make_texture_set(a.out, t, n_train=a.train, n_good=a.good, n_defect=a.defect, seed=a.seed,
                               hard=a.hard))


if __name__ == "__main__":
    main()
