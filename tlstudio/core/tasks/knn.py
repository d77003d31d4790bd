"""k-nearest neighbours on pretrained features: a classifier in seconds, with no gradient training.

The smallest complete kind of learning, and the example of the task seam (docs/TASKS.md): a
config, a run generator, evaluate/predict on the run folder, one registry entry. The body's
pooled features of every training image are the "model" (bank.safetensors); an image gets the
classes of its k most similar training images (cosine similarity, similarity-weighted votes).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tlstudio.core.config import DEFAULT_BACKBONE, InitKind
from tlstudio.core.events import Finished, Log, Progress, RunStarted
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks.registry import TaskKind, register

BANK = "bank.safetensors"


class KnnConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    task: Literal["knn"] = "knn"
    data_dir: str
    backbone: str = DEFAULT_BACKBONE
    init: InitKind = "pretrained"
    weights_file: str | None = None
    init_run: str | None = None
    image_size: int | None = Field(None, ge=32, le=1024)
    k: int = Field(5, ge=1, le=100)
    val_fraction: float = Field(0.2, gt=0.0, lt=0.9)
    seed: int = 0
    batch_size: int = Field(32, ge=1, le=1024)
    out_dir: str | None = None

    def to_json_file(self, path: str | Path) -> None:
        from tlstudio.core.atomic import atomic_write_text

        atomic_write_text(path, self.model_dump_json(indent=2))


def _features(body, spec, paths: list[str], stop: threading.Event | None, label: str):
    """L2-normalised pooled features of ``paths`` (the evaluation preprocessing); yields Progress."""
    import torch

    from tlstudio.core.evaluation.evaluate import load_batch

    feats, ok_idx, failures = [], [], []
    for start in range(0, len(paths), 32):
        if stop is not None and stop.is_set():
            from tlstudio.core.training.prepare import RunStopped

            raise RunStopped("Stopped while extracting features; nothing was saved.")
        x, ok, bad = load_batch(paths[start:start + 32], spec)
        failures += bad
        if ok:
            with torch.inference_mode():
                f = body(torch.from_numpy(x)).float()
            feats.append(torch.nn.functional.normalize(f, dim=1).numpy())
            ok_idx += [start + i for i in ok]
        yield Progress(task="features", done=min(start + 32, len(paths)), total=len(paths), message=label)
    dim = feats[0].shape[1] if feats else 0
    return (np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)), ok_idx, failures


def vote(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """Class scores (rows sum to 1) from the k most similar bank rows, weighted by similarity."""
    sims = queries @ bank.T
    k = min(k, bank.shape[0])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    scores = np.zeros((queries.shape[0], n_classes))
    for r in range(queries.shape[0]):
        for j in top[r]:
            scores[r, bank_labels[j]] += max(float(sims[r, j]), 0.0) + 1e-6
    return scores / scores.sum(axis=1, keepdims=True)


def _body(config_or_info: dict[str, Any], *, from_run: Path | None = None):
    """The backbone with no head (pooled features out), from its weight source or the run folder."""
    from tlstudio.core.models.backbones import create_model

    if from_run is not None:
        from tlstudio.core.models.weights import load_state_dict_file

        body = create_model(config_or_info["backbone"], 1, init="scratch")
        body.reset_classifier(0)
        body.load_state_dict(load_state_dict_file(from_run / runs.BEST_WEIGHTS))
    else:
        body = create_model(config_or_info["backbone"], 1, init=config_or_info["init"],
                            weights_file=config_or_info.get("weights_file"), init_run=config_or_info.get("init_run"))
        body.reset_classifier(0)  # pooled features out: the bank's vectors
    return body.eval()


def run(config: KnnConfig, stop: threading.Event | None = None, pause: threading.Event | None = None):
    """Scan, split, extract features of the training images into the bank, score the validation split."""
    from tlstudio.core.runs.guard import claim_out_dir

    t0 = time.time()
    run_dir = Path(config.out_dir) if config.out_dir else runs.fresh_run_dir(f"knn-{config.backbone}")
    lock = claim_out_dir(run_dir)  # a file, someone's folder or a run another job writes: one line
    try:
        return (yield from _fit(config.model_copy(update={"out_dir": str(run_dir)}), run_dir, stop, t0))
    finally:
        lock.release()


def _fit(config: KnnConfig, run_dir: Path, stop, t0: float):
    from tlstudio.core.atomic import atomic_save_safetensors
    from tlstudio.core.data.dataset import make_split, scan
    from tlstudio.core.models.backbones import model_spec

    config.to_json_file(run_dir / runs.CONFIG_JSON)
    yield Log(f"Scanning {config.data_dir}")
    report = scan(config.data_dir, stop=stop)
    report.require_trainable()
    split = make_split(report, val_fraction=config.val_fraction, seed=config.seed)
    runs.write_split(run_dir, split)
    classes = list(report.classes)
    body = _body(config.model_dump())
    spec = model_spec(body, config.backbone, classes, config.image_size)
    info = runs.RunInfo(kind="fit", task="knn", name=run_dir.name, config=config.model_dump(mode="json"), model=spec,
                        data={"root": report.root, "n_train": len(split.train), "n_val": len(split.val)},
                        versions=runs.versions(), seed=config.seed, best_metric="val_acc")
    runs.write_run(run_dir, info)
    yield RunStarted(run_dir=str(run_dir), backbone=config.backbone, device="cpu", precision="fp32",
                     classes=tuple(classes), n_train=len(split.train), n_val=len(split.val), epochs=1,
                     batches_per_epoch=0, trainable_params=0, total_params=sum(p.numel() for p in body.parameters()))
    bank, ok, _ = yield from _features(body, spec, [s.path for s in split.train], stop, "training images")
    labels = np.array([split.train[i].label for i in ok], dtype=np.int64)
    import torch

    atomic_save_safetensors(run_dir / runs.BEST_WEIGHTS, {k: v.contiguous() for k, v in body.state_dict().items()},
                            metadata={"tlstudio_model": spec.model_dump_json()})
    atomic_save_safetensors(run_dir / BANK, {"features": torch.from_numpy(bank), "labels": torch.from_numpy(labels)})
    result = evaluate(run_dir, progress=None)
    from tlstudio.core.atomic import atomic_write_json

    atomic_write_json(run_dir / runs.EVAL_JSON, result)  # the Evaluate step shows it, as for a trained run
    info.status, info.epochs_done, info.best_epoch = "finished", 1, 0
    info.metrics = {"val_acc": result["metrics"]["accuracy"], "val_macro_f1": result["metrics"]["macro_f1"]}
    info.best_val_acc, info.best_val_macro_f1 = info.metrics["val_acc"], info.metrics["val_macro_f1"]
    info.timings["fit_s"] = time.time() - t0
    runs.write_run(run_dir, info)
    yield Log(f"k-NN (k={config.k}) on {len(ok)} training images: validation accuracy {info.best_val_acc:.1%}")
    yield Finished(run_dir=str(run_dir), status="finished", best_epoch=0, best_val_acc=info.best_val_acc,
                   metrics=dict(info.metrics))
    return info


def _load(run_dir: Path):
    from safetensors.numpy import load_file

    info = runs.read_run(run_dir)
    bank = load_file(str(run_dir / BANK))
    return info, _body(info.config, from_run=run_dir), bank["features"], bank["labels"]


def _scores(run_dir: Path, paths: list[str]):
    info, body, bank, labels = _load(run_dir)
    feats, ok, failures = yield from _features(body, info.model, paths, None, "images")
    return info, vote(bank, labels, feats, int(info.config.get("k", 5)), info.model.num_classes), ok, failures


def _drain(gen, progress=None):
    """Run a feature generator to its value; its Progress events go to ``progress(done, total)``."""
    from tlstudio.core.events import drive

    return drive(gen, (lambda ev: progress(ev.done, ev.total) if isinstance(ev, Progress) else None)
                 if progress is not None else None)


def evaluate(run_dir: str | Path, data: str | Path | None = None, progress=None) -> dict[str, Any]:
    from tlstudio.core.evaluation.evaluate import folder_samples, report_from_probs

    run_dir = Path(run_dir)
    info = runs.read_run(run_dir)
    samples = list(runs.read_split(run_dir).val) if data is None else folder_samples(data, list(info.model.classes))
    info, probs, ok, failures = _drain(_scores(run_dir, [s.path for s in samples]), progress)
    rep = report_from_probs(probs, [samples[i].label for i in ok], info.model.classes,
                            [samples[i].path for i in ok], failures, source="validation split" if data is None else str(data))
    out = rep.to_json()
    out["metrics"] = {"accuracy": rep.accuracy, "macro_f1": rep.macro_f1}
    return out


def predict(run_dir: str | Path, paths, top_k: int = 3, **_: Any) -> list[dict[str, Any]]:
    from tlstudio.core.evaluation.evaluate import expand_paths

    files = expand_paths(paths)
    info, probs, ok, failures = _drain(_scores(Path(run_dir), files))
    rows: dict[int, dict[str, Any]] = {}
    for row, i in zip(probs, ok):
        order = np.argsort(-row)[:top_k]
        rows[i] = {"path": files[i], "top": [{"class": info.model.classes[j], "prob": float(row[j])} for j in order],
                   "error": None}
    bad = {f["path"]: f["reason"] for f in failures}
    return [rows.get(i) or {"path": p, "top": [], "error": bad.get(p, "could not be read")} for i, p in enumerate(files)]


def _eval_lines(r: dict[str, Any]) -> list[str]:
    from tlstudio.core.tasks.classification import eval_lines

    return eval_lines(r)


def _predict_line(row: dict[str, Any]) -> str:
    from tlstudio.core.tasks.classification import predict_line

    return predict_line(row)


KIND = register(TaskKind(
    kind="knn", title="Nearest neighbours (no training)",
    summary="each image takes the classes of its most similar training images: a classifier in seconds",
    config_cls=KnnConfig, run=run, evaluate=evaluate, predict=predict, best_metric=("val_acc", "max"),
    gui_steps=("data", "model", "train", "evaluate", "predict", "runs"), trains=False,
    eval_lines=_eval_lines, predict_line=_predict_line,
))
