"""`tlstudio distill`: a trained teacher run teaches a small student; prints the trade-off."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from tlstudio.core.tasks.distill import ALPHA_HELP, TEMPERATURE_HELP


def register(subparsers) -> None:
    from tlstudio.cli.main import add_train_flags

    p = subparsers.add_parser(
        "distill",
        help="distil trained teacher run(s) into a smaller student and report the trade-off",
        description="Knowledge distillation: the student learns from the teacher's softened outputs "
        "and the labels, then the same student is trained without a teacher, and teacher, student "
        "and student-without-teacher are compared (accuracy, macro-F1, parameters, file size, latency).",
    )
    # "-1:-1" (the last stage of each) is a value, not an option: argparse takes only plain
    # negative numbers as values, so widen its test for this command (stage pairs, negative numbers)
    p._negative_number_matcher = re.compile(r"^-\d+(:-?\d+)?$|^-\d*\.\d+$")
    p.add_argument("dir", help="folder of labelled images (the same classes as the teacher)")
    p.add_argument("--teacher", action="append", required=True, metavar="RUN",
                   help="teacher run folder; repeat for several teachers (their soft targets are averaged)")
    p.add_argument("--teacher-weight", action="append", type=float, metavar="W",
                   help="weight of each teacher, in --teacher order (default: equal)")
    p.add_argument("--student", metavar="NAME", help="student backbone (e.g. mobilenetv3_small_100, resnet10t)")
    p.add_argument("--temperature", type=float, help=TEMPERATURE_HELP + " Default 4.")
    p.add_argument("--alpha", type=float, help=ALPHA_HELP + " Default 0.7.")
    p.add_argument("--feature-loss", metavar="T_STAGE:S_STAGE",
                   help="also match a teacher stage to a student stage (feature_info index such as 3:3 or -1:-1, "
                   "or module names); a 1x1 adapter is learned when widths differ")
    p.add_argument("--feature-weight", type=float, help="weight of the feature loss (default 1)")
    p.add_argument("--unlabeled", metavar="DIR", help="extra unlabelled images: the teacher labels them")
    p.add_argument("--no-student-baseline", action="store_true",
                   help="skip training the student without a teacher (the report then lacks that row)")
    p.add_argument("--latency-repeats", type=int, help="timed forward passes per latency measurement (default 5)")
    add_train_flags(p)  # --epochs --batch-size --lr --freeze --image-size --augment --seed --device --out --json ...
    p.set_defaults(func=cmd_distill)

    r = subparsers.add_parser("distill-resume", help="continue a stopped distillation (then its comparison and report)")
    r.add_argument("run_dir")
    r.add_argument("--json", action="store_true", help="print the result as JSON (progress on stderr)")
    r.set_defaults(func=cmd_distill_resume)


def distill_config(args) -> Any:
    from tlstudio.cli.main import _train_config
    from tlstudio.core.tasks.distill import DistillConfig

    if args.student:
        args.backbone = args.student
    base = _train_config(args).model_dump(exclude_unset=True)
    extra: dict[str, Any] = {
        "teachers": list(args.teacher),
        "teacher_weights": args.teacher_weight,
        "temperature": args.temperature,
        "alpha": args.alpha,
        "feature_loss": args.feature_loss,
        "feature_weight": args.feature_weight,
        "unlabeled_dir": args.unlabeled,
        "student_baseline": False if args.no_student_baseline else None,
        "latency_repeats": args.latency_repeats,
    }
    base.update({k: v for k, v in extra.items() if v is not None})
    return DistillConfig(**base)


def cmd_distill(args) -> int:
    from tlstudio.core.tasks.distill import distill

    return _run(args, lambda stop: distill(distill_config(args), stop=stop))


def cmd_distill_resume(args) -> int:
    from tlstudio.core.tasks.distill import resume_distill

    return _run(args, lambda stop: resume_distill(args.run_dir, stop=stop))


def _run(args, make_gen) -> int:
    from pydantic import ValidationError

    from tlstudio.cli.main import EventPrinter, _stop_on_sigint
    from tlstudio.core.errors import UserError
    from tlstudio.core.events import drive
    from tlstudio.core.tasks.tradeoff import tradeoff_table

    try:
        info = drive(make_gen(_stop_on_sigint()), _Printer(EventPrinter(as_json=args.json)))
    except UserError as exc:
        print(f"tlstudio: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"tlstudio: error: invalid setting {'.'.join(str(x) for x in first['loc'])}: {first['msg']}",
              file=sys.stderr)
        return 2
    report = (info.extra or {}).get("tradeoff") if info is not None else None
    if args.json:
        out = {"run_dir": info.config.get("out_dir"), "status": info.status, "best_val_acc": info.best_val_acc,
               "tradeoff": report}
        print(json.dumps(out, indent=2, ensure_ascii=False, default=str))
    elif report:
        print()
        print(tradeoff_table(report))
        print(report.get("summary", ""))
        for note in report.get("notes", []):
            print(f"note: {note}")
        print(f"Saved {info.config.get('out_dir')}/tradeoff.md and tradeoff.json")
    return 0 if info.status in ("finished", "early_stopped", "stopped") else 1


class _Printer:
    """The lead's EventPrinter, plus a heading per phase and without repeating the final table."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, ev: Any) -> None:
        from tlstudio.core import events as E

        if isinstance(ev, E.RunStarted):
            title = {"distill": "Distilling into the student",
                     "student_baseline": "The same student without a teacher (for comparison)"}.get(ev.phase)
            if title:
                self.inner._p(f"== {title} ==")
        if isinstance(ev, E.Log) and ev.message.startswith("Trade-off (") and not self.inner.as_json:
            return  # printed once at the end with the summary
        self.inner(ev)


def main(argv: list[str] | None = None) -> int:  # `python -m tlstudio.cli.distill ...`
    parser = argparse.ArgumentParser(prog="tlstudio")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["distill", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
