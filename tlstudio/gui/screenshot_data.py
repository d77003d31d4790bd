"""Small but realistic data sets for the screenshot tool's kinds of learning (no Qt, no torch).

Each ``make_*`` writes into a folder and returns the paths a user would open: a multi-task CSV
(several label columns, some cells empty), an MVTec-like anomaly category (normal parts, test
parts with painted defects and their masks), a labelled folder with a folder of images from a new
"camera" (domain adaptation) and a few labelled images with many unlabelled ones of the same kind
(semi-supervised). Images are 64-96 px: a run on them takes seconds.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220)}


def make_multitask(root: Path, n: int = 64, size: int = 64, seed: int = 0, missing: float = 0.15) -> Path:
    """labels.csv with three tasks: object (colour + shape, 4 classes), colour (2 classes, some
    cells empty) and noise (a coin flip: unrelated to the picture). Returns the CSV."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        shape, colour = ["circle", "square"][i % 2], ["red", "blue"][(i // 2) % 2]
        img = Image.new("RGB", (size, size), (rng.randint(90, 170),) * 3)
        a, b = rng.randint(size // 10, size // 4), size - rng.randint(size // 10, size // 4)
        d = ImageDraw.Draw(img)
        tint = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in COLOURS[colour])
        (d.ellipse if shape == "circle" else d.rectangle)([a, a, b, b], fill=tint)
        img.save(root / f"im{i:03d}.png")
        rows.append({"path": f"im{i:03d}.png", "object": f"{colour}_{shape}",
                     "colour": colour if rng.random() > missing else "", "noise": rng.choice(["p", "q"])})
    p = root / "labels.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return p


# --- anomaly: a woven texture with painted defects -------------------------------------------------
def _texture(rng: np.random.Generator, size: int) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    ph, period = rng.uniform(0, 6.28, 3), rng.uniform(2.4, 2.9)  # each part a little different
    weave = 0.5 + 0.18 * np.sin(x / period + ph[0]) * np.sin(y / period + ph[1]) + 0.12 * np.sin((x + y) / 7.0 + ph[2])
    weave += 0.05 * rng.standard_normal((size, size))
    tint = np.array([0.95, 0.78, 0.55]) * rng.uniform(0.92, 1.08)
    img = weave[..., None] * tint
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


def _defect(img: Image.Image, rng: np.random.Generator, kind: str) -> tuple[Image.Image, Image.Image]:
    s = img.size[0]
    layer, mask = img.copy(), Image.new("L", img.size, 0)
    d, dm = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
    cx, cy = (int(v) for v in rng.integers(int(s * 0.2), int(s * 0.8), 2))
    if kind == "scratch":
        ang, length = rng.uniform(0, np.pi), rng.uniform(0.25, 0.4) * s
        pts = [(cx + np.cos(ang) * t * length / 2, cy + np.sin(ang) * t * length / 2) for t in np.linspace(-1, 1, 8)]
        width = max(2, s // 28)
        d.line(pts, fill=(245, 240, 225), width=width)
        dm.line(pts, fill=255, width=width + 2)
    elif kind == "stain":
        rx, ry = rng.uniform(0.06, 0.11, 2) * s
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        d.ellipse(box, fill=(60, 40, 30))
        dm.ellipse(box, fill=255)
    else:  # a hole: dark spot with a bright rim
        r = max(3, int(s * 0.05))
        d.ellipse((cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1), fill=(230, 220, 200))
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(15, 15, 15))
        dm.ellipse((cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1), fill=255)
    soft = mask.filter(ImageFilter.GaussianBlur(1.0))
    return Image.composite(layer.filter(ImageFilter.GaussianBlur(0.5)), img, soft), mask


def make_anomaly(root: Path, n_train: int = 24, n_good: int = 6, n_defect: int = 4, size: int = 96,
                 seed: int = 0) -> Path:
    """An MVTec AD category: train/good, test/good, test/<defect>, ground_truth/<defect>/*_mask.png."""
    rng = np.random.default_rng(seed)
    for sub, n in (("train/good", n_train), ("test/good", n_good)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _texture(rng, size).save(root / sub / f"{i:03d}.png")
    for kind in ("scratch", "stain", "hole"):
        (root / "test" / kind).mkdir(parents=True, exist_ok=True)
        (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n_defect):
            img, m = _defect(_texture(rng, size), rng, kind)
            img.save(root / "test" / kind / f"{i:03d}.png")
            m.save(root / "ground_truth" / kind / f"{i:03d}_mask.png")
    return root


# --- adaptation and semi-supervised: labelled shapes and unlabelled ones ---------------------------
def _new_camera(img: Image.Image, rng: random.Random) -> Image.Image:
    """The same scene through another camera: washed-out colours, a colour cast, blur and noise."""
    a = np.asarray(img).astype(np.float32)
    grey = a.mean(-1, keepdims=True)
    a = 0.35 * a + 0.65 * grey  # washed out
    a = 255 - a  # light background (a negative-like look: a strong domain change)
    a = a * np.array([1.0, 0.92, 0.75]) + rng.uniform(-10, 10)
    a += np.random.default_rng(rng.randint(0, 2**31)).normal(0, 8, a.shape)
    out = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.2)))


def _flat(src: Path, dst: Path, prefix: str, transform=None, seed: int = 0) -> Path:  # noqa: ANN001
    """Every image of ``src`` (class folders) into one folder without labels."""
    dst.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = sorted(src.rglob("*.png"))
    rng.shuffle(paths)
    for i, p in enumerate(paths):
        img = Image.open(p).convert("RGB")
        (transform(img, rng) if transform else img).save(dst / f"{prefix}{i:03d}.png")
    return dst


def make_adaptation(root: Path, per_class: int = 16, size: int = 64, seed: int = 0) -> tuple[Path, Path, Path]:
    """(labelled folder, unlabelled folder from a new camera, a small labelled check set of that
    camera: class folders)."""
    from tlstudio.core.data.synthetic import make_synthetic_folder

    # labelled: each class has its own colour (a shortcut a model happily learns); the new camera
    # washes the colours out, so the shortcut fails there and only the shapes are left
    lab = make_synthetic_folder(root / "labelled", per_class=per_class, size=size, seed=seed, easy=True)
    raw = make_synthetic_folder(root / "_raw_target", per_class=per_class, size=size, seed=seed + 1, easy=True)
    target = _flat(raw, root / "new_camera", "cam", _new_camera, seed)
    raw_check = make_synthetic_folder(root / "_raw_check", per_class=5, size=size, seed=seed + 2, easy=True)
    rng = random.Random(seed + 3)
    for p in sorted(raw_check.rglob("*.png")):
        out = root / "check" / p.parent.name / p.name
        out.parent.mkdir(parents=True, exist_ok=True)
        _new_camera(Image.open(p).convert("RGB"), rng).save(out)
    return lab, target, root / "check"


def make_semisupervised(root: Path, labelled_per_class: int = 10, unlabelled_per_class: int = 20, size: int = 64,
                        seed: int = 0) -> tuple[Path, Path]:
    """(a few labelled images per class, many unlabelled ones of the same kind in one folder)."""
    from tlstudio.core.data.synthetic import make_synthetic_folder

    lab = make_synthetic_folder(root / "labelled", per_class=labelled_per_class, size=size, seed=seed)
    raw = make_synthetic_folder(root / "_raw_unlabelled", per_class=unlabelled_per_class, size=size, seed=seed + 1)
    return lab, _flat(raw, root / "unlabelled", "u", None, seed)
