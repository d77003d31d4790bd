"""Exports of a trained run that work without TL Studio, each verified after writing.

OUT_DIR/
  model.safetensors      timm state dict (+ preprocessing in the safetensors metadata)
  config.json            timm/Hugging Face model config: `timm.create_model("local-dir:OUT_DIR",
                         pretrained=True)` or `timm.create_model(arch, num_classes=N, pretrained=True,
                         pretrained_cfg_overlay=dict(file=".../model.safetensors", num_classes=N))`
  model.onnx             fp32, dynamic batch, input "input" NCHW, output "logits";
                         preprocessing in metadata_props["tlstudio"] (JSON)
  model.int8.onnx        int8: onnxruntime static QDQ (per-channel weights) calibrated on training
                         images; of several configurations the first within INT8_TOLERANCE of fp32
                         validation accuracy is kept (export_report.json lists them); else dynamic
  model.torchscript.pt   torch.jit.trace; preprocessing in the extra file "tlstudio.json"
  preprocessing.json     classes, input size, mean/std, interpolation, crop: what every export needs
  export_report.json     ExportReport: sizes, max abs differences to PyTorch, int8 vs fp32
  MODEL_CARD.md (+ PNGs) written by model_card.write_model_card
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlstudio.core.errors import UserError
from tlstudio.core.runs.folder import ModelSpec, RunInfo

FORMATS = ("safetensors", "onnx", "torchscript", "int8")
ONNX_OPSET = 17
FP32_TOLERANCE = 1e-4  # max abs logit difference accepted between an fp32 export and PyTorch
PREPROCESSING_JSON = "preprocessing.json"
REPORT_JSON = "export_report.json"
ONNX_FILE, INT8_FILE, TS_FILE, ST_FILE = "model.onnx", "model.int8.onnx", "model.torchscript.pt", "model.safetensors"

Progress = Callable[[str, int, int], None]  # (message, step, steps)


class ExportError(UserError):
    """An export could not be written or failed its check. The message names the file."""


@dataclass
class ExportReport:
    run_dir: str
    out_dir: str
    formats: dict[str, dict[str, Any]] = field(default_factory=dict)  # per format: path, bytes, checks
    int8: dict[str, Any] | None = None  # {"fp32": {...}, "int8": {...}}: size_bytes, latency_ms, accuracy
    preprocessing: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # format -> why it failed
    model_card: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def preprocessing_meta(spec: ModelSpec) -> dict[str, Any]:
    """What inference needs besides the weights; stored next to and inside every export."""
    return {
        "backbone": spec.backbone,
        "classes": list(spec.classes),
        "num_classes": spec.num_classes,
        "image_size": spec.image_size,
        "input_shape": [1, 3, spec.image_size, spec.image_size],
        "input_name": "input",
        "output_name": "logits",
        "layout": "NCHW, RGB, float32, (pixel/255 - mean) / std",
        "mean": list(spec.mean),
        "std": list(spec.std),
        "interpolation": spec.interpolation,
        "crop_pct": spec.crop_pct,
        "crop_mode": spec.crop_mode,
        "resize": "short side to floor(image_size / crop_pct), then center crop image_size",
        "output": "logits; softmax for probabilities",
        "timm": (f'timm.create_model("{spec.backbone}", num_classes={spec.num_classes}, pretrained=True, '
                 f'pretrained_cfg_overlay=dict(file="model.safetensors", num_classes={spec.num_classes}))'),
    }


# --------------------------------------------------------------------------- helpers


@contextmanager
def _quiet():
    """Exporters warn (and log to the root logger) about their own internals and deprecations;
    those are not the user's problem."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _check_inputs(spec: ModelSpec, samples: Sequence, n: int = 8, seed: int = 0) -> np.ndarray:
    """Real preprocessed images when the run has some, plus random ones (covers any input)."""
    from tlstudio.core.evaluation.evaluate import load_batch

    s = spec.image_size
    real = np.zeros((0, 3, s, s), np.float32)
    if samples:
        real, _, _ = load_batch([x.path for x in list(samples)[:n]], spec)
    rnd = np.random.default_rng(seed).standard_normal((max(2, n - len(real)), 3, s, s)).astype(np.float32)
    return np.concatenate([real, rnd]).astype(np.float32)


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(x)).float().numpy()


def _ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_forward(sess) -> Callable[[np.ndarray], np.ndarray]:
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _run_samples(run_dir: Path) -> tuple[list, list]:
    """(train, val) samples of the run's split; empty lists when there is no usable split."""
    from tlstudio.core.runs.folder import RunError, read_split

    try:
        split = read_split(run_dir)
    except (OSError, RunError):  # exports still work without the split (no accuracy then)
        return [], []
    exists = lambda ss: [s for s in ss if Path(s.path).is_file()]  # noqa: E731 - data may have moved
    return exists(split.train), exists(split.val) or exists(split.test)


# --------------------------------------------------------------------------- formats


def export_safetensors(model, spec: ModelSpec, out: Path, info: RunInfo | None = None) -> dict[str, Any]:
    """model.safetensors + timm's config.json (loads with timm alone, head included)."""
    from tlstudio.core.atomic import atomic_save_safetensors, atomic_write_json

    meta = preprocessing_meta(spec)
    atomic_save_safetensors(out / ST_FILE, model.state_dict(),
                            metadata={"format": "pt", "tlstudio": json.dumps(meta)})
    cfg = timm_config(model, spec)
    if info is not None:
        cfg["tlstudio"] = {"run": info.name, "versions": info.versions}
    atomic_write_json(out / "config.json", cfg)
    return {"path": str(out / ST_FILE), "config": str(out / "config.json"), "bytes": _size(out / ST_FILE),
            "load_with": f'timm.create_model("local-dir:{out}", pretrained=True)'}


def timm_config(model, spec: ModelSpec) -> dict[str, Any]:
    """The config.json format of timm's Hugging Face exports, with our preprocessing and labels."""
    data_cfg = {
        "input_size": (3, spec.image_size, spec.image_size),
        "mean": tuple(spec.mean), "std": tuple(spec.std),
        "interpolation": spec.interpolation, "crop_pct": spec.crop_pct, "crop_mode": spec.crop_mode,
    }
    try:  # timm's own writer records the model's reconstruction arguments too
        import tempfile

        from timm.models._hub import save_config_for_hf

        with tempfile.TemporaryDirectory() as td, _quiet():
            p = Path(td) / "config.json"
            save_config_for_hf(model, str(p), model_config={"label_names": list(spec.classes)},
                               data_config=data_cfg)
            cfg = json.loads(p.read_text())
    except Exception:  # noqa: BLE001 - older timm: write the same format by hand
        pc = {k: v for k, v in getattr(model, "pretrained_cfg", {}).items()
              if isinstance(v, (str, int, float, bool, list, tuple, type(None)))}
        pc.pop("hf_hub_id", None)
        pc.pop("url", None)
        pc.pop("file", None)
        pc.pop("label_names", None)
        cfg = {"architecture": spec.backbone, "num_classes": spec.num_classes,
               "num_features": getattr(model, "num_features", None), "label_names": list(spec.classes),
               "pretrained_cfg": pc}
    pc = cfg.setdefault("pretrained_cfg", {})
    pc.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in data_cfg.items()})
    pc["num_classes"] = spec.num_classes
    pc.pop("test_input_size", None)
    pc.pop("test_crop_pct", None)
    cfg["architecture"] = cfg.get("architecture") or spec.backbone
    cfg["num_classes"] = spec.num_classes
    cfg["label_names"] = list(spec.classes)
    return cfg


def fixed_size_model(model, image_size: int):
    """A copy whose position embeddings are resampled once to `image_size` (size-flexible ViTs
    resample them on every call with an antialiased bicubic op that ONNX has no equivalent for).
    The same model when nothing needs baking."""
    if not (getattr(model, "dynamic_img_size", False) and hasattr(model, "set_input_size")):
        return model
    import copy

    baked = copy.deepcopy(model)
    try:
        with _quiet():
            baked.set_input_size(img_size=image_size)
    except Exception:  # noqa: BLE001 - a family without it: export as is
        return model
    return baked.eval()


def export_onnx(model, spec: ModelSpec, out: Path, check_x: np.ndarray, filename: str = ONNX_FILE) -> dict[str, Any]:
    import onnx
    import torch

    path = out / filename
    tmp = out / f".{filename}.tmp"
    dummy = torch.from_numpy(check_x[:2].copy())
    traced_model = fixed_size_model(model, spec.image_size)
    with _quiet():
        try:
            torch.onnx.export(
                traced_model, (dummy,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True,
            )
        except TypeError:  # torch without the `dynamo` switch: the TorchScript exporter is the default
            torch.onnx.export(
                traced_model, (dummy,), str(tmp), opset_version=ONNX_OPSET,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True,
            )
    m = onnx.load(str(tmp))
    _set_onnx_metadata(m, spec)
    onnx.checker.check_model(m)
    onnx.save(m, str(tmp))
    tmp.replace(path)
    diff = _max_diff(_ort_forward(_ort_session(path)), model, check_x)
    if not diff < FP32_TOLERANCE:
        raise ExportError(f"{path}: onnxruntime differs from PyTorch by {diff:.2e} (> {FP32_TOLERANCE:g})")
    return {"path": str(path), "bytes": _size(path), "opset": ONNX_OPSET, "max_abs_diff": diff,
            "checked_batches": [1, len(check_x)]}


def _set_onnx_metadata(m, spec: ModelSpec) -> None:
    meta = preprocessing_meta(spec)
    props = {"tlstudio": json.dumps(meta), "classes": json.dumps(meta["classes"]),
             "image_size": str(spec.image_size), "mean": json.dumps(meta["mean"]), "std": json.dumps(meta["std"]),
             "interpolation": spec.interpolation, "crop_pct": str(spec.crop_pct), "crop_mode": spec.crop_mode}
    del m.metadata_props[:]
    for k, v in props.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    m.producer_name = "TL Studio"
    m.doc_string = f"{spec.backbone} fine-tuned on {spec.num_classes} classes by TL Studio"


def _max_diff(forward, model, x: np.ndarray) -> float:
    """Max abs logit difference over a batch of 1 and the whole batch (proves the dynamic batch)."""
    want = _torch_logits(model, x)
    d1 = np.abs(forward(x[:1]) - want[:1]).max()
    dn = np.abs(forward(x) - want).max()
    return float(max(d1, dn))


def export_torchscript(model, spec: ModelSpec, out: Path, check_x: np.ndarray) -> dict[str, Any]:
    import torch

    from tlstudio.core.atomic import atomic_write

    path = out / TS_FILE
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(fixed_size_model(model, spec.image_size), torch.from_numpy(check_x[:2].copy()),
                                 check_trace=False)
        extra = {"tlstudio.json": json.dumps(preprocessing_meta(spec))}
        atomic_write(path, lambda tmp: torch.jit.save(traced, tmp, _extra_files=extra))
        loaded = torch.jit.load(str(path), map_location="cpu")

    def fwd(x):
        with torch.no_grad():
            return loaded(torch.from_numpy(x)).float().numpy()

    diff = _max_diff(fwd, model, check_x)
    if not diff < FP32_TOLERANCE:
        raise ExportError(f"{path}: TorchScript differs from PyTorch by {diff:.2e} (> {FP32_TOLERANCE:g})")
    return {"path": str(path), "bytes": _size(path), "max_abs_diff": diff, "method": "trace"}


INT8_TOLERANCE = 0.02  # accuracy points (as a fraction) an int8 candidate may lose against fp32 ONNX
INT8_SELECT_IMAGES = 256  # validation images the int8 candidates are compared on (preloaded once)
INT8_SELECT_BYTES = 200e6  # ... and at most about this much float32 (fewer images for large inputs)


class _Calibration:
    """onnxruntime CalibrationDataReader over preprocessed images (re-readable: rewind)."""

    def __init__(self, batches: list[np.ndarray]):
        self._batches = batches
        self._it = iter([{"input": b} for b in batches])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # some onnxruntime versions call it between passes
        self._it = iter([{"input": b} for b in self._batches])


def _int8_candidates(onnx_path: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, description, quantize_static kwargs), roughly smallest/fastest first. All quantize
    weights per channel (depthwise convs and folded BatchNorm in EfficientNet/MobileNet have
    channel ranges far apart; one scale per tensor wipes out the small channels)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantType

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    convs = [n.name for n in g.node if n.op_type == "Conv"]
    outputs = {o.name for o in g.output}
    head = [n.name for n in g.node if n.op_type in ("Gemm", "MatMul") and set(n.output) & outputs]
    keep = ([convs[0]] if convs else []) + head  # stem conv (sees raw pixels) and the classifier
    sym = {"ActivationSymmetric": True}
    # uint8 activations first: onnxruntime's x86 kernels are fastest with U8S8
    cands = [
        ("minmax", "static QDQ, per-channel weights, uint8 activations (MinMax)",
         dict(calibrate_method=CalibrationMethod.MinMax, activation_type=QuantType.QUInt8)),
        ("minmax_sym", "static QDQ, per-channel weights, symmetric int8 activations (MinMax)",
         dict(calibrate_method=CalibrationMethod.MinMax, activation_type=QuantType.QInt8, extra_options=sym)),
        ("entropy", "static QDQ, per-channel weights, uint8 activations (Entropy calibration)",
         dict(calibrate_method=CalibrationMethod.Entropy, activation_type=QuantType.QUInt8)),
        ("percentile", "static QDQ, per-channel weights, symmetric int8 activations (Percentile 99.999)",
         dict(calibrate_method=CalibrationMethod.Percentile, activation_type=QuantType.QInt8,
              extra_options={**sym, "CalibPercentile": 99.999})),
    ]
    if keep:
        cands.append(("minmax_sym_fp32_ends", "static QDQ as minmax_sym, stem conv and classifier kept fp32",
                      dict(calibrate_method=CalibrationMethod.MinMax, activation_type=QuantType.QInt8,
                           extra_options=sym, nodes_to_exclude=keep)))
    return cands


def _preprocessed(onnx_path: Path, scratch: Path) -> Path:
    """onnxruntime's quant_pre_process (shape inference + graph optimisation: fewer, fused nodes
    to quantize); the original model when it cannot handle it."""
    try:
        from onnxruntime.quantization import quant_pre_process

        pre = scratch / "pre.onnx"
        quant_pre_process(str(onnx_path), str(pre))
        _ort_session(pre)
        return pre
    except Exception:  # noqa: BLE001 - an op the shape inference does not know: quantize as exported
        return onnx_path


def _top1(fwd, x: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([np.asarray(fwd(x[i : i + batch])).argmax(1) for i in range(0, len(x), batch)])


def export_int8(onnx_path: Path, spec: ModelSpec, out: Path, calib: np.ndarray | None,
                select: tuple[np.ndarray, np.ndarray] | None = None,
                tolerance: float = INT8_TOLERANCE) -> dict[str, Any]:
    """int8 ONNX. With calibration images: static QDQ candidates (per-channel weights, several
    activation calibrations, optionally fp32 stem/classifier), each scored on `select`
    (preprocessed validation images, labels); the first (smallest, fully int8 first) whose
    accuracy is within `tolerance` of fp32 ONNX is kept, else the most accurate. Without
    calibration images, or when every static candidate fails: dynamic quantization."""
    import contextlib
    import io
    import shutil
    import tempfile

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic

    path = out / INT8_FILE
    tmp = out / f".{INT8_FILE}.tmp.onnx"
    tried: list[dict[str, Any]] = []
    picked: dict[str, Any] | None = None
    note = ""
    # the quantizer print()s progress and tensor dumps: keep stdout clean (`tlstudio export --json`)
    with _quiet(), contextlib.redirect_stdout(io.StringIO()), \
            tempfile.TemporaryDirectory(prefix=".int8-", dir=out) as td:
        scratch = Path(td)
        if calib is not None and len(calib):
            from onnxruntime.quantization import quantize_static

            src = _preprocessed(onnx_path, scratch)
            batches = [calib[i : i + 1] for i in range(len(calib))]
            x, y = select if select is not None and len(select[0]) else (None, None)
            p32 = acc32 = None
            if x is not None:
                p32 = _top1(_ort_forward(_ort_session(onnx_path)), x)
                acc32 = float((p32 == y).mean())
            for name, desc, kw in _int8_candidates(src):
                cand = scratch / f"{name}.onnx"
                row: dict[str, Any] = {"name": name, "method": desc}
                try:
                    quantize_static(str(src), str(cand), _Calibration(batches), quant_format=QuantFormat.QDQ,
                                    per_channel=True, weight_type=QuantType.QInt8, **kw)
                    fwd = _ort_forward(_ort_session(cand))
                except Exception as exc:  # noqa: BLE001 - an op this configuration cannot handle
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    tried.append(row)
                    continue
                row["bytes"] = _size(cand)
                row["path"] = cand
                tried.append(row)
                if x is None:  # nothing to score on: the first that works
                    picked = row
                    note = f"{name}: no validation images to compare candidates on"
                    break
                p = _top1(fwd, x)
                row["accuracy"] = float((p == y).mean())
                row["agreement"] = float((p == p32).mean())  # same top-1 as fp32 ONNX
                if acc32 - row["accuracy"] <= tolerance + 1e-9:
                    picked = row
                    note = (f"{name}: the first candidate within {100 * tolerance:.0f} accuracy points of fp32 "
                            f"({100 * row['accuracy']:.1f}% vs {100 * acc32:.1f}% on {len(y)} validation images)")
                    break
            scored = [r for r in tried if "accuracy" in r]
            if picked is None and scored:
                picked = max(scored, key=lambda r: (r["accuracy"], r["agreement"], -r["bytes"]))
                note = (f"{picked['name']}: no candidate stays within {100 * tolerance:.0f} accuracy points of fp32 "
                        f"({100 * acc32:.1f}% on {len(y)} validation images); kept the most accurate "
                        f"({100 * picked['accuracy']:.1f}%)")
        if picked is not None:
            shutil.copyfile(picked["path"], tmp)
            method = picked["method"] + f", {len(calib)} calibration images"
        else:
            quantize_dynamic(str(onnx_path), str(tmp), weight_type=QuantType.QInt8)
            method = "dynamic (weights int8, activations quantized at run time)"
            note = note or ("no training images to calibrate on" if calib is None or not len(calib)
                            else "every static configuration failed")
    import onnx

    m = onnx.load(str(tmp))
    _set_onnx_metadata(m, spec)
    onnx.save(m, str(tmp))
    tmp.replace(path)
    for f in out.glob(".*.tmp*"):  # calibration scratch files of onnxruntime
        f.unlink(missing_ok=True)
    _ort_session(path)  # it loads
    for r in tried:
        r.pop("path", None)
    return {"path": str(path), "bytes": _size(path), "method": method,
            "picked": picked["name"] if picked else "dynamic", "note": note, "candidates": tried,
            "tolerance": tolerance}


def compare_int8(model, spec: ModelSpec, out: Path, val: Sequence, *, repeats: int = 10) -> dict[str, Any]:
    """Size, batch-1 latency and validation accuracy of fp32 (PyTorch, ONNX) next to int8."""
    from tlstudio.core.evaluation.evaluate import measure_forward_latency, measure_latency, report_from_probs, run_samples

    rows: dict[str, Any] = {}
    fwds = {"fp32_onnx": _ort_forward(_ort_session(out / ONNX_FILE)),
            "int8_onnx": _ort_forward(_ort_session(out / INT8_FILE))}
    sizes = {"fp32_onnx": _size(out / ONNX_FILE), "int8_onnx": _size(out / INT8_FILE)}
    for name, fwd in fwds.items():
        row = {"size_bytes": sizes[name],
               "latency_ms": 1000 * measure_forward_latency(fwd, spec.image_size, 1, repeats=repeats)}
        if val:
            probs, labels, _, _ = run_samples(fwd, spec, list(val), batch_size=32)
            row["accuracy"] = report_from_probs(probs, labels, spec.classes).accuracy if labels else None
        rows[name] = row
    torch_row = {"latency_ms": 1000 * measure_latency(model, spec.image_size, 1, repeats=repeats)}
    if val:
        from tlstudio.core.evaluation.evaluate import torch_forward

        probs, labels, _, _ = run_samples(torch_forward(model), spec, list(val), batch_size=32)
        torch_row["accuracy"] = report_from_probs(probs, labels, spec.classes).accuracy if labels else None
    rows["fp32_pytorch"] = torch_row
    rows["n_val"] = len(val)
    a, b = rows["fp32_onnx"], rows["int8_onnx"]
    rows["size_ratio"] = b["size_bytes"] / a["size_bytes"] if a["size_bytes"] else None
    rows["speedup"] = a["latency_ms"] / b["latency_ms"] if b["latency_ms"] else None
    if a.get("accuracy") is not None and b.get("accuracy") is not None:
        rows["accuracy_drop"] = a["accuracy"] - b["accuracy"]
    return rows


def _shareable(out: Path) -> None:
    """Atomic writes go through private temp files (mode 0600); exports are meant to be handed
    on, so give them the usual 0644 like any other file the user saves."""
    import os
    import stat

    for f in out.iterdir():
        try:
            if f.is_file() and stat.S_IMODE(f.stat().st_mode) == 0o600:
                os.chmod(f, 0o644)
        except OSError:  # not ours to change (another owner, read-only share): leave it
            pass


# --------------------------------------------------------------------------- the whole export


def export_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    formats: Sequence[str] = FORMATS,
    progress: Progress | None = None,
    *,
    model_card: bool = True,
    calibration_images: int = 64,
    latency_repeats: int = 10,
    max_compare_images: int = 1000,
) -> ExportReport:
    """Write and verify the chosen formats of a run's best weights. One failing format does not
    stop the others; its reason is in ExportReport.errors. Raises ExportError only when nothing
    can be done (no run, unknown format)."""
    from tlstudio.core.atomic import atomic_write_json
    from tlstudio.core.runs.folder import RunError
    from tlstudio.core.models.run_model import load_run_model

    t0 = time.time()
    run_dir = Path(run_dir)
    formats = list(dict.fromkeys(FORMATS if "all" in formats else formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ExportError(f"unknown export format {', '.join(bad) or '(none)'}: choose from {', '.join(FORMATS)}, all")
    if "int8" in formats and "onnx" not in formats:
        formats.insert(formats.index("int8"), "onnx")  # int8 is quantized from the fp32 ONNX
    try:
        model, info = load_run_model(run_dir)
    except RunError as exc:
        raise ExportError(str(exc)) from exc
    spec = info.model
    out = Path(out_dir) if out_dir else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    meta = preprocessing_meta(spec)
    atomic_write_json(out / PREPROCESSING_JSON, meta)
    report = ExportReport(run_dir=str(run_dir), out_dir=str(out), preprocessing=meta)
    train, val = _run_samples(run_dir)
    if len(val) > max_compare_images:  # int8 vs fp32 accuracy on an even subsample: 3 passes over it
        val = val[:: -(-len(val) // max_compare_images)]
    check_x = _check_inputs(spec, val or train)
    steps = len(formats) + (1 if model_card else 0)

    def step(i: int, msg: str) -> None:
        if progress:
            progress(msg, i, steps)

    for i, fmt in enumerate(formats):
        step(i, f"exporting {fmt}")
        try:
            if fmt == "safetensors":
                report.formats[fmt] = export_safetensors(model, spec, out, info)
            elif fmt == "onnx":
                report.formats[fmt] = export_onnx(model, spec, out, check_x)
            elif fmt == "torchscript":
                report.formats[fmt] = export_torchscript(model, spec, out, check_x)
            elif fmt == "int8":
                if "onnx" not in report.formats:
                    raise ExportError(f"{out / INT8_FILE}: needs the fp32 ONNX export, which failed")
                from tlstudio.core.evaluation.evaluate import load_batch

                calib = None
                if train:  # real training images only (eval transform): noise would widen the ranges
                    n = min(calibration_images, len(train))
                    picks = [train[int(i * len(train) / n)] for i in range(n)]  # evenly over the split
                    calib, _, _ = load_batch([s.path for s in picks], spec)
                select = None
                if val:  # the candidates are scored on (a subsample of) the validation images
                    fit = int(INT8_SELECT_BYTES // (3 * 4 * spec.image_size**2))  # held in memory at once
                    n = min(INT8_SELECT_IMAGES, max(32, fit), len(val))
                    chosen = [val[int(i * len(val) / n)] for i in range(n)]
                    x, ok, _ = load_batch([s.path for s in chosen], spec)
                    if ok:
                        select = (x, np.array([chosen[i].label for i in ok]))
                report.formats[fmt] = export_int8(out / ONNX_FILE, spec, out, calib, select)
                report.int8 = compare_int8(model, spec, out, val, repeats=latency_repeats)
                report.int8["method"] = report.formats[fmt]["method"]
                report.int8["note"] = report.formats[fmt]["note"]
        except Exception as exc:  # noqa: BLE001 - report it, go on with the other formats
            report.errors[fmt] = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    if model_card:
        step(len(formats), "writing the model card")
        try:
            from tlstudio.core.export.model_card import write_model_card

            report.model_card = str(write_model_card(run_dir, out, report))
        except Exception as exc:  # noqa: BLE001
            report.errors["model_card"] = f"{type(exc).__name__}: {exc}"
    report.seconds = time.time() - t0
    atomic_write_json(out / REPORT_JSON, report.to_json())
    _shareable(out)
    step(steps, "done")
    return report
