"""A domain-adaptation run: the source-only baseline, the adaptation, and which one to keep.

RUN_DIR/
  run.json, config.json   task "adaptation"; run.json extra["adaptation"] holds the comparison
  model.safetensors       the kept model (adapted, or unadapted when the check set says so)
  split.json              the source split; target images listed as unlabelled rows (domain "target")
  history.csv             the adaptation's epochs (source loss, target loss, source val accuracy ...)
  source_only/            a complete classification run on the labelled source images (the baseline)
  adapted/                the adapted model as a complete run folder (model.safetensors, run.json)
An adapted model is a plain classifier of the same classes: eval, predict and export treat the
run folder like any classification run. Target images are read without labels; the check set's
labels only score the two models.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from tlstudio.core.config import TrainConfig
from tlstudio.core.errors import UserError
from tlstudio.core.events import EpochEnd, Event, Finished, Log, Progress, RunStarted, Warn
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks.adaptation.config import AdaptConfig, uses_bn_adapt

SOURCE_DIR = "source_only"
ADAPTED_DIR = "adapted"
METHOD_TITLES = {"adabn": "AdaBN (BatchNorm statistics of the target)", "mcc": "MCC (minimum class confusion)",
                 "dann": "DANN (domain-adversarial)", "selftrain": "self-training (class-balanced pseudo-labels)"}


def _new_run_dir(config: TrainConfig, tag: str) -> Path:
    return Path(config.out_dir) if config.out_dir else runs.fresh_run_dir(f"{tag}-{config.backbone}")


def base_config(config: TrainConfig, out_dir: Path, **update: Any) -> TrainConfig:
    """The plain classification settings inside a task config (for the baseline and engine phases)."""
    fields = set(TrainConfig.model_fields) - {"task"}
    data = config.model_dump(include=fields)
    data.update({"out_dir": str(out_dir), "baseline": False, **update})
    return TrainConfig(**data)


def sub_run(cfg: TrainConfig, stop, pause, phase: str, **kw: Any) -> Generator[Event, None, runs.RunInfo]:
    """Train a sub-run folder, resuming it if a stopped one is there, skipping it if it finished."""
    from tlstudio.core.training import engine

    out = Path(cfg.out_dir)
    if runs.is_run_dir(out):
        info = runs.read_run(out)
        if info.status in ("finished", "early_stopped"):
            yield Log(f"{out.name}: already trained, reusing it")
            return info
        if (out / runs.LAST_CKPT).is_file():
            return (yield from engine.resume(out, stop, pause, **kw))
        import shutil

        shutil.rmtree(out)  # a sub-run that never got a checkpoint: start it again
    return (yield from engine.fit(cfg, stop, pause, phase=phase, **kw))


def body_is_frozen(config: TrainConfig, model) -> bool:
    from tlstudio.core.models import layers

    groups = layers.layer_groups(model)
    if config.frozen_groups is not None:
        trainable = [g.is_head or g.index not in set(config.frozen_groups) for g in groups]
    else:
        trainable, every = layers.plan_from_spec(config.freeze, groups)
        if every is not None:
            return False
    return layers.frozen_prefix_is_whole_body(trainable)


def set_head(model, head) -> None:
    """Copy a trained linear head into the model's classifier."""
    import torch

    clf = model.get_classifier()
    lin = clf if isinstance(clf, torch.nn.Linear) else [m for m in clf.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        lin.weight.copy_(head.weight.to(lin.weight.dtype))
        lin.bias.copy_(head.bias.to(lin.bias.dtype))


def write_model_folder(folder: Path, model, spec, config_dict: dict, *, task: str, kind: str, split=None,
                       history: list[dict] | None = None, metrics: dict | None = None, extra: dict | None = None,
                       status: str = "finished") -> runs.RunInfo:
    """A complete run folder for a model made without the engine (AdaBN, feature heads)."""
    from tlstudio.core.atomic import atomic_save_safetensors, atomic_write_json

    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_save_safetensors(folder / runs.BEST_WEIGHTS, sd, metadata={"tlstudio_model": spec.model_dump_json()})
    atomic_write_json(folder / runs.CONFIG_JSON, config_dict)
    if split is not None:
        runs.write_split(folder, split)
    if history:
        runs.write_history(folder, history)
    m = dict(metrics or {})
    info = runs.RunInfo(kind=kind, task=task, name=folder.name, status=status, config=config_dict, model=spec,
                        versions=runs.versions(), epochs_done=len(history or []),
                        best_epoch=(len(history) - 1) if history else None, best_val_acc=m.get("val_acc"),
                        metrics=m, extra=dict(extra or {}))
    runs.write_run(folder, info)
    return info


class _Feats:
    """Pooled features of the source train/val, target and check images under one body."""

    def __init__(self) -> None:
        self.fs = self.ys = self.fv = self.yv = self.ft = self.fc = self.yc = None


def _extract_all(model, split, target, check, data_cfg, device, stop, label: str) -> Generator[Event, None, _Feats]:
    import torch

    from tlstudio.core.pipeline.feature_cache import extract_features
    from tlstudio.core.pipeline.loaders import eval_loader

    out = _Feats()
    parts = [("fs", split.train), ("fv", split.val), ("ft", target), ("fc", check)]
    total = sum(len(p) for _, p in parts)
    done = 0
    model.eval()
    for name, samples in parts:
        feats, labels = [], []
        if samples:
            with torch.no_grad():
                for x, y, _ in eval_loader(list(samples), data_cfg, batch_size=64):
                    if stop.is_set():
                        raise _Stopped()
                    if x.shape[0] == 0:
                        continue
                    feats.append(extract_features(model, x.to(device)).float().cpu())
                    labels.append(y)
                    done += int(x.shape[0])
                    yield Progress(task="features", done=done, total=total, message=f"Features of the {label}")
        f = torch.cat(feats) if feats else torch.zeros(0, int(model.num_features))
        y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
        setattr(out, name, f)
        if name == "fs":
            out.ys = y
        elif name == "fv":
            out.yv = y
        elif name == "fc":
            out.yc = y  # check-set labels: used by score() only
    return out


class _Stopped(Exception):
    pass


def score(head, feats: _Feats, fv=None, ft=None, fc=None) -> dict[str, Any]:
    """Source val accuracy, target information-maximisation score, check-set accuracy of a head."""
    from tlstudio.core.tasks.adaptation.features import probs_of
    from tlstudio.core.tasks.adaptation.selection import accuracy, info_max

    fv = feats.fv if fv is None else fv
    ft = feats.ft if ft is None else ft
    fc = feats.fc if fc is None else fc
    out: dict[str, Any] = {"source_val_acc": accuracy(probs_of(head, fv), feats.yv) if len(fv) else None,
                           "target_info_max": info_max(probs_of(head, ft)) if len(ft) else None,
                           "check_acc": None, "check_n": int(len(fc))}
    if len(fc):
        out["check_acc"] = accuracy(probs_of(head, fc), feats.yc)
    return out


def _head_epochs(head, feats: _Feats, ft, fc, start_epoch: int, total_epochs: int, kw: dict,
                 stop) -> Generator[Event, None, list[dict]]:
    """Train the head, yielding one EpochEnd per epoch (phase "adapt")."""
    from tlstudio.core.tasks.adaptation.features import train_head_steps

    rows = []
    t0 = time.time()
    for ep, row in enumerate(train_head_steps(head, feats.fs, feats.ys, ft=ft, stop=stop, **kw)):
        s = score(head, feats, ft=ft, fc=fc)
        metrics = {"val_acc": s["source_val_acc"], "target_info_max": s["target_info_max"],
                   "source_loss": row["source_loss"], "target_loss": row["target_loss"]}
        metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        rows.append({"epoch": start_epoch + ep + 1, "train_loss": row["source_loss"] + row["target_loss"], **metrics})
        yield EpochEnd(epoch=start_epoch + ep, epochs=total_epochs, train_loss=rows[-1]["train_loss"], metrics=metrics,
                       lr=row.get("lr", 0.0), seconds=time.time() - t0, best=False, trainable_params=head.weight.numel()
                       + head.bias.numel(), parts={"source_loss": row["source_loss"], "target_loss": row["target_loss"]},
                       phase="adapt")
        t0 = time.time()
    if stop.is_set():
        raise _Stopped()
    return rows


def run(config: AdaptConfig, stop: threading.Event | None = None, pause: threading.Event | None = None
        ) -> Generator[Event, None, runs.RunInfo]:
    """Train the source-only baseline, adapt it to the target images, keep the better one."""
    stop = stop or threading.Event()
    pause = pause or threading.Event()
    if not isinstance(config, AdaptConfig):
        config = AdaptConfig.model_validate(config.model_dump() if hasattr(config, "model_dump") else config)
    run_dir = _new_run_dir(config, "adapt")
    resuming = runs.is_run_dir(run_dir) and (run_dir / runs.CONFIG_JSON).is_file()
    if resuming and runs.read_run(run_dir).task != "adaptation":
        raise UserError(f"{run_dir} already holds a run: choose another output folder")
    if resuming and runs.read_run(run_dir).status in ("finished", "early_stopped"):
        raise UserError(f"{run_dir}: this run already finished; nothing to resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    config = config.model_copy(update={"out_dir": str(run_dir)})
    if not resuming:
        config.to_json_file(run_dir / runs.CONFIG_JSON)
    try:
        return (yield from _run(config, run_dir, stop, pause))
    except _Stopped:
        _set_status(run_dir, "stopped")
        msg = "Stopped; resume the run to continue (finished phases are kept)"
        yield Finished(run_dir=str(run_dir), status="stopped", best_epoch=None, best_val_acc=None, message=msg)
        return runs.read_run(run_dir)
    except BaseException:
        _set_status(run_dir, "failed")
        raise


def _set_status(run_dir: Path, status: str) -> None:
    try:
        info = runs.read_run(run_dir)
        if info.status == "running":
            info.status = status
            runs.write_run(run_dir, info)
    except (OSError, runs.RunError):
        pass


def resume(run_dir, stop=None, pause=None) -> Generator[Event, None, runs.RunInfo]:
    run_dir = Path(run_dir)
    try:
        config = AdaptConfig.from_json_file(run_dir / runs.CONFIG_JSON)
    except Exception as exc:
        raise UserError(f"{run_dir / runs.CONFIG_JSON}: cannot read the run's settings: {exc}") from exc
    return (yield from run(config.model_copy(update={"out_dir": str(run_dir)}), stop, pause))


def _scan_side(config: AdaptConfig, classes: list[str]) -> Generator[Event, None, tuple[list, list]]:
    from tlstudio.core.data.dataset import Sample, match_classes, scan, scan_unlabelled

    yield Log(f"Scanning the target images in {config.target_dir}")
    target, skipped = scan_unlabelled(config.target_dir)
    for s in skipped[:20]:
        yield Warn(f"Skipped target image {s.path}: {s.reason}", path=s.path)
    if len(target) < 2:
        raise UserError(f"{config.target_dir}: need at least 2 readable target images (found {len(target)})")
    # the target's labels never travel: every target sample is rebuilt as unlabelled
    target = [Sample(s.path, -1, domain="target") for s in target]
    check: list = []
    if config.check_dir:
        rep = match_classes(scan(config.check_dir), classes)
        check = [Sample(s.path, s.label, domain="target") for s in rep.samples]
        yield Log(f"Check set: {len(check)} labelled target images in {config.check_dir} (to compare models only, "
                  "never trained on)")
        if len(check) < 10:
            yield Warn(f"The check set has only {len(check)} images: its accuracy is a rough guide (10-20 are better)")
    return target, check


def _run(config: AdaptConfig, run_dir: Path, stop, pause) -> Generator[Event, None, runs.RunInfo]:
    import torch

    from tlstudio.core.data.dataset import Split
    from tlstudio.core.models.backbones import data_config
    from tlstudio.core.models.run_model import load_run_model
    from tlstudio.core.runtime import precision
    from tlstudio.core.tasks.adaptation import adabn, domain_gap, selection
    from tlstudio.core.tasks.adaptation.features import copy_linear

    t_start = time.time()
    method = config.adapt
    yield Log(f"Domain adaptation by {METHOD_TITLES[method]}: {config.data_dir} (labelled) -> {config.target_dir}")

    # 1. the source-only baseline: a normal classification run
    base_dir = run_dir / SOURCE_DIR
    write_placeholder(run_dir, config, "adaptation", "adapt")
    yield Log("Phase 1 of 2: the source-only model (the baseline every adaptation is compared with)")
    base = yield from sub_run(base_config(config, base_dir), stop, pause, "source_only")
    if base.status == "stopped":
        raise _Stopped()
    if base.status not in ("finished", "early_stopped"):
        raise UserError(f"The source-only training ended as {base.status}; see {base_dir / runs.LOG_TXT}")
    classes = list(base.model.classes)
    target, check = yield from _scan_side(config, classes)
    split = runs.read_split(base_dir)

    device = precision.resolve_device(config.device)
    model, info0 = load_run_model(base_dir)
    model.to(device).eval()
    spec = info0.model
    data_cfg = data_config(model, config.image_size)
    frozen = body_is_frozen(config, model)

    # features of the unadapted body: baseline scores and the domain gap
    feats = yield from _extract_all(model, split, target, check, data_cfg, device, stop, "unadapted model")
    head0 = copy_linear(model.get_classifier()).to("cpu")
    unadapted = score(head0, feats)
    unadapted["source_val_acc"] = base.best_val_acc if base.best_val_acc is not None else unadapted["source_val_acc"]
    gap = domain_gap.gap_from_features(feats.fs if len(feats.fs) else feats.fv, feats.ft, seed=config.seed)
    if gap["score"] is not None:
        yield Log(f"Domain gap {gap['score']:.2f} (a linear classifier tells source from target "
                  f"{gap['domain_acc']:.0%} of the time): {gap['sentence']}")
    yield Log(_describe("Unadapted", unadapted))

    _write_main(run_dir, config, spec, split, target, "running", {}, {"method": method, "domain_gap": gap,
                                                                      "unadapted": unadapted})
    yield RunStarted(run_dir=str(run_dir), backbone=config.backbone, device=str(device), precision="fp32",
                     classes=tuple(classes), n_train=len(split.train), n_val=len(split.val),
                     epochs=_adapt_epochs(config, frozen), batches_per_epoch=1, trainable_params=0,
                     total_params=sum(p.numel() for p in model.parameters()), phase="adapt")
    yield Log(f"Phase 2 of 2: adapting to {len(target)} unlabelled target images")

    bn_ok, bn_reason = adabn.applicability(model, config.backbone)
    adapted_dir = run_dir / ADAPTED_DIR
    history: list[dict] = []
    extra: dict[str, Any] = {}
    adapted_model = None
    engine_path = False
    if method == "adabn" and not bn_ok:
        yield Warn(bn_reason)
        adapted = dict(unadapted)
        extra["not_applicable"] = bn_reason
    elif method == "adabn" or (frozen and method in ("mcc", "selftrain")):
        adapted_model = copy.deepcopy(model)
        ft, fc = feats.ft, feats.fc
        if uses_bn_adapt(config) and bn_ok:
            yield Log(f"AdaBN: {bn_reason}")
            yield from _adabn(adapted_model, target, data_cfg, device, stop)
            f2 = yield from _extract_all(adapted_model, Split([], [], [], 0, 0.0), target, check, data_cfg, device,
                                         stop, "target with target statistics")
            ft, fc = f2.ft, f2.fc
        elif uses_bn_adapt(config) and not bn_ok:
            yield Log(bn_reason.split(":")[0] + ": only the head adapts")
        head = copy_linear(model.get_classifier()).to("cpu")
        if method in ("mcc", "selftrain"):
            history, extra = yield from _feature_method(config, head, head0, feats, ft, fc, stop)
        set_head(adapted_model, head)
        adapted = score(head, feats, ft=ft, fc=fc)
    else:
        engine_path = True
        adapted_model, adapted, history, extra = yield from _engine_method(
            config, run_dir, adapted_dir, split, target, check, frozen, bn_ok, data_cfg, device, stop, pause, feats)

    if adapted_model is not None:
        adapted_model.cpu().eval()
        if engine_path:  # an engine run folder: only its weights change (AdaBN after training)
            _overwrite_weights(adapted_dir, adapted_model, spec)
        else:
            write_model_folder(adapted_dir, adapted_model, spec, config.model_dump(mode="json"), task="adaptation",
                               kind="adapted", history=history, metrics=_metrics(adapted), extra={"method": method})
    yield Log(_describe("Adapted", adapted))
    choice = selection.choose(unadapted, adapted)
    if adapted_model is None:
        choice = {"selected": "unadapted", "by": "not applicable", "reason": extra.get("not_applicable", "")}
    yield (Warn if choice.get("doubtful") or choice["selected"] == "unadapted" else Log)(choice["reason"])

    # the kept model becomes the run's model
    import shutil

    src = adapted_dir if (choice["selected"] == "adapted" and adapted_model is not None) else base_dir
    shutil.copyfile(src / runs.BEST_WEIGHTS, run_dir / runs.BEST_WEIGHTS)
    kept = adapted if src == adapted_dir else unadapted
    report = {"method": method, "domain_gap": gap, "unadapted": unadapted, "adapted": adapted,
              "selection": choice, "frozen_body": frozen, "bn_adapt": bool(uses_bn_adapt(config) and bn_ok),
              "target_images": len(target), "check_images": len(check), **extra}
    info = _write_main(run_dir, config, spec, split, target, "finished", _metrics(kept), report, history,
                       seconds=time.time() - t_start)
    gain = None
    if adapted.get("check_acc") is not None and unadapted.get("check_acc") is not None:
        gain = adapted["check_acc"] - unadapted["check_acc"]
    yield Finished(run_dir=str(run_dir), status="finished", best_epoch=info.best_epoch, best_val_acc=info.best_val_acc,
                   message=choice["reason"], metrics=dict(info.metrics),
                   result={"selected": choice["selected"], "check_gain": gain, "method": method})
    return info


def _overwrite_weights(folder: Path, model, spec) -> None:
    from tlstudio.core.atomic import atomic_save_safetensors

    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_save_safetensors(folder / runs.BEST_WEIGHTS, sd, metadata={"tlstudio_model": spec.model_dump_json()})


def _adapt_epochs(config: AdaptConfig, frozen: bool) -> int:
    if config.adapt == "adabn":
        return 1
    if frozen and config.adapt in ("mcc", "selftrain"):
        return config.head_epochs * (config.selftrain_rounds if config.adapt == "selftrain" else 1)
    return config.epochs * (min(config.selftrain_rounds, 2) if config.adapt == "selftrain" else 1)


def _metrics(s: dict[str, Any]) -> dict[str, float]:
    out = {"val_acc": s.get("source_val_acc"), "target_info_max": s.get("target_info_max"),
           "check_acc": s.get("check_acc")}
    return {k: float(v) for k, v in out.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


def _describe(who: str, s: dict[str, Any]) -> str:
    parts = []
    if s.get("source_val_acc") is not None:
        parts.append(f"source validation accuracy {s['source_val_acc']:.1%}")
    if s.get("target_info_max") is not None:
        parts.append(f"target confidence/diversity score {s['target_info_max']:.2f}")
    if s.get("check_acc") is not None:
        parts.append(f"check-set accuracy {s['check_acc']:.1%} ({s['check_n']} images)")
    return f"{who}: " + ", ".join(parts)


def _adabn(model, target, data_cfg, device, stop) -> Generator[Event, None, int]:
    from tlstudio.core.tasks.adaptation.adabn import adapt_bn
    from tlstudio.core.tasks.adaptation.features import image_batches

    t0 = time.time()
    yield Progress(task="adabn", done=0, total=len(target), message="Re-estimating BatchNorm statistics")
    n = adapt_bn(model, image_batches(target, data_cfg, batch_size=64), device=device, stop=stop)
    if stop.is_set():
        raise _Stopped()
    yield Progress(task="adabn", done=len(target), total=len(target))
    yield Log(f"AdaBN: BatchNorm statistics re-estimated on {n} target images in {time.time() - t0:.1f} s")
    return n


def _feature_method(config: AdaptConfig, head, head0, feats: _Feats, ft, fc, stop
                    ) -> Generator[Event, None, tuple[list[dict], dict]]:
    """MCC or self-training of the linear head on cached features (frozen body)."""
    from tlstudio.core.tasks.adaptation.features import probs_of
    from tlstudio.core.tasks.semisupervised.pseudo import select_pseudo_labels

    common = dict(epochs=config.head_epochs, lr=config.lr or 1e-3, batch_size=min(config.batch_size, 64),
                  weight_decay=config.weight_decay, label_smoothing=config.label_smoothing, seed=config.seed)
    if config.adapt == "mcc":
        rows = yield from _head_epochs(head, feats, ft, fc, 0, config.head_epochs,
                                       dict(common, mcc_weight=config.mcc_weight, temperature=config.mcc_temperature),
                                       stop)
        return rows, {}
    rounds = config.selftrain_rounds
    history: list[dict] = []
    stats = []
    current = head0
    for r in range(1, rounds + 1):
        pl = select_pseudo_labels(probs_of(current, ft), config.selftrain_threshold, fraction=r / rounds)
        stats.append({"round": r, **pl.to_json()})
        yield Log(f"Self-training round {r}/{rounds}: {len(pl.index)} pseudo-labelled target images "
                  f"(per class {pl.per_class})")
        fresh = copy.deepcopy(head0)
        fresh.train()
        rows = yield from _head_epochs(fresh, feats, ft, fc, len(history), config.head_epochs * rounds,
                                       dict(common, pseudo_idx=pl.index, pseudo_y=pl.labels), stop)
        history += rows
        current = fresh
    with __import__("torch").no_grad():
        head.weight.copy_(current.weight)
        head.bias.copy_(current.bias)
    return history, {"pseudo_labels": stats}


def _engine_method(config: AdaptConfig, run_dir: Path, adapted_dir: Path, split, target, check, frozen: bool,
                   bn_ok: bool, data_cfg, device, stop, pause, feats: _Feats):
    """MCC, DANN or self-training with trainable body layers: the shared training loop."""
    from tlstudio.core.models.run_model import load_run_model
    from tlstudio.core.tasks.adaptation.dann import DANNObjective
    from tlstudio.core.tasks.adaptation.mcc import MCCObjective

    update: dict[str, Any] = {}
    if config.adapt == "dann" and frozen:
        update["freeze"], update["frozen_groups"] = "last:2", None
        yield Log("DANN aligns the domains inside the body, so the last 2 layer groups train (the body was frozen)")
    cfg = base_config(config, adapted_dir, **update)
    extra: dict[str, Any] = {}
    if config.adapt == "mcc":
        obj = MCCObjective(target, weight=config.mcc_weight, temperature=config.mcc_temperature,
                           label_smoothing=config.label_smoothing)
        info = yield from sub_run(cfg, stop, pause, "adapt", objective=obj)
    elif config.adapt == "dann":
        obj = DANNObjective(target, trade_off=config.dann_weight, hidden=config.dann_hidden,
                            label_smoothing=config.label_smoothing)
        info = yield from sub_run(cfg, stop, pause, "adapt", objective=obj)
    else:  # self-training with the body training: rounds of fine-tuning on source + pseudo-labelled target
        info, extra = yield from _selftrain_rounds(config, run_dir, adapted_dir, target, stop, pause, data_cfg, device)
    if info.status == "stopped":
        raise _Stopped()
    model, _ = load_run_model(adapted_dir)
    model.to(device)
    if uses_bn_adapt(config) and bn_ok:
        yield from _adabn(model, target, data_cfg, device, stop)
    f = yield from _extract_all(model, split, target, check, data_cfg, device, stop, "adapted model")
    from tlstudio.core.tasks.adaptation.features import copy_linear

    s = score(copy_linear(model.get_classifier()).cpu(), f)
    s["source_val_acc"] = info.best_val_acc if not (uses_bn_adapt(config) and bn_ok) else s["source_val_acc"]
    history = runs.read_history(adapted_dir)
    return model, s, history, extra


def _selftrain_rounds(config, run_dir, adapted_dir, target, stop, pause, data_cfg, device):
    from tlstudio.core.data.dataset import Sample
    from tlstudio.core.models.run_model import load_run_model
    from tlstudio.core.tasks.adaptation.features import copy_linear, extract, probs_of
    from tlstudio.core.tasks.semisupervised.pseudo import select_pseudo_labels

    rounds = min(config.selftrain_rounds, 2)  # each round is a full fine-tuning run
    prev = run_dir / SOURCE_DIR
    stats = []
    info = None
    for r in range(1, rounds + 1):
        model, _ = load_run_model(prev)
        model.to(device)
        ft, kept = extract(model, target, data_cfg, device=device, stop=stop)
        pl = select_pseudo_labels(probs_of(copy_linear(model.get_classifier()).cpu(), ft),
                                  config.selftrain_threshold, fraction=r / rounds)
        extra_train = [Sample(target[kept[i]].path, lab, domain="target") for i, lab in zip(pl.index, pl.labels)]
        stats.append({"round": r, **pl.to_json()})
        yield Log(f"Self-training round {r}/{rounds}: fine-tuning on the source + {len(extra_train)} "
                  "pseudo-labelled target images")
        out = adapted_dir if r == rounds else run_dir / f"{ADAPTED_DIR}_round{r}"
        info = yield from sub_run(base_config(config, out), stop, pause, "adapt", extra_train=extra_train)
        if info.status == "stopped":
            return info, {"pseudo_labels": stats}
        prev = out
    return info, {"pseudo_labels": stats}


def write_placeholder(run_dir: Path, config, task: str, kind: str) -> None:
    """run.json from the start (status running), so a run stopped during its baseline is listed
    and `tlstudio resume RUN` finds its kind; the model spec is completed when the baseline ends."""
    if runs.is_run_dir(run_dir):
        return
    from tlstudio.core.data.dataset import scan

    classes = list(scan(config.data_dir).classes) or ["?"]
    spec = runs.ModelSpec(backbone=config.backbone, num_classes=len(classes), classes=classes,
                          image_size=config.image_size or 224)
    runs.write_run(run_dir, runs.RunInfo(kind=kind, task=task, name=run_dir.name, status="running",
                                         config=config.model_dump(mode="json"), model=spec, seed=config.seed))


def _write_main(run_dir: Path, config: AdaptConfig, spec, split, target, status: str, metrics: dict,
                report: dict, history: list[dict] | None = None, seconds: float | None = None) -> runs.RunInfo:
    import dataclasses

    if not (run_dir / runs.SPLIT_JSON).is_file():
        runs.write_split(run_dir, dataclasses.replace(split, train=list(split.train) + list(target)))
    if history:
        runs.write_history(run_dir, history)
    old = runs.read_run(run_dir) if runs.is_run_dir(run_dir) else None
    info = runs.RunInfo(kind="adapt", task="adaptation", name=run_dir.name, status=status,
                        config=config.model_dump(mode="json"), model=spec, versions=runs.versions(),
                        data={"root": config.data_dir, "target": config.target_dir, "check": config.check_dir,
                              "n_train": len(split.train), "n_val": len(split.val), "n_target": len(target)},
                        seed=config.seed, epochs_done=len(history or []), metrics=metrics,
                        best_val_acc=metrics.get("val_acc"), best_epoch=(len(history) - 1) if history else None,
                        extra={"adaptation": report})
    if old is not None:
        info.created = old.created
    if seconds is not None:
        info.timings["total_s"] = seconds
    runs.write_run(run_dir, info)
    return info


# ------------------------------------------------------------------ eval / predict / export


def evaluate(run_dir, data=None, progress=None) -> dict[str, Any]:
    """On a labelled folder (``data``) or the check set: the kept model, and both models side by
    side when the run has a check set; without either, the source validation split."""
    from tlstudio.core.tasks.classification import evaluate as classify_eval

    run_dir = Path(run_dir)
    info = runs.read_run(run_dir)
    check = data or info.config.get("check_dir")
    out = classify_eval(run_dir, check, progress=progress)
    rep = info.extra.get("adaptation", {})
    out["adaptation"] = rep
    if check:
        out["source"] = str(check)
        cmp = {}
        for name, folder in (("unadapted", run_dir / SOURCE_DIR), ("adapted", run_dir / ADAPTED_DIR)):
            if runs.is_run_dir(folder) and (folder / runs.BEST_WEIGHTS).is_file():
                r = classify_eval(folder, check)
                cmp[name] = r["metrics"]["accuracy"]
        if cmp:
            out["comparison"] = cmp
            out["metrics"].update({f"accuracy_{k}": v for k, v in cmp.items()})
    return out


def eval_lines(r: dict[str, Any]) -> list[str]:
    from tlstudio.core.tasks.classification import eval_lines as classify_lines

    lines = []
    cmp = r.get("comparison")
    if cmp:
        lines.append("On " + str(r.get("source", "the check set")) + ": " + ", ".join(
            f"{k} {v:.1%}" for k, v in cmp.items()))
    sel = (r.get("adaptation") or {}).get("selection") or {}
    if sel.get("reason"):
        lines.append(sel["reason"])
    return lines + classify_lines(r)
