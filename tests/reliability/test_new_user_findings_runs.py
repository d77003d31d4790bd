"""Issue 17 on a real (tiny) trained run: 25 (int8 export progress), 26 (`tlstudio runs`), 7 (read-only
destinations for export, eval, resume and train end in one line naming the place, no traceback),
9 (weights that disagree with run.json: one line from predict and export)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tlstudio.cli.main import main as cli


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tlstudio.core.config import TrainConfig
    from tlstudio.core.data.synthetic import make_synthetic_folder
    from tlstudio.core.events import drive
    from tlstudio.core.training.engine import fit

    d = tmp_path_factory.mktemp("runs")
    data = make_synthetic_folder(d / "data", per_class=8, size=32, easy=True)
    cfg = TrainConfig(data_dir=str(data), backbone="test_resnet", init="scratch", epochs=1, image_size=32,
                      batch_size=8, out_dir=str(d / "runs" / "a"), device="cpu", workers=0)
    info = drive(fit(cfg))
    assert info.status == "finished"
    return d / "runs" / "a"


def _second_run(run: Path, tmp_path: Path) -> Path:
    """A copy of the run with other settings and metrics, written through the run-folder API."""
    from tlstudio.core.runs.folder import read_run, write_run

    b = tmp_path / "b"
    shutil.copytree(run, b)
    info = read_run(b)
    info.config = {**info.config, "lr": 0.01, "augment": "strong"}
    info.metrics = {**_metrics(info), "val_acc": 0.25}
    info.best_val_acc = 0.25
    write_run(b, info)
    return b


def _metrics(info) -> dict:
    m = dict(getattr(info, "metrics", {}) or {})
    if info.best_val_acc is not None:
        m.setdefault("val_acc", info.best_val_acc)
    return m


# ---- 26: tlstudio runs ----------------------------------------------------------------------
def test_runs_list_show_compare(run, tmp_path, capsys):
    from tlstudio.core.runs.folder import read_run

    b = _second_run(run, tmp_path / "more")
    (run.parent / "broken").mkdir(exist_ok=True)
    (run.parent / "broken" / "run.json").write_text("{not json")
    assert cli(["runs", "list", str(run.parent)]) == 0
    out = capsys.readouterr().out
    assert "a " in out and "test_resnet" in out and "val_acc" in out and "(skipped)" in out and "broken" in out

    assert cli(["runs", "show", str(run), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    info = read_run(run)
    assert shown["metrics"]["val_acc"] == pytest.approx(_metrics(info)["val_acc"])
    assert shown["settings"]["backbone"] == "test_resnet" and shown["task"] == getattr(info, "task", "classification")

    assert cli(["runs", "compare", str(run), str(b), "--json"]) == 0
    c = json.loads(capsys.readouterr().out)
    assert c["settings"]["lr"][1] == 0.01 and c["settings"]["augment"] == [info.config.get("augment"), "strong"]
    assert "backbone" not in c["settings"]  # only what differs
    va = _metrics(info)["val_acc"]
    assert c["metrics"]["val_acc"]["change"] == pytest.approx(0.25 - va)

    assert cli(["runs", "compare", str(run), str(b)]) == 0
    text = capsys.readouterr().out
    assert "settings that differ" in text and "points" in text
    assert cli(["runs", "show", str(tmp_path)]) == 2  # not a run: one line
    assert "run.json" in capsys.readouterr().err


# ---- 25: progress while int8 calibrates --------------------------------------------------------
def test_int8_export_reports_progress_while_calibrating(run, tmp_path):
    from tlstudio.core.export.formats import export_run

    seen: list[tuple[str, int, int]] = []
    report = export_run(run, tmp_path / "exp", formats=["int8"], model_card=False,
                        progress=lambda m, i, n: seen.append((m, i, n)), latency_repeats=1)
    assert not report.errors, report.errors
    int8_step = [m for m, i, n in seen if m.startswith("int8:")]
    assert any("candidate 1/" in m and "calibrating" in m for m in int8_step)
    assert any("calibration image" in m or "scoring" in m for m in int8_step)
    steps = [i for _, i, _ in seen]
    assert steps == sorted(steps)  # sub-steps stay inside their format's step


# ---- 7: read-only destinations -----------------------------------------------------------------
@pytest.fixture
def ro_copy(run, tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64M", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    shutil.copytree(run, mnt / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("[", "warning:"))]
    assert len(lines) == 1, err
    return lines[0]


def test_read_only_destinations_end_in_one_line(run, ro_copy, capsys):
    assert cli(["export", str(run), "--out", str(ro_copy / "exp"), "--format", "safetensors"]) != 0
    assert str(ro_copy / "exp") in _one_line(capsys)
    assert cli(["eval", str(ro_copy / "run")]) != 0
    assert "read-only" in _one_line(capsys)
    assert cli(["resume", str(ro_copy / "run")]) != 0
    assert str(ro_copy / "run") in _one_line(capsys)
    assert cli(["train", str(run), "--out", str(ro_copy / "new"), "--epochs", "1"]) != 0
    assert str(ro_copy / "new") in _one_line(capsys)


# ---- 9: weights vs run.json ------------------------------------------------------------------
@pytest.fixture
def mismatched(run, tmp_path):
    """run.json says 4 classes, model.safetensors has 3 outputs (edited, or from another run)."""
    from tlstudio.core.runs.folder import read_run, write_run

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    info = read_run(bad)
    info.model = info.model.model_copy(update={"classes": info.model.classes + ["extra"],
                                               "num_classes": info.model.num_classes + 1})
    write_run(bad, info)
    return bad


def test_export_of_weights_that_disagree_with_run_json_is_one_line(mismatched, tmp_path, capsys):
    assert cli(["export", str(mismatched), "--format", "safetensors", "--out", str(tmp_path / "e")]) != 0
    assert "different runs" in _one_line(capsys)
    assert not (tmp_path / "e" / "config.json").exists()  # nothing inconsistent written


def test_predict_with_weights_that_disagree_with_run_json_is_one_line(mismatched, run, capsys):
    from tlstudio.core.runs.folder import read_run

    img = next(p for p in Path(read_run(run).data.get("root", run)).rglob("*.png"))
    assert cli(["predict", str(mismatched), str(img)]) != 0
    assert "different runs" in _one_line(capsys)
