"""Learning from unlabelled images: what it costs and what it gains (benchmarks/RESULTS.md).

--cost      seconds per training step of MCC and DANN against plain fine-tuning (the objectives'
            own loss code, one target batch per source batch), and for 1,000 target images the
            time of AdaBN and of feature self-training (3 rounds on cached features).
--accuracy  real ImageNet features (tf_efficientnet_lite0, offline weights) on a real camera shift
            (benchmarks/adapt_data.py: scikit-image photos, target = swapped colours, half
            contrast, blur, noise): target accuracy of the source-only model and of each method
            on a frozen body (the default), which picked the defaults.
--semi      the same photos, 2 labelled images per class + 600 unlabelled: labelled only vs
            pseudo-labels at several confidence thresholds, with one bar for every class and with
            per-class bars (picked the 0.5 default and the per-class bars).

  python benchmarks/bench_adapt.py --cost
  python benchmarks/bench_adapt.py --accuracy --data /tmp/adapt_data   # makes the data if missing
  python benchmarks/bench_adapt.py --semi --data /tmp/adapt_data --seeds 0 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tlstudio.core.tasks.adaptation.adabn import adapt_bn  # noqa: E402
from tlstudio.core.tasks.adaptation.dann import DANNObjective, make_discriminator  # noqa: E402
from tlstudio.core.tasks.adaptation.features import copy_linear, extract, image_batches, probs_of, train_head  # noqa: E402
from tlstudio.core.tasks.adaptation.mcc import MCCObjective  # noqa: E402
from tlstudio.core.tasks.adaptation.selection import info_max  # noqa: E402
from tlstudio.core.tasks.semisupervised.pseudo import class_caps, select_pseudo_labels  # noqa: E402


class _FixedTarget:
    def __init__(self, x):
        self.x = x

    def next(self):
        return self.x


def _stepper(loss_fn, params):
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> float:
        t0 = time.perf_counter()
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def cost(args) -> None:
    import timm
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = timm.create_model(args.backbone, pretrained=False, num_classes=10).train()
    bs, size = args.batch, args.size
    xs, xt = torch.randn(bs, 3, size, size), torch.randn(bs, 3, size, size)
    y = torch.randint(0, 10, (bs,))
    mcc = MCCObjective([])
    mcc.target = _FixedTarget(xt)
    dann = DANNObjective([])
    dann.discriminator = make_discriminator(model.num_features, 256)
    dann.target = _FixedTarget(xt)
    steps = {
        "plain": _stepper(lambda: F.cross_entropy(model(xs), y), model.parameters()),
        "mcc": _stepper(lambda: mcc.loss(model, xs, y, None)[0], model.parameters()),
        "dann": _stepper(lambda: dann.loss(model, xs, y, None)[0],
                         list(model.parameters()) + list(dann.discriminator.parameters())),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(args.repeats + 1):  # interleaved, so a busy moment of the machine hits all three
        for k, step in steps.items():
            t = step()
            if r:  # the first round warms up the allocator
                times[k].append(t)
    plain, t_mcc, t_dann = (statistics.median(times[k]) for k in ("plain", "mcc", "dann"))
    print(f"{args.backbone} {size}px batch {bs} (+{bs} target images for MCC/DANN), full fine-tuning, CPU:")
    print(f"  plain fine-tuning  {plain * 1000:7.0f} ms/step  1.00x")
    print(f"  MCC                {t_mcc * 1000:7.0f} ms/step  {t_mcc / plain:.2f}x")
    print(f"  DANN               {t_dann * 1000:7.0f} ms/step  {t_dann / plain:.2f}x")

    # 1,000 target images: AdaBN and feature self-training
    from tlstudio.core.models.backbones import create_model, data_config

    root = Path(args.data)
    tgt = sorted(root.glob("target/*.png"))
    if not tgt:
        sys.path.insert(0, str(Path(__file__).parent))
        from adapt_data import make

        make(root)
        tgt = sorted(root.glob("target/*.png"))
    from tlstudio.core.data.dataset import Sample

    samples = [Sample(str(tgt[i % len(tgt)]), -1) for i in range(1000)]
    m = create_model("tf_efficientnet_lite0", 10, init="pretrained")
    cfg = data_config(m, args.size)
    t0 = time.perf_counter()
    n = adapt_bn(m, image_batches(samples, cfg, batch_size=64))
    t_adabn = time.perf_counter() - t0
    t0 = time.perf_counter()
    ft, _ = extract(m, samples, cfg)
    t_feat = time.perf_counter() - t0
    fs = ft[:300] + 0.1 * torch.randn(300, ft.shape[1])
    ys = torch.arange(300) % 10
    head = copy_linear(m.get_classifier())
    t0 = time.perf_counter()
    train_head(head, fs, ys, epochs=30)
    for r in range(1, 4):
        pl = select_pseudo_labels(probs_of(head, ft), 0.0, fraction=r / 3)
        h = copy.deepcopy(head)
        train_head(h, fs, ys, ft=ft, pseudo_idx=pl.index, pseudo_y=pl.labels, epochs=30)
    t_self = time.perf_counter() - t0
    print(f"1,000 target images, tf_efficientnet_lite0 at {args.size}px, CPU:")
    print(f"  AdaBN (one pass, {n} images)            {t_adabn:6.1f} s")
    print(f"  pooled features (one pass)              {t_feat:6.1f} s")
    print(f"  self-training, 3 rounds on the features {t_self:6.1f} s (30 head epochs a round)")


def _load(root: Path, size: int):
    from tlstudio.core.data.dataset import make_split, match_classes, scan, scan_unlabelled
    from tlstudio.core.models.backbones import create_model, data_config

    if not (root / "source").is_dir():
        sys.path.insert(0, str(Path(__file__).parent))
        from adapt_data import make

        make(root)
    rep = scan(root / "source")
    m = create_model("tf_efficientnet_lite0", len(rep.classes), init="pretrained")
    return rep, m, data_config(m, size), make_split, match_classes, scan, scan_unlabelled


def accuracy(args) -> None:
    root = Path(args.data)
    rep, m, cfg, make_split, match_classes, scan, scan_unlabelled = _load(root, args.size)
    split = make_split(rep, 0.2, 0)
    tgt, _ = scan_unlabelled(root / "target")
    test = match_classes(scan(root / "target_test"), rep.classes).samples
    fs, _ = extract(m, split.train, cfg)
    ys = torch.tensor([s.label for s in split.train])
    ft, _ = extract(m, tgt, cfg)
    fte, _ = extract(m, test, cfg)
    yte = torch.tensor([s.label for s in test])
    ma = copy.deepcopy(m)
    adapt_bn(ma, image_batches(tgt, cfg))
    fta, _ = extract(ma, tgt, cfg)
    ftea, _ = extract(ma, test, cfg)

    def acc(h, f):
        return float((probs_of(h, f).argmax(1) == yte).float().mean())

    for seed in args.seeds:
        torch.manual_seed(seed)
        h0 = copy_linear(m.get_classifier())
        torch.nn.init.normal_(h0.weight, std=0.01)
        torch.nn.init.zeros_(h0.bias)
        train_head(h0, fs, ys, epochs=30, seed=seed)
        rows = [("source only", acc(h0, fte), info_max(probs_of(h0, ft))),
                ("AdaBN", acc(h0, ftea), info_max(probs_of(h0, fta)))]
        for feats, tf, tag in ((ft, fte, ""), (fta, ftea, " + AdaBN")):
            h = copy.deepcopy(h0)
            train_head(h, fs, ys, ft=feats, mcc_weight=1.0, epochs=30, seed=seed)
            rows.append((f"MCC{tag}", acc(h, tf), info_max(probs_of(h, feats))))
            cur = h0
            for r in range(1, 4):
                pl = select_pseudo_labels(probs_of(cur, feats), 0.0, fraction=r / 3)
                cur = copy.deepcopy(h0)
                train_head(cur, fs, ys, ft=feats, pseudo_idx=pl.index, pseudo_y=pl.labels, epochs=30, seed=seed)
            rows.append((f"self-training 3 rounds{tag}", acc(cur, tf), info_max(probs_of(cur, feats))))
        print(f"seed {seed}: target accuracy (target score)")
        for name, a, s in rows:
            print(f"  {name:<32} {a:6.1%}  ({s:.2f})  {100 * (a - rows[0][1]):+5.1f} points")


def semi(args) -> None:
    root = Path(args.data)
    _, m, cfg, _, match_classes, scan, scan_unlabelled = _load(root, args.size)
    rep = scan(root / "fewlabel")
    unl, _ = scan_unlabelled(root / "fewlabel_unlabelled")
    test = match_classes(scan(root / "fewlabel_test"), rep.classes).samples
    fl, _ = extract(m, rep.samples, cfg)
    yl = torch.tensor([s.label for s in rep.samples])
    fu, _ = extract(m, unl, cfg)
    fte, _ = extract(m, test, cfg)
    yte = torch.tensor([s.label for s in test])
    n_c = len(rep.classes)
    caps = class_caps(len(fu), [int((yl == c).sum()) for c in range(n_c)], n_c)
    for seed in args.seeds:
        torch.manual_seed(seed)
        h0 = copy_linear(m.get_classifier())
        torch.nn.init.normal_(h0.weight, std=0.01)
        torch.nn.init.zeros_(h0.bias)
        train_head(h0, fl, yl, epochs=30, seed=seed)
        base = float((probs_of(h0, fte).argmax(1) == yte).float().mean())
        print(f"seed {seed}: {len(fl)} labelled, {len(fu)} unlabelled; labelled only {base:.1%}")
        for thr in (0.3, 0.5, 0.7, 0.9, 0.95):
            for per_class in (False, True):  # one bar for all classes; FlexMatch's per-class bars (the default)
                cur, first = h0, None
                for _ in range(2):
                    pl = select_pseudo_labels(probs_of(cur, fu), thr, caps=caps, per_class=per_class)
                    first = first or pl.per_class
                    cur = copy.deepcopy(h0)
                    train_head(cur, fl, yl, ft=fu, pseudo_idx=pl.index, pseudo_y=pl.labels, epochs=30, seed=seed)
                a = float((probs_of(cur, fte).argmax(1) == yte).float().mean())
                print(f"  threshold {thr:.2f} {'per-class bars' if per_class else 'one bar       '}: {a:6.1%} "
                      f"({100 * (a - base):+5.1f} points, {len(pl.index)} pseudo-labels; round 1 per class {first})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cost", action="store_true")
    p.add_argument("--accuracy", action="store_true")
    p.add_argument("--semi", action="store_true")
    p.add_argument("--data", default="/tmp/adapt_data")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cost:
        cost(args)
    if args.accuracy:
        accuracy(args)
    if args.semi:
        semi(args)


if __name__ == "__main__":
    main()
