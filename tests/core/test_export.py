"""Exports load and agree with PyTorch in fresh processes where TL Studio cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.core.test_evaluate import (  # noqa: F401 - core_modules is a fixture used here
    core_modules,
    make_run,
)
from tlstudio.core.evaluation import evaluate as ev

# Installed first in every child process: importing any of these top-level packages fails, so
# the child proves it works with the export and third-party libraries alone (however tlstudio
# is installed: editable finder, .pth, or the current directory).
_RUNNER = r'''
import runpy, sys
BLOCKED = set(sys.argv[1].split(","))

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _Block())
for b in BLOCKED:
    try:
        __import__(b)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{b} is still importable")
script = sys.argv[2]
# one run per argument group separated by "--": several runs of a script, one interpreter start
groups, cur = [], []
for a in sys.argv[3:] + ["--"]:
    if a == "--":
        groups.append(cur)
        cur = []
    else:
        cur.append(a)
for g in groups:
    sys.argv = [script, *g]
    runpy.run_path(script, run_name="__main__")
'''


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is several times faster."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_clean(tmp: Path, code: str, *args: str, blocked=("tlstudio",), cwd: Path | None = None) -> str:
    """Run `code` in `python -I` (no PYTHON* env, no user site, no cwd on sys.path), outside the
    repository, with the `blocked` packages unimportable. Returns stdout; fails on non-zero exit."""
    runner = tmp / "_runner.py"
    runner.write_text(_RUNNER)
    script = tmp / f"_script_{abs(hash(code))}.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    p = subprocess.run([sys.executable, "-I", str(runner), ",".join(blocked), str(script), *args],
                       cwd=str(cwd or tmp), env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"child failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One tiny trained run exported to every format (shared: exporting costs a few seconds)."""
    from tlstudio.core.export.formats import export_run
    from tlstudio.core.data.synthetic import make_synthetic_folder

    tmp = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLSTUDIO_HOME", str(tmp / "home"))
        data = make_synthetic_folder(tmp / "data", per_class=12, size=48, easy=True)
        run = tmp / "run"
        model, spec, split = make_run(run, data)
        from tlstudio.core.runs.folder import write_history

        write_history(run, [{"epoch": i, "train_loss": 1.0 / (i + 1), "val_loss": 1.1 / (i + 1), "val_acc": 0.5 + 0.1 * i,
                             "val_macro_f1": 0.45 + 0.1 * i, "lr": 1e-3} for i in range(4)])
        steps = []
        report = export_run(run, tmp / "out", formats=("all",), progress=lambda m, i, n: steps.append((m, i, n)),
                            calibration_images=8, latency_repeats=3)
        # reference logits of TL Studio's own model on real, preprocessed validation images
        from tlstudio.core.models.run_model import load_run_model

        tl_model, _ = load_run_model(run)
        x, _, _ = ev.load_batch([s.path for s in split.val[:3]], spec)
        import torch

        with torch.no_grad():
            want = tl_model(torch.from_numpy(x)).numpy()
        np.save(tmp / "x.npy", x)
        np.save(tmp / "want.npy", want)
        # a wide, odd-sized copy exercises the resize/crop arithmetic on a non-square image
        from PIL import Image

        wide = tmp / "wide.jpg"
        Image.open(split.val[0].path).convert("RGB").resize((77, 41)).save(wide, quality=95)
        preds = ev.predict(run, [s.path for s in split.val[:4]] + [wide])
        yield {"tmp": tmp, "run": run, "out": tmp / "out", "report": report, "spec": spec, "split": split,
               "steps": steps, "preds": preds}


def test_report_has_every_format_checked(exported):
    r = exported["report"]
    assert r.errors == {}
    assert set(r.formats) == {"safetensors", "onnx", "torchscript", "int8"}
    assert r.formats["onnx"]["max_abs_diff"] < 1e-4
    assert r.formats["torchscript"]["max_abs_diff"] < 1e-4
    for fmt in r.formats.values():
        assert Path(fmt["path"]).is_file() and fmt["bytes"] == Path(fmt["path"]).stat().st_size > 0
    q = r.int8
    for row in ("fp32_onnx", "int8_onnx"):
        assert q[row]["size_bytes"] > 0 and q[row]["latency_ms"] > 0 and 0.0 <= q[row]["accuracy"] <= 1.0
    assert q["fp32_pytorch"]["accuracy"] == pytest.approx(q["fp32_onnx"]["accuracy"])
    assert q["int8_onnx"]["size_bytes"] < 0.5 * q["fp32_onnx"]["size_bytes"]
    assert q["n_val"] == len(exported["split"].val)
    saved = json.loads((exported["out"] / "export_report.json").read_text())
    assert saved["formats"]["onnx"]["max_abs_diff"] == r.formats["onnx"]["max_abs_diff"]
    assert exported["steps"][-1][1] == exported["steps"][-1][2]  # progress reached the end


def test_every_export_carries_preprocessing(exported):
    import onnx
    import torch
    from safetensors import safe_open

    spec, out = exported["spec"], exported["out"]
    want = {"classes": spec.classes, "image_size": spec.image_size, "mean": list(spec.mean), "std": list(spec.std),
            "interpolation": spec.interpolation, "crop_pct": spec.crop_pct, "crop_mode": spec.crop_mode}

    def check(meta):
        assert {k: meta[k] for k in want} == want

    check(json.loads((out / "preprocessing.json").read_text()))
    for f in ("model.onnx", "model.int8.onnx"):
        props = {p.key: p.value for p in onnx.load(str(out / f)).metadata_props}
        check(json.loads(props["tlstudio"]))
        assert json.loads(props["classes"]) == spec.classes
    extra = {"tlstudio.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        torch.jit.load(str(out / "model.torchscript.pt"), _extra_files=extra)
    check(json.loads(extra["tlstudio.json"]))
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        check(json.loads(fh.metadata()["tlstudio"]))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["label_names"] == spec.classes and cfg["num_classes"] == spec.num_classes
    assert cfg["pretrained_cfg"]["input_size"] == [3, spec.image_size, spec.image_size]


_TIMM_CHILD = r'''
import json, sys
import numpy as np, timm, torch
out, tmp = sys.argv[1], sys.argv[2]
x, want = np.load(tmp + "/x.npy"), np.load(tmp + "/want.npy")
cfg = json.load(open(out + "/config.json"))
a = timm.create_model(cfg["architecture"], num_classes=cfg["num_classes"], pretrained=True,
                      pretrained_cfg_overlay=dict(file=out + "/model.safetensors", num_classes=cfg["num_classes"])).eval()
b = timm.create_model("local-dir:" + out, pretrained=True).eval()
with torch.no_grad():
    da = float(np.abs(a(torch.from_numpy(x)).numpy() - want).max())
    db = float(np.abs(b(torch.from_numpy(x)).numpy() - want).max())
dc = timm.data.resolve_data_config({}, model=b)
res = {"overlay": da, "local_dir": db, "labels": b.pretrained_cfg.get("label_names"),
       "input_size": list(dc["input_size"]), "crop_pct": dc["crop_pct"]}

# onnxruntime (fp32 and int8) and TorchScript in the same fresh process
import onnxruntime as ort
for name in ("model.onnx", "model.int8.onnx"):
    s = ort.InferenceSession(out + "/" + name, providers=["CPUExecutionProvider"])
    full = s.run(None, {"input": x})[0]
    one = s.run(None, {"input": x[:1]})[0]  # dynamic batch
    res[name] = [float(np.abs(full - want).max()), float(np.abs(one - want[:1]).max()),
                 int((full.argmax(1) == want.argmax(1)).sum())]
ts = torch.jit.load(out + "/model.torchscript.pt")
with torch.no_grad():
    res["ts"] = [float(np.abs(ts(torch.from_numpy(x)).numpy() - want).max()),
                 float(np.abs(ts(torch.from_numpy(x[:1])).numpy() - want[:1]).max())]
res["scale"] = float(np.abs(want).max())
res["tlstudio_loaded"] = any(m.startswith("tlstudio") for m in sys.modules)
print(json.dumps(res))
'''


def test_timm_onnx_torchscript_in_fresh_process_without_tlstudio(exported, tmp_path):
    res = json.loads(run_clean(tmp_path, _TIMM_CHILD, str(exported["out"]), str(exported["tmp"])).splitlines()[-1])
    # timm: both ways of loading bring the trained head along (same logits as TL Studio)
    assert res["overlay"] < 1e-5 and res["local_dir"] < 1e-5
    assert res["labels"] == exported["spec"].classes
    assert res["input_size"] == [3, 48, 48] and res["crop_pct"] == pytest.approx(exported["spec"].crop_pct)
    assert res["model.onnx"][0] < 1e-4 and res["model.onnx"][1] < 1e-4
    assert res["ts"][0] < 1e-4 and res["ts"][1] < 1e-4
    # int8 is approximate: logits within 20% of their range, the same answer on most images
    assert res["model.int8.onnx"][0] < 0.2 * res["scale"] and res["model.int8.onnx"][2] >= 2
    assert res["tlstudio_loaded"] is False


def test_model_card_example_agrees_with_predict(exported, tmp_path):
    from PIL import Image

    from tlstudio.core.export.model_card import extract_example

    out = exported["out"]
    card = (out / "MODEL_CARD.md").read_text()
    for section in ("## Data set", "## Metrics", "## Exported files", "## Training configuration",
                    "confusion_matrix.png", "training_curves.png", '"backbone": "test_resnet"'):
        assert section in card
    for png in ("confusion_matrix.png", "training_curves.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    code = extract_example(card)
    assert len(code.strip().splitlines()) <= 14
    preds = exported["preds"]
    assert Path(preds[-1].path).name == "wide.jpg"
    assert all(p.error is None for p in preds)
    args = [a for p in preds for a in (p.path, "--")][:-1]
    lines = run_clean(tmp_path, code, *args, blocked=("tlstudio", "timm", "torch"), cwd=out).strip().splitlines()
    assert len(lines) == len(preds)
    for p, line in zip(preds, lines):
        cls, prob = line.rsplit(" ", 1)
        assert cls == p.top[0][0], (p.path, line, p.top)
        assert float(prob) == pytest.approx(p.top[0][1], abs=1e-3)


def test_unknown_format_and_missing_run(tmp_path):
    from tlstudio.core.export.formats import ExportError, export_run

    with pytest.raises(ExportError, match="unknown export format"):
        export_run(tmp_path, tmp_path / "o", formats=("pickle",))
    with pytest.raises(ExportError, match="not a TL Studio run folder"):
        export_run(tmp_path / "nothing", tmp_path / "o", formats=("onnx",))


def test_cli_export(exported, tmp_path, capsys, core_modules):
    from tlstudio.cli import main

    rc = main(["export", str(exported["run"]), "--format", "onnx", "--out", str(tmp_path / "cli"), "--json",
               "--no-card"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["formats"]) == {"onnx"} and res["formats"]["onnx"]["max_abs_diff"] < 1e-4
    assert (tmp_path / "cli" / "model.onnx").is_file() and not (tmp_path / "cli" / "MODEL_CARD.md").exists()

    rc = main(["export", str(tmp_path / "no_such_run"), "--format", "all"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no_such_run" in err[0]


def test_size_flexible_vit_exports_at_a_non_native_size(tmp_path):
    """ViTs are created size-flexible (dynamic_img_size): their runtime position-embedding
    resampling has no ONNX op, so the export bakes it for the run's input size."""
    import timm

    from tlstudio.core.export.formats import export_onnx, export_torchscript
    from tlstudio.core.runs.folder import ModelSpec

    model = timm.create_model("test_vit", pretrained=False, num_classes=3, dynamic_img_size=True).eval()
    spec = ModelSpec(backbone="test_vit", num_classes=3, classes=["a", "b", "c"], image_size=48)
    x = np.random.default_rng(0).standard_normal((3, 3, 48, 48)).astype(np.float32)
    assert export_onnx(model, spec, tmp_path, x)["max_abs_diff"] < 1e-4
    assert export_torchscript(model, spec, tmp_path, x)["max_abs_diff"] < 1e-4
    assert model.dynamic_img_size  # the run's own model is left as it was


# --------------------------------------------------------------------------- int8 accuracy


def _top1_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"input": x})[0].argmax(1)


def test_int8_agrees_with_fp32_on_a_depthwise_net(tmp_path, core_modules):
    """A small EfficientNet (depthwise convs, folded BatchNorm: the family whose int8 export lost
    accuracy with per-tensor weights) trained on the easy shapes: the int8 model picked by the
    export gives the same top-1 as fp32 on >= 90% of all images (train and val), its validation
    accuracy is within the tolerance of fp32, and the report says which candidate and why."""
    from tlstudio.core.export.formats import INT8_TOLERANCE, export_run
    from tlstudio.core.data.synthetic import make_synthetic_folder

    data = make_synthetic_folder(tmp_path / "data", per_class=16, size=48, easy=True)
    run = tmp_path / "run"
    _, spec, split = make_run(run, data, backbone="test_efficientnet", steps=25)
    r = export_run(run, tmp_path / "out", formats=("int8",), model_card=False, calibration_images=16,
                   latency_repeats=2)
    assert r.errors == {}
    q, f = r.int8, r.formats["int8"]
    assert f["method"].startswith("static QDQ, per-channel weights")
    assert f["candidates"] and f["candidates"][-1]["name"] == f["picked"]  # stops at the first good one
    assert q["fp32_onnx"]["accuracy"] >= 0.8  # the task was learned: agreement below is not trivial
    assert q["accuracy_drop"] <= INT8_TOLERANCE + 1e-9
    assert f["picked"] in q["note"] and "within" in q["note"]
    x, _, _ = ev.load_batch([s.path for s in split.train + split.val], spec)
    p32, p8 = _top1_onnx(tmp_path / "out" / "model.onnx", x), _top1_onnx(tmp_path / "out" / "model.int8.onnx", x)
    assert len(set(p32.tolist())) == spec.num_classes  # not a constant predictor
    assert (p32 == p8).mean() >= 0.9


def test_int8_keeps_the_most_accurate_when_none_is_within_tolerance(exported, tmp_path):
    """An impossible tolerance: every candidate is tried, the most accurate is kept, and the note
    says no candidate was close enough. Without calibration images: dynamic quantization."""
    from tlstudio.core.export.formats import export_int8

    spec, split = exported["spec"], exported["split"]
    x, _, _ = ev.load_batch([s.path for s in split.train[:8]], spec)
    xv, ok, _ = ev.load_batch([s.path for s in split.val], spec)
    y = np.array([split.val[i].label for i in ok])
    out = tmp_path / "o"
    out.mkdir()
    res = export_int8(exported["out"] / "model.onnx", spec, out, x, (xv, y), tolerance=-1.0)
    cands = res["candidates"]
    assert len(cands) >= 4 and {"minmax", "entropy", "percentile"} <= {c["name"] for c in cands}
    best = max(c["accuracy"] for c in cands if "accuracy" in c)
    picked = next(c for c in cands if c["name"] == res["picked"])
    assert picked["accuracy"] == best and "no candidate" in res["note"]
    assert (out / "model.int8.onnx").is_file() and res["bytes"] == (out / "model.int8.onnx").stat().st_size
    assert [p.name for p in out.iterdir()] == ["model.int8.onnx"]  # no scratch files left

    res = export_int8(exported["out"] / "model.onnx", spec, out, None)
    assert res["method"].startswith("dynamic") and res["picked"] == "dynamic" and res["candidates"] == []
    assert _top1_onnx(out / "model.int8.onnx", xv).shape == (len(xv),)


def test_int8_quantizer_output_stays_off_stdout(exported, tmp_path, capsys):
    """onnxruntime's calibrators print() progress; `tlstudio export --json` must stay valid JSON."""
    from tlstudio.core.export.formats import export_int8

    spec, split = exported["spec"], exported["split"]
    x, _, _ = ev.load_batch([s.path for s in split.train[:4]], spec)
    capsys.readouterr()
    res = export_int8(exported["out"] / "model.onnx", spec, tmp_path, x, None)
    assert res["picked"] == "minmax" and "no validation images" in res["note"]
    export_int8(exported["out"] / "model.onnx", spec, tmp_path, x, (x, np.zeros(len(x), int)), tolerance=-1.0)
    assert capsys.readouterr().out == ""
