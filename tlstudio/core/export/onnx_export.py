"""fp32 ONNX export: dynamic batch, preprocessing in the model's metadata, checked against PyTorch
with onnxruntime on a batch of 1 and a full batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tlstudio.core.export.common import (
    FP32_TOLERANCE,
    ONNX_FILE,
    ONNX_OPSET,
    ExportError,
    _max_diff,
    _ort_forward,
    _ort_session,
    quiet_exporters,
    _size,
    fixed_size_model,
    preprocessing_meta,
)
from tlstudio.core.runs.folder import ModelSpec


def export_onnx(model, spec: ModelSpec, out: Path, check_x: np.ndarray, filename: str = ONNX_FILE) -> dict[str, Any]:
    import onnx
    import torch

    path = out / filename
    tmp = out / f".{filename}.tmp"
    dummy = torch.from_numpy(check_x[:2].copy())
    traced_model = fixed_size_model(model, spec.image_size)
    with quiet_exporters():
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
