"""`tlstudio export RUN_DIR --format ...`: the export subcommand (registered by tlstudio.cli)."""

from __future__ import annotations

import argparse
import json
import sys

FORMAT_CHOICES = ("safetensors", "onnx", "torchscript", "int8", "all")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a run: safetensors (+timm config), ONNX, TorchScript, int8; with a model card",
        description="Write the run's best weights in formats that work without TL Studio, check each "
        "against PyTorch, and write MODEL_CARD.md beside them.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a TL Studio run folder")
    p.add_argument("--format", "-f", dest="formats", action="append", choices=FORMAT_CHOICES,
                   help="repeatable; default: all")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/export)")
    p.add_argument("--no-card", action="store_true", help="do not write MODEL_CARD.md")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=run_export)


class _Progress:
    """"[k/n] message..." on stderr. Messages that only count (calibration image 12/64) are
    redrawn in place on a terminal, and printed at most every PLAIN_EVERY_S in a redirected log."""

    def __init__(self, stream=None) -> None:
        from tlstudio.cli.progress import PLAIN_EVERY_S, _is_tty

        self.stream = stream or sys.stderr
        self.tty = _is_tty(self.stream)
        self.every = PLAIN_EVERY_S
        self.last_text = ""
        self.last_time = -1e9
        self.live = False  # a counting line is on screen (terminal)

    def __call__(self, message: str, step: int, steps: int) -> None:
        import time

        if step >= steps:
            self._end_live()
            return
        text = f"[{step + 1}/{steps}] {message}..."
        if text == self.last_text:
            return
        counting = "image " in message and "/" in message.rsplit("image ", 1)[-1]
        now = time.monotonic()
        if counting and not self.tty and now - self.last_time < self.every:
            return
        self.last_text, self.last_time = text, now
        try:
            if counting and self.tty:
                self.stream.write(f"\r\x1b[K{text}")
                self.stream.flush()
                self.live = True
            else:
                self._end_live()
                print(text, file=self.stream, flush=True)
        except (BrokenPipeError, ValueError):
            pass

    def _end_live(self) -> None:
        if self.live:
            self.live = False
            self.stream.write("\n")
            self.stream.flush()


def _progress(message: str, step: int, steps: int) -> None:  # the old name: one message, unthrottled
    _Progress()(message, step, steps)


def run_export(args: argparse.Namespace) -> int:
    """Exports through the run's kind (run.json "task"): each kind knows its formats and checks."""
    from tlstudio.core.errors import UserError
    from tlstudio.core.tasks.registry import kind_of_run

    formats = args.formats or ["all"]
    try:
        kind = kind_of_run(args.run_dir)
        if kind.export is None:
            raise UserError(f"{args.run_dir}: {kind.title.lower()} runs have nothing to export")
        extra = {"model_card": False} if args.no_card else {}
        report = kind.export(args.run_dir, formats, args.out, None if args.json else _Progress(), **extra)
    except UserError as exc:
        print(f"tlstudio export: {exc}", file=sys.stderr)
        return 2
    if not hasattr(report, "formats"):  # a kind's own report: a JSON-able dict
        print(json.dumps(report, indent=2, default=str))
        return 1 if report.get("errors") else 0
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=str))
    else:
        for fmt, d in report.formats.items():
            check = f"max abs diff {d['max_abs_diff']:.1e}" if "max_abs_diff" in d else d.get("method", "")
            print(f"{fmt:12s} {d['path']}  {d['bytes'] / 1e6:.2f} MB  {check}")
        q = report.int8
        if q:
            for name in ("fp32_pytorch", "fp32_onnx", "int8_onnx"):
                r = q[name]
                acc = "n/a" if r.get("accuracy") is None else f"{100 * r['accuracy']:.1f}%"
                size = f"{r['size_bytes'] / 1e6:.2f} MB" if "size_bytes" in r else "-"
                print(f"  {name:13s} size {size:>9s}  latency {r['latency_ms']:.2f} ms/img  accuracy {acc}")
        if report.model_card:
            print(f"model card   {report.model_card}")
        for fmt, err in report.errors.items():
            print(f"FAILED {fmt}: {err}", file=sys.stderr)
    return 1 if report.errors else 0
