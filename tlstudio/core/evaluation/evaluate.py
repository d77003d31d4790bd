"""Evaluation and prediction with a trained run: metrics, confusion matrix, top-k, latency.

The preprocessing here (`preprocess`) is plain PIL + numpy and reproduces timm's eval
transform (resize the short side to image_size / crop_pct, center crop, scale to [0, 1],
normalise). Exports and the model-card example use the same recipe, so a prediction made
by TL Studio, by onnxruntime and by TorchScript sees the same pixels.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlstudio.core.errors import UserError
from tlstudio.core.runs.folder import EVAL_JSON, ModelSpec
from tlstudio.core.runtime.inference import forward_chunked

# PIL resampling filters by timm's interpolation names.
_PIL_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4, "hamming": 5}

Forward = Callable[[np.ndarray], np.ndarray]  # NCHW float32 batch -> logits (N, C)


class EvalError(UserError):
    """Nothing to evaluate or predict (no images, wrong classes, missing run files)."""


# --------------------------------------------------------------------------- reports


@dataclass
class EvalReport:
    accuracy: float
    macro_f1: float
    top_k: dict[int, float]
    per_class: list[dict[str, Any]]  # name, precision, recall, f1, support
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    classes: list[str]
    misclassified: list[dict[str, Any]]  # path, true, pred, confidence (of pred)
    n: int
    failures: list[dict[str, str]] = field(default_factory=list)  # path, reason: files that could not be read
    source: str = ""  # "validation split" or the folder evaluated

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["top_k"] = {str(k): v for k, v in self.top_k.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EvalReport":
        d = dict(d)
        d["top_k"] = {int(k): float(v) for k, v in d.get("top_k", {}).items()}
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class, probability), most likely first
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "top": [[c, p] for c, p in self.top], "error": self.error}


def report_from_probs(
    probs: np.ndarray,
    labels: Sequence[int],
    classes: Sequence[str],
    paths: Sequence[str] | None = None,
    failures: list[dict[str, str]] | None = None,
    source: str = "",
) -> EvalReport:
    """All metrics from class probabilities (N, C) and true labels. Pure numpy."""
    classes = list(classes)
    c = len(classes)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, c)
    labels_a = np.asarray(labels, dtype=np.int64)
    n = int(labels_a.shape[0])
    paths = list(paths) if paths is not None else [""] * n
    pred = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    conf = np.zeros((c, c), dtype=np.int64)
    np.add.at(conf, (labels_a, pred), 1)

    per_class = []
    f1s = []
    for i, name in enumerate(classes):
        tp = int(conf[i, i])
        predicted = int(conf[:, i].sum())
        support = int(conf[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append(
            {"name": name, "precision": precision, "recall": recall, "f1": f1, "support": support}
        )
        if support:  # macro-F1 over classes present in the evaluated data
            f1s.append(f1)

    top_k: dict[int, float] = {}
    if n:
        order = np.argsort(-probs, axis=1, kind="stable")
        for k in (1, 3, 5):
            if k <= c and (k == 1 or k < c):  # top-c is always 1.0: not informative
                hit = (order[:, :k] == labels_a[:, None]).any(axis=1)
                top_k[k] = float(hit.mean())

    mis = []
    for i in np.nonzero(pred != labels_a)[0]:
        mis.append(
            {
                "path": paths[i],
                "true": classes[labels_a[i]],
                "pred": classes[pred[i]],
                "confidence": float(probs[i, pred[i]]),
            }
        )
    mis.sort(key=lambda m: -m["confidence"])  # most confident mistakes first: likely label errors
    return EvalReport(
        accuracy=float((pred == labels_a).mean()) if n else 0.0,
        macro_f1=float(np.mean(f1s)) if f1s else 0.0,
        top_k=top_k,
        per_class=per_class,
        confusion=conf.tolist(),
        classes=classes,
        misclassified=mis,
        n=n,
        failures=list(failures or []),
        source=source,
    )


# --------------------------------------------------------------------------- preprocessing


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


# --------------------------------------------------------------------------- running models


def _device(device):
    """torch.device from "cpu", "cuda:0", a torch.device, or "auto" (cuda, then mps, then cpu)."""
    import torch

    if isinstance(device, torch.device):
        return device
    if str(device or "auto").strip().lower() == "auto":
        from tlstudio.core.runtime.precision import resolve_device

        return resolve_device("auto")
    return torch.device(device)


def torch_forward(model, device="cpu") -> Forward:
    """Wrap a torch model as numpy batch -> logits."""
    import torch

    dev = _device(device)
    model = model.to(dev).eval()

    def fwd(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return forward_chunked(model, torch.from_numpy(x).to(dev)).float().cpu().numpy()

    return fwd


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def run_samples(
    forward: Forward,
    spec: ModelSpec,
    samples: Sequence,
    *,
    batch_size: int = 64,
    progress: Callable[[int, int | None], None] | None = None,
) -> tuple[np.ndarray, list[int], list[str], list[dict[str, str]]]:
    """Probabilities for every readable sample: (probs, labels, paths, failures)."""
    probs, labels, paths, failures = [], [], [], []
    total = len(samples)
    for start in range(0, total, batch_size):
        chunk = samples[start : start + batch_size]
        x, ok, bad = load_batch([s.path for s in chunk], spec)
        failures.extend(bad)
        if ok:
            probs.append(softmax(np.asarray(forward(x), dtype=np.float64)))
            labels.extend(int(chunk[i].label) for i in ok)
            paths.extend(str(chunk[i].path) for i in ok)
        if progress:
            progress(min(start + batch_size, total), total)
    c = spec.num_classes
    return (np.concatenate(probs) if probs else np.zeros((0, c))), labels, paths, failures


def evaluate_model(
    model,
    spec: ModelSpec,
    samples: Sequence,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    source: str = "",
    progress: Callable[[int, int | None], None] | None = None,
) -> EvalReport:
    """Metrics of a torch model on labelled samples (objects with .path and .label)."""
    samples = [s for s in samples if int(s.label) >= 0]
    # the same pixels as predict() and the export checks, whatever the number of images
    probs, labels, paths, failures = run_samples(torch_forward(model, device), spec, samples,
                                                 batch_size=batch_size, progress=progress)
    return report_from_probs(probs, labels, spec.classes, paths, failures, source=source)


def _val_samples(run_dir: Path) -> list:
    from tlstudio.core.runs.folder import SPLIT_JSON, RunError, read_split

    path = run_dir / SPLIT_JSON
    if not path.is_file():
        raise EvalError(f"{run_dir}: no {SPLIT_JSON}: evaluate on a folder instead")
    try:
        split = read_split(run_dir)
    except RunError as exc:
        raise EvalError(str(exc)) from exc
    samples = list(split.val) or list(split.test)
    if not samples:
        raise EvalError(f"{path}: the validation split is empty")
    return samples


def folder_samples(folder: str | Path, classes: list[str]) -> list:
    """Labelled samples of any folder whose classes are (a subset of) the run's classes."""
    from tlstudio.core.data.dataset import match_classes, scan

    report = match_classes(scan(folder), classes)
    if report.presplit:  # a train/val(/test) folder: evaluate on its held-out part
        held = report.presplit.get("test") or report.presplit.get("val")
        if held:
            return list(held)
    if not report.samples:
        raise EvalError(f"{folder}: no usable labelled images")
    return list(report.samples)


def evaluate(
    run_dir: str | Path,
    folder: str | Path | None = None,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    save: bool | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> EvalReport:
    """Evaluate a run's best weights on its validation split (saved to eval.json) or on a folder."""
    from tlstudio.core.models.run_model import load_run_model

    run_dir = Path(run_dir)
    model, info = load_run_model(run_dir)
    if folder is None:
        samples, source = _val_samples(run_dir), "validation split"
    else:
        samples, source = folder_samples(folder, list(info.model.classes)), str(folder)
    rep = evaluate_model(model, info.model, samples, batch_size=batch_size, device=device, source=source,
                         progress=progress)
    if save is None:
        save = folder is None  # the split's report is the run's eval.json; other folders are ad hoc
    if save:
        from tlstudio.core.atomic import atomic_write_json

        atomic_write_json(run_dir / EVAL_JSON, rep.to_json())
    return rep


# --------------------------------------------------------------------------- prediction


def _image_extensions() -> frozenset[str]:
    from tlstudio.core.data.images import IMAGE_EXTENSIONS

    return frozenset(IMAGE_EXTENSIONS)


def expand_paths(paths: Iterable[str | Path]) -> list[str]:
    """Files as given; folders become their images (recursive, sorted, hidden files skipped)."""
    exts = _image_extensions()
    out: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
                for f in sorted(files):
                    if not f.startswith(".") and Path(f).suffix.lower() in exts:
                        out.append(str(Path(root) / f))
        else:
            out.append(str(p))
    return out


def predict_with(
    forward: Forward, spec: ModelSpec, paths: Iterable[str | Path], top_k: int = 5, batch_size: int = 32
) -> list[Prediction]:
    """Top-k predictions for files and folders; unreadable files give an entry with `error`."""
    files = expand_paths(paths)
    k = max(1, min(top_k, spec.num_classes))
    out: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        x, ok, bad = load_batch(chunk, spec)
        errs = {b["path"]: b["reason"] for b in bad}
        probs = softmax(np.asarray(forward(x), dtype=np.float64)) if ok else np.zeros((0, spec.num_classes))
        row = {i: probs[j] for j, i in enumerate(ok)}
        for i, path in enumerate(chunk):
            if i in row:
                order = np.argsort(-row[i], kind="stable")[:k]
                out.append(Prediction(path, [(spec.classes[c], float(row[i][c])) for c in order]))
            else:
                reason = errs.get(str(path), "could not be read")
                if not Path(path).exists():
                    reason = "file not found"
                out.append(Prediction(path, [], reason))
    return out


def predict(
    run_dir: str | Path, paths: Iterable[str | Path], top_k: int = 5, *, device: str = "cpu", batch_size: int = 32
) -> list[Prediction]:
    from tlstudio.core.models.run_model import load_run_model

    model, info = load_run_model(run_dir)
    return predict_with(torch_forward(model, device), info.model, paths, top_k=top_k, batch_size=batch_size)


# --------------------------------------------------------------------------- speed


def measure_latency(
    model, image_size: int, batch_size: int = 1, device: str = "cpu", repeats: int = 10, warmup: int = 2
) -> float:
    """Seconds per image: median of `repeats` timed forward passes after `warmup` untimed ones."""
    import torch

    dev = _device(device)
    model = model.to(dev).eval()
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return float(np.median(times)) / batch_size


def measure_forward_latency(forward: Forward, image_size: int, batch_size: int = 1, repeats: int = 10,
                            warmup: int = 2) -> float:
    """The same for any numpy forward (onnxruntime sessions)."""
    x = np.random.default_rng(0).standard_normal((batch_size, 3, image_size, image_size)).astype(np.float32)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        forward(x)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times)) / batch_size
