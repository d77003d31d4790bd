"""Domain-adversarial training (DANN, Ganin et al. 2016) with TLlib's warm-start schedule.

A small discriminator learns to tell source features from target features; between it and the
body sits a gradient reversal layer, so the body is pushed to make the two domains
indistinguishable while the head keeps classifying the labelled source images. The reversal
coefficient rises smoothly from 0 to 1 over the run (2 / (1 + exp(-alpha * p)) - 1, p the
fraction of the run done), so the random discriminator does not wreck the pretrained features at
the start.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from tlstudio.core.training.objectives import Objective, ObjectiveContext


def _torch():
    import torch

    return torch


def grl_coefficient(step: int, max_steps: int, alpha: float = 10.0, lo: float = 0.0, hi: float = 1.0) -> float:
    """Warm-up of the reversal strength: lo at step 0, -> hi as step -> max_steps."""
    p = min(1.0, max(0.0, step / max(1, max_steps)))
    return float(2.0 * (hi - lo) / (1.0 + math.exp(-alpha * p)) - (hi - lo) + lo)


def _grl_function():
    torch = _torch()

    class _ReverseGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, coeff: float):
            ctx.coeff = coeff
            return x.view_as(x) * 1.0

        @staticmethod
        def backward(ctx, grad):
            return -ctx.coeff * grad, None

    return _ReverseGrad


_REVERSE = None


def reverse_gradient(x, coeff: float = 1.0):
    """Identity forward; the gradient flowing back is multiplied by -coeff."""
    global _REVERSE
    if _REVERSE is None:
        _REVERSE = _grl_function()
    return _REVERSE.apply(x, float(coeff))


def make_discriminator(in_features: int, hidden: int = 256):
    """Features -> one domain logit (source = 1). TLlib's shape, narrower for CPU."""
    nn = _torch().nn
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, 1),
    )


def dann_loss(discriminator, f_source, f_target, coeff: float):
    """(binary domain loss through the reversal layer, discriminator accuracy)."""
    torch = _torch()
    f = torch.cat([f_source, f_target]).float()
    return domain_loss(discriminator(reverse_gradient(f, coeff)).squeeze(1), len(f_source))


def domain_loss(d, n_source: int):
    """(binary domain loss, accuracy) of domain logits ``d``: the first n_source rows are source."""
    torch = _torch()
    dom = torch.cat([torch.ones(n_source, device=d.device), torch.zeros(len(d) - n_source, device=d.device)])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(d, dom)
    acc = float(((d.detach() > 0).float() == dom).float().mean())
    return loss, acc


def _pair_class():
    nn = _torch().nn

    class DomainPair(nn.Module):
        """The classifier and the discriminator in one forward: (class logits, domain logits).
        Under torchrun this pair is what DDP wraps, so the gradients of both are averaged over
        the processes (calling the body's forward_features on the engine's DDP wrapper's inner
        module would skip DDP's gradient synchronisation)."""

        def __init__(self, model, discriminator) -> None:
            super().__init__()
            self.model, self.discriminator = model, discriminator

        def forward(self, x, coeff: float):
            f = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            d = self.discriminator(reverse_gradient(f.float(), coeff)).squeeze(1)
            return self.model.get_classifier()(f), d

    return DomainPair


class DANNObjective(Objective):
    """Source cross-entropy + trade_off * domain loss through the reversal layer.

    The discriminator is an extra module (trained and checkpointed with the model). Only the
    target images' pixels are used: their labels are never read."""

    name = "dann"

    def __init__(self, target_samples: list[Any], trade_off: float = 1.0, hidden: int = 256,
                 label_smoothing: float = 0.0, alpha: float = 10.0) -> None:
        from tlstudio.core.data.dataset import Sample

        self.target_samples = [Sample(str(getattr(s, "path", s)), -1, domain="target") for s in target_samples]
        self.trade_off = float(trade_off)
        self.hidden = int(hidden)
        self.label_smoothing = float(label_smoothing)
        self.alpha = float(alpha)
        self.discriminator = None
        self.target = None
        self.step = 0
        self.max_steps = 1000
        self._pending: dict[str, Any] = {}
        self._pair = self._pair_of = None

    def supports_features_mode(self) -> bool:
        return False  # aligning needs trainable body layers

    def setup(self, ctx: ObjectiveContext) -> Iterable[Any]:
        from tlstudio.core.events import Log
        from tlstudio.core.tasks.adaptation.mcc import TargetBatches

        model = ctx.full_model if ctx.full_model is not None else ctx.model
        model = getattr(model, "module", model)
        if self.discriminator is None:
            torch = _torch()
            with torch.random.fork_rng():
                torch.manual_seed(int(ctx.config.seed) + 17)
                self.discriminator = make_discriminator(int(model.num_features), self.hidden)
        self.discriminator.to(ctx.device)
        self.target = TargetBatches(self.target_samples, ctx)
        n = max(1, len(ctx.train_samples))
        self.max_steps = max(1, math.ceil(n / ctx.config.batch_size) * int(ctx.config.epochs))
        if self._pending:
            self.load_state_dict(self._pending)
        return [Log(f"DANN: {len(self.target_samples)} unlabelled target images, domain discriminator "
                    f"{self.hidden} wide, reversal warming up over {self.max_steps} steps")]

    def extra_modules(self) -> list[Any]:
        return [self.discriminator] if self.discriminator is not None else []

    def _pair_for(self, model):
        """The (model, discriminator) pair, DDP-wrapped when ``model`` is (re-made when the
        engine re-wraps the model: gradual unfreezing, a smaller batch after out-of-memory)."""
        from tlstudio.core.runtime.parallel import distributed_context, unwrap, wrap_ddp

        if self._pair is None or self._pair_of is not model:
            inner = unwrap(model)
            pair = _pair_class()(inner, self.discriminator)
            device = next(inner.parameters()).device
            self._pair = wrap_ddp(pair, distributed_context(), device) if inner is not model else pair
            self._pair_of = model
        return self._pair

    def loss(self, model, x, y, idx):
        import torch
        import torch.nn.functional as F

        xt = self.target.next()
        n = x.shape[0]
        coeff = grl_coefficient(self.step, self.max_steps, self.alpha)
        logits, d = self._pair_for(model)(torch.cat([x, xt.to(x.dtype)]), coeff)
        ls = logits[:n].float()
        ce = F.cross_entropy(ls, y, label_smoothing=self.label_smoothing, ignore_index=-1) \
            if bool((y >= 0).any()) else ls.sum() * 0.0
        if model.training:
            self.step += 1
        dl, dacc = domain_loss(d, n)
        return ce + self.trade_off * dl, {"source_loss": float(ce.detach()), "domain_loss": float(dl.detach()),
                                          "domain_acc": dacc, "grl": coeff}

    def state_dict(self) -> dict[str, Any]:
        d = {"step": self.step}
        if self.target is not None:
            d.update(self.target.state_dict())
        return d

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = dict(state)
        self.step = int(state.get("step", 0))
        if self.target is not None:
            self.target.load_state_dict(state)
