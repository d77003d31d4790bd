"""`tlstudio rank DIR --candidates a,b,run:RUN_DIR`: which starting point fits this data best.

Prints the candidates best first with LogME, linear-probe and k-NN accuracy, latency, size and a
one-line explanation; candidates that cannot be used are listed last with the reason.
"""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rank",
        help="rank backbones and earlier runs on your data before training (LogME, linear probe, k-NN, speed)",
        description="Extracts features of a stratified sample with each candidate's own preprocessing, "
        "scores them (LogME: higher is better; k-fold linear probe and k-NN accuracy) and measures speed. "
        "Candidates: timm names with ImageNet weights (offline ones need no network), run:RUN_DIR for an "
        "earlier TL Studio run, random:NAME for random weights. The features are cached: a head-only "
        "training without augmentation on the same data reuses them.",
    )
    p.add_argument("dir", help="folder of labelled images")
    p.add_argument("--candidates", default="",
                   help="comma-separated: tf_efficientnet_lite0,resnet18,run:RUN_DIR,random:resnet18 "
                   "(default: every backbone with ImageNet weights on this machine)")
    p.add_argument("--weights", action="append", metavar="NAME=FILE", default=[],
                   help="candidate NAME starts from a local .safetensors/.pth file (repeatable)")
    p.add_argument("--samples", type=int, default=500, help="images scored, stratified by class (default 500)")
    p.add_argument("--image-size", type=int, help="input size for every ImageNet candidate (default: each one's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="the split the following training uses (so it can reuse the features)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-latency", action="store_true", help="skip the speed measurement")
    p.add_argument("--out", help="folder for rank.json (default: a new folder in the runs folder)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (progress on stderr)")
    p.set_defaults(func=cmd_rank)


def cmd_rank(args) -> int:
    from tlstudio.cli.main import EventPrinter
    from tlstudio.core.events import drive
    from tlstudio.core.tasks.ranking.candidates import offline_backbones
    from tlstudio.core.tasks.ranking.job import RankConfig, rank

    cands = [c.strip() for c in args.candidates.split(",") if c.strip()] or offline_backbones()
    cfg = RankConfig(data_dir=args.dir, out_dir=args.out, candidates=cands,
                     weights=_weights(args.weights), samples=args.samples, image_size=args.image_size,
                     seed=args.seed, val_fraction=args.val_fraction, batch_size=args.batch_size,
                     device=args.device, latency=not args.no_latency)
    result = drive(rank(cfg), EventPrinter(as_json=args.json))
    if args.json:
        print(json.dumps({**result.to_json(), "out_dir": result.out_dir}, indent=2, default=str))
    else:
        print_table(result)
    return 0 if result.ranked() else 2


def _weights(items) -> dict[str, str]:
    from tlstudio.core.tasks.ranking.candidates import parse_weights

    return parse_weights(items)


def print_table(result, out=None) -> None:
    out = out or sys.stdout
    rows = result.rows
    name_w = max([9] + [len(r.candidate["label"]) for r in rows])
    head = f"{'#':>2}  {'candidate':<{name_w}}  {'LogME':>7}  {'probe':>6}  {'k-NN':>5}  {'ms/img':>7}  {'params':>7}  {'time':>6}"
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        c = r.candidate
        if r.rank is None:
            print(f"{'-':>2}  {c['label']:<{name_w}}  not ranked: {r.error or c.get('reason')}", file=out)
            continue
        mark = "" if c.get("offline", True) else " (downloaded)"
        params = f"{r.params / 1e6:.1f}M" if r.params else "?"
        lat = f"{r.latency_ms:.1f}" if r.latency_ms else "-"
        print(f"{r.rank:>2}  {c['label'] + mark:<{name_w}}  {r.logme:>7.3f}  {r.probe_acc:>6.1%}  {r.knn_acc:>5.0%}  "
              f"{lat:>7}  {params:>7}  {r.seconds or 0:>5.1f}s", file=out)
    print("", file=out)
    for r in rows:
        if r.rank is not None:
            print(f"{r.rank}. {r.explanation}", file=out)
    print(f"\n{result.summary}", file=out)
    print(f"({result.n_images} images, {result.seconds:.0f} s; saved {result.out_dir}/rank.json)", file=out)
