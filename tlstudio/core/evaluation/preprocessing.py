"""The one preprocessing path of evaluation, prediction and the export checks.

`preprocess` is plain PIL + numpy and reproduces timm's eval transform (resize the short side to
image_size / crop_pct, center crop, scale to [0, 1], normalise). Exports and the model-card
example use the same recipe, so a prediction made by TL Studio, by onnxruntime and by
TorchScript sees the same pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from tlstudio.core.runs.folder import ModelSpec

# PIL resampling filters by timm's interpolation names.
_PIL_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4, "hamming": 5}


def _load_rgb(path: str):
    from tlstudio.core.data.images import load_rgb

    return load_rgb(path)


def preprocess(img, spec: ModelSpec) -> np.ndarray:
    """PIL RGB image -> float32 array (3, S, S): timm's eval transform, in PIL + numpy."""
    size = spec.image_size
    resample = _PIL_FILTERS.get(spec.interpolation, 3)
    scale = math.floor(size / spec.crop_pct)
    w, h = img.size
    if spec.crop_mode == "squash":
        img = img.resize((scale, scale), resample)
    else:  # "center" (and "border" approximated by it): short side to `scale`
        if w <= h:
            nw, nh = scale, int(scale * h / w)
        else:
            nw, nh = int(scale * w / h), scale
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), resample)
    w, h = img.size
    if w < size or h < size:  # tiny crop_pct > 1 edge case: pad like torchvision
        from PIL import Image

        canvas = Image.new("RGB", (max(w, size), max(h, size)))
        canvas.paste(img, ((canvas.width - w) // 2, (canvas.height - h) // 2))
        img, (w, h) = canvas, canvas.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _load_one(path, spec: ModelSpec):
    try:
        return preprocess(_load_rgb(path), spec), None
    except Exception as exc:  # ImageError, OSError, decompression bomb...: name it, go on
        return None, {"path": str(path), "reason": _reason(exc, path)}


def load_batch(paths: Sequence[str], spec: ModelSpec) -> tuple[np.ndarray, list[int], list[dict[str, str]]]:
    """Decode and preprocess (in threads: PIL releases the GIL while decoding and resizing);
    returns (batch, indices that loaded, failures). The one preprocessing path of evaluation,
    prediction and the export checks."""
    from concurrent.futures import ThreadPoolExecutor

    arrays, ok, failures = [], [], []
    workers = min(len(paths), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="tlstudio-decode") as pool:
            results = list(pool.map(lambda p: _load_one(p, spec), paths))
    else:
        results = [_load_one(p, spec) for p in paths]
    for i, (arr, bad) in enumerate(results):
        if bad is None:
            arrays.append(arr)
            ok.append(i)
        else:
            failures.append(bad)
    s = spec.image_size
    batch = np.stack(arrays) if arrays else np.zeros((0, 3, s, s), np.float32)
    return batch, ok, failures


def _reason(exc: Exception, path) -> str:
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason)
    msg = str(exc) or type(exc).__name__
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg
