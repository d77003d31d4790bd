"""int8 ONNX: onnxruntime static QDQ quantization calibrated on training images, the first of
several configurations that stays within INT8_TOLERANCE of fp32 accuracy kept; dynamic
quantization when there is nothing to calibrate on. `compare_int8` measures size, latency and
accuracy of fp32 and int8 side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlstudio.core.export.common import INT8_FILE, ONNX_FILE, _ort_forward, _ort_session, quiet_exporters, _size
from tlstudio.core.export.onnx_export import _set_onnx_metadata
from tlstudio.core.runs.folder import ModelSpec

INT8_TOLERANCE = 0.02  # accuracy points (as a fraction) an int8 candidate may lose against fp32 ONNX
INT8_SELECT_IMAGES = 256  # validation images the int8 candidates are compared on (preloaded once)
INT8_SELECT_BYTES = 200e6  # ... and at most about this much float32 (fewer images for large inputs)


class _Calibration:
    """onnxruntime CalibrationDataReader over preprocessed images (re-readable: rewind).
    `on_image(i, n)` is called as each image is handed to the calibrator (progress)."""

    def __init__(self, batches: list[np.ndarray], on_image: Callable[[int, int], None] | None = None):
        self._batches = batches
        self._on_image = on_image
        self.rewind()

    def _feed(self):
        for i, b in enumerate(self._batches):
            if self._on_image is not None:
                self._on_image(i, len(self._batches))
            yield {"input": b}

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # some onnxruntime versions call it between passes
        self._it = self._feed()


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
                tolerance: float = INT8_TOLERANCE,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """int8 ONNX. With calibration images: static QDQ candidates (per-channel weights, several
    activation calibrations, optionally fp32 stem/classifier), each scored on `select`
    (preprocessed validation images, labels); the first (smallest, fully int8 first) whose
    accuracy is within `tolerance` of fp32 ONNX is kept, else the most accurate. Without
    calibration images, or when every static candidate fails: dynamic quantization.
    `progress(message)` hears each step (candidate k of n, calibration image i of m, scoring):
    calibrating takes minutes on big models."""
    say = progress or (lambda message: None)
    last = [0.0]

    def tell(message: str, force: bool = True) -> None:
        import time

        now = time.monotonic()
        if force or now - last[0] > 0.5:  # per-image messages at most twice a second
            last[0] = now
            say(message)

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
    with quiet_exporters(), contextlib.redirect_stdout(io.StringIO()), \
            tempfile.TemporaryDirectory(prefix=".int8-", dir=out) as td:
        scratch = Path(td)
        if calib is not None and len(calib):
            from onnxruntime.quantization import quantize_static

            tell("int8: preparing the graph for quantization")
            src = _preprocessed(onnx_path, scratch)
            batches = [calib[i : i + 1] for i in range(len(calib))]
            x, y = select if select is not None and len(select[0]) else (None, None)
            p32 = acc32 = None
            if x is not None:
                p32 = _top1(_ort_forward(_ort_session(onnx_path)), x)
                acc32 = float((p32 == y).mean())
            cands = _int8_candidates(src)
            for k, (name, desc, kw) in enumerate(cands):
                cand = scratch / f"{name}.onnx"
                row: dict[str, Any] = {"name": name, "method": desc}
                head = f"int8: candidate {k + 1}/{len(cands)} ({name})"
                tell(f"{head}: calibrating on {len(batches)} images")
                on_image = lambda i, n, head=head: tell(f"{head}: calibration image {i + 1}/{n}", False)  # noqa: E731
                try:
                    quantize_static(str(src), str(cand), _Calibration(batches, on_image), quant_format=QuantFormat.QDQ,
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
                tell(f"{head}: scoring on {len(y)} validation images")
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
            tell("int8: dynamic quantization")
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
