"""Multi-task exports with ONE NAMED OUTPUT PER TASK.

ONNX outputs and TorchScript dict keys are the task names (logits for categorical and
multi-label tasks, the value in the column's own units for numeric tasks). ``model.safetensors``
comes with ``load_multitask.py``, a small documented loader needing only torch, timm,
safetensors and Pillow, and ``multitask.json`` (tasks, classes, preprocessing). Every format is
re-run in a fresh Python process that does not import TL Studio and compared with PyTorch;
MODEL_CARD.md lists the tasks, their classes, the metrics, the baseline comparison and the
preprocessing. int8: dynamic quantisation of the ONNX model (weights int8), with per-task agreement
with the fp32 model on the check images.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tlstudio.core.errors import UserError
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks.multitask.artifacts import Unscaled, load_model

TOLERANCE = 1e-3
FORMATS = ("safetensors", "onnx", "torchscript", "int8")

LOADER = '''"""Load the TL Studio multi-task model in model.safetensors (needs torch, timm, safetensors, Pillow).

    python load_multitask.py image.jpg [more.jpg ...]

or from Python:
    from load_multitask import load, predict
    model, meta = load(".")           # folder holding model.safetensors and multitask.json
    print(predict(model, meta, "image.jpg"))   # {task: answer}
"""
import json, math, sys
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import load_file


class MultiTask(torch.nn.Module):
    """One timm body (classifier removed) + one Linear head per task (soft sharing: one body per task)."""

    def __init__(self, meta):
        super().__init__()
        self.tasks, self.keys = meta["tasks"], meta["keys"]
        if meta["sharing"] == "soft":
            self.bodies = torch.nn.ModuleList(timm.create_model(meta["backbone"], num_classes=0) for _ in self.tasks)
        else:
            self.body = timm.create_model(meta["backbone"], num_classes=0)
        dim = (self.bodies[0] if meta["sharing"] == "soft" else self.body).num_features
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(dim, 1 if t["type"] == "numeric" else len(t["classes"]))
                                          for k, t in zip(self.keys, self.tasks)})

    def forward(self, x):
        if hasattr(self, "bodies"):
            feats = [b(x) for b in self.bodies]
        else:
            feats = [self.body(x)] * len(self.tasks)
        out = {}
        for t, k, f in zip(self.tasks, self.keys, feats):
            y = self.heads[k](f)
            if t["type"] == "numeric":  # back to the column's units
                y = y * t["std"] + t["mean"]
            out[t["name"]] = y
        return out


def load(folder="."):
    folder = Path(folder)
    meta = json.loads((folder / "multitask.json").read_text(encoding="utf-8"))
    model = MultiTask(meta)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), meta


def preprocess(path, meta):
    """Resize the short side to floor(size / crop_pct), centre-crop size, (x/255 - mean) / std, NCHW."""
    p = meta["preprocessing"]
    size = p["image_size"]
    img = Image.open(path).convert("RGB")
    scale = math.floor(size / p["crop_pct"])
    w, h = img.size
    nw, nh = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    img = img.resize((nw, nh), {"bilinear": 2, "bicubic": 3, "nearest": 0}.get(p["interpolation"], 3))
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    x = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    x = (x - np.array(p["mean"], np.float32)) / np.array(p["std"], np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]


def predict(model, meta, path):
    with torch.no_grad():
        out = model(preprocess(path, meta))
    answers = {}
    for t in meta["tasks"]:
        y = out[t["name"]][0]
        if t["type"] == "categorical":
            p = y.softmax(0)
            answers[t["name"]] = (t["classes"][int(p.argmax())], float(p.max()))
        elif t["type"] == "multilabel":
            answers[t["name"]] = [c for c, q in zip(t["classes"], y.sigmoid().tolist()) if q > 0.5]
        else:
            answers[t["name"]] = float(y[0])
    return answers


if __name__ == "__main__":
    model, meta = load(Path(__file__).parent)
    for f in sys.argv[1:]:
        print(f, predict(model, meta, f))
'''

_CHECK = r'''
import json, sys
import numpy as np
assert "tlstudio" not in sys.modules
out_dir, fmt = sys.argv[1], sys.argv[2]
x = np.load(out_dir + "/.check_x.npy")
names = json.load(open(out_dir + "/multitask.json"))["output_names"]
if fmt in ("onnx", "int8"):
    import onnxruntime as ort
    s = ort.InferenceSession(out_dir + ("/model.onnx" if fmt == "onnx" else "/model.int8.onnx"),
                             providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"input": x})))
elif fmt == "torchscript":
    import torch
    m = torch.jit.load(out_dir + "/model.torchscript.pt")
    with torch.no_grad():
        got = {k: v.numpy() for k, v in m(torch.from_numpy(x)).items()}
else:
    sys.path.insert(0, out_dir)
    import torch
    from load_multitask import load
    m, meta = load(out_dir)
    with torch.no_grad():
        got = {k: v.numpy() for k, v in m(torch.from_numpy(x)).items()}
assert "tlstudio" not in sys.modules
print(json.dumps({"names": sorted(got), "out": {k: np.asarray(got[k]).tolist() for k in names}}))
'''


def _fresh_check(out: Path, fmt: str, want: dict[str, np.ndarray], outputs: dict | None = None) -> float:
    """Run the export in a new Python process without TL Studio; max abs difference to PyTorch
    (``outputs`` receives what the fresh process computed)."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", _CHECK, str(out), fmt], capture_output=True, text=True, timeout=600,
                       cwd=str(out), env=env)
    if r.returncode != 0:
        raise UserError(f"{fmt}: the fresh-process check failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    got = json.loads(r.stdout.strip().splitlines()[-1])
    if sorted(got["names"]) != sorted(want):
        raise UserError(f"{fmt}: outputs {got['names']} are not the task names {sorted(want)}")
    if outputs is not None:
        outputs.update({k: np.asarray(v) for k, v in got["out"].items()})
    return float(max(np.abs(np.asarray(got["out"][k]) - v).max() for k, v in want.items()))


def export(run_dir: str | Path, formats=("safetensors", "onnx", "torchscript"), out_dir: str | Path | None = None,
           progress=None, **_: Any) -> dict[str, Any]:
    import torch

    from tlstudio.core.atomic import atomic_save_safetensors, atomic_write_json, atomic_write_text
    from tlstudio.core.evaluation.evaluate import load_batch
    from tlstudio.core.export.formats import quiet_exporters, fixed_size_model, preprocessing_meta

    run_dir = Path(run_dir)
    model, info, config = load_model(run_dir)
    formats = list(FORMATS) if "all" in formats else list(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise UserError(f"multi-task runs export {', '.join(FORMATS)}; not {', '.join(bad)}")
    if "int8" in formats and "onnx" not in formats:
        formats.insert(formats.index("int8"), "onnx")  # quantised from the fp32 ONNX
    out = Path(out_dir) if out_dir else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    spec = info.model
    tasks = info.label_schema["tasks"]
    names = [t["name"] for t in tasks]
    pre = preprocessing_meta(spec)
    pre.update(output_name=None, classes=None, output="one output per task (see tasks)")
    meta = {"backbone": spec.backbone, "sharing": "soft" if model.soft else "hard", "tasks": tasks,
            "keys": model.keys, "output_names": names, "input_name": "input", "preprocessing": pre}
    atomic_write_json(out / "multitask.json", meta)
    split = runs.read_split(run_dir)
    paths = [s.path for s in (split.val or split.train)][:4]
    x, _, _ = load_batch(paths, spec)
    if len(x) < 2:
        x = np.random.default_rng(0).standard_normal((2, 3, spec.image_size, spec.image_size)).astype(np.float32)
    np.save(out / ".check_x.npy", x)
    wrapped = Unscaled.make(fixed_size_model(model, spec.image_size) if not model.soft else model)
    with torch.no_grad():
        want = {n: r.numpy() for n, r in zip(names, wrapped(torch.from_numpy(x)))}
    report: dict[str, Any] = {"out_dir": str(out), "formats": {}, "errors": {}, "tasks": names}
    for i, fmt in enumerate(formats):
        if progress:
            progress(f"exporting {fmt}", i, len(formats) + 1)
        quiet = quiet_exporters()
        quiet.__enter__()  # torch's deprecation notices of jit/onnx export are not the user's business
        try:
            if fmt == "safetensors":
                path = out / "model.safetensors"
                atomic_save_safetensors(path, model.state_dict(), metadata={"tlstudio_multitask": json.dumps(meta)})
                atomic_write_text(out / "load_multitask.py", LOADER)
            elif fmt == "onnx":
                path = out / "model.onnx"
                axes = {"input": {0: "batch"}, **{n: {0: "batch"} for n in names}}
                torch.onnx.export(wrapped, (torch.from_numpy(x[:2]),), str(path), dynamo=False, opset_version=17,
                                  input_names=["input"], output_names=names, dynamic_axes=axes)
            elif fmt == "int8":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                if "onnx" not in report["formats"]:
                    raise UserError("int8: needs the fp32 ONNX export, which failed")
                path = out / "model.int8.onnx"
                quantize_dynamic(str(out / "model.onnx"), str(path), weight_type=QuantType.QInt8)
                got: dict[str, np.ndarray] = {}
                diff = _fresh_check(out, fmt, want, got)
                agree = {t["name"]: float((got[t["name"]].argmax(1) == want[t["name"]].argmax(1)).mean())
                         for t in tasks if t["type"] == "categorical"}
                report["formats"][fmt] = {"path": str(path), "bytes": path.stat().st_size, "max_abs_diff": diff,
                                          "checked_in_fresh_process": True, "top1_agreement": agree,
                                          "method": "onnxruntime dynamic quantisation (int8 weights)"}
                continue
            else:
                path = out / "model.torchscript.pt"

                class _Dict(torch.nn.Module):
                    def __init__(self, m, names):
                        super().__init__()
                        self.m, self.names = m, names

                    def forward(self, x):
                        return dict(zip(self.names, self.m(x)))

                traced = torch.jit.trace(_Dict(wrapped, names), torch.from_numpy(x[:2]), strict=False, check_trace=False)
                torch.jit.save(traced, str(path), _extra_files={"tlstudio.json": json.dumps(meta)})
            diff = _fresh_check(out, fmt, want)
            if not diff < TOLERANCE:
                raise UserError(f"{fmt}: differs from PyTorch by {diff:.2e} in a fresh process")
            report["formats"][fmt] = {"path": str(path), "bytes": path.stat().st_size, "max_abs_diff": diff,
                                      "checked_in_fresh_process": True}
        except Exception as exc:  # noqa: BLE001 - report it, go on with the others
            report["errors"][fmt] = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        finally:
            quiet.__exit__(None, None, None)
    (out / ".check_x.npy").unlink(missing_ok=True)
    report["model_card"] = str(write_card(run_dir, out, info, meta, report))
    atomic_write_json(out / "export_report.json", report)
    return report


def write_card(run_dir: Path, out: Path, info, meta: dict, report: dict) -> Path:
    from tlstudio.core.atomic import atomic_write_text

    mt = info.extra.get("multitask", {})
    per = mt.get("per_task", {})
    p = meta["preprocessing"]
    lines = [f"# {info.name}: multi-task model ({len(meta['tasks'])} tasks)", "",
             f"Backbone `{meta['backbone']}`, {meta['sharing']} parameter sharing, weighting "
             f"{mt.get('weighting', 'equal')}{' + PCGrad' if mt.get('pcgrad') else ''}.", "", "## Tasks", "",
             "| task | type | classes | validation |", "|---|---|---|---|"]
    for t in meta["tasks"]:
        d = per.get(t["name"], {})
        score = (f"accuracy {d['accuracy']:.1%}, macro-F1 {d['macro_f1']:.3f}" if "accuracy" in d
                 else f"MAE {d['mae']:.4g}, R^2 {d['r2']:.3f}" if "mae" in d else "")
        classes = ", ".join(t["classes"]) if t["classes"] else f"numeric (mean {t.get('mean'):.4g}, std {t.get('std'):.4g})"
        lines.append(f"| {t['name']} | {t['type']} | {classes} | {score} |")
    base = mt.get("baseline")
    if base:
        lines += ["", "## Multi-task vs separate models", "", "| task | multi-task | separate | delta (points) |",
                  "|---|---|---|---|"]
        for r in base["rows"]:
            lines.append(f"| {r['task']} | {r['mtl']:.3f} | {r['single']:.3f} | {r['delta_points']:+.1f}"
                         f"{' (negative transfer)' if r['negative'] else ''} |")
        lines.append(f"\nOverall delta-m: {base['delta_m']:+.2f} %")
    lines += ["", "## Preprocessing", "",
              f"RGB, short side resized to floor({p['image_size']} / {p['crop_pct']}) ({p['interpolation']}), "
              f"centre crop {p['image_size']}x{p['image_size']}, x/255, minus mean {p['mean']}, divided by std {p['std']}; "
              "NCHW float32, input name `input`.", "", "## Outputs", "",
              "One named output per task (ONNX output names, TorchScript dict keys, `load_multitask.py` dict keys): "
              "logits for categorical tasks (softmax for probabilities), logits for multi-label tasks (sigmoid, "
              "> 0.5 = present), the value in the column's units for numeric tasks.", "", "## Files", ""]
    for fmt, d in report["formats"].items():
        lines.append(f"- `{Path(d['path']).name}` ({fmt}, {d['bytes'] / 2**20:.1f} MB; checked in a fresh process, "
                     f"max difference {d['max_abs_diff']:.1e})")
    if "safetensors" in report["formats"]:
        lines.append("- `load_multitask.py`: rebuilds the model from model.safetensors (torch + timm), "
                     "`python load_multitask.py image.jpg`")
    for fmt, e in report["errors"].items():
        lines.append(f"- {fmt}: failed: {e}")
    path = out / "MODEL_CARD.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
