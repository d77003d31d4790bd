"""A semi-supervised run: a few labelled images + many unlabelled ones of the same kind.

RUN_DIR/
  run.json, config.json   task "semisupervised"; extra["semisupervised"]: both models' scores and
                          the pseudo-label statistics of every round
  model.safetensors       the model trained with the pseudo-labels (or FixMatch)
  labelled_only/          a complete classification run on the labelled images alone (the baseline)
  review.json             every unlabelled image with the final model's proposed label and confidence:
                          the review queue (accept / reject / relabel -> a CSV of labels)
Where the body is frozen (the default) pseudo-labelling runs on cached features: seconds. Where it
trains, FixMatch (weak/strong consistency) runs in the shared training loop.
"""

from __future__ import annotations

import copy
import shutil
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from tlstudio.core.errors import UserError
from tlstudio.core.events import Event, Finished, Log, RunStarted
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks.adaptation.job import (
    _extract_all,
    _head_epochs,
    _new_run_dir,
    _set_status,
    _Stopped,
    base_config,
    body_is_frozen,
    score,
    set_head,
    sub_run,
    write_placeholder,
)
from tlstudio.core.tasks.semisupervised.config import SemiConfig

BASE_DIR = "labelled_only"
SEMI_DIR = "semi"
REVIEW_JSON = "review.json"


def run(config: SemiConfig, stop: threading.Event | None = None, pause: threading.Event | None = None
        ) -> Generator[Event, None, runs.RunInfo]:
    stop = stop or threading.Event()
    pause = pause or threading.Event()
    if not isinstance(config, SemiConfig):
        config = SemiConfig.model_validate(config.model_dump() if hasattr(config, "model_dump") else config)
    run_dir = _new_run_dir(config, "semi")
    resuming = runs.is_run_dir(run_dir) and (run_dir / runs.CONFIG_JSON).is_file()
    if resuming and runs.read_run(run_dir).task != "semisupervised":
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
        yield Finished(run_dir=str(run_dir), status="stopped", best_epoch=None, best_val_acc=None,
                       message="Stopped; resume the run to continue (finished phases are kept)")
        return runs.read_run(run_dir)
    except BaseException:
        _set_status(run_dir, "failed")
        raise


def resume(run_dir, stop=None, pause=None) -> Generator[Event, None, runs.RunInfo]:
    run_dir = Path(run_dir)
    try:
        config = SemiConfig.from_json_file(run_dir / runs.CONFIG_JSON)
    except Exception as exc:
        raise UserError(f"{run_dir / runs.CONFIG_JSON}: cannot read the run's settings: {exc}") from exc
    return (yield from run(config.model_copy(update={"out_dir": str(run_dir)}), stop, pause))


def _unlabelled(config: SemiConfig, labelled_paths: set[str]) -> Generator[Event, None, list]:
    from tlstudio.core.data.dataset import Sample, scan_unlabelled
    from tlstudio.core.events import Warn

    yield Log(f"Scanning the unlabelled images in {config.unlabeled_dir}")
    found, skipped = scan_unlabelled(config.unlabeled_dir)
    for s in skipped[:20]:
        yield Warn(f"Skipped unlabelled image {s.path}: {s.reason}", path=s.path)
    out = [Sample(s.path, -1) for s in found if str(Path(s.path).resolve()) not in labelled_paths]
    if len(out) < len(found):
        yield Log(f"{len(found) - len(out)} unlabelled images are already labelled in the data folder: left out")
    if not out:
        raise UserError(f"{config.unlabeled_dir}: no usable unlabelled images")
    return out


def _run(config: SemiConfig, run_dir: Path, stop, pause) -> Generator[Event, None, runs.RunInfo]:
    from tlstudio.core.models.backbones import data_config
    from tlstudio.core.models.run_model import load_run_model
    from tlstudio.core.runtime import precision
    from tlstudio.core.tasks.adaptation.features import copy_linear

    t_start = time.time()
    base_dir = run_dir / BASE_DIR
    write_placeholder(run_dir, config, "semisupervised", "semi")
    yield Log("Phase 1 of 2: a model from the labelled images alone (the baseline)")
    base = yield from sub_run(base_config(config, base_dir), stop, pause, "labelled_only")
    if base.status == "stopped":
        raise _Stopped()
    if base.status not in ("finished", "early_stopped"):
        raise UserError(f"The labelled-only training ended as {base.status}; see {base_dir / runs.LOG_TXT}")
    split = runs.read_split(base_dir)
    labelled = {str(Path(s.path).resolve()) for s in list(split.train) + list(split.val) + list(split.test)}
    unl = yield from _unlabelled(config, labelled)
    classes = list(base.model.classes)
    device = precision.resolve_device(config.device)
    model, info0 = load_run_model(base_dir)
    model.to(device).eval()
    spec = info0.model
    data_cfg = data_config(model, config.image_size)
    frozen = body_is_frozen(config, model)
    method = config.method if config.method != "auto" else ("pseudolabel" if frozen else "fixmatch")
    if method == "fixmatch" and frozen:
        yield Log("FixMatch needs trainable body layers: training the last 2 layer groups")
    counts = [0] * len(classes)
    for s in split.train:
        counts[s.label] += 1

    yield RunStarted(run_dir=str(run_dir), backbone=config.backbone, device=str(device), precision="fp32",
                     classes=tuple(classes), n_train=len(split.train), n_val=len(split.val),
                     epochs=config.head_epochs * config.rounds if method == "pseudolabel" and frozen else config.epochs,
                     batches_per_epoch=1, trainable_params=0,
                     total_params=sum(p.numel() for p in model.parameters()), phase="semi")
    yield Log(f"Phase 2 of 2: {'pseudo-labels' if method == 'pseudolabel' else 'FixMatch'} with "
              f"{len(unl)} unlabelled images")
    feats = yield from _extract_all(model, split, unl, [], data_cfg, device, stop, "labelled and unlabelled images")
    head0 = copy_linear(model.get_classifier()).cpu()
    before = score(head0, feats)
    before["source_val_acc"] = base.best_val_acc if base.best_val_acc is not None else before["source_val_acc"]
    history: list[dict] = []
    stats: list[dict] = []
    semi_dir = run_dir / SEMI_DIR
    if method == "pseudolabel" and frozen:
        head, history, stats = yield from pseudo_label_rounds(config, head0, feats, counts, stop)
        final = copy.deepcopy(model).cpu()
        set_head(final, head)
        after = score(head, feats)
        from tlstudio.core.tasks.adaptation.job import write_model_folder

        write_model_folder(semi_dir, final, spec, config.model_dump(mode="json"), task="semisupervised",
                           kind="semi", history=history, metrics={"val_acc": after["source_val_acc"]})
        final_feats_head = head
    else:
        final, after, history, stats = yield from _engine_semi(config, run_dir, semi_dir, split, unl, counts, method,
                                                                frozen, data_cfg, device, stop, pause)
        final_feats_head = None
    # the review queue: every unlabelled image with the final model's proposal
    yield from _write_review(run_dir, classes, unl, feats, final_feats_head, final, data_cfg, device, stop)
    shutil.copyfile(semi_dir / runs.BEST_WEIGHTS, run_dir / runs.BEST_WEIGHTS)
    import dataclasses

    runs.write_split(run_dir, dataclasses.replace(split, train=list(split.train) + list(unl)))
    if history:
        runs.write_history(run_dir, history)
    report = {"method": method, "frozen_body": frozen, "unlabelled_images": len(unl), "threshold": config.pseudo_threshold,
              "labelled_only": {"val_acc": before["source_val_acc"]},
              "semi": {"val_acc": after["source_val_acc"]}, "pseudo_labels": stats}
    metrics = {k: float(v) for k, v in {"val_acc": after["source_val_acc"],
                                        "val_acc_labelled_only": before["source_val_acc"]}.items() if v is not None}
    if stats:
        metrics["pseudo_labels"] = float(stats[-1].get("selected", 0))
    info = runs.RunInfo(kind="semi", task="semisupervised", name=run_dir.name, status="finished",
                        config=config.model_dump(mode="json"), model=spec, versions=runs.versions(),
                        data={"root": config.data_dir, "unlabeled": config.unlabeled_dir,
                              "n_train": len(split.train), "n_val": len(split.val), "n_unlabeled": len(unl)},
                        seed=config.seed, epochs_done=len(history), best_epoch=len(history) - 1 if history else None,
                        best_val_acc=metrics.get("val_acc"), metrics=metrics, extra={"semisupervised": report})
    info.timings["total_s"] = time.time() - t_start
    runs.write_run(run_dir, info)
    b, a = before["source_val_acc"], after["source_val_acc"]
    msg = (f"Validation accuracy with the unlabelled images {a:.1%} (labelled alone {b:.1%}); "
           f"review the proposed labels in the review queue" if a is not None and b is not None else "Done")
    yield Log(msg)
    yield Finished(run_dir=str(run_dir), status="finished", best_epoch=info.best_epoch, best_val_acc=info.best_val_acc,
                   message=msg, metrics=dict(metrics), result={"method": method})
    return info


def pseudo_label_rounds(config: SemiConfig, head0, feats, counts: list[int], stop
                        ) -> Generator[Event, None, tuple[Any, list[dict], list[dict]]]:
    """Rounds of: propose labels with the current head, keep the confident ones within each class's
    cap, retrain a fresh head on labelled + pseudo-labelled features."""
    from tlstudio.core.tasks.adaptation.features import probs_of
    from tlstudio.core.tasks.semisupervised.pseudo import class_caps, select_pseudo_labels

    caps = class_caps(len(feats.ft), counts, len(counts), config.cap_factor)
    common = dict(epochs=config.head_epochs, lr=config.lr or 1e-3, batch_size=min(config.batch_size, 64),
                  weight_decay=config.weight_decay, label_smoothing=config.label_smoothing, seed=config.seed,
                  pseudo_weight=config.unlabeled_weight)
    current, history, stats = head0, [], []
    for r in range(1, config.rounds + 1):
        pl = select_pseudo_labels(probs_of(current, feats.ft), config.pseudo_threshold, caps=caps)
        stats.append({"round": r, **pl.to_json()})
        if not pl.index:
            from tlstudio.core.events import Warn

            top = float(probs_of(current, feats.ft).max(1).values.max()) if len(feats.ft) else 0.0
            yield Warn(f"Round {r}: no unlabelled image reached {config.pseudo_threshold:.0%} confidence (the most "
                       f"confident is {top:.0%}), so no pseudo-labels; lower the threshold (0.5 did best in our "
                       "measurements)")
        yield Log(f"Round {r}/{config.rounds}: {len(pl.index)} of {len(feats.ft)} unlabelled images above "
                  f"{config.pseudo_threshold:.0%} confidence within the class caps (per class {pl.per_class})")
        fresh = copy.deepcopy(head0)
        rows = yield from _head_epochs(fresh, feats, feats.ft, feats.fc, len(history),
                                       config.head_epochs * config.rounds,
                                       dict(common, pseudo_idx=pl.index, pseudo_y=pl.labels), stop)
        history += rows
        current = fresh
    return current, history, stats


def _engine_semi(config, run_dir, semi_dir, split, unl, counts, method, frozen, data_cfg, device, stop, pause):
    from tlstudio.core.data.dataset import Sample
    from tlstudio.core.models.run_model import load_run_model
    from tlstudio.core.tasks.adaptation.features import copy_linear, extract, probs_of
    from tlstudio.core.tasks.semisupervised.fixmatch import FixMatchObjective
    from tlstudio.core.tasks.semisupervised.pseudo import class_caps, select_pseudo_labels

    update = {"freeze": "last:2", "frozen_groups": None} if frozen else {}
    stats: list[dict] = []
    if method == "fixmatch":
        # FixMatch's own 0.95 (Sohn et al.) unless the user set a threshold: the 0.5 default was tuned
        # for pseudo-labels from a head trained on a few labels, not for weak-view predictions
        thr = config.pseudo_threshold if "pseudo_threshold" in config.model_fields_set else 0.95
        obj = FixMatchObjective(unl, threshold=thr, weight=config.unlabeled_weight,
                                label_smoothing=config.label_smoothing)
        info = yield from sub_run(base_config(config, semi_dir, **update), stop, pause, "semi", objective=obj)
    else:  # pseudo-labels with the body training: rounds of fine-tuning
        prev = run_dir / BASE_DIR
        caps = class_caps(len(unl), counts, len(counts), config.cap_factor)
        rounds = min(config.rounds, 2)
        for r in range(1, rounds + 1):
            m, _ = load_run_model(prev)
            ft, kept = extract(m.to(device), unl, data_cfg, device=device, stop=stop)
            pl = select_pseudo_labels(probs_of(copy_linear(m.get_classifier()).cpu(), ft), config.pseudo_threshold,
                                      caps=caps)
            stats.append({"round": r, **pl.to_json()})
            extra = [Sample(unl[kept[i]].path, lab) for i, lab in zip(pl.index, pl.labels)]
            yield Log(f"Round {r}/{rounds}: fine-tuning on the labelled + {len(extra)} pseudo-labelled images")
            out = semi_dir if r == rounds else run_dir / f"{SEMI_DIR}_round{r}"
            info = yield from sub_run(base_config(config, out, **update), stop, pause, "semi", extra_train=extra)
            if info.status == "stopped":
                break
            prev = out
    if info.status == "stopped":
        raise _Stopped()
    model, _ = load_run_model(semi_dir)
    after = {"source_val_acc": info.best_val_acc}
    return model, after, runs.read_history(semi_dir), stats


def _write_review(run_dir, classes, unl, feats, head, model, data_cfg, device, stop):
    from tlstudio.core.tasks.adaptation.features import copy_linear, extract, probs_of
    from tlstudio.core.tasks.semisupervised.review import ReviewQueue

    if head is not None:
        probs = probs_of(head, feats.ft)
        paths = [s.path for s in unl]
    else:
        ft, kept = extract(model.to(device), unl, data_cfg, device=device, stop=stop)
        probs = probs_of(copy_linear(model.get_classifier()).cpu(), ft)
        paths = [unl[i].path for i in kept]
    ReviewQueue.from_probs(classes, paths, probs).save(run_dir / REVIEW_JSON)
    yield Log(f"Review queue: {len(paths)} unlabelled images with proposed labels ({REVIEW_JSON})")


def evaluate(run_dir, data=None, progress=None) -> dict[str, Any]:
    from tlstudio.core.tasks.classification import evaluate as classify_eval

    run_dir = Path(run_dir)
    out = classify_eval(run_dir, data, progress=progress)
    info = runs.read_run(run_dir)
    rep = info.extra.get("semisupervised", {})
    out["semisupervised"] = rep
    base = run_dir / BASE_DIR
    if runs.is_run_dir(base) and (base / runs.BEST_WEIGHTS).is_file():
        r = classify_eval(base, data)  # the baseline has the same validation split
        out["comparison"] = {"labelled_only": r["metrics"]["accuracy"], "with_unlabelled": out["metrics"]["accuracy"]}
        out["metrics"]["accuracy_labelled_only"] = r["metrics"]["accuracy"]
    return out






def eval_lines(r: dict[str, Any]) -> list[str]:
    from tlstudio.core.tasks.classification import eval_lines as classify_lines

    lines = []
    cmp = r.get("comparison")
    if cmp:
        lines.append(f"Labelled images alone {cmp['labelled_only']:.1%}, with the unlabelled images "
                     f"{cmp['with_unlabelled']:.1%}")
    for st in (r.get("semisupervised") or {}).get("pseudo_labels", []):
        lines.append(f"Round {st['round']}: {st['selected']} pseudo-labels, per class {st['per_class']}")
    return lines + classify_lines(r)
