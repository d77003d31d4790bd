"""The adaptation itself (phase 2 of an adaptation run), one path per kind of job:

- not applicable: AdaBN on a backbone without BatchNorm; the unadapted model stays;
- features (no gradient training of the body: rank 0 only): AdaBN, and MCC or self-training of
  the linear head on cached features when the body is frozen;
- engine (the body trains: every torchrun process): MCC, DANN, or self-training by rounds of
  fine-tuning, then optionally AdaBN, then scores (rank 0).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from tlstudio.core.events import Event, Log, Progress, Warn
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks.adaptation.config import AdaptConfig, uses_bn_adapt
from tlstudio.core.tasks.adaptation.ranks import Stopped
from tlstudio.core.tasks.adaptation.scaffold import Baseline, base_config, save_weights, set_head, sub_run
from tlstudio.core.tasks.adaptation.scoring import Feats, extract_all, head_epochs, score, score_model

SOURCE_DIR = "source_only"
ADAPTED_DIR = "adapted"


@dataclasses.dataclass
class Adapted:
    """What phase 2 gave: the adapted model (None when not applicable) and its scores."""

    model: Any
    scores: dict[str, Any]
    history: list[dict] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def uses_engine(config: AdaptConfig, frozen: bool) -> bool:
    """Whether the method trains body layers (in the shared training loop, on every process)."""
    return config.adapt == "dann" or (config.adapt in ("mcc", "selftrain") and not frozen)


def adapt(config: AdaptConfig, run_dir: Path, base: Baseline, feats: Feats, unadapted: dict, target: list,
          check: list, stop, pause) -> Generator[Event, None, Adapted]:
    """Phase 2 on rank 0; its adapted model is written to run_dir/adapted as a run folder."""
    from tlstudio.core.tasks.adaptation import adabn

    bn_ok, bn_reason = adabn.applicability(base.model, config.backbone)
    if config.adapt == "adabn" and not bn_ok:
        yield Warn(bn_reason)
        return Adapted(model=None, scores=dict(unadapted), extra={"not_applicable": bn_reason})
    if uses_engine(config, base.frozen):
        out = yield from _engine_path(config, run_dir, base, target, check, bn_ok, stop, pause)
        save_weights(run_dir / ADAPTED_DIR, out.model.cpu().eval(), base.spec)  # only its weights change (AdaBN)
        return out
    out = yield from _feature_path(config, base, feats, target, check, bn_ok, bn_reason, stop)
    from tlstudio.core.tasks.adaptation.scaffold import write_model_folder
    from tlstudio.core.tasks.adaptation.scoring import as_metrics

    write_model_folder(run_dir / ADAPTED_DIR, out.model.cpu().eval(), base.spec, config.model_dump(mode="json"),
                       task="adaptation", kind="adapted", history=out.history, metrics=as_metrics(out.scores),
                       extra={"method": config.adapt})
    return out


def run_adabn(model, target, data_cfg, device, stop) -> Generator[Event, None, int]:
    """Re-estimate BatchNorm statistics on the target images, in batches of 64 as before: the
    statistics depend on the batch composition, so this pass is not chunked (unlike the feature
    passes); under torchrun it runs on rank 0 only, which alone keeps the adapted model."""
    from tlstudio.core.tasks.adaptation.adabn import adapt_bn
    from tlstudio.core.tasks.adaptation.features import image_batches

    t0 = time.time()
    yield Progress(task="adabn", done=0, total=len(target), message="Re-estimating BatchNorm statistics")
    n = adapt_bn(model, image_batches(target, data_cfg, batch_size=64), device=device, stop=stop)
    if stop.is_set():
        raise Stopped()
    yield Progress(task="adabn", done=len(target), total=len(target))
    yield Log(f"AdaBN: BatchNorm statistics re-estimated on {n} target images in {time.time() - t0:.1f} s")
    return n


def _feature_path(config: AdaptConfig, base: Baseline, feats: Feats, target, check, bn_ok: bool, bn_reason: str,
                  stop) -> Generator[Event, None, Adapted]:
    """AdaBN, and MCC or self-training of the head on cached features (frozen body)."""
    from tlstudio.core.data.dataset import Split
    from tlstudio.core.tasks.adaptation.features import copy_linear

    model = copy.deepcopy(base.model)
    ft, fc = feats.ft, feats.fc
    if uses_bn_adapt(config) and bn_ok:
        yield Log(f"AdaBN: {bn_reason}")
        yield from run_adabn(model, target, base.data_cfg, base.device, stop)
        f2 = yield from extract_all(model, Split([], [], [], 0, 0.0), target, check, base.data_cfg, base.device,
                                    stop, "target with target statistics")
        ft, fc = f2.ft, f2.fc
    elif uses_bn_adapt(config):
        yield Log(bn_reason.split(":")[0] + ": only the head adapts")
    head = copy_linear(base.model.get_classifier()).to("cpu")
    out = Adapted(model=model, scores={})
    if config.adapt in ("mcc", "selftrain"):
        out.history, out.extra = yield from _train_head(config, head, feats, ft, fc, stop)
    set_head(model, head)
    out.scores = score(head, feats, ft=ft, fc=fc)
    return out


def _train_head(config: AdaptConfig, head, feats: Feats, ft, fc, stop) -> Generator[Event, None, tuple[list, dict]]:
    """MCC or self-training of the linear head on cached features; the result goes into ``head``."""
    import torch

    from tlstudio.core.tasks.adaptation.rounds import head_rounds
    from tlstudio.core.tasks.semisupervised.pseudo import select_pseudo_labels

    common = dict(epochs=config.head_epochs, lr=config.lr or 1e-3, batch_size=min(config.batch_size, 64),
                  weight_decay=config.weight_decay, label_smoothing=config.label_smoothing, seed=config.seed)
    if config.adapt == "mcc":
        rows = yield from head_epochs(head, feats, ft, fc, 0, config.head_epochs,
                                      dict(common, mcc_weight=config.mcc_weight, temperature=config.mcc_temperature),
                                      stop)
        return rows, {}
    rounds = config.selftrain_rounds

    def select(r: int, probs):  # class-balanced: each class's most confident share, growing per round
        return select_pseudo_labels(probs, config.selftrain_threshold, fraction=r / rounds)

    def announce(r: int, pl, probs) -> list[Event]:
        return [Log(f"Self-training round {r}/{rounds}: {len(pl.index)} pseudo-labelled target images "
                    f"(per class {pl.per_class})")]

    final, history, stats = yield from head_rounds(copy.deepcopy(head), feats, ft, fc, rounds, select, announce,
                                                   common, stop)
    with torch.no_grad():
        head.weight.copy_(final.weight)
        head.bias.copy_(final.bias)
    return history, {"pseudo_labels": stats}


def train_adapted(config: AdaptConfig, run_dir: Path, target: list, frozen: bool, data_cfg, device, stop, pause
                  ) -> Generator[Event, None, tuple[runs.RunInfo, dict]]:
    """MCC, DANN or self-training with trainable body layers, on every process under torchrun
    (``data_cfg``/``device``: rank 0's, for the self-training proposals)."""
    from tlstudio.core.tasks.adaptation.dann import DANNObjective
    from tlstudio.core.tasks.adaptation.mcc import MCCObjective

    adapted_dir = run_dir / ADAPTED_DIR
    if config.adapt == "selftrain":  # rounds of fine-tuning on the source + pseudo-labelled target
        return (yield from _selftrain_rounds(config, run_dir, target, data_cfg, device, stop, pause))
    update: dict[str, Any] = {}
    if config.adapt == "dann" and frozen:
        update["freeze"], update["frozen_groups"] = "last:2", None
        yield Log("DANN aligns the domains inside the body, so the last 2 layer groups train (the body was frozen)")
    if config.adapt == "mcc":
        obj = MCCObjective(target, weight=config.mcc_weight, temperature=config.mcc_temperature,
                           label_smoothing=config.label_smoothing)
    else:
        obj = DANNObjective(target, trade_off=config.dann_weight, hidden=config.dann_hidden,
                            label_smoothing=config.label_smoothing)
    info = yield from sub_run(base_config(config, adapted_dir, **update), stop, pause, "adapt", objective=obj)
    return info, {}


def _selftrain_rounds(config: AdaptConfig, run_dir: Path, target, data_cfg, device, stop, pause):
    from tlstudio.core.tasks.adaptation.rounds import finetune_rounds
    from tlstudio.core.tasks.semisupervised.pseudo import select_pseudo_labels

    rounds = min(config.selftrain_rounds, 2)  # each round is a full fine-tuning run
    outs = [run_dir / f"{ADAPTED_DIR}_round{r}" for r in range(1, rounds)] + [run_dir / ADAPTED_DIR]

    def select(r: int, probs):
        return select_pseudo_labels(probs, config.selftrain_threshold, fraction=r / rounds)

    def announce(r: int, n_rounds: int, n: int) -> str:
        return f"Self-training round {r}/{n_rounds}: fine-tuning on the source + {n} pseudo-labelled target images"

    info, stats = yield from finetune_rounds(config, run_dir / SOURCE_DIR, outs, target, select, domain="target",
                                             update={}, phase="adapt", announce=announce, data_cfg=data_cfg,
                                             device=device, stop=stop, pause=pause)
    return info, {"pseudo_labels": stats}


def _engine_path(config: AdaptConfig, run_dir: Path, base: Baseline, target, check, bn_ok: bool, stop, pause
                 ) -> Generator[Event, None, Adapted]:
    """Train in the shared loop, then AdaBN when asked, then score the adapted model (rank 0)."""
    from tlstudio.core.models.run_model import load_run_model

    info, extra = yield from train_adapted(config, run_dir, target, base.frozen, base.data_cfg, base.device,
                                           stop, pause)
    if info.status == "stopped":
        raise Stopped()
    model, _ = load_run_model(run_dir / ADAPTED_DIR)
    model.to(base.device)
    bn = uses_bn_adapt(config) and bn_ok
    if bn:
        yield from run_adabn(model, target, base.data_cfg, base.device, stop)
    f = yield from extract_all(model, base.split, target, check, base.data_cfg, base.device, stop, "adapted model")
    s = score_model(model, f)
    s["source_val_acc"] = info.best_val_acc if not bn else s["source_val_acc"]
    return Adapted(model=model, scores=s, history=runs.read_history(run_dir / ADAPTED_DIR), extra=extra)
