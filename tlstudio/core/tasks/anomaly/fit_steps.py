"""The steps of an anomaly fit up to the learned head: read and split the data, build the
feature extractor, start the run record, learn what normal looks like (PatchCore memory bank,
coreset-reduced as it goes, or PaDiM statistics). job.py chains them with the threshold, the
test evaluation and the saved run."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlstudio.core.errors import UserError
from tlstudio.core.events import Event, Log, Progress, Warn
from tlstudio.core.tasks.anomaly.config import AnomalyConfig
from tlstudio.core.tasks.anomaly.plan import CHUNK_PATCHES, _eta, _fmt_mb, _threaded, plan, plan_text

class _Stop(Exception):
    """The user stopped the fit; the message says during what."""


@dataclass
class _Fit:
    """What the pieces of one fit share."""

    config: AnomalyConfig
    run_dir: Path
    stop: threading.Event
    pause: threading.Event | None
    info: Any = None  # RunInfo once the data is known

    def check_stop(self, during: str) -> None:
        while self.pause is not None and self.pause.is_set() and not self.stop.is_set():
            time.sleep(0.1)
        if self.stop.is_set():
            raise _Stop(f"stopped {during}")

def _read_data(job: _Fit) -> Generator[Event, None, tuple[Any, list[str], list[str]]]:
    """Scan the folder; split the normal images into the bank's and the held-out ones."""
    from tlstudio.core.tasks.anomaly.data import scan_anomaly

    config = job.config
    yield Log(f"Anomaly detection ({config.method}) on {config.data_dir}")
    data = scan_anomaly(config.data_dir, stop=job.stop)
    yield Log(f"Data ({data.layout} layout): {data.summary()}")
    for w in data.warnings:
        yield Warn(w)
    for s in data.skipped[:20]:
        yield Warn(f"skipped: {s.reason}", path=s.path)
    if len(data.skipped) > 20:
        yield Warn(f"... and {len(data.skipped) - 20} more files skipped")
    normal = list(data.normal)
    random.Random(config.seed).shuffle(normal)
    n_hold = min(max(1, round(config.holdout_fraction * len(normal))), len(normal) - 2)
    return data, sorted(normal[:n_hold]), sorted(normal[n_hold:])


@dataclass
class _Extractor:
    body: Any
    spec: Any
    plan: dict[str, Any]
    indices: list[int]
    grid: list[int]


def _extractor(job: _Fit, n_bank: int) -> Generator[Event, None, _Extractor]:
    """The pretrained body, its preprocessing and which stages give the patch features."""
    from tlstudio.core.models.backbones import create_model
    from tlstudio.core.models.features import output_shapes
    from tlstudio.core.tasks.anomaly.scoring import anomaly_spec

    config = job.config
    logs: list[str] = []
    body = create_model(config.backbone, 2, init=config.init, weights_file=config.weights_file,
                        init_run=config.init_run, log=logs.append)
    for m in logs:
        yield Log(m)
    body.eval()
    p = plan(config, n_bank, model=body)
    shapes = output_shapes(body, p["indices"], config.image_size)
    ex = _Extractor(body, anomaly_spec(body, config.backbone, config.image_size), p, p["indices"],
                    list(shapes[0][1:]))
    yield Log(f"Feature stages {ex.indices} (stride {[config.image_size // s[1] for s in shapes]}), "
              f"{p['feature_dim']} features per patch, {ex.grid[0]}x{ex.grid[1]} patches per image")
    yield Log(("Memory bank: " if config.method == "patchcore" else "PaDiM: ") + plan_text(p, config.method))
    return ex


def _start_run(job: _Fit, data, ex: _Extractor, bank_paths: list[str], holdout: list[str]):
    from tlstudio.core.runs import folder as runs

    config = job.config
    return runs.RunInfo(kind="fit", task="anomaly", name=config.name or job.run_dir.name, status="running",
                        config=config.model_dump(mode="json"), model=ex.spec, seed=config.seed,
                        data={"root": data.root, "layout": data.layout, "counts": data.counts(),
                              "n_train": len(bank_paths), "n_val": len(holdout), "n_test": len(data.test),
                              "defect_types": data.defect_types, "n_masks": data.n_masks,
                              "skipped": len(data.skipped)},
                        versions=runs.versions(), best_metric="image_auroc")


def _learn_normal(job: _Fit, ex: _Extractor, bank_paths: list[str]) -> Generator[Event, None, Any]:
    """Patch features of the normal images into the PatchCore bank (coreset-reduced as it goes)
    or the PaDiM statistics; returns the method's head."""
    import torch

    from tlstudio.core.runtime.inference import forward_chunked
    from tlstudio.core.tasks.anomaly.coreset import StreamingBank, Stopped
    from tlstudio.core.tasks.anomaly.model import patch_features
    from tlstudio.core.tasks.anomaly.padim import PadimAccumulator
    from tlstudio.core.tasks.anomaly.scoring import batches

    config, info = job.config, job.info
    ppi = ex.grid[0] * ex.grid[1]
    if config.method == "patchcore":
        sink = _BankFeed(StreamingBank(config.coreset_ratio, config.max_bank, projection_dim=config.projection_dim,
                                       seed=config.seed, stop=job.stop, expected_rows=ppi * len(bank_paths)))
    else:
        sink = PadimAccumulator(ex.plan["feature_dim"], config.padim_dims, ppi, seed=config.seed)
    t_feat = time.perf_counter()
    done = failed = 0
    try:
        for x, ok, fails, _s in batches(bank_paths, ex.spec, config.batch_size):
            job.check_stop("while reading features")
            for f in fails:
                yield Warn(f"cannot read: {f['reason']}", path=f["path"])
            failed += len(fails)
            if ok:
                with torch.inference_mode():
                    sink.add(forward_chunked(lambda c: patch_features(ex.body, c, ex.indices, config.aggregate), torch.from_numpy(x)))
            done += len(ok) + len(fails)
            yield Progress("features", done, len(bank_paths),
                           f"features {done}/{len(bank_paths)} images {_eta(t_feat, done, len(bank_paths))}".strip())
        if done - failed < 2:
            raise UserError(f"{config.data_dir}: fewer than 2 normal images could be read")
        if config.method != "patchcore":
            head = sink.finish()
        else:
            sink.flush()
            t_core = time.perf_counter()
            bank_t = yield from _threaded(sink.bank.finish, "coreset", "coreset")
            info.timings["coreset_s"] = round(sink.seconds + time.perf_counter() - t_core, 3)
            from tlstudio.core.tasks.anomaly.model import PatchCoreHead

            head = PatchCoreHead(bank_t)
            yield Log(f"Memory bank: {bank_t.shape[0]:,} patches kept of {sink.bank.seen:,} "
                      f"({bank_t.shape[0] / max(1, sink.bank.seen):.1%}, {_fmt_mb(bank_t.numel() * 4)})")
    except Stopped:
        raise _Stop("during the coreset search") from None
    info.timings["features_s"] = round(time.perf_counter() - t_feat, 3)
    return head


class _BankFeed:
    """Collects patch features (B, D, h, w) into chunks of CHUNK_PATCHES rows for the
    streaming coreset; ``seconds`` is the time spent selecting."""

    def __init__(self, bank) -> None:
        self.bank = bank
        self.pending: list = []
        self.rows = 0
        self.seconds = 0.0

    def add(self, feats) -> None:
        self.pending.append(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).clone())
        self.rows += self.pending[-1].shape[0]
        if self.rows >= CHUNK_PATCHES:
            self.flush()

    def flush(self) -> None:
        import torch

        if not self.pending:
            return
        chunk = torch.cat(self.pending)
        self.pending, self.rows = [], 0
        t = time.perf_counter()
        self.bank.add(chunk)  # a few seconds at most: in this thread (one malloc arena)
        self.seconds += time.perf_counter() - t
