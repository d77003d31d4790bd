"""The multi-task objective: masked per-task losses, weighting, PCGrad, per-task validation.

Loss per task, over the rows of the batch that HAVE a label for it (a missing label masks the
row for that task only): categorical cross-entropy (label smoothing as configured), multi-label
binary cross-entropy, numeric Huber on z-scored targets. A task with no labelled row in the
batch contributes nothing. validate() gives per-task metrics (``val_acc/<task>``,
``val_macro_f1/<task>``, ``val_mae/<task>``, ``val_r2/<task>``, ``val_loss/<task>``), the task
weights of the epoch (``weight/<task>``) and ``val_score``: the mean of per-task scores in 0..1
(accuracy; macro-F1 for multi-label; R^2 clipped to 0..1 for numeric) which picks the best
epoch, so tasks with big losses do not decide it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from tlstudio.core.runtime.inference import forward_chunked
from tlstudio.core.tasks.multitask import distributed
from tlstudio.core.tasks.multitask.distributed import mean_over_ranks, sum_over_ranks
from tlstudio.core.training.objectives import Objective, ObjectiveContext
from tlstudio.core.tasks.multitask.metrics import Targets, flat_metrics, masked_losses, task_metrics
from tlstudio.core.tasks.multitask.model import Heads, MultiTaskModel
from tlstudio.core.tasks.multitask.pcgrad import Relatedness, cosine_matrix, flat, project_conflicting, unflat
from tlstudio.core.tasks.multitask.weighting import make_weighting


__all__ = ["MTContext", "MultiTaskObjective", "Targets", "flat_metrics", "masked_losses", "split_model",
           "task_metrics"]


@dataclass
class MTContext(ObjectiveContext):
    val_samples: list[Any] = field(default_factory=list)


def split_model(model) -> tuple[Any, Heads]:
    """(body model or None in features mode, heads) of a MultiTaskModel, Heads or DDP wrapper."""
    inner = getattr(model, "module", model)
    if isinstance(inner, torch.nn.Sequential):  # feature cache's Dropout + classifier
        inner = inner[-1]
    if isinstance(inner, Heads):
        return None, inner
    assert isinstance(inner, MultiTaskModel)
    return inner, inner.get_classifier()


class MultiTaskObjective(Objective):
    name = "multitask"
    best_metric = ("val_score", "max")
    tie_metric = ("val_loss", "min")

    def __init__(self, schema: dict[str, Any], config: Any):
        self.tasks: list[dict[str, Any]] = list(schema["tasks"])
        self.names = [t["name"] for t in self.tasks]
        self.config = config
        self.weighting = make_weighting(config.weighting, self.names, config.task_weights)
        self.relatedness = Relatedness(self.names)
        self.step = 0
        self.rng = random.Random(config.seed)
        self._train: Targets | None = None
        self._val: Targets | None = None
        self._device = "cpu"
        self._epoch_sum: dict[str, float] = {}
        self._epoch_n: dict[str, int] = {}
        self._w_sum: dict[str, float] = {}
        self._w_n = 0
        self.last_val: dict[str, dict[str, Any]] = {}
        self.teacher: dict[str, torch.Tensor] | None = None  # task -> teacher outputs per train sample

    def set_teacher_outputs(self, outs: dict[str, torch.Tensor]) -> None:
        """Teacher outputs in this run's model space (logits; numeric z-scored), one row per
        training sample (NaN rows: the teacher could not read the image)."""
        self.teacher = outs

    def task_losses(self, outs, tg, idx):
        """Masked per-task losses; with a teacher, each task mixes its label loss with the
        teacher's soft targets: alpha * T^2 * KL (categorical), BCE to the teacher's probabilities
        (multi-label), MSE to its value (numeric). Rows without a label still learn from it."""
        cfg = self.config
        losses, counts = masked_losses(outs, tg, self.tasks, cfg.label_smoothing, cfg.huber_delta)
        if self.teacher is None:
            return losses, counts
        i = idx.detach().cpu().long()
        a, T = float(cfg.kd_alpha), float(cfg.kd_temperature)
        for task in self.tasks:
            name = task["name"]
            tch = self.teacher[name][i].to(outs[name].device)
            ok = ~torch.isnan(tch).any(1)
            if not bool(ok.any()):
                continue
            o = outs[name].float()[ok]
            t = tch[ok]
            if task["type"] == "categorical":
                kd = F.kl_div(F.log_softmax(o / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
            elif task["type"] == "multilabel":
                kd = F.binary_cross_entropy_with_logits(o, torch.sigmoid(t))
            else:
                kd = F.mse_loss(o, t)
            losses[name] = (1 - a) * losses[name] + a * kd if counts[name] else a * kd
            counts[name] = max(counts[name], int(ok.sum()))
        return losses, counts

    # --- engine hooks -------------------------------------------------------------------------
    def build_model(self, create_body, classes=None) -> MultiTaskModel:
        from tlstudio.core.tasks.multitask.model import build_multitask_model

        return build_multitask_model(create_body, self.tasks, self.config.sharing)

    def supports_features_mode(self) -> bool:
        return True  # heads on cached pooled features (soft sharing with a frozen body = hard)

    def setup(self, ctx: ObjectiveContext):
        self._device = ctx.device
        self._train = Targets(list(ctx.train_samples), self.tasks)
        self._val = Targets(list(getattr(ctx, "val_samples", []) or []), self.tasks)
        return ()

    def extra_modules(self):
        return self.weighting.modules()

    def on_epoch_start(self, epoch: int, ctx=None):
        self._epoch_sum = {t: 0.0 for t in self.names}
        self._epoch_n = {t: 0 for t in self.names}
        self._w_sum = {t: 0.0 for t in self.names}
        self._w_n = 0
        return ()

    def epoch_train_losses(self) -> dict[str, float]:
        return {t: self._epoch_sum[t] / self._epoch_n[t] for t in self.names if self._epoch_n.get(t)}

    def on_epoch_end(self, epoch: int, metrics: dict | None = None, ctx=None):
        self.weighting.on_epoch_end(self.epoch_train_losses())
        return ()

    def state_dict(self) -> dict[str, Any]:
        """Weighting, relatedness, step and the running epoch's per-task sums (a run stopped
        mid-epoch resumes with them: same epoch losses, same DWA weights)."""
        return {"weighting": self.weighting.state_dict(), "relatedness": self.relatedness.state_dict(),
                "step": self.step, "epoch_sums": {"loss": dict(self._epoch_sum), "n": dict(self._epoch_n),
                                                  "w": dict(self._w_sum), "w_n": self._w_n}}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.weighting.load_state_dict(d.get("weighting", {}))
        self.relatedness.load_state_dict(d.get("relatedness", {}))
        self.step = int(d.get("step", 0))
        sums = d.get("epoch_sums")
        if sums:
            self._epoch_sum = {k: float(v) for k, v in sums["loss"].items()}
            self._epoch_n = {k: int(v) for k, v in sums["n"].items()}
            self._w_sum = {k: float(v) for k, v in sums["w"].items()}
            self._w_n = int(sums["w_n"])

    # --- training step ------------------------------------------------------------------------
    def loss(self, model, x, y, idx):
        body, heads = split_model(model)
        tg = self._train.batch(idx, x.device)
        # the forward goes through ``model`` itself, so that a DDP wrapper averages the gradients
        if body is None:
            # cached features: a leaf that requires grad, so per-task gradients on the shared
            # representation (relatedness, GradNorm) exist in head-only runs too
            z = x.detach().float().requires_grad_(torch.is_grad_enabled())
            outs = model(z)
        else:
            outs, z = model(x, return_features=True)
        cfg = self.config
        losses, counts = self.task_losses(outs, tg, idx)
        present = {t: counts[t] > 0 for t in self.names}
        total = self.weighting.combine(losses, present)
        shared = body.shared_parameters() if body is not None else []
        self.step += 1
        # on cached features the per-task gradients only go through the heads: sample every step;
        # through the body they cost one backward pass per task: every N steps
        sample_rel = body is None or self.step % cfg.relatedness_every == 1 or cfg.relatedness_every == 1
        live = [t for t in self.names if present[t]]
        if torch.is_grad_enabled() and len(live) >= 2 and (sample_rel or (cfg.pcgrad and shared)):
            wrt = shared if shared else [z] if isinstance(z, torch.Tensor) else []
            if wrt:
                grads = [flat(torch.autograd.grad(losses[t], wrt, retain_graph=True, allow_unused=True), wrt)
                         for t in live]
                if sample_rel:
                    m = cosine_matrix(grads)
                    full = [[1.0 if i == j else 0.0 for j in range(len(self.names))] for i in range(len(self.names))]
                    pos = [self.names.index(t) for t in live]
                    for a, i in enumerate(pos):
                        for b, j in enumerate(pos):
                            full[i][j] = m[a][b]
                    if len(live) == len(self.names):
                        self.relatedness.add(full)
                if cfg.pcgrad and shared:
                    w = self.weighting.weights()
                    G = project_conflicting([g * w[t] for g, t in zip(grads, live)], self.rng)
                    # the shared layers get the projected gradient, the heads (and learned
                    # weights) their own: same loss value, PCGrad's gradient
                    zd = [f.detach() for f in z] if isinstance(z, list) else z.detach()
                    ld, _ = self.task_losses(heads(zd), tg, idx)
                    surrogate = sum((p * g).sum() for p, g in zip(shared, unflat(G, shared)))
                    total = self.weighting.combine(ld, present) + surrogate - surrogate.detach()
        norms = None
        if self.weighting.needs_rep_grads and torch.is_grad_enabled():
            norms = {}
            if isinstance(z, torch.Tensor) and len(live) >= 2:
                norms = {t: float(torch.autograd.grad(losses[t], z, retain_graph=True)[0].norm()) for t in live}
            norms = mean_over_ranks(norms, self.names) if distributed.active() else norms or None
        if body is not None and body.soft and cfg.soft_penalty > 0:
            total = total + cfg.soft_penalty * body.soft_penalty().to(total.device)
        parts = {f"loss/{t}": float(losses[t].detach()) for t in live}
        for t in live:
            self._epoch_sum[t] = self._epoch_sum.get(t, 0.0) + parts[f"loss/{t}"] * counts[t]
            self._epoch_n[t] = self._epoch_n.get(t, 0) + counts[t]
        w = self.weighting.weights()
        for t in self.names:
            self._w_sum[t] = self._w_sum.get(t, 0.0) + w[t]
        self._w_n += 1
        observed = {t: parts[f"loss/{t}"] for t in live}
        if torch.is_grad_enabled():  # every process's weighting sees the same (averaged) values
            observed = mean_over_ranks(observed, self.names)
        self.weighting.observe_step(observed, norms)
        return total, parts

    def sync_epoch_losses(self) -> None:
        """The epoch's per-task training loss sums and counts over every process (torchrun)."""
        if not distributed.active():
            return
        keys = [f"s/{t}" for t in self.names] + [f"n/{t}" for t in self.names]
        local = {**{f"s/{t}": self._epoch_sum.get(t, 0.0) for t in self.names},
                 **{f"n/{t}": float(self._epoch_n.get(t, 0)) for t in self.names}}
        total = sum_over_ranks(local, keys)
        self._epoch_sum = {t: total[f"s/{t}"] for t in self.names}
        self._epoch_n = {t: int(round(total[f"n/{t}"])) for t in self.names}

    # --- validation ---------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self, model, loader, targets: Targets, precision=None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[int]]:
        """Outputs and targets of every task over a loader of (x, y, idx)."""
        body, heads = split_model(model)
        outs: dict[str, list[torch.Tensor]] = {t: [] for t in self.names}
        ys: dict[str, list[torch.Tensor]] = {t: [] for t in self.names}
        rows: list[int] = []
        for x, _y, idx in loader:
            if x.shape[0] == 0:
                continue
            x = x.to(self._device)
            ctx = precision.autocast() if precision is not None else torch.autocast("cpu", enabled=False)
            with ctx:  # gradient-free: in CPU-sized chunks (runtime/inference.py)
                o = forward_chunked(heads if body is None else lambda b: heads(body.features(b)), x)
            tg = targets.batch(idx, "cpu")
            for t in self.names:
                outs[t].append(o[t].float().cpu())
                ys[t].append(tg[t])
            rows += idx.tolist()
        return ({t: torch.cat(v) if v else torch.zeros(0) for t, v in outs.items()},
                {t: torch.cat(v) if v else torch.zeros(0) for t, v in ys.items()}, rows)

    def evaluate_outputs(self, outs, ys) -> dict[str, dict[str, Any]]:
        per: dict[str, dict[str, Any]] = {}
        losses, _ = masked_losses(outs, ys, self.tasks, 0.0, self.config.huber_delta)
        for task in self.tasks:
            t = task["name"]
            d = task_metrics(task, outs[t], ys[t]) if len(outs[t]) else {"n": 0, "score": 0.0}
            d["loss"] = float(losses[t]) if len(outs[t]) else 0.0
            per[t] = d
        return per

    def validate(self, model, loader, ctx=None) -> dict[str, float]:
        was = getattr(model, "training", False)
        model.eval()
        try:
            outs, ys, _ = self.collect(model, loader, self._val, getattr(ctx, "precision", None))
        finally:
            model.train(was)
        per = self.evaluate_outputs(outs, ys)
        self.last_val = per
        m = flat_metrics(per)
        m["val_loss"] = sum(d["loss"] for d in per.values())
        for t, v in self.epoch_train_losses().items():
            m[f"train_loss/{t}"] = v
        for t in self.names:
            m[f"weight/{t}"] = self._w_sum.get(t, 0.0) / self._w_n if self._w_n else self.weighting.weights()[t]
        return m
