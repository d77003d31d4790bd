"""`tlstudio anomaly fit|threshold`: anomaly detection from normal images only.

`tlstudio eval/predict/export RUN` work on the runs it makes (they dispatch on the run's kind).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "anomaly", help="anomaly detection from normal images only (fit, threshold)",
        description="Learn what normal images look like (PatchCore or PaDiM on pretrained features, no "
        "training) and flag whatever deviates, with a heat map. Then: tlstudio eval RUN TEST_DIR, "
        "tlstudio predict RUN IMAGES --maps DIR, tlstudio export RUN.")
    sub = p.add_subparsers(dest="anomaly_command", required=True)

    f = sub.add_parser("fit", help="fit a detector on a folder of normal images (or an MVTec-layout folder)",
                       description="DIR: normal images only, a folder with good/ (+ defect folders), or the "
                       "MVTec layout train/good, test/good, test/<defect>, ground_truth/<defect>/<name>_mask.png. "
                       "Labelled test images, when present, are evaluated at the end.")
    f.add_argument("dir")
    f.add_argument("--backbone", help="timm feature extractor (default tf_efficientnet_lite0, offline weights)")
    f.add_argument("--init", choices=("pretrained", "file", "run", "scratch"),
                   help="where the extractor's weights come from (default pretrained)")
    f.add_argument("--weights", metavar="FILE", help="weights file (implies --init file)")
    f.add_argument("--init-run", metavar="RUN", help="an earlier TL Studio run as the extractor (implies --init run)")
    f.add_argument("--method", choices=("patchcore", "padim"), help="default patchcore")
    g = f.add_mutually_exclusive_group()
    g.add_argument("--coreset", type=float, metavar="RATIO", help="share of patches kept in the bank (default 0.1)")
    g.add_argument("--max-bank", type=int, metavar="N", help="hard cap on bank patches (default 16384)")
    f.add_argument("--image-size", type=int, metavar="PX", help="default 224")
    f.add_argument("--false-alarm", type=float, metavar="RATE",
                   help="share of good parts that may be flagged (default 0.01: 1 in 100)")
    f.add_argument("--threshold-mode", choices=("false_alarm", "f1"),
                   help="f1: use the F1-optimal threshold on labelled test defects (needs them)")
    f.add_argument("--holdout", type=float, metavar="FRACTION", help="good images held out to set the threshold (0.2)")
    f.add_argument("--batch-size", type=int)
    f.add_argument("--seed", type=int)
    f.add_argument("--device", help="cpu (default) or cuda")
    f.add_argument("--out", metavar="RUN", help="run folder to create")
    f.add_argument("--json", action="store_true", help="print the result as JSON (progress on stderr)")
    f.set_defaults(func=cmd_fit)

    t = sub.add_parser("threshold", help="move a fitted run's threshold (no refit)")
    t.add_argument("run_dir")
    tg = t.add_mutually_exclusive_group(required=True)
    tg.add_argument("--false-alarm", type=float, metavar="RATE", help="on the held-out good images")
    tg.add_argument("--f1", action="store_true", help="the F1-optimal threshold found on labelled defects")
    tg.add_argument("--raw", type=float, help="a raw distance")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_threshold)


def config_from_args(args) -> Any:
    from tlstudio.core.tasks.anomaly.config import AnomalyConfig

    init = args.init or ("file" if args.weights else "run" if args.init_run else None)
    values = {"data_dir": args.dir, "backbone": args.backbone, "init": init, "weights_file": args.weights,
              "init_run": args.init_run, "method": args.method, "coreset_ratio": args.coreset,
              "max_bank": args.max_bank, "image_size": args.image_size, "false_alarm_rate": args.false_alarm,
              "threshold_mode": args.threshold_mode, "holdout_fraction": args.holdout,
              "batch_size": args.batch_size, "seed": args.seed, "device": args.device, "out_dir": args.out}
    if args.max_bank is not None and args.coreset is None:
        values["coreset_ratio"] = 1.0  # a cap alone: keep as much as the cap allows
    return AnomalyConfig(**{k: v for k, v in values.items() if v is not None})


def _fail(msg: str) -> int:
    print(f"tlstudio: error: {msg}", file=sys.stderr)
    return 2


def cmd_fit(args) -> int:
    from pydantic import ValidationError

    from tlstudio.cli.main import EventPrinter, _stop_on_sigint
    from tlstudio.core.errors import UserError
    from tlstudio.core.events import drive
    from tlstudio.core.tasks.registry import get

    try:
        config = config_from_args(args)
        printer = EventPrinter(as_json=args.json)
        info = drive(get("anomaly").run(config, stop=_stop_on_sigint()),
                     lambda ev: None if type(ev).__name__ == "RunStarted" else printer(ev))
    except ValidationError as exc:
        first = exc.errors()[0]
        return _fail(f"invalid setting {'.'.join(str(x) for x in first['loc'])}: {first['msg']}")
    except UserError as exc:
        return _fail(str(exc))
    meta = (info.extra or {}).get("anomaly", {})
    out = {"run_dir": info.config.get("out_dir"), "status": info.status, "metrics": info.metrics,
           "threshold": meta.get("threshold"), "threshold_mode": meta.get("threshold_mode"),
           "false_alarm_rate": meta.get("false_alarm_rate"), "bank_size": meta.get("bank_size"),
           "timings": info.timings}
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    elif info.status == "finished":
        print(f"Next: tlstudio predict {out['run_dir']} IMAGES --maps maps/   |   tlstudio export {out['run_dir']}")
    return 0 if info.status in ("finished", "stopped") else 1


def cmd_threshold(args) -> int:
    from tlstudio.core.errors import UserError
    from tlstudio.core.tasks.anomaly.store import set_threshold

    try:
        meta = set_threshold(args.run_dir, false_alarm_rate=args.false_alarm, mode="f1" if args.f1 else None,
                             raw=args.raw)
    except UserError as exc:
        return _fail(str(exc))
    out = {k: meta.get(k) for k in ("threshold", "threshold_mode", "false_alarm_rate", "scale")}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"threshold {out['threshold']:.6g} ({out['threshold_mode']}); export again to ship it")
    return 0


def main(argv: list[str] | None = None) -> int:  # `python -m tlstudio.cli.anomaly fit DIR ...`
    parser = argparse.ArgumentParser(prog="tlstudio")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["anomaly", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
