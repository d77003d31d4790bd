"""How per-task losses become one loss: L = sum_i w_i * L_i (+ the method's own terms).

equal        w_i = 1 (default; tuned, it is a strong baseline)
manual       w_i given by the user
initial      w_i = 1 / L_i(first step): every task starts at 1
uncertainty  Kendall et al. 2018: learned s_i = log sigma_i^2 per task,
             L = sum_i exp(-s_i) * L_i + s_i, s_i clamped to [-S_MAX, S_MAX]
dwa          Liu et al. 2019 (Dynamic Weight Average): w_i(t) = K * softmax_i(r_i(t-1) / T),
             r_i(t-1) = L_i(t-1) / L_i(t-2) of the epoch mean losses, T = 2; w = 1 for 2 epochs
gradnorm     Chen et al. 2018: learned w_i such that G_i = ||grad_z w_i L_i|| (z = the shared
             representation) tracks mean(G) * r_i^alpha, r_i = (L_i/L_i(0)) / mean_j(L_j/L_j(0));
             |G_i - target_i| summed is minimised over w (targets held constant); then
             sum_i w_i is renormalised to K. The gradient of |G_i - target_i| in w_i is
             sign(G_i - target_i) * ||grad_z L_i||, so no second-order backward is needed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

WEIGHTINGS: tuple[str, ...] = ("equal", "manual", "initial", "uncertainty", "dwa", "gradnorm")
S_MAX = 6.0  # uncertainty: log-variance clamp (weights between e^-6 and e^6)


class Weighting:
    name = "equal"
    needs_rep_grads = False  # gradnorm: wants d(L_i)/dz per step

    def __init__(self, tasks: list[str]):
        self.tasks = list(tasks)
        self._w = {t: 1.0 for t in self.tasks}

    def weights(self) -> dict[str, float]:
        return dict(self._w)

    def combine(self, losses: dict[str, torch.Tensor], present: dict[str, bool] | None = None) -> torch.Tensor:
        """Total loss from per-task losses (a task without labels in the batch adds 0)."""
        total = None
        for t, lt in losses.items():
            term = self._w[t] * lt
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def observe_step(self, losses: dict[str, float], rep_grad_norms: dict[str, float] | None = None) -> None:
        """After each training step: detached per-task losses (and gradnorm's ||dL_i/dz||)."""

    def on_epoch_end(self, epoch_losses: dict[str, float]) -> None:
        """Mean training loss of each task over the epoch that ended."""

    def modules(self) -> list[nn.Module]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {"w": dict(self._w)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self._w.update({k: float(v) for k, v in d.get("w", {}).items() if k in self._w})


class Manual(Weighting):
    name = "manual"

    def __init__(self, tasks: list[str], weights: list[float] | dict[str, float] | None):
        super().__init__(tasks)
        if weights is None:
            return
        if isinstance(weights, dict):
            self._w.update({k: float(v) for k, v in weights.items() if k in self._w})
        else:
            if len(weights) != len(tasks):
                raise ValueError(f"{len(weights)} task weights for {len(tasks)} tasks ({', '.join(tasks)})")
            self._w = {t: float(w) for t, w in zip(tasks, weights)}


class InitialLoss(Weighting):
    name = "initial"

    def __init__(self, tasks: list[str]):
        super().__init__(tasks)
        self.initial: dict[str, float] = {}

    def observe_step(self, losses, rep_grad_norms=None) -> None:
        for t, v in losses.items():
            if t not in self.initial and v is not None and math.isfinite(v) and v > 0:
                self.initial[t] = v
                self._w[t] = 1.0 / v

    def state_dict(self):
        return {"w": dict(self._w), "initial": dict(self.initial)}

    def load_state_dict(self, d):
        super().load_state_dict(d)
        self.initial = {k: float(v) for k, v in d.get("initial", {}).items()}


class _LogVars(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(n))


class Uncertainty(Weighting):
    name = "uncertainty"

    def __init__(self, tasks: list[str]):
        super().__init__(tasks)
        self.module = _LogVars(len(tasks))

    def _s(self) -> torch.Tensor:
        return self.module.log_vars.clamp(-S_MAX, S_MAX)

    def weights(self) -> dict[str, float]:
        s = self._s().detach()
        return {t: float(torch.exp(-s[i])) for i, t in enumerate(self.tasks)}

    def combine(self, losses, present=None):
        s = self._s()
        total = None
        for i, t in enumerate(self.tasks):
            if t not in losses:
                continue
            if present is not None and not present.get(t, True):
                continue  # no labels of this task in the batch: nothing to weigh, s_i untouched
            term = torch.exp(-s[i]) * losses[t] + s[i]
            total = term if total is None else total + term
        return total if total is not None else s.sum() * 0.0

    def modules(self):
        return [self.module]

    def state_dict(self):
        return {"log_vars": self.module.log_vars.detach().cpu().tolist()}

    def load_state_dict(self, d):
        if "log_vars" in d:
            with torch.no_grad():
                self.module.log_vars.copy_(torch.tensor(d["log_vars"], dtype=torch.float32))


class DWA(Weighting):
    name = "dwa"

    def __init__(self, tasks: list[str], temperature: float = 2.0):
        super().__init__(tasks)
        self.T = float(temperature)
        self.history: list[dict[str, float]] = []

    def on_epoch_end(self, epoch_losses):
        self.history.append({t: float(epoch_losses.get(t, float("nan"))) for t in self.tasks})
        self._update()

    def _update(self) -> None:
        if len(self.history) < 2:
            return
        prev, prev2 = self.history[-1], self.history[-2]
        r = {t: (prev[t] / prev2[t]) if prev2[t] > 0 and math.isfinite(prev[t] / prev2[t]) else 1.0 for t in self.tasks}
        e = {t: math.exp(r[t] / self.T) for t in self.tasks}
        z = sum(e.values())
        self._w = {t: len(self.tasks) * e[t] / z for t in self.tasks}

    def state_dict(self):
        return {"w": dict(self._w), "history": list(self.history)}

    def load_state_dict(self, d):
        super().load_state_dict(d)
        self.history = [dict(h) for h in d.get("history", [])]


class GradNorm(Weighting):
    name = "gradnorm"
    needs_rep_grads = True

    def __init__(self, tasks: list[str], alpha: float = 1.5, lr: float = 0.025):
        super().__init__(tasks)
        self.alpha, self.lr = float(alpha), float(lr)
        self.initial: dict[str, float] = {}
        self.m = {t: 0.0 for t in tasks}  # Adam moments (a tiny optimiser of the weights)
        self.v = {t: 0.0 for t in tasks}
        self.t = 0
        self.last_targets: dict[str, float] = {}

    def targets(self, losses: dict[str, float], norms: dict[str, float]) -> dict[str, float]:
        """GradNorm's target norms: mean_j(G_j) * r_i^alpha with G_i = w_i * ||dL_i/dz||."""
        tasks = [t for t in self.tasks if t in losses and t in norms and t in self.initial]
        if not tasks:
            return {}
        G = {t: self._w[t] * norms[t] for t in tasks}
        ratio = {t: losses[t] / self.initial[t] for t in tasks}
        mean_ratio = sum(ratio.values()) / len(tasks)
        mean_G = sum(G.values()) / len(tasks)
        return {t: mean_G * (ratio[t] / mean_ratio) ** self.alpha for t in tasks}

    def observe_step(self, losses, rep_grad_norms=None):
        for t, v in losses.items():
            if t not in self.initial and v is not None and math.isfinite(v) and v > 0:
                self.initial[t] = v
        if not rep_grad_norms:
            return
        target = self.targets(losses, rep_grad_norms)
        if len(target) < 2:
            return
        self.last_targets = target
        self.t += 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        for t, tgt in target.items():
            g_i = rep_grad_norms[t]
            grad = math.copysign(g_i, self._w[t] * g_i - tgt) if self._w[t] * g_i != tgt else 0.0
            self.m[t] = b1 * self.m[t] + (1 - b1) * grad
            self.v[t] = b2 * self.v[t] + (1 - b2) * grad * grad
            mh, vh = self.m[t] / (1 - b1 ** self.t), self.v[t] / (1 - b2 ** self.t)
            self._w[t] = max(1e-3, self._w[t] - self.lr * mh / (math.sqrt(vh) + eps))
        k = len(self.tasks)
        s = sum(self._w.values())
        self._w = {t: k * w / s for t, w in self._w.items()}

    def state_dict(self):
        return {"w": dict(self._w), "initial": dict(self.initial), "m": dict(self.m), "v": dict(self.v), "t": self.t}

    def load_state_dict(self, d):
        super().load_state_dict(d)
        self.initial = {k: float(v) for k, v in d.get("initial", {}).items()}
        self.m.update(d.get("m", {}))
        self.v.update(d.get("v", {}))
        self.t = int(d.get("t", 0))


def make_weighting(name: str, tasks: list[str], task_weights: list[float] | None = None) -> Weighting:
    if name == "equal":
        return Weighting(tasks)
    if name == "manual":
        return Manual(tasks, task_weights)
    if name == "initial":
        return InitialLoss(tasks)
    if name == "uncertainty":
        return Uncertainty(tasks)
    if name == "dwa":
        return DWA(tasks)
    if name == "gradnorm":
        return GradNorm(tasks)
    raise ValueError(f"unknown weighting {name!r}: use {', '.join(WEIGHTINGS)}")
