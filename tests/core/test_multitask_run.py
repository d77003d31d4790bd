"""Multi-task runs end to end: baselines and the noise task, per-task metrics, stop/resume,
and the CLI (train --tasks ... --baseline, eval --json, predict)."""

from __future__ import annotations

import csv
import json
import random
import threading
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tlstudio.core.events import BatchEnd, EpochEnd, Log, drive
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks.multitask.config import MultiTaskConfig
from tlstudio.core.tasks.multitask.trainer import resume, run

COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220)}


def make_two_task_set(root: Path, n: int = 48, size: int = 32, seed: int = 0, missing: float = 0.15) -> Path:
    """object = colour_shape (4 classes) and colour (2 classes, some cells empty): shared
    structure; noise = a coin flip per image: unrelated to everything."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        shape, colour = ["circle", "square"][i % 2], ["red", "blue"][(i // 2) % 2]
        img = Image.new("RGB", (size, size), (rng.randint(90, 170),) * 3)
        a, b = rng.randint(3, 8), size - rng.randint(3, 8)
        d = ImageDraw.Draw(img)
        (d.ellipse if shape == "circle" else d.rectangle)([a, a, b, b], fill=COLOURS[colour])
        img.save(root / f"im{i:03d}.png")
        rows.append({"path": f"im{i:03d}.png", "object": f"{colour}_{shape}",
                     "colour": colour if rng.random() > missing else "", "noise": rng.choice(["p", "q"])})
    p = root / "labels.csv"
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return p


def head_only(data: Path, out: Path, **kw) -> MultiTaskConfig:
    base = dict(data_dir=str(data), backbone="test_efficientnet", init="scratch", freeze="head", epochs=6,
                batch_size=16, out_dir=str(out), relatedness_every=1, augment="none", lr=0.02,
                early_stop_patience=None, leave_one_core=True)
    base.update(kw)
    return MultiTaskConfig(**base)


@pytest.fixture(scope="module")
def mtl_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtl")
    data = make_two_task_set(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLSTUDIO_HOME", str(root / "home"))
        events = []
        info = drive(run(head_only(data, root / "run", baseline=True)), events.append)
    return {"root": root, "data": data, "run": root / "run", "info": info, "events": events}


def test_mtl_matches_separate_models_and_flags_the_noise_task(mtl_run):
    info = mtl_run["info"]
    assert info.status == "finished" and info.task == "multitask" and info.best_metric == "val_score"
    mt = info.extra["multitask"]
    names = ["object", "colour", "noise"]
    assert list(mt["per_task"]) == names
    rel = mt["relatedness"]
    assert rel[0][1] > 0.3  # object and colour pull the shared features the same way
    assert abs(rel[0][2]) < 0.1 and abs(rel[1][2]) < 0.1  # the coin flip does not
    base = mt["baseline"]
    assert [r["task"] for r in base["rows"]] == names
    assert base["negative_tasks"] == []  # heads on the same frozen features: nothing lost by sharing
    assert "noise" in base["unrelated_tasks"] and "object" not in base["unrelated_tasks"]
    assert "noise looks unrelated" in base["verdict"]
    assert base["verdict"].startswith(("Multi-task matches", "Multi-task learning helps"))
    assert "shared no trainable layer" in base["verdict"]  # head-only: said plainly
    for r in base["rows"]:
        assert r["delta_points"] == pytest.approx(100 * (r["mtl"] - r["single"]))
        single = runs.read_run(base["run_dirs"][r["task"]])
        assert single.label_schema["tasks"][0]["name"] == r["task"]
        assert len(single.label_schema["tasks"]) == 1
    assert mt["per_task"]["colour"]["accuracy"] > 0.8  # colour is easy even from random conv features
    warns = [e.message for e in mtl_run["events"] if type(e).__name__ == "Warn"]
    assert any("noise looks unrelated" in w or "Task noise looks unrelated" in w for w in warns)


def test_metrics_dicts_history_and_task_weights(mtl_run):
    ends = [e for e in mtl_run["events"] if isinstance(e, EpochEnd) and e.phase == "main"]
    assert len(ends) == 6
    m = ends[-1].metrics
    for t in ("object", "colour", "noise"):
        assert {f"val_acc/{t}", f"val_macro_f1/{t}", f"val_loss/{t}", f"weight/{t}", f"train_loss/{t}"} <= set(m)
        assert m[f"weight/{t}"] == 1.0  # equal weighting
    score = sum(m[f"val_acc/{t}"] for t in ("object", "colour", "noise")) / 3
    assert m["val_score"] == pytest.approx(score)
    hist = runs.read_history(mtl_run["run"])
    assert len(hist) == 6 and "weight/colour" in hist[0] and "val_acc/object" in hist[0]
    # head-only: each task keeps the head of its own best epoch (the evaluation test below checks
    # that the saved model reproduces these numbers)
    m = mtl_run["info"].metrics
    for t in ("object", "colour", "noise"):
        assert m[f"val_acc/{t}"] == pytest.approx(max(r[f"val_acc/{t}"] for r in hist))
    assert m["val_score"] == pytest.approx(sum(m[f"val_acc/{t}"] for t in ("object", "colour", "noise")) / 3)
    assert set(mtl_run["info"].extra["multitask"]["task_epochs"]) == {"object", "colour", "noise"}
    # an epoch marked best kept some task's head: the log names which, with the kept heads' score
    kept = [e.message for e in mtl_run["events"] if isinstance(e, Log) and "head kept for" in e.message]
    epochs = mtl_run["info"].extra["multitask"]["task_epochs"]
    last = max(epochs.values())
    score = f"{mtl_run['info'].metrics['val_score']:.3f}"
    line = [m for m in kept if m.startswith(f"Epoch {last + 1}: ") and m.endswith(score)]
    assert line and all(t in line[0] for t, e in epochs.items() if e == last), kept
    marked = [e for e in mtl_run["events"] if isinstance(e, EpochEnd) and e.best and e.phase == "main"]
    assert marked[-1].kept_score == pytest.approx(mtl_run["info"].metrics["val_score"])  # shown beside the star
    assert all(e.kept_score is not None for e in marked)
    # colour has empty cells: its labelled validation count is below the others'
    per = mtl_run["info"].extra["multitask"]["per_task"]
    assert per["colour"]["n"] < per["object"]["n"]


def test_full_finetuning_with_uncertainty_and_pcgrad_stops_and_resumes(tmp_path):
    data = make_two_task_set(tmp_path / "data", n=24)
    cfg = head_only(data, tmp_path / "run", freeze="none", epochs=2, batch_size=8, weighting="uncertainty",
                    pcgrad=True, relatedness_every=2, lr=0.003)
    stop = threading.Event()
    seen = []

    def on(ev):
        seen.append(ev)
        if isinstance(ev, BatchEnd) and ev.step == 2:
            stop.set()

    info = drive(run(cfg, stop=stop), on)
    assert info.status == "stopped"
    parts = [e.parts for e in seen if isinstance(e, BatchEnd)]
    assert {"loss/object", "loss/colour", "loss/noise"} <= set(parts[0])
    info = drive(resume(tmp_path / "run"), lambda e: None)
    assert info.status == "finished" and info.epochs_done == 2
    hist = runs.read_history(tmp_path / "run")
    assert [int(r["epoch"]) for r in hist] == [1, 2]
    w = info.extra["multitask"]["weights"]
    assert set(w) == {"object", "colour", "noise"} and any(abs(v - 1.0) > 1e-4 for v in w.values())  # learned


def test_cli_train_eval_predict(mtl_run, tmp_path, capsys):
    from tlstudio import cli

    rc = cli.main(["train", str(mtl_run["data"]), "--tasks", "colour", "--backbone", "test_efficientnet",
                   "--scratch", "--freeze", "head", "--epochs", "2", "--augment", "none", "--out",
                   str(tmp_path / "single"), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    summary = json.loads(out)
    assert summary["task"] == "multitask" and list(summary["multitask"]["per_task"]) == ["colour"]
    assert [t["name"] for t in runs.read_run(tmp_path / "single").label_schema["tasks"]] == ["colour"]
    rc = cli.main(["eval", str(mtl_run["run"]), "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and set(rep["tasks"]) == {"object", "colour", "noise"}
    for t in ("object", "colour"):
        assert set(rep["tasks"][t]) >= {"accuracy", "macro_f1", "confusion"}
        # the validation split again: same numbers as training's best epoch
        assert rep["tasks"][t]["accuracy"] == pytest.approx(mtl_run["info"].metrics[f"val_acc/{t}"], abs=1e-6)
    rc = cli.main(["predict", str(mtl_run["run"]), str(mtl_run["data"].parent / "im000.png")])
    cap = capsys.readouterr()
    line = cap.out.strip()
    assert rc == 0, cap.err and "object=" in line and "colour=" in line and "noise=" in line


def test_multi_head_teacher_teaches_a_multi_head_student(mtl_run, tmp_path):
    from tlstudio.core.events import Log

    cfg = head_only(mtl_run["data"], tmp_path / "student", epochs=2, teacher_run=str(mtl_run["run"]),
                    kd_alpha=0.5, relatedness_every=5)
    logs = []
    info = drive(run(cfg), lambda e: logs.append(e.message) if isinstance(e, Log) else None)
    assert info.status == "finished"
    assert any(m.startswith("Teacher run") and "T = 4, alpha = 0.5" in m for m in logs)
    assert set(info.extra["multitask"]["per_task"]) == {"object", "colour", "noise"}
    bad = head_only(mtl_run["data"], tmp_path / "bad", epochs=1, teacher_run=str(mtl_run["run"]),
                    tasks=["colour"], task_types={"colour": "multilabel"})
    with pytest.raises(Exception, match="a teacher must know every task"):
        drive(run(bad), lambda e: None)


def test_stop_mid_epoch_and_resume_matches_an_uninterrupted_run(tmp_path):
    """last.pt keeps the running epoch's sums: the resumed epoch reports the same training loss and
    per-task losses (so the same DWA weights next epoch) as a run that was never stopped."""
    data = make_two_task_set(tmp_path / "data", n=32)
    kw = dict(freeze="none", epochs=2, batch_size=8, weighting="dwa", relatedness_every=2, lr=0.003)
    whole = drive(run(head_only(data, tmp_path / "whole", **kw)), lambda e: None)
    stop = threading.Event()

    def on(ev):
        if isinstance(ev, BatchEnd) and ev.epoch == 1 and ev.batch == 1:
            stop.set()  # in the second epoch, after two of its batches have trained

    assert drive(run(head_only(data, tmp_path / "split", **kw), stop=stop), on).status == "stopped"
    resumed = drive(resume(tmp_path / "split"), lambda e: None)
    assert resumed.status == "finished"
    h_whole, h_split = runs.read_history(tmp_path / "whole"), runs.read_history(tmp_path / "split")
    assert [int(r["epoch"]) for r in h_split] == [1, 2]
    for a, b in zip(h_whole, h_split):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-4)
    assert resumed.extra["multitask"]["weights"] == pytest.approx(whole.extra["multitask"]["weights"], rel=1e-4)


def test_an_early_stopped_multi_task_run_keeps_no_optimiser_state(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("TLSTUDIO_HOME", str(tmp_path / "home"))
    data = make_two_task_set(tmp_path / "data", n=24)
    # a learning rate too small to change anything: no epoch after the first improves the score
    info = drive(run(head_only(data, tmp_path / "run", lr=1e-12, early_stop_patience=1)))
    assert info.status == "early_stopped" and info.epochs_done < 6
    end = torch.load(tmp_path / "run" / runs.LAST_CKPT, weights_only=True)
    assert end["optimizer"] == {} and end["epoch"] == info.epochs_done
