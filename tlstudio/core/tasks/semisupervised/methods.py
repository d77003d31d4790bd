"""The semi-supervised phase (phase 2 of a semi-supervised run):

- pseudo-labels on cached features (frozen body: a fresh head per round; rank 0 only);
- FixMatch in the shared training loop (the body trains; every torchrun process);
- pseudo-labels by rounds of fine-tuning (the body trains; every process, rank 0's labels).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Generator
from pathlib import Path
from typing import Any

from tlstudio.core.events import Event, Log, Warn
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks.adaptation.ranks import Stopped
from tlstudio.core.tasks.adaptation.scaffold import Baseline, base_config, set_head, sub_run, write_model_folder
from tlstudio.core.tasks.adaptation.scoring import Feats, extract_all, score, score_model
from tlstudio.core.tasks.semisupervised.config import DEFAULT_THRESHOLD, SemiConfig

BASE_DIR = "labelled_only"
SEMI_DIR = "semi"


@dataclasses.dataclass
class Semi:
    """What phase 2 gave: the final model, its head on cached features (feature path only),
    the scores before and after, the history and the pseudo-label statistics per round."""

    model: Any
    head: Any
    feats: Feats
    before: dict[str, Any]
    after: dict[str, Any]
    history: list[dict]
    stats: list[dict]


def method_of(config: SemiConfig) -> str:
    """"pseudolabel" or "fixmatch". "auto" is pseudo-labels, on cached features with a frozen body
    and by rounds of fine-tuning when the body trains. FixMatch, the earlier choice for a training
    body, lost to the labelled images alone on real photos with 2 labels per class (-2.5 and -2.2
    points on 400 test images, two splits; 60 epochs: -3.3), where rounds of fine-tuning on
    pseudo-labels gained +10.8 and +9.6 (benchmarks/RESULTS.md); it stays a choice."""
    return config.method if config.method != "auto" else "pseudolabel"


def semi_phase(config: SemiConfig, run_dir: Path, base: Baseline, unl: list, method: str, stop, pause
               ) -> Generator[Event, None, Semi]:
    """Phase 2 on rank 0: scores before, the method, scores after; run_dir/semi holds the result."""
    from tlstudio.core.models.run_model import load_run_model
    from tlstudio.core.tasks.adaptation.features import copy_linear

    feats = yield from extract_all(base.model, base.split, unl, [], base.data_cfg, base.device, stop,
                                   "labelled and unlabelled images")
    before = score_model(base.model, feats)
    if base.info.best_val_acc is not None:
        before["source_val_acc"] = base.info.best_val_acc
    head0 = copy_linear(base.model.get_classifier()).cpu()
    if method == "pseudolabel" and base.frozen:
        head, history, stats = yield from pseudo_label_rounds(config, head0, feats, base.class_counts(), stop,
                                                           base.classes)
        final = copy.deepcopy(base.model).cpu()
        set_head(final, head)
        after = score(head, feats)
        write_model_folder(run_dir / SEMI_DIR, final, base.spec, config.model_dump(mode="json"),
                           task="semisupervised", kind="semi", history=history,
                           metrics={"val_acc": after["source_val_acc"]})
        return Semi(final, head, feats, before, after, history, stats)
    info, stats = yield from train_semi(config, run_dir, unl, base.class_counts(), method, base.frozen,
                                        base.data_cfg, base.device, stop, pause)
    if info.status == "stopped":
        raise Stopped()
    model, _ = load_run_model(run_dir / SEMI_DIR)
    return Semi(model, None, feats, before, {"source_val_acc": info.best_val_acc},
                runs.read_history(run_dir / SEMI_DIR), stats)


def pseudo_label_rounds(config: SemiConfig, head0, feats: Feats, counts: list[int], stop,
                        classes: list[str] | None = None
                        ) -> Generator[Event, None, tuple[Any, list[dict], list[dict]]]:
    """Rounds of: propose labels with the current head, keep the confident ones within each class's
    cap, retrain a fresh head on labelled + pseudo-labelled features."""
    from tlstudio.core.tasks.adaptation.rounds import head_rounds
    from tlstudio.core.tasks.semisupervised.pseudo import class_caps, select_pseudo_labels

    caps = class_caps(len(feats.ft), counts, len(counts), config.cap_factor)
    common = dict(epochs=config.head_epochs, lr=config.lr or 1e-3, batch_size=min(config.batch_size, 64),
                  weight_decay=config.weight_decay, label_smoothing=config.label_smoothing, seed=config.seed,
                  pseudo_weight=config.unlabeled_weight)

    def select(r: int, probs):
        return select_pseudo_labels(probs, config.pseudo_threshold, caps=caps, per_class=config.class_thresholds)

    def announce(r: int, pl, probs) -> list[Event]:
        out: list[Event] = []
        if not pl.index:
            top = float(probs.max(1).values.max()) if len(probs) else 0.0
            advice = ("; the next round proposes again with a head retrained on the labelled images"
                      if r < config.rounds else "")
            if config.pseudo_threshold > DEFAULT_THRESHOLD:
                advice += f"; a lower threshold may help ({DEFAULT_THRESHOLD} did best in our measurements)"
            out.append(Warn(f"Round {r}: no unlabelled image reached {config.pseudo_threshold:.0%} confidence (the "
                            f"most confident is {top:.0%}), so no pseudo-labels this round{advice}"))
        out.append(Log(f"Round {r}/{config.rounds}: {len(pl.index)} of {len(probs)} unlabelled images pseudo-labelled "
                       f"(per class {pl.per_class}, each class at most its share of the unlabelled images); "
                       f"confidence bar {config.pseudo_threshold:.0%}" + lowered_text(pl, classes or [])))
        return out

    return (yield from head_rounds(head0, feats, feats.ft, feats.fc, config.rounds, select, announce, common, stop))


def lowered_text(pl, classes: list[str]) -> str:
    """", lowered for the classes the model is rarely sure of: cat 31%, dog 0%" when per-class bars
    were lowered, else ""."""
    low = pl.lowered()
    if not low:
        return ""
    return ", lowered for the classes the model is rarely sure of: " + ", ".join(
        f"{classes[k] if k < len(classes) else k} {pl.class_thresholds[k]:.0%}" for k in low)


def train_semi(config: SemiConfig, run_dir: Path, unl: list, counts: list[int], method: str, frozen: bool,
               data_cfg, device, stop, pause) -> Generator[Event, None, tuple[runs.RunInfo, list[dict]]]:
    """FixMatch, or pseudo-labels by rounds of fine-tuning, in the shared training loop on every
    process under torchrun (``counts``/``data_cfg``/``device``: rank 0's, for the proposals)."""
    from tlstudio.core.tasks.semisupervised.fixmatch import FixMatchObjective

    update = {"freeze": "last:2", "frozen_groups": None} if frozen else {}
    semi_dir = run_dir / SEMI_DIR
    if method == "fixmatch":
        # FixMatch's own 0.95 (Sohn et al.) unless the user set a threshold: the 0.5 default was tuned
        # for pseudo-labels from a head trained on a few labels, not for weak-view predictions
        thr = config.pseudo_threshold if "pseudo_threshold" in config.model_fields_set else 0.95
        obj = FixMatchObjective(unl, threshold=thr, weight=config.unlabeled_weight,
                                label_smoothing=config.label_smoothing)
        info = yield from sub_run(base_config(config, semi_dir, **update), stop, pause, "semi", objective=obj)
        return info, []
    from tlstudio.core.tasks.adaptation.rounds import finetune_rounds
    from tlstudio.core.tasks.semisupervised.pseudo import class_caps, select_pseudo_labels

    rounds = min(config.rounds, 2)
    outs = [run_dir / f"{SEMI_DIR}_round{r}" for r in range(1, rounds)] + [semi_dir]

    def select(r: int, probs):
        caps = class_caps(len(unl), counts, len(counts), config.cap_factor)
        return select_pseudo_labels(probs, config.pseudo_threshold, caps=caps, per_class=config.class_thresholds)

    def announce(r: int, n_rounds: int, n: int) -> str:
        return f"Round {r}/{n_rounds}: fine-tuning on the labelled + {n} pseudo-labelled images"

    return (yield from finetune_rounds(config, run_dir / BASE_DIR, outs, unl, select, domain=None, update=update,
                                       phase="semi", announce=announce, data_cfg=data_cfg, device=device,
                                       stop=stop, pause=pause))
