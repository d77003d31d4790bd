"""The command line end to end: scan, models, train, eval, predict, resume, and bad input.

Most commands run in-process through ``cli.main(argv)`` (fast); one runs as a real
``python -m tlstudio`` subprocess to prove the entry point exits cleanly without a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tlstudio import cli
from tlstudio.core.runs import folder as runs
from tlstudio.core.data.synthetic import make_synthetic_folder

CLASSES = ["circle", "square", "triangle"]
PER_CLASS = 8


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """cli.main(argv) -> (exit code, stdout, stderr); the SIGINT handler it installs is undone."""
    out, err = io.StringIO(), io.StringIO()
    old = signal.getsignal(signal.SIGINT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main(argv)
            except SystemExit as exc:  # argparse
                rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        signal.signal(signal.SIGINT, old)
    return rc, out.getvalue(), err.getvalue()


def error_lines(stderr: str) -> list[str]:
    # progress bars end with \r, so split on both
    return [ln.strip() for ln in re.split(r"[\r\n]", stderr) if ln.strip().startswith("tlstudio: error:")]


def one_thread_config(root: Path) -> str:
    """--config for what has no flag: one torch thread (two crawl on a shared, busy CPU)."""
    path = root / "base.json"
    path.write_text('{"leave_one_core": true}', encoding="utf-8")
    return str(path)


def train_args(data: Path, out: Path, root: Path, *extra: str) -> list[str]:
    return ["train", str(data), "--config", one_thread_config(root), "--backbone", "test_resnet", "--scratch",
            "--epochs", "2", "--image-size", "48", "--batch-size", "8", "--workers", "0", "--precision", "fp32",
            "--freeze", "none", "--augment", "none", "--lr", "0.01", "--cache", "off", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-epoch run through `tlstudio train --json`, shared by the eval/predict/resume tests."""
    root = tmp_path_factory.mktemp("cli")
    data = make_synthetic_folder(root / "data", per_class=PER_CLASS, size=48, easy=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLSTUDIO_HOME", str(root / "home"))
        rc, out, err = run_cli(train_args(data, root / "run", root, "--json"))
    return {"root": root, "data": data, "run": root / "run", "rc": rc, "out": out, "err": err}


# ---- scan -------------------------------------------------------------------------------------
def test_scan_json_reports_classes_counts_and_skipped(tmp_path):
    data = make_synthetic_folder(tmp_path / "d", classes=("circle", "square"), per_class=6, size=32)
    (data / "circle" / "empty.jpg").write_bytes(b"")
    (data / "square" / "notes.png").write_text("not an image", encoding="utf-8")
    rc, out, err = run_cli(["scan", str(data), "--json"])
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["classes"] == ["circle", "square"]
    assert rep["counts"] == {"circle": 6, "square": 6}
    skipped = {Path(s["path"]).name: s["reason"] for s in rep["skipped"]}
    assert set(skipped) == {"empty.jpg", "notes.png"}
    assert all(r for r in skipped.values())
    # the human-readable form names each skipped file with its reason, too
    rc, out, _ = run_cli(["scan", str(data)])
    assert rc == 0 and "2 skipped files" in out
    assert f"empty.jpg: {skipped['empty.jpg']}" in out


# ---- models -----------------------------------------------------------------------------------
def test_models_filter_json():
    rc, out, err = run_cli(["models", "--filter", "resnet", "--json"])
    assert rc == 0, err
    models = json.loads(out)
    # the filter matches the name or the family (resnext is in the resnet family)
    assert models and all("resnet" in (m["name"] + " " + m["family"]).lower() for m in models), \
        [(m["name"], m["family"]) for m in models][:10]
    assert any(m["name"] == "resnet18" for m in models)
    assert {"name", "family", "params", "input_size", "pretrained"} <= set(models[0])
    rc, out, _ = run_cli(["models", "--filter", "no-such-model-zzz", "--json"])
    assert rc == 0 and json.loads(out) == []


# ---- train / eval / predict / resume ----------------------------------------------------------
def test_train_json_summary(trained):
    assert trained["rc"] == 0, trained["err"][-2000:]
    summary = json.loads(trained["out"])  # stdout is exactly one JSON document; progress went to stderr
    assert summary["status"] == "finished"
    assert summary["classes"] == CLASSES
    assert 0.0 <= summary["best_val_acc"] <= 1.0 and summary["best_epoch"] in (0, 1)
    ev = summary["eval"]
    assert ev["accuracy"] == pytest.approx(summary["best_val_acc"])  # eval.json: the best weights on val
    assert len(ev["confusion"]) == 3 and sum(map(sum, ev["confusion"])) == ev["n"]
    assert Path(summary["run_dir"]) == trained["run"]
    for name in (runs.RUN_JSON, runs.HISTORY_CSV, runs.BEST_WEIGHTS, runs.LAST_CKPT, runs.EVAL_JSON):
        assert (trained["run"] / name).is_file(), name
    assert len(runs.read_history(trained["run"])) == 2
    assert "Traceback" not in trained["err"]


def test_eval_json_on_validation_split_and_on_a_folder(trained):
    rc, out, err = run_cli(["eval", str(trained["run"]), "--json"])
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["accuracy"] == pytest.approx(json.loads(trained["out"])["eval"]["accuracy"])
    assert rep["classes"] == CLASSES
    rc, out, err = run_cli(["eval", str(trained["run"]), str(trained["data"]), "--json"])
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["n"] == 3 * PER_CLASS
    assert sum(r["support"] for r in rep["per_class"]) == 3 * PER_CLASS


def test_predict_json_on_a_file_and_a_folder(trained):
    one = next((trained["data"] / "square").iterdir())
    rc, out, err = run_cli(["predict", str(trained["run"]), str(one), "--json"])
    assert rc == 0, err
    preds = json.loads(out)
    assert len(preds) == 1 and preds[0]["error"] is None and Path(preds[0]["path"]) == one
    top = preds[0]["top"]
    assert len(top) == 3 and {t["class"] for t in top} == set(CLASSES)
    probs = [t["prob"] for t in top]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-4)

    folder = trained["data"] / "circle"
    rc, out, err = run_cli(["predict", str(trained["run"]), str(folder), "--top-k", "1", "--json"])
    assert rc == 0, err
    preds = json.loads(out)
    assert sorted(Path(p["path"]).name for p in preds) == sorted(p.name for p in folder.iterdir())
    assert all(p["error"] is None and len(p["top"]) == 1 for p in preds)

    # a missing file among good ones: reported per file, the others still predicted
    rc, out, _ = run_cli(["predict", str(trained["run"]), str(one), str(folder / "gone.png"), "--json"])
    preds = json.loads(out)
    assert rc == 0 and preds[0]["error"] is None and preds[1]["error"]


def test_resume_of_a_finished_run_is_one_line_error(trained):
    rc, out, err = run_cli(["resume", str(trained["run"])])
    assert rc == 2
    lines = error_lines(err)
    assert len(lines) == 1 and "already finished" in lines[0] and str(trained["run"]) in lines[0], err
    assert "Traceback" not in err + out


# ---- bad input: one clear line on stderr, non-zero exit, no traceback ---------------------------
def _bad_case(name: str, tmp_path: Path) -> tuple[list[str], str]:
    good = make_synthetic_folder(tmp_path / "good", per_class=4, size=32, easy=True)
    if name == "missing folder":
        missing = tmp_path / "no_such_folder"
        return train_args(missing, tmp_path / "r", tmp_path), str(missing)
    if name == "one class":
        only = make_synthetic_folder(tmp_path / "one", classes=("circle",), per_class=5, size=32)
        return train_args(only, tmp_path / "r", tmp_path), "one class"
    if name == "bogus freeze":
        return train_args(good, tmp_path / "r", tmp_path, "--freeze", "bogus"), "freeze"
    if name == "garbage weights":
        garbage = tmp_path / "weights.pt"
        garbage.write_bytes(os.urandom(2048))
        args = train_args(good, tmp_path / "r", tmp_path)
        args[args.index("--scratch")] = "--weights"
        args.insert(args.index("--weights") + 1, str(garbage))
        return args, str(garbage)
    if name == "resume a non-run":
        return ["resume", str(good)], str(good)
    if name == "eval a non-run":
        return ["eval", str(good)], str(good)
    if name == "predict with a non-run":
        return ["predict", str(good), str(next((good / "circle").iterdir()))], str(good)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["missing folder", "one class", "bogus freeze", "garbage weights",
                                  "resume a non-run", "eval a non-run", "predict with a non-run"])
def test_bad_input_gives_one_clear_line(tmp_path, name):
    argv, must_name = _bad_case(name, tmp_path)
    rc, out, err = run_cli(argv)
    assert rc == 2, (rc, err[-1000:])
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert must_name in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert not (tmp_path / "r" / runs.LAST_CKPT).exists()


def test_real_process_bad_weights_exits_cleanly(tmp_path):
    argv, garbage = _bad_case("garbage weights", tmp_path)
    env = {**os.environ, "TLSTUDIO_HOME": str(tmp_path / "home")}
    res = subprocess.run([sys.executable, "-m", "tlstudio", *argv], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    lines = error_lines(res.stderr)
    assert len(lines) == 1 and garbage in lines[0], res.stderr[-2000:]


# ---- damaged or hostile run folders --------------------------------------------------------------
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("damage", ["truncated last.pt", "code in last.pt", "corrupt run.json"])
def test_resume_of_a_damaged_run_is_one_line_error(trained, tmp_path, damage):
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    info = runs.read_run(run)
    info.status = "stopped"  # a resumable run...
    runs.write_run(run, info)
    marker = tmp_path / "PWNED"
    if damage == "truncated last.pt":  # ...whose checkpoint was cut short (copied by hand, say)
        blob = (run / runs.LAST_CKPT).read_bytes()
        (run / runs.LAST_CKPT).write_bytes(blob[: len(blob) // 3])
        bad, words = run / runs.LAST_CKPT, "cannot read"
    elif damage == "code in last.pt":  # ...or replaced by a pickle that would run a command
        torch.save({"model": _Evil(marker)}, run / runs.LAST_CKPT)
        bad, words = run / runs.LAST_CKPT, "refused"
    else:
        (run / runs.RUN_JSON).write_text('{"status": "stopped", "config": 3', encoding="utf-8")
        bad, words = run / runs.RUN_JSON, "invalid"
    rc, out, err = run_cli(["resume", str(run)])
    assert rc == 2, err[-1000:]
    lines = error_lines(err)
    assert len(lines) == 1 and str(bad) in lines[0] and words in lines[0], err
    assert "Traceback" not in err + out
    assert "weights_only` set to `False`" not in err  # never advise loading it unsafely
    assert not marker.exists()


@pytest.mark.slow  # a real `tlstudio train` process, then `resume`: ~120 s on the loaded 2-core machine
@pytest.mark.timeout(900)
def test_ctrl_c_stops_with_a_resumable_checkpoint_then_resume_finishes(tmp_path):
    """SIGINT (Ctrl+C) in a real `tlstudio train`: stops after the current batch, saves, exits 0."""
    import threading
    import time

    import torch

    data = make_synthetic_folder(tmp_path / "d", per_class=4, size=48, easy=True)
    run = tmp_path / "run"
    args = train_args(data, run, tmp_path)
    args[args.index("--batch-size") + 1] = "2"  # ~5 batches per epoch: room to land mid-epoch
    args[args.index("--epochs") + 1] = "4"
    env = {**os.environ, "TLSTUDIO_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tlstudio", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read1(4096), b"")), daemon=True)
    reader.start()
    sent = False
    try:
        deadline = time.monotonic() + 540  # a generous bound: the start alone takes a minute when loaded
        while time.monotonic() < deadline and proc.poll() is None:
            # mid-training, read from the run folder (not the progress text, whose format depends on
            # whether stderr is a terminal): epoch 1 or 2 fully written, the run goes on
            try:
                info = runs.read_run(run)
            except Exception:  # not written yet
                info = None
            if info is not None and info.status == "running" and 1 <= info.epochs_done <= 2:
                proc.send_signal(signal.SIGINT)
                sent = True
                break
            time.sleep(0.02)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    err = b"".join(chunks).decode("utf-8", "replace")
    assert sent, err[-2000:]
    assert proc.returncode == 0, err[-2000:]
    assert "stopping after this batch" in err and "Traceback" not in err
    assert runs.read_run(run).status == "stopped"
    ck = torch.load(run / runs.LAST_CKPT, weights_only=True)
    assert 1 <= ck["epoch"] <= 3, (ck["epoch"], ck["batch"])
    rc, out, err = run_cli(["resume", str(run), "--json"])
    assert rc == 0, err[-2000:]
    assert json.loads(out)["status"] == "finished"
    assert [r["epoch"] for r in runs.read_history(run)] == [1.0, 2.0, 3.0, 4.0]
