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
labels only score the two models. The scaffolding (run folder, baseline, sub-runs) is shared with
the semi-supervised job (scaffold.py); the adaptation methods are in methods.py; torchrun: ranks.py.
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
from tlstudio.core.tasks.adaptation.config import AdaptConfig, uses_bn_adapt
from tlstudio.core.tasks.adaptation.methods import ADAPTED_DIR, SOURCE_DIR, Adapted, adapt, train_adapted, uses_engine
from tlstudio.core.tasks.adaptation.ranks import is_follower, on_main, share
from tlstudio.core.tasks.adaptation.scaffold import (Baseline, load_baseline, resume_job, run_job, train_baseline,
                                                     write_main_run, write_placeholder)
from tlstudio.core.tasks.adaptation.scoring import Feats, as_metrics, describe, extract_all, score_model

METHOD_TITLES = {"adabn": "AdaBN (BatchNorm statistics of the target)", "mcc": "MCC (minimum class confusion)",
                 "dann": "DANN (domain-adversarial)", "selftrain": "self-training (class-balanced pseudo-labels)"}


def run(config: AdaptConfig, stop=None, pause=None) -> Generator[Event, None, runs.RunInfo]:
    """Train the source-only baseline, adapt it to the target images, keep the better one."""
    return (yield from run_job(config, AdaptConfig, "adaptation", "adapt", _run, stop, pause))


def resume(run_dir, stop=None, pause=None) -> Generator[Event, None, runs.RunInfo]:
    return (yield from resume_job(run_dir, AdaptConfig, run, stop, pause))


def _run(config: AdaptConfig, run_dir: Path, stop, pause) -> Generator[Event, None, runs.RunInfo]:
    t_start = time.time()
    # no pre-fitted head (training/head_fit.py) in any sub-run: adapting from a converged source
    # head lost. No-flag MCC run on benchmarks/adapt_data.py, 400 target test photos: 47.75% adapted
    # (source-only 50.5%) with the fit, 57.0% adapted (source-only 45.25%) without it
    config = config.model_copy(update={"fit_head": False})
    yield Log(f"Domain adaptation by {METHOD_TITLES[config.adapt]}: {config.data_dir} (labelled) -> "
              f"{config.target_dir}")
    write_placeholder(run_dir, config, "adaptation", "adapt")
    yield Log("Phase 1 of 2: the source-only model (the baseline every adaptation is compared with)")
    base_info = yield from train_baseline(config, run_dir / SOURCE_DIR, stop, pause, "source_only", "source-only")
    target, check = yield from on_main(functools.partial(_scan_side, config, list(base_info.model.classes)))
    base = None if is_follower() else load_baseline(config, run_dir / SOURCE_DIR, base_info)
    engine, frozen = share(None if base is None else (uses_engine(config, base.frozen), base.frozen))
    if base is None:  # another torchrun process: it trains the adaptation with rank 0, scores nothing
        if not engine:
            return base_info
        info, _ = yield from train_adapted(config, run_dir, target, frozen, None, None, stop, pause)
        return info

    feats, unadapted, gap = yield from _unadapted(config, base, target, check, stop)
    _write_main(run_dir, config, base, target, "running", {}, {"method": config.adapt, "domain_gap": gap,
                                                               "unadapted": unadapted})
    yield RunStarted(run_dir=str(run_dir), backbone=config.backbone, device=str(base.device), precision="fp32",
                     classes=tuple(base.classes), n_train=len(base.split.train), n_val=len(base.split.val),
                     epochs=_adapt_epochs(config, base.frozen), batches_per_epoch=1, trainable_params=0,
                     total_params=sum(p.numel() for p in base.model.parameters()), phase="adapt")
    yield Log(f"Phase 2 of 2: adapting to {len(target)} unlabelled target images")
    adapted = yield from adapt(config, run_dir, base, feats, unadapted, target, check, stop, pause)
    return (yield from _keep_better(config, run_dir, base, target, check, gap, unadapted, adapted, t_start))


def _scan_side(config: AdaptConfig, classes: list[str]) -> Generator[Event, None, tuple[list, list]]:
    """(target images without labels, check set) of the run."""
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


def _unadapted(config: AdaptConfig, base: Baseline, target, check, stop
               ) -> Generator[Event, None, tuple[Feats, dict, dict]]:
    """Features of the unadapted body, its scores and the domain gap."""
    from tlstudio.core.tasks.adaptation import domain_gap

    feats = yield from extract_all(base.model, base.split, target, check, base.data_cfg, base.device, stop,
                                   "unadapted model")
    unadapted = score_model(base.model, feats)
    if base.info.best_val_acc is not None:
        unadapted["source_val_acc"] = base.info.best_val_acc
    gap = domain_gap.gap_from_features(feats.fs if len(feats.fs) else feats.fv, feats.ft, seed=config.seed)
    if gap["score"] is not None:
        yield Log(f"Domain gap {gap['score']:.2f} (a linear classifier tells source from target "
                  f"{gap['domain_acc']:.0%} of the time): {gap['sentence']}")
    yield Log(describe("Unadapted", unadapted))
    return feats, unadapted, gap


def _keep_better(config: AdaptConfig, run_dir: Path, base: Baseline, target, check, gap: dict, unadapted: dict,
                 adapted: Adapted, t_start: float) -> Generator[Event, None, runs.RunInfo]:
    """Choose between the adapted and the unadapted model, make it the run's model, report."""
    from tlstudio.core.tasks.adaptation import adabn, selection

    yield Log(describe("Adapted", adapted.scores))
    if adapted.model is None:
        choice = {"selected": "unadapted", "by": "not applicable", "reason": adapted.extra.get("not_applicable", "")}
    else:
        choice = selection.choose(unadapted, adapted.scores)
    yield (Warn if choice.get("doubtful") or choice["selected"] == "unadapted" else Log)(choice["reason"])
    keep_adapted = choice["selected"] == "adapted" and adapted.model is not None
    src = run_dir / (ADAPTED_DIR if keep_adapted else SOURCE_DIR)
    shutil.copyfile(src / runs.BEST_WEIGHTS, run_dir / runs.BEST_WEIGHTS)
    bn_ok = adabn.applicability(base.model, config.backbone)[0]
    report = {"method": config.adapt, "domain_gap": gap, "unadapted": unadapted, "adapted": adapted.scores,
              "selection": choice, "frozen_body": base.frozen, "bn_adapt": bool(uses_bn_adapt(config) and bn_ok),
              "target_images": len(target), "check_images": len(check), **adapted.extra}
    info = _write_main(run_dir, config, base, target, "finished", as_metrics(adapted.scores if keep_adapted
                                                                            else unadapted), report,
                       adapted.history, seconds=time.time() - t_start)
    a, u = adapted.scores.get("check_acc"), unadapted.get("check_acc")
    gain = a - u if a is not None and u is not None else None
    yield Finished(run_dir=str(run_dir), status="finished", best_epoch=info.best_epoch, best_val_acc=info.best_val_acc,
                   message=choice["reason"], metrics=dict(info.metrics),
                   result={"selected": choice["selected"], "check_gain": gain, "method": config.adapt})
    return info


def _adapt_epochs(config: AdaptConfig, frozen: bool) -> int:
    if config.adapt == "adabn":
        return 1
    if frozen and config.adapt in ("mcc", "selftrain"):
        return config.head_epochs * (config.selftrain_rounds if config.adapt == "selftrain" else 1)
    return config.epochs * (min(config.selftrain_rounds, 2) if config.adapt == "selftrain" else 1)


def _write_main(run_dir: Path, config: AdaptConfig, base: Baseline, target, status: str, metrics: dict,
                report: dict, history: list[dict] | None = None, seconds: float | None = None) -> runs.RunInfo:
    return write_main_run(run_dir, config, base.spec, base.split, target, status=status, kind="adapt",
                          task="adaptation", data={"target": config.target_dir, "check": config.check_dir,
                                                   "n_target": len(target)},
                          metrics=metrics, extra={"adaptation": report}, history=history, seconds=seconds)


# ------------------------------------------------------------------ eval


def evaluate(run_dir, data=None, progress=None) -> dict[str, Any]:
    """On a labelled folder (``data``) or the check set: the kept model, and both models side by
    side when the run has a check set; without either, the source validation split."""
    from tlstudio.core.tasks.classification import evaluate as classify_eval

    run_dir = Path(run_dir)
    info = runs.read_run(run_dir)
    check = data or info.config.get("check_dir")
    out = classify_eval(run_dir, check, progress=progress)
    out["adaptation"] = info.extra.get("adaptation", {})
    if check:
        out["source"] = str(check)
        cmp = {}
        for name, folder in (("unadapted", run_dir / SOURCE_DIR), ("adapted", run_dir / ADAPTED_DIR)):
            if runs.is_run_dir(folder) and (folder / runs.BEST_WEIGHTS).is_file():
                cmp[name] = classify_eval(folder, check)["metrics"]["accuracy"]
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
