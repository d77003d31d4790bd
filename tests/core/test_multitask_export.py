"""Multi-task exports: one named output per task in ONNX and TorchScript, safetensors + loader,
checked in fresh processes without TL Studio; the model card lists tasks, classes, preprocessing."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlstudio.core.events import drive
from tlstudio.core.tasks.multitask.artifacts import predict
from tlstudio.core.tasks.multitask.export import export
from tlstudio.core.tasks.multitask.config import MultiTaskConfig
from tlstudio.core.tasks.multitask.trainer import run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtexp")
    data = root / "data"
    data.mkdir()
    rows = []
    for i in range(20):
        Image.new("RGB", (32, 32), (40 + 10 * i, 200 - 8 * i, 90)).save(data / f"i{i}.png")
        rows.append({"path": f"i{i}.png", "kind": "warm" if i % 2 else "cold", "brightness": f"{10 + 3.5 * i:.2f}",
                     "tags": "a;b" if i % 3 == 0 else "b"})
    with open(data / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = MultiTaskConfig(data_dir=str(data / "labels.csv"), backbone="test_efficientnet", init="scratch",
                          freeze="head", epochs=1, batch_size=8, augment="none", out_dir=str(root / "run"),
                          leave_one_core=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLSTUDIO_HOME", str(root / "home"))
        info = drive(run(cfg), lambda e: None)
    return {"root": root, "data": data, "run": root / "run", "info": info}


def test_export_one_named_output_per_task_checked_in_fresh_processes(trained):
    rep = export(trained["run"], ["all"])
    assert rep["errors"] == {}
    names = ["kind", "brightness", "tags"]
    assert rep["tasks"] == names
    for fmt in ("safetensors", "onnx", "torchscript"):
        d = rep["formats"][fmt]
        assert d["checked_in_fresh_process"] and d["max_abs_diff"] < 1e-3 and Path(d["path"]).is_file()
    out = Path(rep["out_dir"])
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == names
    from tlstudio.core.evaluation.evaluate import load_batch

    img = str(trained["data"] / "i5.png")
    x, _, _ = load_batch([img, str(trained["data"] / "i6.png"), str(trained["data"] / "i7.png")],
                         trained["info"].model)
    got = dict(zip(names, sess.run(None, {"input": x})))  # dynamic batch of 3
    assert got["kind"].shape == (3, 2) and got["brightness"].shape == (3, 1) and got["tags"].shape == (3, 2)
    # numeric output is in the column's units, the same value predict() reports
    row = predict(trained["run"], [img])[0]
    assert float(got["brightness"][0, 0]) == pytest.approx(row["tasks"]["brightness"]["value"], abs=1e-3)
    assert row["tasks"]["kind"]["class"] in ("cold", "warm")
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    for s in ("| kind | categorical | cold, warm |", "| brightness | numeric", "| tags | multilabel | a, b |",
              "centre crop", "One named output per task", "load_multitask.py"):
        assert s in card, s
    meta = json.loads((out / "multitask.json").read_text(encoding="utf-8"))
    assert meta["output_names"] == names and meta["preprocessing"]["image_size"] == trained["info"].model.image_size


def test_documented_loader_runs_as_a_script_without_tlstudio(trained):
    out = trained["run"] / "export"
    if not (out / "load_multitask.py").is_file():
        export(trained["run"], ["safetensors"])
    img = str(trained["data"] / "i3.png")
    code = ("import sys, runpy; sys.argv=['load_multitask.py', %r]; runpy.run_path('load_multitask.py', "
            "run_name='__main__'); assert 'tlstudio' not in sys.modules" % img)
    r = subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    line = r.stdout.strip().splitlines()[-1]
    want = predict(trained["run"], [img])[0]["tasks"]
    assert f"'kind': ('{want['kind']['class']}'" in line
    value = float(line.split("'brightness': ")[1].split(",")[0].rstrip("}"))
    assert value == pytest.approx(want["brightness"]["value"], abs=1e-3)
    assert np.isfinite(value)
