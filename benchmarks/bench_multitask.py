"""Multi-task benchmarks.

  python benchmarks/bench_multitask.py step   time per training step: 1-, 2-, 3-task hard sharing
                                              (goal <= 1.15x single-task), GradNorm and PCGrad extra cost
  python benchmarks/bench_multitask.py real   ~1,000 natural photos (scikit-image samples, random crops),
        [--freeze head|last:1] [--epochs N]   task "source" (which photo, 5 classes) and task "rotation"
                                              (0/90/180/270): tf_efficientnet_lite0 with real ImageNet
                                              weights (offline), MTL vs separate models (--baseline)

Both print RESULT lines. Quiet machine recommended (the step timings are medians of ratios
measured back to back, so a busy machine shifts them less than absolute times).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# ----------------------------------------------------------------------------- step timing

def bench_step(backbone: str, size: int, batch: int, repeats: int) -> dict:
    import timm
    import torch

    from tlstudio.core.data.dataset import Sample
    from tlstudio.core.tasks.multitask.model import build_multitask_model
    from tlstudio.core.tasks.multitask.objective import MTContext, MultiTaskObjective
    from types import SimpleNamespace

    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    x = torch.randn(batch, 3, size, size)

    def setup(n_tasks: int, weighting: str = "equal", pcgrad: bool = False):
        tasks = [{"name": f"t{i}", "type": "categorical", "classes": [str(c) for c in range(5)]} for i in range(n_tasks)]
        model = build_multitask_model(lambda n: timm.create_model(backbone, pretrained=False, num_classes=n), tasks)
        model.train()
        samples = [Sample(f"{j}", -1, {t["name"]: (j + i) % 5 for i, t in enumerate(tasks)}) for j in range(batch)]
        cfg = SimpleNamespace(weighting=weighting, task_weights=None, seed=0, label_smoothing=0.0, huber_delta=1.0,
                              relatedness_every=10 ** 9, pcgrad=pcgrad, soft_penalty=0.0)
        obj = MultiTaskObjective({"tasks": tasks}, cfg)
        obj.setup(MTContext(model=model, device="cpu", classes=[], precision=None, config=cfg,
                            train_samples=samples, val_samples=samples))
        params = list(model.parameters()) + [p for m in obj.extra_modules() for p in m.parameters()]
        opt = torch.optim.AdamW(params, lr=1e-4)
        idx = torch.arange(batch)

        def step():
            loss, _ = obj.loss(model, x, None, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    def single():  # the plain single-task step: timm model + cross-entropy
        model = timm.create_model(backbone, pretrained=False, num_classes=5)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        y = torch.arange(batch) % 5

        def step():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    variants = {"single": single(), "mtl2": setup(2), "mtl3": setup(3), "gradnorm3": setup(3, "gradnorm"),
                "pcgrad3": setup(3, pcgrad=True)}
    for f in variants.values():  # warm-up
        f()
        f()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):  # interleaved: each round times every variant once
        for k, f in variants.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {k: med[k] / med["single"] for k in med}
    ratios["gradnorm_vs_mtl3"] = med["gradnorm3"] / med["mtl3"]
    ratios["pcgrad_vs_mtl3"] = med["pcgrad3"] / med["mtl3"]
    return {"backbone": backbone, "size": size, "batch": batch, "median_s": med, "ratio": ratios}


# ----------------------------------------------------------------------------- real photos

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "motorcycle")


def make_real_set(root: Path, n_per_photo: int = 200, size: int = 224, seed: int = 0) -> Path:
    """Random crops of 5 scikit-image photos, each rotated by 0/90/180/270 degrees; crops of the
    left 60% of a photo train, of the right 45% validate (no overlap between the splits)."""
    import skimage.data as d
    from PIL import Image

    arrays = {"chelsea": d.chelsea(), "coffee": d.coffee(), "rocket": d.rocket(),
              "astronaut": d.astronaut(), "motorcycle": d.stereo_motorcycle()[0]}
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    n_val = n_per_photo // 5
    for name in PHOTOS:
        im = Image.fromarray(arrays[name]).convert("RGB")
        W, H = im.size
        for k in range(n_per_photo):
            val = k < n_val
            x0, x1 = (0.55, 1.0) if val else (0.0, 0.6)
            s = int(min(H, (x1 - x0) * W) * rng.uniform(0.45, 0.9))
            left = rng.randint(int(x0 * W), int(x1 * W) - s)
            top = rng.randint(0, H - s)
            crop = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
            rot = rng.choice([0, 90, 180, 270])
            crop = crop.rotate(rot)
            fn = f"{name}_{k:03d}.jpg"
            crop.save(root / fn, quality=90)
            rows.append({"path": fn, "source": name, "rotation": str(rot), "split": "val" if val else "train"})
    p = root / "labels.csv"
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return p


def bench_real(out: Path, freeze: str, epochs: int, image_size: int | None, weighting: str) -> dict:
    from tlstudio.core.events import EpochEnd, Log, Warn, drive
    from tlstudio.core.tasks.multitask.config import MultiTaskConfig
    from tlstudio.core.tasks.multitask.trainer import run

    data = out / "data" / "labels.csv"
    if not data.is_file():
        make_real_set(out / "data")
    run_dir = out / f"run-{freeze.replace(':', '')}-{weighting}-{epochs}"
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = MultiTaskConfig(data_dir=str(data), backbone="tf_efficientnet_lite0", init="pretrained", freeze=freeze,
                          epochs=epochs, baseline=True, out_dir=str(run_dir), weighting=weighting,
                          image_size=image_size, early_stop_patience=None)
    t0 = time.time()

    def show(ev):
        if isinstance(ev, EpochEnd):
            m = ev.metrics
            print(f"  [{ev.phase}] epoch {ev.epoch + 1}: " + ", ".join(
                f"{k} {v:.3f}" for k, v in m.items() if k.startswith("val_acc/") or k == "val_score"), flush=True)
        elif isinstance(ev, Log | Warn) and ("multi-task" in ev.message or "separate" in ev.message
                                              or "Negative" in ev.message or "unrelated" in ev.message):
            print("  " + ev.message, flush=True)

    info = drive(run(cfg), show)
    mt = info.extra["multitask"]
    return {"freeze": freeze, "epochs": epochs, "weighting": weighting, "seconds": time.time() - t0,
            "per_task": {t: d["accuracy"] for t, d in mt["per_task"].items()},
            "baseline": mt.get("baseline"), "relatedness": mt.get("relatedness"), "run_dir": str(run_dir)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["step", "real"])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="/tmp/tlstudio-bench-multitask")
    ap.add_argument("--freeze", default="head")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--weighting", default="equal")
    a = ap.parse_args()
    if a.what == "step":
        r = bench_step(a.backbone, a.size, a.batch, a.repeats)
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        r = bench_real(Path(a.out), a.freeze, a.epochs, a.image_size, a.weighting)
    print("RESULT " + json.dumps(r))


if __name__ == "__main__":
    main()
