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

import threading
import time
from pathlib import Path
from typing import Generator, Literal

from pydantic import BaseModel, ConfigDict, Field

from tlstudio.core.errors import UserError
from tlstudio.core.events import Event, Log, Progress, Warn
from tlstudio.core.tasks.ranking.candidates import parse_candidates, sort_for_display
from tlstudio.core.tasks.ranking.extract import candidate_features, sample_split
from tlstudio.core.tasks.ranking.results import RANK_JSON, RankResult, RankRow, read_rank, train_settings
from tlstudio.core.tasks.ranking.scoring import order_rows, score_row
from tlstudio.core.tasks.ranking.text import explain, summary

__all__ = ["DEFAULT_SAMPLES", "RANK_JSON", "RankConfig", "RankResult", "RankRow", "rank", "read_rank",
           "sample_split", "train_settings"]

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
        rows, status, digests = yield from _rank_all(cands, split, classes, labels, config, stop)
    yield Progress(task="rank", done=len(rows), total=len(cands), message="Ranking done")

    ordered = order_rows(rows)
    # a run that trained only its head keeps its backbone's body: the same features, the same
    # scores; the lower of the two rows says so instead of leaving identical rows unexplained
    first: dict[str, str] = {}
    for r in ordered:
        d = digests.get(id(r)) if r.rank is not None else None
        r.same_as = first.get(d) if d else None
        if d:
            first.setdefault(d, r.candidate["label"])
    explain(ordered, n_classes=len(classes))
    text = summary([r for r in ordered if r.rank is not None], [r for r in ordered if r.rank is None], n)
    result = RankResult(rows=ordered, classes=classes, n_images=n, data_dir=str(config.data_dir),
                        out_dir=str(out_dir), summary=text, seconds=round(time.perf_counter() - t_start, 2),
                        status=status, extra={"sampled": subsampled, "images_total": len(report.samples),
                                              "config": config.model_dump()})
    _write(out_dir, result, config, report)
    yield Log(text)
    return result


def _rank_all(cands, split, classes, labels, config: RankConfig, stop):
    """Features and scores of every candidate, in order: (rows, "finished" | "stopped", the digest
    of each scored row's features by id(row))."""
    import hashlib

    rows: list[RankRow] = []
    status = "finished"
    digests: dict[int, str] = {}
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
            feats = yield from candidate_features(cand, split, classes, config, stop, row)
        except UserError as exc:
            row.error = str(exc).splitlines()[0]
            yield Warn(f"{cand.label}: cannot be used: {row.error}")
            continue
        if feats is None:  # stopped during extraction
            status = "stopped"
            rows.pop()
            break
        f, valid = feats
        digests[id(row)] = hashlib.blake2b(f[valid].tobytes() + valid.tobytes(), digest_size=16).hexdigest()
        yield Progress(task="rank", done=i, total=len(cands), message=f"Scoring {cand.label}: LogME, probes")
        try:
            score_row(row, f[valid], labels[valid], config)
        except (ValueError, RuntimeError) as exc:  # e.g. one class left after failed images
            row.error = f"cannot score: {exc}"
            yield Warn(f"{cand.label}: {row.error}")
            continue
        row.seconds = round(time.perf_counter() - t0, 2)
        yield Log(f"{cand.label}: LogME {row.logme:.3f}, linear probe {row.probe_acc:.1%}, "
                  f"k-NN {row.knn_acc:.1%}" + (f", {row.latency_ms:.1f} ms/image" if row.latency_ms else "")
                  + f" ({row.seconds:.1f} s{', cached features' if row.cache_reused else ''})")
    return rows, status, digests


def _default_out_dir() -> Path:
    from tlstudio.core.paths import default_runs_dir

    base = Path(default_runs_dir()) / f"{time.strftime('%Y%m%d-%H%M%S')}-ranking"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


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


