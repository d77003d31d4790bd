"""Train flags for unlabelled images: domain adaptation (--target) and semi-supervised (--unlabeled).

  tlstudio train SRC --target DIR [--adapt adabn|mcc|dann|selftrain] [--check DIR]
  tlstudio train DIR --unlabeled DIR2 [--pseudo-threshold 0.95]

eval, predict, export and resume work on these runs as on any run (they dispatch on the run's kind);
under torchrun every process trains the gradient phases and rank 0 alone writes and prints.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tlstudio.core.tasks.adaptation.config import DEFAULT_METHOD, METHODS
from tlstudio.core.tasks.semisupervised.config import DEFAULT_THRESHOLD

_FLAGS = ("--target", "--adapt", "--check", "--bn-adapt", "--adapt-weight", "--rounds", "--unlabeled",
          "--pseudo-threshold", "--semi-method", "--cap-factor", "--one-threshold")


def add_flags(p: argparse.ArgumentParser) -> None:
    """Add the flags to the train command (other commands that reuse the train flags, such as
    distill with its own --unlabeled, are left alone)."""
    if not p.prog.endswith(" train") or any(f in p._option_string_actions for f in _FLAGS):
        return
    g = p.add_argument_group("unlabelled images (domain adaptation, semi-supervised)")
    g.add_argument("--target", metavar="DIR",
                   help="unlabelled images of the same classes from another domain (camera, lighting, site): "
                        "adapt the model to them")
    g.add_argument("--adapt", choices=METHODS, help=f"adaptation method (default {DEFAULT_METHOD}): adabn = "
                   "re-estimate BatchNorm statistics (seconds), mcc = minimum class confusion, dann = domain-"
                   "adversarial, selftrain = class-balanced pseudo-labels in rounds")
    g.add_argument("--check", metavar="DIR", help="10-20 target images you labelled (a folder per class): the "
                   "adapted model is kept only if it beats the unadapted one on them; never trained on")
    g.add_argument("--bn-adapt", choices=["auto", "on", "off"],
                   help="also re-estimate BatchNorm statistics on the target with mcc/dann/selftrain "
                        "(auto, the default: on for selftrain, off for mcc/dann, as measured)")
    g.add_argument("--adapt-weight", type=float, metavar="W", help="weight of the MCC or DANN loss (default 1)")
    g.add_argument("--rounds", type=int, help="self-training / pseudo-label rounds (default 3 / 2)")
    g.add_argument("--unlabeled", metavar="DIR", help="more images of the same kind without labels: "
                   "semi-supervised learning with pseudo-labels (review them in the app)")
    g.add_argument("--pseudo-threshold", type=float, metavar="P",
                   help=f"confidence a pseudo-label needs (default {DEFAULT_THRESHOLD})")
    g.add_argument("--one-threshold", action="store_true",
                   help="the same confidence bar for every class (default: a class the model is rarely sure of "
                        "gets a lower bar, so it still gets pseudo-labels)")
    g.add_argument("--semi-method", choices=["auto", "pseudolabel", "fixmatch"],
                   help="auto (default): pseudo-labels, on cached features with a frozen body and by rounds "
                        "of fine-tuning when the body trains; fixmatch: weak/strong consistency (advanced)")
    g.add_argument("--cap-factor", type=float, help="per-class cap of pseudo-labels as a multiple of the "
                   "class's expected share (default 1)")


def wants(args: Any) -> bool:
    return bool(getattr(args, "target", None) or getattr(args, "unlabeled", None))


def config_from_args(args: Any):
    from tlstudio.cli.main import _train_config
    from tlstudio.core.errors import UserError

    if getattr(args, "target", None) and getattr(args, "unlabeled", None):
        raise UserError("--target (another domain) and --unlabeled (the same kind) exclude each other: "
                        "choose what the unlabelled images are")
    base = _train_config(args).model_dump()
    base.pop("task", None)
    if args.target:
        from tlstudio.core.tasks.adaptation.config import AdaptConfig

        extra: dict[str, Any] = {"target_dir": args.target, "check_dir": args.check}
        if args.adapt:
            extra["adapt"] = args.adapt
        if args.bn_adapt and args.bn_adapt != "auto":
            extra["bn_adapt"] = args.bn_adapt == "on"
        if args.adapt_weight is not None:
            extra["mcc_weight"] = extra["dann_weight"] = args.adapt_weight
        if args.rounds is not None:
            extra["selftrain_rounds"] = args.rounds
        return AdaptConfig(**base, **extra)
    from tlstudio.core.tasks.semisupervised.config import SemiConfig

    for flag in ("adapt", "check"):
        if getattr(args, flag, None):
            raise UserError(f"--{flag} goes with --target (domain adaptation), not --unlabeled")
    extra = {"unlabeled_dir": args.unlabeled}
    if args.pseudo_threshold is not None:
        extra["pseudo_threshold"] = args.pseudo_threshold
    if args.semi_method:
        extra["method"] = args.semi_method
    if args.cap_factor is not None:
        extra["cap_factor"] = args.cap_factor
    if args.one_threshold:
        extra["class_thresholds"] = False
    if args.rounds is not None:
        extra["rounds"] = args.rounds
    return SemiConfig(**base, **extra)


def summary_lines(info: Any) -> list[str]:
    if info.task == "adaptation":
        rep = info.extra.get("adaptation", {})
        lines = []
        gap = rep.get("domain_gap") or {}
        if gap.get("score") is not None:
            lines.append(f"domain gap {gap['score']:.2f}: {gap['sentence']}")
        for who in ("unadapted", "adapted"):
            s = rep.get(who) or {}
            parts = [f"source val {s['source_val_acc']:.1%}" if s.get("source_val_acc") is not None else None,
                     f"target score {s['target_info_max']:.2f}" if s.get("target_info_max") is not None else None,
                     f"check set {s['check_acc']:.1%}" if s.get("check_acc") is not None else None]
            lines.append(f"{who:>9}: " + ", ".join(p for p in parts if p))
        sel = rep.get("selection") or {}
        if sel:
            lines.append(f"kept: {sel.get('selected')} ({sel.get('reason', '')})")
        return lines
    rep = info.extra.get("semisupervised", {})
    lines = []
    for st in rep.get("pseudo_labels", []):
        lines.append(f"round {st['round']}: {st['selected']} pseudo-labels (per class {st['per_class']})")
    a, b = (rep.get("semi") or {}).get("val_acc"), (rep.get("labelled_only") or {}).get("val_acc")
    if a is not None and b is not None:
        lines.append(f"validation accuracy: labelled only {b:.1%}, with unlabelled images {a:.1%}")
    return lines


def run(args: Any) -> int:
    from tlstudio.cli.main import EventPrinter, _finish_run, _stop_on_sigint
    from tlstudio.core.events import drive
    from tlstudio.core.tasks.registry import get

    from tlstudio.core.runtime.parallel import distributed_context

    config = config_from_args(args)
    kind = get(config.task)
    info = drive(kind.run(config, stop=_stop_on_sigint()), EventPrinter(as_json=args.json))
    if not distributed_context().is_main:  # torchrun: rank 0 alone reports (the job yields no events elsewhere)
        return 0 if info.status in ("finished", "early_stopped", "stopped") else 1
    if not args.json:
        for line in summary_lines(info):
            print(line)
    else:
        print(f"kind: {kind.title}", file=sys.stderr)
    return _finish_run(args, info)
