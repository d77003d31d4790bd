"""A semi-supervised run: a few labelled images + many unlabelled ones of the same kind.

RUN_DIR/
  run.json, config.json   task "semisupervised"; extra["semisupervised"]: both models' scores and
                          the pseudo-label statistics of every round
  model.safetensors       the model trained with the pseudo-labels (or FixMatch)
  labelled_only/          a complete classification run on the labelled images alone (the baseline)
  review.json             every unlabelled image with the final model's proposed label and confidence:
                          the review queue (accept / reject / relabel -> a CSV of labels)
Where the body is frozen (the default) pseudo-labelling runs on cached features: seconds (rank 0
only under torchrun). Where it trains, FixMatch (weak/strong consistency) or rounds of
fine-tuning run in the shared training loop on every process. The run scaffolding is shared with
the adaptation job (adaptation/scaffold.py); the methods are in semisupervised/methods.py.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from tlstudio.core.errors import UserError
from tlstudio.core.events import Event, Finished, Log, RunStarted, Warn
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks.adaptation.ranks import is_follower, on_main, share
from tlstudio.core.tasks.adaptation.scaffold import (Baseline, load_baseline, resume_job, run_job, train_baseline,
                                                     write_main_run, write_placeholder)
from tlstudio.core.tasks.semisupervised.config import SemiConfig
from tlstudio.core.tasks.semisupervised.methods import BASE_DIR, SEMI_DIR, Semi, method_of, semi_phase, train_semi

REVIEW_JSON = "review.json"


def run(config: SemiConfig, stop=None, pause=None) -> Generator[Event, None, runs.RunInfo]:
    return (yield from run_job(config, SemiConfig, "semisupervised", "semi", _run, stop, pause))


def resume(run_dir, stop=None, pause=None) -> Generator[Event, None, runs.RunInfo]:
    return (yield from resume_job(run_dir, SemiConfig, run, stop, pause))


def _unlabelled(config: SemiConfig, labelled_paths: set[str]) -> Generator[Event, None, list]:
    from tlstudio.core.data.dataset import Sample, scan_unlabelled

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
    t_start = time.time()
    base_dir = run_dir / BASE_DIR
    write_placeholder(run_dir, config, "semisupervised", "semi")
    yield Log("Phase 1 of 2: a model from the labelled images alone (the baseline)")
    base_info = yield from train_baseline(config, base_dir, stop, pause, "labelled_only", "labelled-only")
    split = runs.read_split(base_dir) if not is_follower() else None
    labelled = set() if split is None else {str(Path(s.path).resolve()) for s in [*split.train, *split.val,
                                                                                 *split.test]}
    unl = yield from on_main(functools.partial(_unlabelled, config, labelled))
    base = None if is_follower() else load_baseline(config, base_dir, base_info)
    method, frozen = share(None if base is None else (method_of(config), base.frozen))
    if base is None:  # another torchrun process: it trains the gradient phase with rank 0, scores nothing
        if method == "pseudolabel" and frozen:
            return base_info
        info, _ = yield from train_semi(config, run_dir, unl, [], method, frozen, None, None, stop, pause)
        return info

    if method == "fixmatch" and frozen:
        yield Log("FixMatch needs trainable body layers: training the last 2 layer groups")
    yield RunStarted(run_dir=str(run_dir), backbone=config.backbone, device=str(base.device), precision="fp32",
                     classes=tuple(base.classes), n_train=len(base.split.train), n_val=len(base.split.val),
                     epochs=config.head_epochs * config.rounds if method == "pseudolabel" and frozen else config.epochs,
                     batches_per_epoch=1, trainable_params=_phase_trainable(config, base, method),
                     total_params=sum(p.numel() for p in base.model.parameters()), phase="semi")
    yield Log(f"Phase 2 of 2: {'pseudo-labels' if method == 'pseudolabel' else 'FixMatch'} with "
              f"{len(unl)} unlabelled images")
    semi = yield from semi_phase(config, run_dir, base, unl, method, stop, pause)
    yield from _write_review(run_dir, base.classes, unl, semi, base, stop)
    shutil.copyfile(run_dir / SEMI_DIR / runs.BEST_WEIGHTS, run_dir / runs.BEST_WEIGHTS)
    return (yield from _finish(config, run_dir, base, unl, method, semi, t_start))


def _phase_trainable(config: SemiConfig, base: Baseline, method: str) -> int:
    """Parameters phase 2 trains: the head on cached features, FixMatch's last 2 groups on a frozen
    body, else what the run's freeze settings open (the rounds of fine-tuning use them)."""
    from tlstudio.core.models import layers

    groups = layers.layer_groups(base.model)
    if base.frozen:
        spec, custom = ("head" if method == "pseudolabel" else "last:2"), None
    else:
        spec, custom = config.freeze, config.frozen_groups
    trainable, _ = layers.plan_from_settings(spec, custom, groups)
    return sum(g.n_params for g, t in zip(groups, trainable) if t)


def _finish(config: SemiConfig, run_dir: Path, base: Baseline, unl: list, method: str, semi: Semi,
            t_start: float) -> Generator[Event, None, runs.RunInfo]:
    """The run's run.json (both models' scores, the pseudo-label statistics) and the last events."""
    b, a = semi.before.get("source_val_acc"), semi.after.get("source_val_acc")
    report = {"method": method, "frozen_body": base.frozen, "unlabelled_images": len(unl),
              "threshold": config.pseudo_threshold, "labelled_only": {"val_acc": b}, "semi": {"val_acc": a},
              "pseudo_labels": semi.stats}
    metrics = {k: float(v) for k, v in {"val_acc": a, "val_acc_labelled_only": b}.items() if v is not None}
    if semi.stats:
        metrics["pseudo_labels"] = float(semi.stats[-1].get("selected", 0))
    info = write_main_run(run_dir, config, base.spec, base.split, unl, status="finished", kind="semi",
                          task="semisupervised", data={"unlabeled": config.unlabeled_dir, "n_unlabeled": len(unl)},
                          metrics=metrics, extra={"semisupervised": report}, history=semi.history,
                          seconds=time.time() - t_start)
    msg = (f"Validation accuracy with the unlabelled images {a:.1%} (labelled alone {b:.1%}); "
           f"review the proposed labels in the review queue" if a is not None and b is not None else "Done")
    yield Log(msg)
    if a is not None and b is not None and a < b:  # say so: the run's model is the one with the unlabelled images
        yield Warn(f"The unlabelled images lowered the validation accuracy ({b:.1%} -> {a:.1%} on "
                   f"{len(base.split.val)} validation images): the model trained on the labelled images alone is "
                   f"in {run_dir / BASE_DIR} (open it in Runs to use it)"
                   + ("; pseudo-labels did better than FixMatch in our measurements" if method == "fixmatch" else ""))
    yield Finished(run_dir=str(run_dir), status="finished", best_epoch=info.best_epoch, best_val_acc=info.best_val_acc,
                   message=msg, metrics=dict(metrics), result={"method": method})
    return info


def _write_review(run_dir: Path, classes: list[str], unl: list, semi: Semi, base: Baseline, stop
                  ) -> Generator[Event, None, None]:
    """The review queue: every unlabelled image with the final model's proposal (rank 0)."""
    from tlstudio.core.tasks.adaptation.features import copy_linear, extract, probs_of
    from tlstudio.core.tasks.semisupervised.review import ReviewQueue

    if semi.head is not None:
        probs = probs_of(semi.head, semi.feats.ft)
        paths = [s.path for s in unl]
    else:
        ft, kept = extract(semi.model.to(base.device), unl, base.data_cfg, device=base.device, stop=stop)
        probs = probs_of(copy_linear(semi.model.get_classifier()).cpu(), ft)
        paths = [unl[i].path for i in kept]
    ReviewQueue.from_probs(classes, paths, probs).save(run_dir / REVIEW_JSON)
    yield Log(f"Review queue: {len(paths)} unlabelled images with proposed labels ({REVIEW_JSON})")


def evaluate(run_dir, data=None, progress=None) -> dict[str, Any]:
    from tlstudio.core.tasks.classification import evaluate as classify_eval

    run_dir = Path(run_dir)
    out = classify_eval(run_dir, data, progress=progress)
    out["semisupervised"] = runs.read_run(run_dir).extra.get("semisupervised", {})
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
