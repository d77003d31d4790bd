"""The command line: the same engine as the GUI, printed as text or JSON. No Qt here.

Every command takes --json for machine-readable output (progress goes to stderr), and bad
input ends with one clear line and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from tlstudio.core.events import drive

# Modules that add subcommands: each defines register(subparsers) and sets a `func` default.
_PLUGINS = ("tlstudio.cli.distill", "tlstudio.cli.export", "tlstudio.cli.runs_cmd",
            "tlstudio.cli.anomaly", "tlstudio.cli.rank", "tlstudio.cli.explain")

EXIT_USER_ERROR = 2


def _err(msg: str) -> None:
    print(f"tlstudio: error: {msg}", file=sys.stderr)


# ---- event printing ---------------------------------------------------------------------------
class EventPrinter:
    """Prints engine events: a batch progress bar on stderr, one line per epoch."""

    def __init__(self, as_json: bool = False, stream=None, progress_stream=None) -> None:
        from tlstudio.cli.progress import Bars

        self.as_json = as_json
        self.out = stream or (sys.stderr if as_json else sys.stdout)
        # live bars on a terminal, plain lines every few seconds in a redirected log
        self.bars = Bars(progress_stream or sys.stderr)

    def _close_bar(self) -> None:
        self.bars.close("batch")

    def __call__(self, ev: Any) -> None:
        from tlstudio.core import events as E

        if isinstance(ev, E.BatchEnd):
            self.bars.update("batch", ev.batch + 1, ev.batches, f"epoch {ev.epoch + 1}",
                             f"loss {ev.loss:.4f}, {ev.images_per_s:.0f} img/s", quiet_start=True)
            return
        if isinstance(ev, E.Progress):
            if ev.total is not None and ev.done >= ev.total:
                self.bars.finish(ev.task, ev.done, ev.total, ev.task)
            else:  # quick tasks (a 6-image evaluation) leave no lines in a log
                self.bars.update(ev.task, ev.done, ev.total, ev.task, quiet_start=True)
            return
        self._close_bar()
        if isinstance(ev, E.RunStarted):
            tag = " (from-scratch baseline)" if ev.phase == "baseline" else ""
            self._p(f"Run {ev.run_dir}{tag}\n  {ev.backbone} on {ev.device} ({ev.precision}), "
                    f"{len(ev.classes)} classes, {ev.n_train} train / {ev.n_val} val images, "
                    f"{ev.trainable_params:,} of {ev.total_params:,} parameters trainable")
        elif isinstance(ev, E.EpochEnd):
            star = " *" if ev.best else ""
            if ev.best and ev.kept_score is not None:  # multi-task, frozen body: each task keeps its own best head
                star = f" * (kept heads: {ev.best_metric} {ev.kept_score:.4g})"
            self._p(f"epoch {ev.epoch + 1}/{ev.epochs}  train loss {ev.train_loss:.4f}  {format_metrics(ev.metrics)}  "
                    f"lr {ev.lr:.2e}  {ev.seconds:.1f}s{star}")
        elif isinstance(ev, E.Warn):
            self._p(f"warning: {ev.message}")
        elif isinstance(ev, E.Log):
            self._p(ev.message)
        elif isinstance(ev, E.Unfrozen):
            self._p(f"unfroze {ev.group} ({ev.trainable_params:,} trainable parameters)")
        elif isinstance(ev, E.Finished):
            best = format_metrics(ev.metrics) if ev.metrics else "no best epoch"
            self._p(f"{ev.status}: best {best}" + (f" ({ev.message})" if ev.message else ""))

    def _p(self, line: str) -> None:
        print(line, file=self.out, flush=True)


_LABELS = {"val_loss": ("val loss", "{:.4f}"), "val_acc": ("val acc", "{:.1%}"),
           "val_macro_f1": ("macro-F1", "{:.3f}")}


def format_metrics(metrics: dict[str, float]) -> str:
    """"val loss 0.4123  val acc 91.2%  macro-F1 0.905" for classification; name value for the rest."""
    out = []
    for key, value in metrics.items():
        base, _, task = key.partition("/")
        label, fmt = _LABELS.get(base, (base.replace("_", " "), "{:.4g}"))
        shown = "n/a" if value is None else fmt.format(value)
        out.append(f"{label}{'/' + task if task else ''} {shown}")
    return "  ".join(out)


def _stop_on_sigint() -> threading.Event:
    """Ctrl+C sets the engine's stop flag (it saves a resumable checkpoint); twice aborts."""
    import signal

    stop = threading.Event()

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        print("\nstopping after this batch (Ctrl+C again to abort)...", file=sys.stderr)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
    return stop


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


# ---- commands ---------------------------------------------------------------------------------
def cmd_scan(args) -> int:
    from tlstudio.core.data.dataset import scan

    report = scan(args.dir, csv_path=args.csv, follow_links=args.follow_links,
                  near_duplicates=True if args.near_duplicates else None)
    if args.json:
        _print_json(report.to_json())
        return 0
    print(f"{report.root}: {report.layout} layout, {len(report.classes)} classes, {len(report.samples)} images")
    width = max((len(c) for c in report.classes), default=5)
    for c in report.classes:
        print(f"  {c:<{width}}  {report.counts.get(c, 0):>6}")
    if report.skipped:
        print(f"{len(report.skipped)} skipped files:")
        for s in report.skipped:
            print(f"  {s.path}: {s.reason}")
    for w in report.warnings:
        print(f"warning: {w}")
    return 0


def cmd_models(args) -> int:
    from tlstudio.core.models.backbones import list_models

    models = list_models(args.filter or "", pretrained_only=args.pretrained)
    if args.json:
        _print_json([m.__dict__ if hasattr(m, "__dict__") else m for m in models])
        return 0
    print(f"{'name':<40} {'family':<16} {'params':>9} {'input':>5}  pretrained")
    for m in models:
        flags = ("offline" if m.offline else "yes" if m.pretrained else "no") + ("  recommended" if m.recommended else "")
        print(f"{m.name:<40} {m.family:<16} {m.params / 1e6:>8.1f}M {m.input_size:>5}  {flags}")
    print(f"{len(models)} models")
    return 0


def cmd_kinds(args) -> int:
    from tlstudio.core.tasks.registry import all_kinds

    kinds = all_kinds()
    if args.json:
        _print_json([{"kind": k.kind, "title": k.title, "summary": k.summary, "trains": k.trains} for k in kinds])
        return 0
    width = max(len(k.kind) for k in kinds)
    for k in kinds:
        print(f"{k.kind:<{width}}  {k.title}: {k.summary}")
    return 0


def _train_values(args) -> dict[str, Any]:
    """The settings the train flags give, over a saved config.json's (--config) when one is given."""
    from tlstudio.core.errors import UserError
    from tlstudio.core.paths import sample_dir

    data_dir = str(sample_dir()) if getattr(args, "sample", False) else args.dir
    init = None
    if args.scratch:
        init = "scratch"
    elif args.weights:
        init = "file"
    elif args.init_from:
        init = "run"
    values: dict[str, Any] = {
        "data_dir": data_dir, "init": init, "weights_file": args.weights, "init_run": args.init_from,
        "freeze": args.freeze, "augment": args.augment, "seed": args.seed, "device": args.device,
        "baseline": getattr(args, "baseline", None) or None, "out_dir": args.out,
        "class_weights": args.class_weights or None,
    }
    for name in ("backbone", "epochs", "batch_size", "lr", "image_size", "val_fraction", "optimizer",
                 "label_smoothing", "weight_decay", "warmup_epochs", "precision", "workers", "cache",
                 "early_stop_patience", "fit_head", "body_lr_mult", "layer_decay", "compile", "follow_links", "threads",
                 "micro_batch"):
        values[name] = getattr(args, name, None)
    values = {k: v for k, v in values.items() if v is not None}
    if args.config:  # a saved config.json; flags given on the command line override it
        try:
            base = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{args.config}: cannot read the config: {exc}") from exc
        base.pop("out_dir", None)
        values = {**base, **values}
    if not values.get("data_dir"):
        raise UserError("give a data folder, or --sample for the bundled sample data set")
    return values


def _config_task(args) -> str | None:
    """The kind a --config file was saved by ("task" in config.json), e.g. an anomaly fit's."""
    if not getattr(args, "config", None):
        return None
    try:
        task = json.loads(Path(args.config).read_text(encoding="utf-8")).get("task")
    except (OSError, ValueError, AttributeError):
        return None  # _train_values says what is wrong with the file
    return task if isinstance(task, str) else None


def _train_config(args) -> Any:
    from tlstudio.core.config import TrainConfig

    config = TrainConfig(**_train_values(args))
    from tlstudio.core.models.advice import scratch_freeze_warning

    if warning := scratch_freeze_warning(config.init, config.freeze, config.frozen_groups):
        print(f"warning: {warning}", file=sys.stderr)
    return config


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """Training flags shared by train and distill."""
    p.add_argument("--backbone", help="timm model name (default: tf_efficientnet_lite0, offline ImageNet weights)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", metavar="FILE", help="start from a local .safetensors/.pth/.pt weights file")
    src.add_argument("--init-from", metavar="RUN_DIR", help="chained transfer: start from an earlier run's body")
    src.add_argument("--scratch", action="store_true", help="random initialisation (no transfer)")
    p.add_argument("--freeze", help="head | last:N | none | gradual:K (default head; none with --scratch)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="head learning rate (default: advised from the data)")
    p.add_argument("--body-lr-mult", type=float, help="body LR = lr x this (default 0.1)")
    p.add_argument("--layer-decay", type=float)
    p.add_argument("--image-size", type=int)
    p.add_argument("--augment", choices=["none", "light", "strong"])
    p.add_argument("--optimizer", choices=["adamw", "sgd"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--class-weights", action="store_true", help="weight the loss against class imbalance")
    p.add_argument("--early-stop-patience", type=int)
    p.add_argument("--no-head-fit", dest="fit_head", action="store_false", default=None,
                   help="when only the head trains, do not fit it to convergence on the cached features "
                        "before the epochs")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--follow-links", action="store_true", default=None,
                   help="follow symbolic links that lead outside the data folder (never ones back into it)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--cache", choices=["auto", "off"])
    p.add_argument("--workers", type=int, help="image decode threads (default: auto)")
    p.add_argument("--threads", type=int, help="compute threads (default: from the cores other programs leave free)")
    p.add_argument("--micro-batch", type=int, metavar="N",
                   help="run each step as micro-batches of N images with gradient accumulation (0 = whole "
                        "batches; default: measured on the CPU)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model (falls back to eager mode if compilation fails)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: a new folder under the runs dir)")
    p.add_argument("--config", metavar="JSON", help="start from a saved config.json; flags override it")
    p.add_argument("--json", action="store_true", help="print the result as JSON (progress on stderr)")
    from tlstudio.cli import adapt, multitask

    multitask.add_flags(p)  # --tasks, --weighting, --pcgrad ...: several label columns
    adapt.add_flags(p)  # --target/--adapt/--check, --unlabeled/--pseudo-threshold (train only)


def _run_summary(info: Any) -> dict[str, Any]:
    from tlstudio.core.runs import folder as runs

    out = {"run_dir": info.config.get("out_dir"), "task": info.task, "status": info.status,
           "best_epoch": info.best_epoch, "metrics": info.metrics, "best_val_acc": info.best_val_acc,
           "best_val_macro_f1": info.best_val_macro_f1, "classes": info.model.classes, "baseline": info.baseline}
    ev = Path(info.config.get("out_dir", "")) / runs.EVAL_JSON
    if ev.is_file():
        out["eval"] = json.loads(ev.read_text(encoding="utf-8"))
    return out


def _finish_run(args, info) -> int:
    if args.json:
        _print_json(_run_summary(info))
    elif info.baseline:
        b = info.baseline
        print(f"transfer {b['transfer_val_acc']:.1%} vs scratch {b['scratch_val_acc']:.1%}: gain {b['gain'] * 100:+.1f} points")
    return 0 if info.status in ("finished", "early_stopped", "stopped") else 1


def _run_kind(args) -> int:
    """`tlstudio train DIR --task KIND`: any registered kind, its config built from the train flags
    it declares (flags it has no field for are refused with one line)."""
    from tlstudio.core.errors import UserError
    from tlstudio.core.tasks.registry import get

    kind = get(args.task)
    values = _train_values(args)
    fields = kind.config_cls.model_fields
    ignored = sorted(k for k in values if k not in fields and k != "task")
    explicit = {k.replace("-", "_") for k in vars(args) if getattr(args, k) not in (None, False)}
    refused = [k for k in ignored if k in explicit]
    if refused:
        raise UserError(f"--{refused[0].replace('_', '-')} does not apply to {kind.title.lower()}")
    config = kind.config_cls(**{k: v for k, v in values.items() if k in fields and k != "task"})
    info = drive(kind.run(config, stop=_stop_on_sigint()), EventPrinter(as_json=args.json))
    return _finish_run(args, info)


def cmd_train(args) -> int:
    if getattr(args, "task", None) is None:  # a saved config of another kind (the Export step's "run elsewhere")
        args.task = _config_task(args)
    if getattr(args, "task", None) not in (None, "classification"):
        return _run_kind(args)
    from tlstudio.cli import multitask

    if multitask.wants(args):  # --tasks, or a table with several label columns / task folder trees
        return multitask.run(args)
    from tlstudio.cli import adapt

    if adapt.wants(args):  # --target DIR (domain adaptation) or --unlabeled DIR (semi-supervised)
        return adapt.run(args)
    from tlstudio.core.training.engine import fit
    from tlstudio.core.runtime.parallel import distributed_context

    config = _train_config(args)
    dist = distributed_context()
    printer = EventPrinter(as_json=args.json) if dist.is_main else (lambda ev: None)
    info = drive(fit(config, stop=_stop_on_sigint()), printer)
    if not dist.is_main:
        return 0
    return _finish_run(args, info)


def cmd_resume(args) -> int:
    from tlstudio.core.tasks.registry import kind_of_run

    kind = kind_of_run(args.run_dir)
    if kind.resume is None:
        from tlstudio.core.errors import UserError

        raise UserError(f"{args.run_dir}: a {kind.title.lower()} run cannot be resumed")
    info = drive(kind.resume(args.run_dir, stop=_stop_on_sigint()), EventPrinter(as_json=args.json))
    return _finish_run(args, info)


def _kind_for(run_dir: str, what: str):
    from tlstudio.core.errors import UserError
    from tlstudio.core.tasks.registry import kind_of_run

    kind = kind_of_run(run_dir)
    if getattr(kind, what) is None:
        raise UserError(f"{run_dir}: {kind.title.lower()} runs have no {what} step")
    return kind


def cmd_eval(args) -> int:
    kind = _kind_for(args.run_dir, "evaluate")
    result = kind.evaluate(args.run_dir, args.dir)
    if args.json:
        _print_json(result)
    elif kind.eval_lines is not None:
        print("\n".join(kind.eval_lines(result)))
    else:
        for name, value in result.get("metrics", {}).items():
            print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")
    return 0


def cmd_predict(args) -> int:
    kind = _kind_for(args.run_dir, "predict")
    opts = {"top_k": args.top_k}
    if getattr(args, "maps", None):
        opts["maps_dir"] = args.maps
    rows = kind.predict(args.run_dir, args.paths, **opts)
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            if r.get("error"):
                print(f"{r['path']}: error: {r['error']}")
            elif kind.predict_line is not None:
                print(kind.predict_line(r))
            else:
                print(f"{r['path']}: " + ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("path", "error")))
    return 0 if any(r.get("error") is None for r in rows) else EXIT_USER_ERROR


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tlstudio", description="No-code transfer learning on images. "
                                "Run without arguments to open the desktop app.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scan", help="check a data folder: classes, counts, skipped files, warnings")
    s.add_argument("dir")
    s.add_argument("--csv", help="a CSV of path,label (paths relative to the CSV)")
    s.add_argument("--follow-links", action="store_true",
                   help="also use symbolic links that lead outside the folder (links back into it never count)")
    s.add_argument("--near-duplicates", action="store_true",
                   help="look for resized or re-encoded copies even in a big data set (slower)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_scan)

    s = sub.add_parser("kinds", help="list the kinds of learning (for train --task)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_kinds)

    s = sub.add_parser("models", help="list backbones")
    s.add_argument("--filter", default="")
    s.add_argument("--pretrained", action="store_true", help="only models with pretrained weights")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("train", help="fine-tune a backbone on a folder of labelled images")
    s.add_argument("dir", nargs="?")
    s.add_argument("--sample", action="store_true", help="use the bundled sample data set")
    s.add_argument("--baseline", action="store_true", help="also train from scratch and report the gain of transfer")
    s.add_argument("--task", metavar="KIND", help="kind of learning (default classification): "
                   "knn, and the other kinds listed by `tlstudio kinds`")
    add_train_flags(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("resume", help="continue a stopped run (any kind: training, distillation, ...)")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_resume)

    s = sub.add_parser("eval", help="evaluate a run on its validation split or another folder")
    s.add_argument("run_dir")
    s.add_argument("dir", nargs="?")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("predict", help="apply a run's model to image files or folders")
    s.add_argument("run_dir")
    s.add_argument("paths", nargs="+")
    s.add_argument("--top-k", type=int, default=3)
    s.add_argument("--maps", metavar="DIR", help="write heat-map PNGs here (kinds that make maps)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_predict)

    from importlib import import_module

    for name in _PLUGINS:
        import_module(name).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    from tlstudio.core.errors import UserError
    from tlstudio.core.runs.folder import RunError

    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `tlstudio scan DIR | head`: the reader has what it wanted
        import os

        try:  # later flushes (at exit) must not raise again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 141  # as a shell reports SIGPIPE
    except (UserError, RunError) as exc:  # RunError: not a run folder, or a damaged one
        _err(str(exc))
        return EXIT_USER_ERROR
    except ValidationError as exc:
        first = exc.errors()[0]
        _err(f"invalid setting {'.'.join(str(x) for x in first['loc'])}: {first['msg']}")
        return EXIT_USER_ERROR
    except FileNotFoundError as exc:
        _err(f"{exc.filename}: no such file or folder")
        return EXIT_USER_ERROR
    except OSError as exc:  # a folder not writable, a read-only disk, a full disk: one line
        import errno

        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                             errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        _err(f"{where}{exc.strerror or exc}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _err("aborted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
