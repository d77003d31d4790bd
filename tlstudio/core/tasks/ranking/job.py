"""Rank candidate starting points on the user's data before training (no gradient step).

For each candidate: build the model (ImageNet weights, a weights file, an earlier run's body,
or random weights), extract pooled features of a stratified sample with **its own**
preprocessing (timm data config: input size, mean/std, interpolation; a run keeps its trained
input size) through the engine's FeatureCache, so a following head-only training with the same
split, seed and no augmentation finds them and skips the forward pass; then score the features
(LogME, k-fold linear probe, k-NN, H-score), measure latency per image and count parameters.
The generator yields Progress/Log events, honours ``stop`` and returns a RankResult; the run
folder gets rank.json and run.json (task "ranking").
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generator, Literal

from pydantic import BaseModel, ConfigDict, Field

from tlstudio.core.errors import UserError
from tlstudio.core.events import Event, Log, Progress, Warn
from tlstudio.core.tasks.ranking.candidates import Candidate, parse_candidates, sort_for_display

RANK_JSON = "rank.json"
DEFAULT_SAMPLES = 500


class RankConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    task: Literal["ranking"] = "ranking"
    data_dir: str
    out_dir: str | None = None
    candidates: list[str] = Field(default_factory=lambda: ["tf_efficientnet_lite0"])
    weights: dict[str, str] = Field(default_factory=dict)  # NAME -> weights file
    samples: int = Field(DEFAULT_SAMPLES, ge=4, le=100_000)  # images scored (stratified)
    val_fraction: float = Field(0.2, gt=0.0, lt=0.9)  # the split training will use (cache reuse)
    seed: int = 0
    batch_size: int = Field(32, ge=1, le=1024)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    image_size: int | None = Field(None, ge=32, le=1024)  # None: each candidate's own input size
    cache_budget_mb: int = Field(2048, ge=0)
    folds: int = Field(5, ge=2, le=20)
    knn_k: int = Field(5, ge=1, le=100)
    latency: bool = True
    leave_one_core: bool = False  # set by the GUI so the UI stays responsive
    threads: int | None = Field(None, ge=1)  # torch threads; None: from the CPU load


@dataclass
class RankRow:
    candidate: dict  # Candidate.to_json()
    rank: int | None = None  # 1 = best; None when it could not be scored
    logme: float | None = None
    probe_acc: float | None = None
    probe_std: float | None = None
    knn_acc: float | None = None
    hscore: float | None = None
    latency_ms: float | None = None
    params: int | None = None
    feature_dim: int | None = None
    input_size: int | None = None
    seconds: float | None = None  # feature extraction + scoring time
    cache_reused: bool = False
    error: str = ""
    explanation: str = ""


@dataclass
class RankResult:
    rows: list[RankRow]
    classes: list[str]
    n_images: int
    data_dir: str
    out_dir: str
    summary: str
    seconds: float
    status: str = "finished"  # or "stopped"
    extra: dict[str, Any] = field(default_factory=dict)

    def ranked(self) -> list[RankRow]:
        return [r for r in self.rows if r.rank is not None]

    def top(self) -> RankRow | None:
        r = self.ranked()
        return r[0] if r else None

    def to_json(self) -> dict:
        return {"schema_version": 1, "status": self.status, "data_dir": self.data_dir, "classes": self.classes,
                "n_images": self.n_images, "summary": self.summary, "seconds": self.seconds,
                "rows": [asdict(r) for r in self.rows], **self.extra}

    @classmethod
    def from_json(cls, d: dict, out_dir: str = "") -> RankResult:
        rows = [RankRow(**r) for r in d.get("rows", [])]
        return cls(rows=rows, classes=list(d.get("classes", [])), n_images=int(d.get("n_images", 0)),
                   data_dir=str(d.get("data_dir", "")), out_dir=out_dir, summary=str(d.get("summary", "")),
                   seconds=float(d.get("seconds", 0.0)), status=str(d.get("status", "finished")))


def read_rank(run_dir: str | Path) -> RankResult:
    import json

    path = Path(run_dir) / RANK_JSON
    try:
        return RankResult.from_json(json.loads(path.read_text(encoding="utf-8")), out_dir=str(run_dir))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: cannot read the ranking ({exc})") from exc


# ---------------------------------------------------------------- sampling


def sample_split(split, n_max: int, seed: int = 0):
    """The training split itself when it has at most n_max images (so training reuses the
    cached features), else a stratified subsample of train and val with every class kept."""
    from tlstudio.core.data.dataset import Split

    total = len(split.train) + len(split.val)
    if total <= n_max:
        return split, False
    rng = random.Random(seed)
    frac = n_max / total

    def take(samples):
        by = defaultdict(list)
        for s in samples:
            by[s.label].append(s)
        out = []
        for label in sorted(by):
            group = sorted(by[label], key=lambda s: s.path)
            k = max(min(2, len(group)), round(len(group) * frac))
            out += rng.sample(group, min(k, len(group)))
        return sorted(out, key=lambda s: (s.label, s.path))

    return Split(train=take(split.train), val=take(split.val), test=[], seed=split.seed,
                 val_fraction=split.val_fraction), True


# ---------------------------------------------------------------- the job


def rank(config: RankConfig, stop: threading.Event | None = None, pause: threading.Event | None = None
         ) -> Generator[Event, None, RankResult]:
    import numpy as np

    from tlstudio.core.data.dataset import ScanCancelled, make_split, scan
    from tlstudio.core.runtime import precision
    from tlstudio.core.runtime.inference import compute_scope

    t_start = time.perf_counter()
    cands = sort_for_display(parse_candidates(list(config.candidates), dict(config.weights)))
    yield Log(f"Scanning {config.data_dir}")
    try:
        report = scan(config.data_dir, stop=stop)
    except ScanCancelled:
        return RankResult(rows=[], classes=[], n_images=0, data_dir=str(config.data_dir), out_dir="",
                          summary="Ranking stopped.", seconds=0.0, status="stopped")
    report.require_trainable()
    classes = list(report.classes)
    split = make_split(report, val_fraction=config.val_fraction, seed=config.seed)
    split, subsampled = sample_split(split, config.samples, config.seed)
    samples = list(split.train) + list(split.val)
    labels = np.array([s.label for s in samples], dtype=int)
    n = len(samples)
    yield Log(f"Ranking {len(cands)} candidates on {n} images of {len(classes)} classes"
              + (f" (stratified sample of {len(report.samples)})" if subsampled else " (the whole training split)"))
    out_dir = Path(config.out_dir) if config.out_dir else _default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)

    with compute_scope(config.leave_one_core, config.threads):
        choice = precision.thread_choice()
        if choice is not None:
            yield Log(choice.summary().replace("training with", "ranking with"))
        rows, status = yield from _rank_all(cands, split, classes, labels, config, stop)
    yield Progress(task="rank", done=len(rows), total=len(cands), message="Ranking done")

    scored = sorted((r for r in rows if r.logme is not None), key=lambda r: -r.logme)
    for k, r in enumerate(scored, 1):
        r.rank = k
    unscored = [r for r in rows if r.logme is None]
    ordered = scored + unscored
    _explain(ordered, n_classes=len(classes))
    summary = _summary(scored, unscored, n)
    result = RankResult(rows=ordered, classes=classes, n_images=n, data_dir=str(config.data_dir),
                        out_dir=str(out_dir), summary=summary, seconds=round(time.perf_counter() - t_start, 2),
                        status=status, extra={"sampled": subsampled, "images_total": len(report.samples),
                                              "config": config.model_dump()})
    _write(out_dir, result, config, report)
    yield Log(summary)
    return result


def _rank_all(cands, split, classes, labels, config: RankConfig, stop):
    """Features and scores of every candidate, in order: (rows, "finished" | "stopped")."""
    rows: list[RankRow] = []
    status = "finished"
    for i, cand in enumerate(cands):
        if stop is not None and stop.is_set():
            status = "stopped"
            break
        yield Progress(task="rank", done=i, total=len(cands), message=f"Scoring {cand.label} ({i + 1}/{len(cands)})")
        row = RankRow(candidate=cand.to_json(), params=cand.params or None)
        rows.append(row)
        if not cand.available:
            row.error = cand.reason
            yield Warn(f"{cand.label}: skipped: {cand.reason}")
            continue
        t0 = time.perf_counter()
        try:
            feats = yield from _features(cand, split, classes, config, stop, row)
        except UserError as exc:
            row.error = str(exc).splitlines()[0]
            yield Warn(f"{cand.label}: cannot be used: {row.error}")
            continue
        if feats is None:  # stopped during extraction
            status = "stopped"
            rows.pop()
            break
        f, valid = feats
        yield Progress(task="rank", done=i, total=len(cands), message=f"Scoring {cand.label}: LogME, probes")
        try:
            _score(row, f[valid], labels[valid], config)
        except (ValueError, RuntimeError) as exc:  # e.g. one class left after failed images
            row.error = f"cannot score: {exc}"
            yield Warn(f"{cand.label}: {row.error}")
            continue
        row.seconds = round(time.perf_counter() - t0, 2)
        yield Log(f"{cand.label}: LogME {row.logme:.3f}, linear probe {row.probe_acc:.1%}, "
                  f"k-NN {row.knn_acc:.1%}" + (f", {row.latency_ms:.1f} ms/image" if row.latency_ms else "")
                  + f" ({row.seconds:.1f} s{', cached features' if row.cache_reused else ''})")
    return rows, status


def _default_out_dir() -> Path:
    from tlstudio.core.paths import default_runs_dir

    base = Path(default_runs_dir()) / f"{time.strftime('%Y%m%d-%H%M%S')}-ranking"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def _features(cand: Candidate, split, classes, config: RankConfig, stop, row: RankRow):
    """(features [N, D], valid mask [N]) for train+val of ``split``, or None when stopped."""
    import numpy as np
    import torch

    from tlstudio.core.models.backbones import create_model, data_config
    from tlstudio.core.models.weights import head_prefixes
    from tlstudio.core.pipeline.feature_cache import FeatureCache
    from tlstudio.core.runtime import precision

    logs: list[str] = []
    model = create_model(cand.backbone, len(classes), init=cand.init, weights_file=cand.weights_file,
                         init_run=cand.init_run, log=logs.append)
    for m in logs:
        yield Log(m)
    model.eval()
    heads = head_prefixes(model)
    row.params = sum(p.numel() for n_, p in model.named_parameters() if not any(n_.startswith(h) for h in heads))
    cfg = data_config(model, cand.image_size or config.image_size)
    row.input_size = int(cfg["input_size"][-1])
    device = precision.resolve_device(config.device)
    plan = precision.choose_precision(device, model, config.precision)
    plan.prepare_model(model)
    cache = FeatureCache(model, split, cfg, batch_size=config.batch_size, augment="none", seed=config.seed,
                         views=1, budget_mb=config.cache_budget_mb, device=device, precision=plan,
                         model_key=cand.model_key())
    loaders = yield from cache.prepare(stop=stop)
    if stop is not None and stop.is_set():
        return None
    row.cache_reused = bool(cache.reused)
    f = np.concatenate([np.asarray(loaders.feats[0]), np.asarray(loaders.val_feats)], 0).astype(np.float64)
    valid = np.concatenate([np.asarray(loaders.valid, bool), np.asarray(loaders.val_valid, bool)])
    for fail in cache.failures[:5]:
        yield Warn(f"{getattr(fail, 'path', fail)}: {getattr(fail, 'reason', '')}", path=getattr(fail, "path", None))
    row.feature_dim = int(f.shape[1])
    if config.latency:
        row.latency_ms = round(1000 * _latency(model, row.input_size, device), 2)
    del model, loaders
    torch.set_grad_enabled(True)
    return f, valid


def _latency(model, size: int, device, repeats: int = 5) -> float:
    """Seconds per image, batch 1, on one CPU thread (or the GPU): the best of a few runs.
    One thread keeps candidates comparable on a busy machine, where two threads spin against
    other work and time 10x worse; the best run is the least disturbed one."""
    import torch

    from tlstudio.core.tasks.ranking.probes import one_thread

    model.float()
    x = torch.randn(1, 3, size, size, device=device)
    times = []
    with one_thread(), torch.inference_mode():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # the first call pays for kernel selection
                times.append(time.perf_counter() - t0)
    return min(times)


def _score(row: RankRow, f, y, config: RankConfig) -> None:
    from tlstudio.core.tasks.ranking.logme import logme
    from tlstudio.core.tasks.ranking.probes import hscore, knn_accuracy, linear_probe

    row.logme = round(float(logme(f, y)), 5)
    acc, sd = linear_probe(f, y, folds=config.folds, seed=config.seed)
    row.probe_acc, row.probe_std = round(acc, 4), round(sd, 4)
    row.knn_acc = round(knn_accuracy(f, y, k=config.knn_k), 4)
    row.hscore = round(hscore(f, y), 4)


def _fmt_params(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e6:.1f} M" if n >= 1e5 else f"{n / 1e3:.0f} k"


def _explain(rows: list[RankRow], n_classes: int) -> None:
    """One plain sentence per candidate."""
    scored = [r for r in rows if r.rank is not None]
    best = scored[0] if scored else None
    chance = 1.0 / max(1, n_classes)
    fastest = min((r.latency_ms for r in scored if r.latency_ms), default=None)
    for r in rows:
        c = r.candidate
        if r.rank is None:
            r.explanation = f"Not ranked: {r.error or c.get('reason') or 'could not be loaded'}."
            continue
        what = {"imagenet": "ImageNet features", "run": "features of your earlier run",
                "file": "features from your weights file", "random": "random (untrained) features"}[c["source"]]
        lead = "Best fit for your data" if r is best else f"#{r.rank}"
        probe = f"a linear classifier on its {what} gets {r.probe_acc:.0%} on held-out images"
        if r.probe_acc is not None and r.probe_acc < chance + 0.1:
            probe += " (close to guessing)"
        speed = ""
        if r.latency_ms:
            speed = f"; {r.latency_ms:.0f} ms per image" + (" (fastest)" if r.latency_ms == fastest and len(scored) > 1 else "")
        gap = ""
        if best is not None and r is not best and best.probe_acc is not None and r.probe_acc is not None:
            pts = 100 * (best.probe_acc - r.probe_acc)
            gap = (f", {pts:.0f} points below the top one" if pts >= 0.5 else
                   f", {-pts:.0f} points above the top one (LogME still prefers the top one)" if pts <= -0.5 else
                   ", the same as the top one; LogME separates them")
        r.explanation = f"{lead}: {probe}{gap}, k-NN {r.knn_acc:.0%}{speed}, {_fmt_params(r.params)} parameters."


def _summary(scored: list[RankRow], unscored: list[RankRow], n: int) -> str:
    if not scored:
        return "No candidate could be scored: " + "; ".join(
            f"{r.candidate['label']}: {r.error}" for r in unscored) if unscored else "Nothing to rank."
    top = scored[0]
    parts = [f"Start from {top.candidate['label']}: its features fit your {n} images best "
             f"(LogME {top.logme:.3f}, linear probe {top.probe_acc:.0%})."]
    by_probe = sorted(scored, key=lambda r: -(r.probe_acc or 0))
    if len(scored) > 1 and by_probe[0] is not top and (by_probe[0].probe_acc or 0) > (top.probe_acc or 0) + 0.02:
        parts.append(f"The linear probe prefers {by_probe[0].candidate['label']} "
                     f"({by_probe[0].probe_acc:.0%}): with this little data the two are close; try both if time allows.")
    if unscored:
        parts.append(f"{len(unscored)} not ranked (see the reasons).")
    return " ".join(parts)


def _write(out_dir: Path, result: RankResult, config: RankConfig, report) -> None:
    from tlstudio.core.atomic import atomic_write_json
    from tlstudio.core.runs.folder import ModelSpec, RunInfo, versions, write_run

    atomic_write_json(out_dir / RANK_JSON, result.to_json())
    top = result.top()
    c = top.candidate if top else (result.rows[0].candidate if result.rows else {"backbone": "none"})
    spec = ModelSpec(backbone=c.get("backbone") or "none", num_classes=max(1, len(result.classes)),
                     classes=result.classes or ["?"], image_size=int((top.input_size if top else None) or 224))
    info = RunInfo(kind="rank", task="ranking", name=out_dir.name, status=result.status,
                   config=config.model_dump(), model=spec, seed=config.seed, versions=versions(),
                   data={"root": str(config.data_dir), "fingerprint": report.fingerprint,
                         "counts": dict(report.counts), "n_scored": result.n_images},
                   timings={"total_s": result.seconds},
                   metrics={"top_logme": top.logme} if top and top.logme is not None else {},
                   best_metric="logme",
                   extra={"top": c.get("spec"), "summary": result.summary})
    write_run(out_dir, info)


def train_settings(row: RankRow | dict) -> dict:
    """TrainConfig fields that start a training from a ranked candidate, at the input size it was
    scored at (so a head-only run with no augmentation reuses the cached features)."""
    r = row if isinstance(row, dict) else asdict(row)
    c = r["candidate"]
    out = {"backbone": c["backbone"], "init": c["init"], "weights_file": c.get("weights_file"),
           "init_run": c.get("init_run")}
    if r.get("input_size"):
        out["image_size"] = int(r["input_size"])
    return out
