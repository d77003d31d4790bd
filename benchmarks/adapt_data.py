"""Real photos with a real domain shift, made offline (for bench_adapt.py and the demos).

Classes are scikit-image's sample photos (cat, coffee, rocket, motorcycle, astronaut, Hubble deep
field, retina, IHC stain, coins, camera man); each image is a random crop (25-60% of the short
side), so the classes are natural photographs of different subjects. The *target* domain shows
different crops of the same subjects through another "camera": colour channels swapped, contrast
halved, brightness lifted, blurred and noisy. Labels of target images are written only to the
labelled test/check folders, which the adaptation never trains on.

  python benchmarks/adapt_data.py OUT      # OUT/source, OUT/target, OUT/target_test, OUT/check, OUT/fewlabel ...
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

SIZE = 160


def photos() -> dict[str, np.ndarray]:
    import skimage.data as d

    def rgb(x):
        return np.stack([x] * 3, -1) if x.ndim == 2 else x[..., :3]

    return {"cat": d.chelsea(), "coffee": d.coffee(), "rocket": d.rocket(), "motorcycle": d.stereo_motorcycle()[0],
            "astronaut": d.astronaut(), "galaxies": d.hubble_deep_field(), "retina": d.retina(),
            "stain": d.immunohistochemistry(), "coins": rgb(d.coins()), "cameraman": rgb(d.camera())}


def crop(im, rng, lo=0.25, hi=0.6):
    from PIL import Image, ImageOps

    W, H = im.size
    s = int(min(W, H) * rng.uniform(lo, hi))
    left, top = rng.randint(0, W - s), rng.randint(0, H - s)
    c = im.crop((left, top, left + s, top + s)).resize((SIZE, SIZE), Image.BICUBIC)
    return ImageOps.mirror(c) if rng.random() < 0.5 else c


def shift(img, rng):
    """The target camera: swapped colour channels, half contrast, brighter, blurred, noisy."""
    from PIL import Image, ImageFilter

    a = np.asarray(img, dtype=np.float32)[..., ::-1]  # RGB -> BGR
    a = (a - a.mean()) * 0.5 + a.mean() + 40.0
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))
    a = np.asarray(im, dtype=np.float32) + np.random.default_rng(rng.randint(0, 2**31)).normal(0, 18, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def make(out: str | Path, n_source=30, n_target=60, n_test=40, n_check=2, n_few=2, n_unlab=60, seed=0) -> Path:
    from PIL import Image

    out = Path(out)
    rng = random.Random(seed)
    for ci, (name, arr) in enumerate(photos().items()):
        im = Image.fromarray(arr).convert("RGB")
        # source: labelled, original camera
        for i in range(n_source):
            _save(crop(im, rng), out / "source" / name / f"{name}_{i:03d}.png")
        # target: unlabelled images of the shifted camera (flat folder: no labels reach it)
        for i in range(n_target):
            _save(shift(crop(im, rng), rng), out / "target" / f"{rng.getrandbits(40):010x}.png")
        for i in range(n_test):
            _save(shift(crop(im, rng), rng), out / "target_test" / name / f"{name}_{i:03d}.png")
        for i in range(n_check):
            _save(shift(crop(im, rng), rng), out / "check" / name / f"{name}_{i:03d}.png")
        # semi-supervised, one domain: few labelled, many unlabelled, a labelled test set
        for i in range(n_few):
            _save(crop(im, rng, 0.15, 0.4), out / "fewlabel" / name / f"{name}_{i:03d}.png")
        for i in range(n_unlab):
            _save(crop(im, rng, 0.15, 0.4), out / "fewlabel_unlabelled" / f"{rng.getrandbits(40):010x}.png")
        for i in range(n_test):
            _save(crop(im, rng, 0.15, 0.4), out / "fewlabel_test" / name / f"{name}_{i:03d}.png")
    return out


def _save(img, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else "/tmp/adapt_data"))
