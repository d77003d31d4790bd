"""Fitting an anomaly detector: a generator of events, like engine.fit.

features of the normal images -> memory bank (PatchCore, coreset-reduced as it goes) or
per-position Gaussians (PaDiM) -> held-out normal images set the threshold at the chosen
false-alarm rate -> labelled test images (if any) are evaluated -> run folder written.
Stop (threading.Event) is honoured between batches and inside the coreset search.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlstudio.core.errors import UserError
from tlstudio.core.events import Event, Finished, Log, Progress, RunStarted, Warn
from tlstudio.core.tasks.anomaly.config import AnomalyConfig

CHUNK_PATCHES = 16_384  # patches reduced together by the streaming coreset (bounds its cost)


def _eta(started: float, done: int, total: int) -> str:
    if done <= 0 or total <= 0:
        return ""
    left = (time.perf_counter() - started) / done * (total - done)
    m, s = divmod(int(left + 0.5), 60)
    return f"ETA {m}:{s:02d}"


def _fmt_mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def plan(config: AnomalyConfig, n_images: int, model=None) -> dict[str, Any]:
    """What the fit will hold, before fitting: patches per image, feature size, expected bank
    (PatchCore) or statistics (PaDiM) size and memory. Cheap: the model is built on the meta
    device when not given (no weights, no forward pass)."""
    import torch

    from tlstudio.core.models.features import feature_info, stage_indices_for_strides
    from tlstudio.core.tasks.anomaly.coreset import expected_bank

    if model is None:
        import timm

        with torch.device("meta"):
            model = timm.create_model(config.backbone, pretrained=False, num_classes=2)
    info = feature_info(model)
    idx = stage_indices_for_strides(model, config.strides)
    finest = min(info[i]["reduction"] for i in idx)
    side = -(-config.image_size // finest)
    ppi = side * side
    dim = sum(info[i]["channels"] for i in idx)
    out: dict[str, Any] = {"indices": idx, "patches_per_image": ppi, "grid": [side, side], "feature_dim": dim,
                           "images": n_images, "patches": ppi * n_images}
    if config.method == "patchcore":
        bank = expected_bank(ppi, n_images, config.coreset_ratio, config.max_bank)
        from tlstudio.core.tasks.anomaly.model import BANK_CHUNK

        # bank while merging (2 caps) + a chunk of patches + one batch's features, plus the
        # query x bank-block distance matrix of scoring (4 images at a time); not the model itself
        knn = 4 * ppi * min(BANK_CHUNK, bank) * 4
        out.update(bank_size=bank, bank_bytes=bank * dim * 4, capped=bank >= config.max_bank,
                   peak_bytes=(2 * config.max_bank + CHUNK_PATCHES + config.batch_size * ppi) * dim * 4 + knn)
    else:
        from tlstudio.core.tasks.anomaly.padim import PadimAccumulator

        d = min(config.padim_dims, dim)
        out.update(bank_size=0, bank_bytes=ppi * d * d * 4 + ppi * d * 4,
                   peak_bytes=PadimAccumulator.bytes_needed(dim, config.padim_dims, ppi), capped=False)
    return out


def plan_text(p: dict[str, Any], method: str) -> str:
    if method == "patchcore":
        cap = " (capped)" if p.get("capped") else ""
        return (f"{p['images']} images x {p['patches_per_image']} patches = {p['patches']:,} patches -> "
                f"memory bank of {p['bank_size']:,}{cap} x {p['feature_dim']} features = {_fmt_mb(p['bank_bytes'])}, "
                f"peak working memory about {_fmt_mb(p['peak_bytes'])} besides the model")
    return (f"{p['images']} images, {p['patches_per_image']} positions x {p['feature_dim']} features -> "
            f"Gaussian statistics {_fmt_mb(p['bank_bytes'])}, peak about {_fmt_mb(p['peak_bytes'])}")


def _new_run_dir(config: AnomalyConfig) -> Path:
    from tlstudio.core.runs.folder import fresh_run_dir

    return Path(config.out_dir) if config.out_dir else fresh_run_dir(f"anomaly-{config.backbone}")


def _threaded(fn: Callable[[Callable[[int, int], None]], Any], task: str, message: str) -> Generator[Event, None, Any]:
    """Run ``fn(progress)`` in a thread, relaying its progress as Progress events with an ETA."""
    q: queue.Queue = queue.Queue()
    result: dict[str, Any] = {}

    def target():
        try:
            result["value"] = fn(lambda d, t: q.put((d, t)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the generator's thread
            result["error"] = exc
        finally:
            q.put(None)

    started = time.perf_counter()
    th = threading.Thread(target=target, name=f"anomaly-{task}", daemon=True)
    th.start()
    while True:
        item = q.get()
        if item is None:
            break
        d, t = item
        yield Progress(task, d, t, f"{message} {d:,}/{t:,} {_eta(started, d, t)}".strip())
    th.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def fit(config: AnomalyConfig, stop: threading.Event | None = None,
        pause: threading.Event | None = None) -> Generator[Event, None, Any]:
    """Fit per ``config``; yield events; return the run's RunInfo."""
    from tlstudio.core.runs import folder as runs

    stop = stop or threading.Event()
    from tlstudio.core.runs.guard import claim_out_dir

    run_dir = _new_run_dir(config)
    lock = claim_out_dir(run_dir)  # new or empty folder only; locked while this fit writes it
    config = config.model_copy(update={"out_dir": str(run_dir)})
    from tlstudio.core.atomic import atomic_write_text

    atomic_write_text(run_dir / runs.CONFIG_JSON, config.model_dump_json(indent=2))
    from tlstudio.core.training.engine import RunLogger

    log = RunLogger(run_dir)
    state: dict[str, Any] = {}
    try:
        for ev in _fit(config, run_dir, stop, pause, state):
            log(ev)
            yield ev
    except BaseException:
        info = state.get("info")
        if info is not None and info.status == "running":
            info.status = "failed"
            try:
                runs.write_run(run_dir, info)
            except OSError:
                pass
        raise
    finally:
        lock.release()
    return state["info"]


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


def _fit(config: AnomalyConfig, run_dir: Path, stop, pause, state) -> Generator[Event, None, None]:
    """data -> feature extractor -> bank or Gaussians -> threshold -> test evaluation -> run folder."""
    from tlstudio.core.runs import folder as runs
    from tlstudio.core.tasks.anomaly.model import AnomalyModel

    t0 = time.perf_counter()
    job = _Fit(config, run_dir, stop, pause)
    try:
        data, holdout, bank_paths = yield from _read_data(job)
        ex = yield from _extractor(job, len(bank_paths))
        state["info"] = job.info = _start_run(job, data, ex, bank_paths, holdout)
        runs.write_run(run_dir, job.info)
        yield RunStarted(str(run_dir), ex.spec.backbone, "cpu", "fp32", ("normal", "anomaly"), len(bank_paths),
                         len(holdout), 1, -(-len(bank_paths) // config.batch_size), 0,
                         sum(p_.numel() for p_ in ex.body.parameters()), phase="fit")
        head = yield from _learn_normal(job, ex, bank_paths)
        model = AnomalyModel(ex.body, ex.indices, head).eval()
        meta = yield from _set_threshold(job, model, ex, head, holdout)
        metrics = yield from _evaluate_test(job, model, ex.spec, meta, data, holdout)
    except _Stop as s:
        job.info.status = "stopped"
        runs.write_run(run_dir, job.info)
        yield Finished(str(run_dir), "stopped", None, None, str(s))
        return
    _save_run(job, ex, head, data, bank_paths, holdout, metrics, t0)
    yield Log(f"Threshold {meta['threshold']:.4g} ({meta['threshold_mode'].replace('_', '-')}), "
              f"fit in {job.info.timings['fit_s']:.1f} s; saved {run_dir}")
    yield Finished(str(run_dir), "finished", None, None, "", result={"threshold": meta["threshold"]}, metrics=metrics)


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
                    sink.add(forward_chunked(lambda c: patch_features(ex.body, c, ex.indices), torch.from_numpy(x)))
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


def _set_threshold(job: _Fit, model, ex: _Extractor, head, holdout: list[str]) -> Generator[Event, None, dict]:
    """Score the held-out normal images; threshold at the false-alarm rate; the run's anomaly meta."""
    import numpy as np
    import torch

    from tlstudio.core.tasks.anomaly.scoring import score_paths
    from tlstudio.core.tasks.anomaly.threshold import false_alarm_threshold, normal_scale

    config = job.config
    hold_scores, _maps, _fail = score_paths(model, holdout, ex.spec, batch_size=4, stop=job.stop)
    job.check_stop("while scoring held-out images")
    hs = hold_scores[~np.isnan(hold_scores)]
    if hs.size == 0:
        raise UserError("none of the held-out normal images could be read: cannot set a threshold")
    thr = false_alarm_threshold(hs, config.false_alarm_rate)
    scale = normal_scale(hs, thr)
    if config.false_alarm_rate * hs.size < 1:
        yield Warn(f"{hs.size} held-out good images cannot measure a {config.false_alarm_rate:.1%} false-alarm "
                   f"rate: threshold set just above the highest held-out good score (more normal images help)")
    model.set_normalisation(thr, scale)
    meta = {"method": config.method, "indices": ex.indices, "strides": list(config.strides), "grid": ex.grid,
            "feature_dim": ex.plan["feature_dim"],
            "bank_size": int(getattr(head, "bank", torch.zeros(0)).shape[0]),
            "sigma": 4.0, "threshold": thr, "scale": scale, "false_alarm_threshold": thr,
            "false_alarm_rate": config.false_alarm_rate, "threshold_mode": "false_alarm",
            "holdout_scores": [float(v) for v in hs], "holdout": holdout}
    job.info.extra["anomaly"] = meta
    return meta


def _evaluate_test(job: _Fit, model, spec, meta: dict, data, holdout: list[str]) -> Generator[Event, None, dict]:
    """Evaluate on the labelled test images, if any (the F1-optimal threshold replaces the
    false-alarm one when the config asks for it); the report is saved next to the run."""
    from tlstudio.core.atomic import atomic_write_json
    from tlstudio.core.tasks.anomaly import store
    from tlstudio.core.tasks.anomaly.evaluate import evaluate_images, split_of

    test = split_of(data, holdout)
    if not any(t.label == 1 for t in test):
        return {}
    yield Log(f"Evaluating on {len(test)} labelled test images")
    holdout_is_test = data.layout != "mvtec"
    report = yield from _threaded(
        lambda cb: evaluate_images(model, spec, meta, test, progress=cb, stop=job.stop, holdout_is_test=holdout_is_test),
        "eval", "evaluating")
    job.check_stop("while evaluating")
    if report.get("f1_optimal_threshold") is not None:
        meta["f1_threshold"] = report["f1_optimal_threshold"]
        meta["f1_optimal"] = report["f1_optimal"]
        if job.config.threshold_mode == "f1":
            meta["threshold"] = report["f1_optimal_threshold"]
            meta["threshold_mode"] = "f1"
            model.set_normalisation(meta["threshold"], meta["scale"])
            report = evaluate_images(model, spec, meta, test, holdout_is_test=holdout_is_test)
    metrics = {k: v for k, v in report["metrics"].items() if isinstance(v, (int, float)) and v is not None}
    atomic_write_json(job.run_dir / store.EVAL_FILE, report)
    yield Log("Test: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k in
                                    ("image_auroc", "pixel_auroc", "f1", "precision", "recall")))
    return metrics


def _save_run(job: _Fit, ex: _Extractor, head, data, bank_paths: list[str], holdout: list[str],
              metrics: dict, t0: float) -> None:
    """Weights, head, split and the finished run.json."""
    from tlstudio.core.atomic import atomic_save_safetensors
    from tlstudio.core.data.dataset import Sample, Split
    from tlstudio.core.runs import folder as runs
    from tlstudio.core.tasks.anomaly import store
    from tlstudio.core.tasks.anomaly.evaluate import split_of

    run_dir, info, config = job.run_dir, job.info, job.config
    atomic_save_safetensors(run_dir / runs.BEST_WEIGHTS, {k: v.contiguous() for k, v in ex.body.state_dict().items()})
    store.save_head(run_dir, head)
    runs.write_split(run_dir, Split(
        train=[Sample(x, 0) for x in bank_paths], val=[Sample(x, 0) for x in holdout],
        test=[Sample(t.path, t.label, {"defect": t.defect, "mask": t.mask}) for t in split_of(data, holdout)],
        seed=config.seed, val_fraction=config.holdout_fraction))
    info.model = ex.spec
    info.timings["fit_s"] = round(time.perf_counter() - t0, 3)
    info.metrics = metrics
    info.status = "finished"
    info.epochs_done = 1
    runs.write_run(run_dir, info)
