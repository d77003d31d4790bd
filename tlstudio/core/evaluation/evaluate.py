"""Evaluation and prediction with a trained run: metrics on its validation split or a folder,
top-k predictions for files and folders.

The pieces live beside this module: `preprocessing` (the one pixel pipeline of evaluation,
prediction and the export checks), `metrics` (EvalReport from probabilities) and `forward`
(a model as a numpy forward, latency).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlstudio.core.errors import UserError
# measure_latency, measure_forward_latency, preprocess and _load_rgb are not used here: tasks,
# export and explain import them from this module
from tlstudio.core.evaluation.forward import (  # noqa: F401
    Forward,
    measure_forward_latency,
    measure_latency,
    softmax,
    torch_forward,
)
from tlstudio.core.evaluation.metrics import EvalReport, report_from_probs
from tlstudio.core.evaluation.preprocessing import _load_rgb, load_batch, preprocess  # noqa: F401
from tlstudio.core.runs.folder import EVAL_JSON, ModelSpec


class EvalError(UserError):
    """Nothing to evaluate or predict (no images, wrong classes, missing run files)."""


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class, probability), most likely first
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "top": [[c, p] for c, p in self.top], "error": self.error}


# --------------------------------------------------------------------------- evaluation


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
