"""What a gradient-trained kind of learning plugs into the shared training loop.

The loop (training/loop.py) stays the same for every kind; an Objective decides how the model is
built, the loss of a batch, the validation metrics (a dictionary), which metric picks the best
epoch, what happens at the start and end of each epoch, and the final report. Classification is
the default; distillation, multi-task learning and domain adaptation are subclasses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ObjectiveContext:
    model: Any  # torch.nn.Module being trained (only the head in features mode; maybe DDP-wrapped)
    device: Any  # torch.device
    classes: list[str]
    precision: Any  # tlstudio.core.runtime.precision.PrecisionPlan (updated on an fp32 fallback)
    config: Any  # TrainConfig (or a subclass)
    train_samples: list[Any]  # idx in a training batch indexes this list; unlabelled have label -1
    features_mode: bool = False  # x are cached body features, model maps them to outputs
    run_dir: Path = field(default_factory=Path)
    class_counts: list[int] = field(default_factory=list)
    val_samples: list[Any] = field(default_factory=list)  # idx in a validation batch indexes this list
    full_model: Any = None  # the whole model (body + heads), also in features mode


class Objective:
    """Single-label classification: the defaults of every hook."""

    name = "classification"
    best_metric: tuple[str, str] = ("val_acc", "max")  # (metric, "max" | "min")
    tie_metric: tuple[str, str] = ("val_loss", "min")  # breaks ties of best_metric
    # May the loop split a step into micro-batches (training/loop.py: loss(...) per micro-batch,
    # each scaled by its share, gradients accumulated, one optimiser step)? Only when loss() is a
    # mean over the rows it is given and reads nothing else per call: no extra batch drawn per
    # call (target/unlabelled images), no per-call step counter, no per-task gradient surgery.
    micro_batches: bool = False

    def build_model(self, create_body: Callable[[int], Any], classes: list[str]) -> Any:
        """The model to train; ``create_body(n)`` gives the timm backbone with an n-output head."""
        return create_body(len(classes))

    def setup(self, ctx: ObjectiveContext) -> Iterable[Any]:
        """Prepare; may yield Progress/Log events (e.g. while caching teacher outputs)."""
        return ()

    def loss(self, model, x, y, idx):  # -> tuple[Tensor, dict[str, float]]
        raise NotImplementedError

    def loss_weight(self, y, idx) -> float:
        """The weight of these rows in a batch's mean loss (micro-batches are scaled by their share
        of it): their number by default; objectives that skip or weight rows say so here."""
        return float(len(idx))

    def validate(self, model, loader, ctx: ObjectiveContext) -> dict[str, float]:
        """Validation metrics of one epoch (reduced precision, as trained)."""
        from tlstudio.core.training.validation import validate

        loss, acc, f1 = validate(model, loader, len(ctx.classes), ctx.device, ctx.precision)
        return {"val_loss": loss, "val_acc": acc, "val_macro_f1": f1}

    def fit_head(self, ctx: ObjectiveContext, loaders: Any, stop: Any) -> Iterable[Any]:
        """A fresh run in features mode: fit the head on the cached features before the first
        epoch (training/head_fit.py). Only plain classification does; other losses start as built."""
        return ()

    def on_epoch_start(self, epoch: int, ctx: ObjectiveContext) -> Iterable[Any]:
        return ()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], ctx: ObjectiveContext) -> Iterable[Any]:
        return ()

    def final_eval(self, run_dir: Path, info: Any, split: Any, device: Any) -> Iterable[Any]:
        """Evaluate the best weights once training ended (eval.json)."""
        from tlstudio.core.training.validation import final_eval

        return final_eval(run_dir, info, split, device)

    def extra_modules(self) -> list[Any]:
        """Modules trained together with the model (e.g. adapters, discriminators)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Objective state saved in last.pt for resume (task weights, pseudo-labels ...)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def supports_features_mode(self) -> bool:
        return True

    def forward_student(self, model, x):
        return model(x)


class ClassificationObjective(Objective):
    """Cross-entropy with label smoothing and optional class weights; rows with y == -1 ignored."""

    name = "classification"
    micro_batches = True  # a mean over the batch's rows: micro-batches give the same gradients

    def __init__(self, label_smoothing: float = 0.0, class_weights: bool = False) -> None:
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights
        self._criterion = None

    def setup(self, ctx: ObjectiveContext) -> Iterable[Any]:
        import torch

        weight = None
        if self.class_weights and ctx.class_counts:
            counts = torch.tensor(ctx.class_counts, dtype=torch.float32).clamp(min=1)
            # inverse frequency, normalised so the mean weight is 1
            weight = (counts.sum() / (len(counts) * counts)).to(ctx.device)
        self._criterion = torch.nn.CrossEntropyLoss(
            weight=weight, label_smoothing=self.label_smoothing, ignore_index=-1
        )
        return ()

    def loss(self, model, x, y, idx):
        logits = self.forward_student(model, x)
        if bool((y >= 0).any()):
            loss = self._criterion(logits.float(), y)
        else:  # a batch of unlabelled images only: nothing to learn from here
            loss = logits.float().sum() * 0.0
        return loss, {}

    def fit_head(self, ctx: ObjectiveContext, loaders: Any, stop: Any) -> Iterable[Any]:
        from tlstudio.core.training.head_fit import fit_head_on_cache

        if getattr(ctx.config, "init", None) == "run":
            from tlstudio.core.models.backbones import run_body_trained

            # a body fine-tuned on other classes: measured to lose there (head_fit.py); a run that
            # trained only its head kept its backbone's body, where the fit wins
            if run_body_trained(ctx.config.init_run):
                return ()
        weight = self._criterion.weight if self._criterion is not None else None
        return fit_head_on_cache(ctx.full_model, loaders, label_smoothing=self.label_smoothing,
                                 class_weight=weight, stop=stop, seed=int(getattr(ctx.config, "seed", 0)))

    def loss_weight(self, y, idx) -> float:
        """Cross-entropy's mean divides by the class weights of the labelled rows (unlabelled: 0)."""
        labelled = y[y >= 0]
        w = self._criterion.weight if self._criterion is not None else None
        return float(w[labelled].sum()) if w is not None else float(labelled.numel())


def better(value: float, best: float | None, mode: str) -> bool:
    """Is ``value`` strictly better than ``best`` for a metric maximised or minimised?"""
    if best is None:
        return True
    return value > best + 1e-9 if mode == "max" else value < best - 1e-9
