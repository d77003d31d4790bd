"""What every export format shares: file names, tolerances, the preprocessing description stored
with each export, and the helpers that run and compare models (PyTorch, onnxruntime)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tlstudio.core.errors import UserError
from tlstudio.core.runs.folder import ModelSpec

ONNX_OPSET = 17
FP32_TOLERANCE = 1e-4  # max abs logit difference accepted between an fp32 export and PyTorch
PREPROCESSING_JSON = "preprocessing.json"
REPORT_JSON = "export_report.json"
ONNX_FILE, INT8_FILE, TS_FILE, ST_FILE = "model.onnx", "model.int8.onnx", "model.torchscript.pt", "model.safetensors"


class ExportError(UserError):
    """An export could not be written or failed its check. The message names the file."""



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


@contextmanager
def quiet_exporters():
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



def fixed_size_model(model, image_size: int):
    """A copy whose position embeddings are resampled once to `image_size` (size-flexible ViTs
    resample them on every call with an antialiased bicubic op that ONNX has no equivalent for).
    The same model when nothing needs baking."""
    if not (getattr(model, "dynamic_img_size", False) and hasattr(model, "set_input_size")):
        return model
    import copy

    baked = copy.deepcopy(model)
    try:
        with quiet_exporters():
            baked.set_input_size(img_size=image_size)
    except Exception:  # noqa: BLE001 - a family without it: export as is
        return model
    return baked.eval()


def _max_diff(forward, model, x: np.ndarray) -> float:
    """Max abs logit difference over a batch of 1 and the whole batch (proves the dynamic batch)."""
    want = _torch_logits(model, x)
    d1 = np.abs(forward(x[:1]) - want[:1]).max()
    dn = np.abs(forward(x) - want).max()
    return float(max(d1, dn))
