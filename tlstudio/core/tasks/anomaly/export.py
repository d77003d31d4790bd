"""Exporting an anomaly run: ONNX and TorchScript models that take a preprocessed image and
return the normalised score and anomaly map (bank or Gaussians baked in as constants), plus a
sidecar JSON, a model card and a standalone onnxruntime script. Nothing to re-enter: the
threshold is 0.5 on the score, and the preprocessing is written down in full.

The ONNX export is checked twice: in this process against PyTorch, and in a fresh Python
process that imports only numpy, Pillow and onnxruntime (the shipped script), on real images.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tlstudio.core.export.common import quiet_exporters

from tlstudio.core.errors import UserError

ONNX_FILE = "anomaly.onnx"
TS_FILE = "anomaly.torchscript.pt"
SIDECAR = "anomaly.json"
CARD = "MODEL_CARD.md"
SCRIPT = "predict_onnx.py"
# normalised score/map units (threshold 0.5), relative to the values' size when above 1. Patch
# distances are square roots of float32 sums: near zero, another summation order (onnxruntime vs
# torch, other thread counts) moves them by up to ~1.3e-3 (measured); a verdict needs far less
TOLERANCE = 5e-3
SUPPORTED = ("onnx", "torchscript")

_SCRIPT = '''"""Score images with the exported anomaly model: numpy, Pillow and onnxruntime only.
usage: python predict_onnx.py IMAGE [IMAGE ...]   (prints JSON lines: path, score, verdict)"""
import json, os, sys
import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
META = json.load(open(os.path.join(HERE, "anomaly.json"), encoding="utf-8"))
P = META["preprocessing"]
FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def preprocess(path):
    with Image.open(path) as im:
        im.seek(0)
        im = ImageOps.exif_transpose(im).convert("RGB")
        im = im.resize((P["image_size"], P["image_size"]), FILTERS[P["interpolation"]])
    x = np.asarray(im, dtype=np.float32) / 255.0
    x = (x - np.asarray(P["mean"], np.float32)) / np.asarray(P["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


def main(paths):
    sess = ort.InferenceSession(os.path.join(HERE, META["onnx_file"]), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for p in paths:
        score, amap = sess.run(None, {name: preprocess(p)})
        s = float(score[0])
        print(json.dumps({"path": p, "score": s, "verdict": "anomaly" if s > 0.5 else "normal",
                          "map_max": float(amap.max())}))
    print(json.dumps({"torch_imported": "torch" in sys.modules}))


if __name__ == "__main__":
    main(sys.argv[1:])
'''


def sidecar(info, meta: dict, onnx_file: str | None) -> dict[str, Any]:
    spec = info.model
    return {
        "task": "anomaly", "producer": "TL Studio", "backbone": spec.backbone, "method": meta["method"],
        "onnx_file": onnx_file, "torchscript_file": TS_FILE,
        "input": {"name": "input", "shape": [1, 3, spec.image_size, spec.image_size],
                  "layout": "NCHW, RGB, float32, (pixel/255 - mean) / std"},
        "outputs": {"score": "(batch,) normalised image score, 0..1; above 0.5 = anomaly",
                    "anomaly_map": "(batch, 1, H, W) normalised per-pixel score at the input size, 0.5 = threshold"},
        "preprocessing": {"image_size": spec.image_size, "resize": "whole image squashed to image_size x image_size "
                          "(no crop), EXIF orientation applied, RGB", "interpolation": spec.interpolation,
                          "mean": list(spec.mean), "std": list(spec.std)},
        "threshold": {"score": 0.5, "raw": meta["threshold"], "mode": meta.get("threshold_mode"),
                      "false_alarm_rate": meta.get("false_alarm_rate"),
                      "f1_optimal_raw": meta.get("f1_threshold")},
        "normalisation": {"formula": "score = 1 / (1 + exp(-3 * (raw - threshold_raw) / scale))",
                          "threshold_raw": meta["threshold"], "scale": meta["scale"],
                          "raw": "largest distance of a patch to normal patches (PatchCore) or Mahalanobis (PaDiM)"},
        "metrics": dict(getattr(info, "metrics", {}) or {}),
        "bank_size": meta.get("bank_size"), "feature_stages": meta["indices"],
    }


def _card(info, side: dict, report: dict) -> str:
    m = side["metrics"]
    metric_lines = "\n".join(f"| {k} | {v:.4f} |" for k, v in m.items() if isinstance(v, (int, float))) or "| - | - |"
    files = "\n".join(f"- `{Path(d['path']).name}` ({d['bytes'] / 1e6:.1f} MB), checked: max difference "
                      f"{d['max_abs_diff']:.1e}" for d in report["formats"].values())
    p = side["preprocessing"]
    return f"""# Anomaly detector: {info.name}

Learned from {info.data.get('n_train', '?')} normal images ({side['method']} on {side['backbone']} features,
memory bank {side.get('bank_size') or '-'} patches). No defects were needed to train it.

## Use
- Input: RGB image squashed to {p['image_size']} x {p['image_size']} ({p['interpolation']}), then
  `(pixel / 255 - mean) / std` with mean {p['mean']} and std {p['std']}, NCHW float32.
- Outputs: `score` (one per image) and `anomaly_map` (per pixel). **Score above 0.5 = anomaly.**
  The threshold is built in: nothing to set.
- `python predict_onnx.py image.png` (numpy, Pillow, onnxruntime only) prints score and verdict.

## Threshold
Set at a false-alarm rate of {side['threshold']['false_alarm_rate']} on held-out good images
(mode: {side['threshold']['mode']}); raw threshold {side['threshold']['raw']:.6g}, scale {side['normalisation']['scale']:.6g}:
`{side['normalisation']['formula']}`.

## Measured on the run's test images
| metric | value |
|---|---|
{metric_lines}

## Files
{files}
- `anomaly.json`: all of the above, machine-readable.
"""


def _check_images(run_dir: Path, n: int = 6) -> list[str]:
    from tlstudio.core.runs.folder import RunError, read_split

    try:
        split = read_split(run_dir)
    except (OSError, RunError):
        return []
    rows = [s.path for s in split.test if s.label == 1][: n // 2] + [s.path for s in split.val + split.test]
    seen, out = set(), []
    for p in rows:
        if p not in seen and Path(p).is_file():
            seen.add(p)
            out.append(p)
    return out[:n]


def export(run_dir, formats=None, out_dir=None, progress: Callable | None = None, *, check_process: bool = True,
           model_card: bool = True) -> dict:
    """Registry ``export``. ``formats``: "onnx", "torchscript", "all" (default: both); the
    sidecar JSON is always written (it carries the threshold), the card unless ``model_card``
    is False."""
    import torch

    from tlstudio.core.atomic import atomic_write_json, atomic_write_text
    from tlstudio.core.evaluation.evaluate import load_batch
    from tlstudio.core.tasks.anomaly.store import load_model

    run_dir = Path(run_dir)
    wanted = set(formats or ["all"])
    if "all" in wanted:
        wanted = set(SUPPORTED)
    unsupported = sorted(wanted - set(SUPPORTED))
    wanted &= set(SUPPORTED)
    if not wanted:
        raise UserError(f"anomaly runs export to {' and '.join(SUPPORTED)}, not {', '.join(unsupported)}")
    model, info, meta = load_model(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    spec = info.model
    paths = _check_images(run_dir)
    real, _, _ = load_batch(paths, spec) if paths else (np.zeros((0, 3, spec.image_size, spec.image_size), np.float32), 0, 0)
    rnd = np.random.default_rng(0).standard_normal((max(1, 3 - len(real)), 3, spec.image_size, spec.image_size))
    x = np.concatenate([real, rnd.astype(np.float32)]).astype(np.float32)
    with torch.inference_mode():
        want_s, want_m = (t.numpy() for t in model(torch.from_numpy(x)))
    report: dict[str, Any] = {"run_dir": str(run_dir), "out_dir": str(out), "formats": {}, "errors": {},
                              "skipped": {f: "not available for anomaly runs" for f in unsupported}}
    steps = sorted(wanted) + ["card"]

    def step(i, msg):
        if progress:
            progress(msg, i, len(steps))

    for i, fmt in enumerate(sorted(wanted)):
        step(i, f"exporting {fmt}")
        try:
            report["formats"][fmt] = (_onnx if fmt == "onnx" else _torchscript)(model, x, want_s, want_m, out)
        except UserError as exc:
            report["errors"][fmt] = str(exc)
        except Exception as exc:  # noqa: BLE001 - an exporter failure: reported per format, others go on
            report["errors"][fmt] = f"{type(exc).__name__}: {exc}"
    step(len(steps) - 1, "writing the model card")
    side = sidecar(info, meta, ONNX_FILE if "onnx" in report["formats"] else None)
    atomic_write_json(out / SIDECAR, side)
    if "onnx" in report["formats"]:
        atomic_write_text(out / SCRIPT, _SCRIPT)
        if check_process and paths:
            report["formats"]["onnx"]["fresh_process"] = fresh_process_check(out, paths, want_s[: len(paths)])
    report["sidecar"] = str(out / SIDECAR)
    report["model_card"] = None
    if model_card:
        atomic_write_text(out / CARD, _card(info, side, report))
        report["model_card"] = str(out / CARD)
    step(len(steps), "done")
    return report


def _diffs(got_s, got_m, want_s, want_m) -> float:
    def one(got, want) -> float:
        return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))

    return max(one(got_s, want_s), one(got_m, want_m))


def _onnx(model, x, want_s, want_m, out: Path) -> dict:
    import onnx
    import onnxruntime as ort
    import torch

    path = out / ONNX_FILE
    tmp = out / f".{ONNX_FILE}.tmp"
    with quiet_exporters():
        torch.onnx.export(model, (torch.from_numpy(x[:1].copy()),), str(tmp), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["score", "anomaly_map"],
                          dynamic_axes={"input": {0: "batch"}, "score": {0: "batch"}, "anomaly_map": {0: "batch"}},
                          do_constant_folding=True)
    m = onnx.load(str(tmp))
    e = m.metadata_props.add()
    e.key, e.value = "tlstudio_task", "anomaly"
    m.producer_name = "TL Studio"
    onnx.checker.check_model(m)
    onnx.save(m, str(tmp))
    tmp.replace(path)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    d1 = _diffs(*sess.run(None, {"input": x[:1]}), want_s[:1], want_m[:1])
    dn = _diffs(*sess.run(None, {"input": x}), want_s, want_m)
    diff = max(d1, dn)
    if not diff < TOLERANCE:
        raise UserError(f"{path}: onnxruntime differs from the app by {diff:.2e} (> {TOLERANCE:g})")
    return {"path": str(path), "bytes": path.stat().st_size, "max_abs_diff": diff, "checked_images": len(x)}


def _torchscript(model, x, want_s, want_m, out: Path) -> dict:
    import torch

    from tlstudio.core.atomic import atomic_write

    path = out / TS_FILE
    with quiet_exporters(), torch.no_grad():
        traced = torch.jit.trace(model, torch.from_numpy(x[:1].copy()), check_trace=False)
        atomic_write(path, lambda tmp: torch.jit.save(traced, tmp))
        loaded = torch.jit.load(str(path), map_location="cpu")
        got = [t.numpy() for t in loaded(torch.from_numpy(x))]
    diff = _diffs(got[0], got[1], want_s, want_m)
    if not diff < TOLERANCE:
        raise UserError(f"{path}: TorchScript differs from the app by {diff:.2e} (> {TOLERANCE:g})")
    return {"path": str(path), "bytes": path.stat().st_size, "max_abs_diff": diff, "method": "trace"}


def fresh_process_check(out: Path, paths: list[str], want_scores) -> dict:
    """Run the shipped script in a new Python process (no TL Studio, no torch) on real images
    and compare its scores with the app's."""
    try:
        proc = subprocess.run([sys.executable, str(out / SCRIPT), *paths], capture_output=True, text=True,
                              timeout=300, cwd=str(out))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"ok": False, "error": str(exc)}
    if proc.returncode != 0:
        return {"ok": False, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    scores = np.array([r["score"] for r in lines if "score" in r])
    torch_imported = bool(lines[-1].get("torch_imported")) if lines else None
    diff = float(np.abs(scores - np.asarray(want_scores)).max()) if len(scores) == len(want_scores) else float("inf")
    return {"ok": diff < TOLERANCE and not torch_imported, "max_abs_diff": diff, "images": len(scores),
            "torch_imported": torch_imported}
