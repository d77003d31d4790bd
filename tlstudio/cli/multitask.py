"""`tlstudio train labels.csv --tasks a,b [--weighting ...] [--pcgrad] [--baseline]`: multi-task runs.

cmd_train hands over here when --tasks is given or the data has several label columns (or task
folder trees); eval/predict/resume/export of a multi-task run dispatch through the registry.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

WEIGHTINGS = ("equal", "manual", "initial", "uncertainty", "dwa", "gradnorm")


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-task (several label columns)")
    g.add_argument("--tasks", help="label columns to learn, comma-separated (default: every label column); "
                                   "one column alone trains a single-task model on it")
    g.add_argument("--task-types", metavar="COL=TYPE,...",
                   help="override the automatic column typing: categorical, multilabel or numeric")
    g.add_argument("--weighting", choices=WEIGHTINGS,
                   help="how task losses are combined (default equal; gradnorm costs extra backward passes)")
    g.add_argument("--task-weights", metavar="W1,W2", help="manual weights, in the order of --tasks")
    g.add_argument("--pcgrad", action="store_true", default=None,
                   help="project conflicting task gradients (PCGrad; about one extra backward pass per task)")
    g.add_argument("--sharing", choices=["hard", "soft"], help="one shared body (hard, default) or one per task (soft)")
    if "--teacher" not in p._option_string_actions:  # `tlstudio distill` has its own --teacher
        g.add_argument("--teacher", metavar="RUN", help="multi-head distillation: a trained multi-task run teaches "
                                                        "every task (its soft targets also cover empty cells)")
        g.add_argument("--kd-temperature", type=float, help="distillation temperature T (default 4)")
        g.add_argument("--kd-alpha", type=float, help="weight of the teacher's soft targets (default 0.7)")


def _split(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def wants(args: Any) -> bool:
    """Is this a multi-task training? --tasks given, or the data has several label columns."""
    if getattr(args, "tasks", None) or isinstance(getattr(args, "teacher", None), str):
        return True
    data = getattr(args, "dir", None)
    if not data or getattr(args, "sample", False):
        return False
    from tlstudio.core.data.multitask import is_multitask_data

    return is_multitask_data(data) is not None


def build_config(args: Any):
    from tlstudio.cli.main import _train_config
    from tlstudio.core.errors import UserError
    from tlstudio.core.tasks.multitask.config import MultiTaskConfig

    base = _train_config(args).model_dump()
    base.pop("task", None)
    extra: dict[str, Any] = {}
    if args.tasks:
        extra["tasks"] = _split(args.tasks)
    if args.task_types:
        try:
            extra["task_types"] = dict(kv.split("=", 1) for kv in _split(args.task_types) or [])
        except ValueError:
            raise UserError("--task-types needs COLUMN=TYPE pairs, e.g. age=numeric,tags=multilabel") from None
    if args.task_weights:
        try:
            extra["task_weights"] = [float(w) for w in _split(args.task_weights) or []]
        except ValueError:
            raise UserError(f"--task-weights must be numbers, e.g. 1,2 (got {args.task_weights})") from None
        extra.setdefault("weighting", "manual")
    if isinstance(getattr(args, "teacher", None), str):
        extra["teacher_run"] = args.teacher
    for name in ("weighting", "pcgrad", "sharing", "kd_temperature", "kd_alpha"):
        v = getattr(args, name, None)
        if v is not None:
            extra[name] = v
    if extra.get("weighting") == "manual" and not extra.get("task_weights"):
        raise UserError("--weighting manual needs --task-weights W1,W2,... (one per task)")
    if extra.get("task_weights") and extra.get("tasks") and len(extra["task_weights"]) != len(extra["tasks"]):
        raise UserError(f"{len(extra['task_weights'])} task weights for {len(extra['tasks'])} tasks")
    try:
        return MultiTaskConfig(**{**base, **extra})
    except ValueError as exc:
        raise UserError(f"invalid multi-task settings: {str(exc).splitlines()[0]}") from exc


def report_lines(info: Any) -> list[str]:
    mt = info.extra.get("multitask") or {}
    lines = []
    per = mt.get("per_task") or {}
    if per:
        lines.append("per task (best epoch):")
        for t, d in per.items():
            if "accuracy" in d and "mae" not in d:
                lines.append(f"  {t:<16} accuracy {d['accuracy']:.1%}  macro-F1 {d['macro_f1']:.3f}")
            elif "mae" in d:
                lines.append(f"  {t:<16} MAE {d['mae']:.4g}  R^2 {d['r2']:.3f}")
    if mt.get("relatedness") and len(mt["relatedness"]) > 1:
        names = list(per)
        lines.append("gradient cosine between tasks (shared layers; 1 = aligned, < 0 = conflicting):")
        for t, row in zip(names, mt["relatedness"]):
            lines.append(f"  {t:<16} " + " ".join(f"{v:+.2f}" for v in row))
    b = mt.get("baseline")
    if b:
        lines.append("multi-task vs separate single-task models:")
        for r in b["rows"]:
            lines.append(f"  {r['task']:<16} {r['mtl']:.1%} vs {r['single']:.1%}  {r['delta_points']:+.1f} points"
                         + ("  NEGATIVE TRANSFER" if r["negative"] else ""))
        lines.append(f"  delta-m {b['delta_m']:+.2f} %: {b['verdict']}")
    return lines


def run(args: Any) -> int:
    from tlstudio.cli.main import EventPrinter, _print_json, _run_summary, _stop_on_sigint
    from tlstudio.core.events import drive
    from tlstudio.core.runtime.parallel import distributed_context
    from tlstudio.core.tasks.multitask.trainer import run as train

    config = build_config(args)
    main = distributed_context().is_main  # under torchrun only rank 0 prints (and writes the run folder)
    info = drive(train(config, stop=_stop_on_sigint()), EventPrinter(as_json=args.json) if main else (lambda ev: None))
    if not main:
        return 0
    if args.json:
        out = _run_summary(info)
        out["multitask"] = info.extra.get("multitask")
        _print_json(out)
    else:
        print("\n".join(report_lines(info)), file=sys.stdout)
    return 0 if info.status in ("finished", "early_stopped", "stopped") else 1
