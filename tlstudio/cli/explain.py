"""`tlstudio explain RUN IMAGES --out DIR`: heat maps of what a trained model looks at (PNGs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explain",
        help="write Grad-CAM heat-map overlays: what the model looks at in each image",
        description="For each image, the class activation map of the predicted class (or --class) "
        "blended over the picture, as NAME_cam.png in --out. Red = the regions that raised the "
        "class score most.",
    )
    p.add_argument("run_dir", help="a trained run folder")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="folder for the overlay PNGs")
    p.add_argument("--class", dest="class_name", help="explain this class instead of the predicted one")
    p.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "eigencam"])
    p.add_argument("--opacity", type=float, default=0.5, help="heat-map opacity 0..1 (default 0.5)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON record per image")
    p.set_defaults(func=cmd_explain)


def _out_name(path: str, used: set[str]) -> str:
    stem = Path(path).stem
    name, i = f"{stem}_cam.png", 1
    while name in used:  # same file name in two folders
        i += 1
        name = f"{stem}_{i}_cam.png"
    used.add(name)
    return name


def cmd_explain(args) -> int:
    from tlstudio.cli.progress import Bars
    from tlstudio.core.evaluation.evaluate import expand_paths
    from tlstudio.core.evaluation.explain import Explainer, write_overlay

    files = expand_paths(args.paths)
    if not files:
        print("tlstudio: error: no images found in " + ", ".join(args.paths), file=sys.stderr)
        return 2
    explainer = Explainer.from_run(args.run_dir, method=args.method, device=args.device)
    explainer.class_index(args.class_name)  # unknown class: one clear line before any work
    bars = Bars(sys.stderr)
    results = explainer.explain(files, args.class_name, progress=lambda d, t: bars.update("explain", d, t, "explain"))
    bars.finish("explain", len(files), len(files), "explain")
    out_dir = Path(args.out)
    used: set[str] = set()
    records = []
    for e in results:
        rec = {"path": e.path, "error": e.error or None}
        if e.heatmap is not None:
            target = out_dir / _out_name(e.path, used)
            write_overlay(e.path, e.heatmap, target, opacity=args.opacity)
            rec.update(overlay=str(target), explained_class=e.class_name, prob=round(e.prob, 4),
                       predicted=e.predicted, method=e.method, layer=e.layer)
        records.append(rec)
        if args.json:
            print(json.dumps(rec))
        elif e.error:
            print(f"{e.path}: error: {e.error}")
        else:
            print(f"{e.path}: {e.class_name} ({e.prob:.0%}; predicted {e.predicted}) -> {rec['overlay']}")
    ok = sum(r["error"] is None for r in records)
    if not args.json:
        print(f"{ok} of {len(records)} images explained ({results[0].method if results else args.method}, "
              f"layer {explainer.layer}); overlays in {out_dir}")
    return 0 if ok else 2
