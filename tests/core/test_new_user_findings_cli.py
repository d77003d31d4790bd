"""Issue 17 command-line findings: 22 (--feature-loss -1:-1), 23 (scan | head), 24 (plain progress
lines in redirected logs), 25 (int8 export progress), 26 (tlstudio runs)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tlstudio.cli.main import build_parser


def test_feature_loss_negative_stage_pair_as_a_separate_argument():
    args = build_parser().parse_args(["distill", "data", "--teacher", "run", "--feature-loss", "-1:-1"])
    assert args.feature_loss == "-1:-1"
    args = build_parser().parse_args(["distill", "data", "--teacher", "run", "--feature-loss", "-2:3"])
    assert args.feature_loss == "-2:3"
    with pytest.raises(SystemExit):  # a real unknown option is still refused
        build_parser().parse_args(["distill", "data", "--teacher", "run", "--feature-losss", "x"])


def test_scan_into_a_closed_pipe_ends_quietly(tmp_path):
    from tlstudio.core.data.synthetic import make_synthetic_folder

    data = make_synthetic_folder(tmp_path / "d", per_class=6, size=24)
    for i in range(300):  # many skipped lines: more output than the pipe buffer takes at once
        (data / "circle" / f"notes_{i:03d}_{'x' * 200}.txt").write_text("x")
    env = {**os.environ, "PYTHONUNBUFFERED": "0"}
    p = subprocess.Popen([sys.executable, "-m", "tlstudio", "scan", str(data)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    p.stdout.readline()
    p.stdout.close()  # `| head -1`
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_progress_in_a_redirected_log_is_plain_lines(monkeypatch):
    from tlstudio.cli import progress
    from tlstudio.cli.main import EventPrinter
    from tlstudio.core import events as E

    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    log = io.StringIO()  # not a terminal
    printer = EventPrinter(stream=io.StringIO(), progress_stream=log)
    fields = E.BatchEnd.__dataclass_fields__
    for i in range(100):
        clock[0] += 1.0  # one second per batch
        kw = dict(epoch=0, batch=i, batches=100, loss=0.5, images_per_s=32.0)
        printer(E.BatchEnd(**{k: v for k, v in {**kw, "step": i, "lr": 1e-3}.items() if k in fields}))
    for done in (0, 3, 6):  # a quick task: no lines at all
        clock[0] += 0.1
        printer(E.Progress(task="eval", done=done, total=6))
    for done in (0, 50, 100):  # a long one (12 s): its end is in the log
        clock[0] += 6.0
        printer(E.Progress(task="int8 calibration", done=done, total=100))
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    batch_lines = [ln for ln in lines if ln.startswith("epoch 1:")]
    assert 8 <= len(batch_lines) <= 11  # about one per 10 s over 100 s, not one per batch
    assert "loss 0.5000" in batch_lines[0] and "/100" in batch_lines[0]
    assert lines[-1] == "int8 calibration: 100/100 (100%)" and not any(ln.startswith("eval") for ln in lines)


def test_progress_on_a_terminal_uses_a_live_bar():
    from tlstudio.cli.progress import Bars

    out = io.StringIO()
    bars = Bars(out, tty=True)
    for i in range(5):
        bars.update("x", i + 1, 5, "work")
    bars.close()
    assert "\r" in out.getvalue()


def test_torch_floor_closes_the_weights_only_bypasses():
    """Issue 17 item 11: weights_only=True has public bypasses before torch 2.6 and 2.10."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = {Requirement(d).name: Requirement(d) for d in deps}
    for name, bad, good in (("torch", "2.9.1", "2.10.0"), ("torchvision", "0.24.1", "0.25.0")):
        spec = reqs[name].specifier
        assert not spec.contains(Version(bad)) and spec.contains(Version(good)), (name, str(spec))


def test_scan_command_follows_outside_links_only_when_asked(tmp_path, capsys):
    from tlstudio.cli.main import main
    from tlstudio.core.data.synthetic import make_synthetic_folder

    data = make_synthetic_folder(tmp_path / "d", per_class=6, size=24)
    extra = make_synthetic_folder(tmp_path / "e", per_class=2, size=24, seed=7)
    os.symlink(extra / "circle", data / "circle" / "more")
    assert main(["scan", str(data)]) == 0
    out = capsys.readouterr().out
    assert "outside the data set" in out and "--follow-links" in out
    assert main(["scan", str(data), "--follow-links", "--near-duplicates"]) == 0
    out = capsys.readouterr().out
    assert "outside the data set" not in out


def test_export_progress_in_a_log_is_deduplicated_and_throttled(monkeypatch):
    import time as _time

    from tlstudio.cli.export import _Progress

    clock = [100.0]
    monkeypatch.setattr(_time, "monotonic", lambda: clock[0])
    log = io.StringIO()
    p = _Progress(log)
    p("exporting onnx", 0, 3)
    p("exporting onnx", 0, 3)  # the same message again: not repeated
    for i in range(64):  # calibration images, two a second
        clock[0] += 0.5
        p(f"int8: candidate 1/5 (minmax): calibration image {i + 1}/64", 1, 3)
    p("int8: candidate 2/5 (entropy): calibrating on 64 images", 1, 3)
    p("done", 3, 3)
    lines = log.getvalue().splitlines()
    assert lines[0] == "[1/3] exporting onnx..." and lines[-1].startswith("[2/3] int8: candidate 2/5")
    image_lines = [ln for ln in lines if "calibration image" in ln]
    assert 2 <= len(image_lines) <= 5 and "\r" not in log.getvalue()
