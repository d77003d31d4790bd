"""Ranking before training, explanations after: time, cache reuse, and whether the ranking is right.

  python benchmarks/bench_rank.py time      # 4 candidates x 500 images at 224 px on the CPU (goal < 2 min),
                                            # then a head-only training that reuses the cached features,
                                            # then Grad-CAM time per image
  python benchmarks/bench_rank.py check     # on 2 natural-photo targets: rank 5 candidates (ImageNet Lite0/
                                            # Lite1/Lite2, an earlier run on a related domain, random init),
                                            # fine-tune each with TL Studio's defaults, Spearman(score, accuracy)

Natural photos offline: crops of scikit-image's sample photos (pip install scikit-image).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tlstudio.core.events import Log, drive  # noqa: E402

PHOTOS_A = ("chelsea", "coffee", "rocket", "astronaut", "motorcycle")  # target A: objects
TEXTURES_B = ("brick", "grass", "gravel", "moon", "camera")  # target B: textures / grey scenes
SOURCE = ("hubble_deep_field", "retina", "immunohistochemistry", "coins", "clock", "text")  # related source


def _photo(name):
    import numpy as np
    import skimage.data as d

    arr = d.stereo_motorcycle()[0] if name == "motorcycle" else getattr(d, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    if arr.dtype != np.uint8:
        arr = (255 * (arr - arr.min()) / max(1e-9, float(arr.max() - arr.min()))).astype(np.uint8)
    return arr[..., :3]


def make_crops(root: Path, names, per_class: int, size: int = 224, seed: int = 0, grey: bool = False,
               crop=(0.35, 0.9)) -> Path:
    """per_class random crops (a fraction `crop` of the short side, flips, brightness jitter) of each photo."""
    from PIL import Image, ImageEnhance, ImageOps

    rng = random.Random(seed)
    for name in names:
        im = Image.fromarray(_photo(name))
        W, H = im.size
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            s = int(min(W, H) * rng.uniform(*crop))
            left, top = rng.randint(0, W - s), rng.randint(0, H - s)
            c = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
            if rng.random() < 0.5:
                c = ImageOps.mirror(c)
            c = ImageEnhance.Brightness(c).enhance(rng.uniform(0.6, 1.4))
            if grey:
                c = ImageOps.grayscale(c).convert("RGB")
            c.save(d / f"{i:04d}.png")
    return root


def _rank(data, cands, out, **kw):
    from tlstudio.core.tasks.ranking.job import RankConfig, rank

    cfg = RankConfig(data_dir=str(data), out_dir=str(out), candidates=cands, **kw)
    t = time.perf_counter()
    res = drive(rank(cfg))
    return res, time.perf_counter() - t


def _train(data, settings, out, **kw):
    from tlstudio.core.config import TrainConfig
    from tlstudio.core.training.engine import fit

    cfg = TrainConfig(data_dir=str(data), out_dir=str(out), **{**settings, **kw})
    logs = []
    t = time.perf_counter()
    info = drive(fit(cfg), lambda e: logs.append(e.message) if isinstance(e, Log) else None)
    return info, logs, time.perf_counter() - t


def bench_time(args) -> dict:
    import numpy as np

    tmp = Path(tempfile.mkdtemp(prefix="bench_rank_"))
    os.environ.setdefault("TLSTUDIO_HOME", str(tmp / "home"))
    data = make_crops(tmp / "data", PHOTOS_A, 100, size=256)  # 500 images
    cands = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2", "random:tf_efficientnet_lite0"]
    res, secs = _rank(data, cands, tmp / "rank", samples=500)
    out = {"load_avg": os.getloadavg()[0], "torch_threads": _threads(), "rank_seconds": round(secs, 1),
           "n_images": res.n_images,
           "rows": [{k: getattr(r, k) for k in ("rank", "logme", "probe_acc", "knn_acc", "latency_ms", "seconds")}
                    | {"candidate": r.candidate["spec"]} for r in res.rows]}
    print(json.dumps(out, indent=1))
    # the following training (head only, no augmentation) reuses the ranking's features
    from tlstudio.core.tasks.ranking.job import train_settings

    info, logs, tsecs = _train(data, train_settings(res.top()), tmp / "train", epochs=3, freeze="head", augment="none")
    cache_line = next((m for m in logs if m.startswith("Feature cache")), "")
    out.update(train_seconds=round(tsecs, 1), train_cache=cache_line, train_val_acc=info.metrics.get("val_acc"))
    print("training:", cache_line, f"{tsecs:.1f} s")
    # explanation time per image (Grad-CAM, trained run)
    from tlstudio.core.evaluation.explain import explain_images

    imgs = sorted(str(p) for p in (data / "chelsea").glob("*.png"))[:8]
    t = time.perf_counter()
    maps = explain_images(str(tmp / "train"), imgs)
    per = (time.perf_counter() - t) / len(imgs)
    out["explain_s_per_image"] = round(per, 3)
    out["explain_peak_mean"] = float(np.mean([np.nanmax(m.heatmap) for m in maps]))
    print(f"Grad-CAM: {per:.3f} s per image")
    return out


def _threads():
    import torch

    return torch.get_num_threads()


def _ranks(v):
    """Ranks with ties averaged (as scipy.stats.rankdata)."""
    import numpy as np

    v = np.asarray(v, float)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    for x in np.unique(v):
        m = v == x
        r[m] = r[m].mean()
    return r


def spearman(a, b) -> float:
    import numpy as np

    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def bench_check(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench_rank_check_"))
    os.environ.setdefault("TLSTUDIO_HOME", str(tmp / "home"))
    per = args.per_class
    src = make_crops(tmp / "source", SOURCE, per, size=160, seed=1)
    # an earlier TL Studio run on a related domain: other photos, every layer fine-tuned at 96 px
    src_run = tmp / "source_run"
    if not args.no_source:
        info, _, s = _train(src, {"backbone": "tf_efficientnet_lite0", "init": "pretrained"}, src_run,
                            epochs=args.source_epochs, freeze="none", image_size=96, augment="none")
        print(f"source run: val_acc {info.metrics.get('val_acc'):.3f} in {s:.0f} s")
    # small grey crops: each image shows a patch of a photo, so the classes are not trivially apart
    targets = {"objects": make_crops(tmp / "objects", PHOTOS_A, per, seed=2, grey=True, crop=(0.1, 0.3)),
               "textures": make_crops(tmp / "textures", TEXTURES_B, per, seed=3, grey=True, crop=(0.08, 0.25))}
    # held-out test images of each target (other crops, other seed): the fine-tuned accuracy the
    # ranking must predict is measured here, not on the 20% validation split (a few images)
    tests = {"objects": make_crops(tmp / "objects_test", PHOTOS_A, args.test_per_class, seed=12, grey=True,
                                   crop=(0.1, 0.3)),
             "textures": make_crops(tmp / "textures_test", TEXTURES_B, args.test_per_class, seed=13, grey=True,
                                    crop=(0.08, 0.25))}
    cands = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2",
             "random:tf_efficientnet_lite0"] + ([] if args.no_source else [f"run:{src_run}"])
    report = {"load_avg": os.getloadavg()[0], "per_class": per, "targets": {}}
    from tlstudio.core.tasks.ranking.job import train_settings

    for tname, data in targets.items():
        res, secs = _rank(data, cands, tmp / f"rank_{tname}")
        rows = []
        for r in res.ranked():
            # TL Studio's default strategy for small data (head only); no augmentation, so the
            # training reuses the ranking's cached features (--augment light to change that)
            info, _, s = _train(data, train_settings(r), tmp / f"ft_{tname}_{r.rank}", epochs=args.epochs,
                                freeze=args.freeze, augment=args.augment)
            from tlstudio.core.evaluation.evaluate import evaluate

            acc = evaluate(tmp / f"ft_{tname}_{r.rank}", folder=tests[tname]).accuracy
            rows.append({"candidate": r.candidate["spec"].replace(str(tmp), "<tmp>"), "rank": r.rank,
                         "logme": r.logme, "probe": r.probe_acc, "knn": r.knn_acc, "finetuned_acc": round(acc, 4),
                         "val_acc": info.metrics.get("val_acc"), "train_s": round(s, 1)})
            print(tname, rows[-1], flush=True)
        accs = [x["finetuned_acc"] for x in rows]
        best = max(accs)
        t = {"rank_seconds": round(secs, 1), "rows": rows,
             "spearman_logme": spearman([x["logme"] for x in rows], accs),
             "spearman_probe": spearman([x["probe"] for x in rows], accs),
             "top_is_best": accs[0] >= best - 1e-9}
        report["targets"][tname] = t
        print(tname, json.dumps({k: v for k, v in t.items() if k != "rows"}), flush=True)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["time", "check"])
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--test-per-class", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--freeze", default="head", help="fine-tuning strategy of the check (default: head)")
    ap.add_argument("--augment", default="none")
    ap.add_argument("--source-epochs", type=int, default=2)
    ap.add_argument("--no-source", action="store_true")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    out = bench_time(args) if args.what == "time" else bench_check(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
