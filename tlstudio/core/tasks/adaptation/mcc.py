"""Minimum Class Confusion (Jin et al., ECCV 2020) for unlabelled target batches.

The loss is the off-diagonal mass of a class-confusion matrix built from temperature-scaled
target predictions, each image weighted by its certainty (1 + exp(-entropy)): a batch whose
predictions spread over several classes at once is penalised, one whose images each commit to a
class is not. TLlib's setting (temperature 2.5, trade-off 1.0) is the default.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tlstudio.core.training.objectives import Objective, ObjectiveContext

DEFAULT_TEMPERATURE = 2.5


def mcc_loss(logits, temperature: float = DEFAULT_TEMPERATURE):
    """MCC loss of one batch of target logits (N x C) -> scalar tensor in [0, (C-1)/C]."""
    import torch

    n, c = logits.shape
    p = torch.softmax(logits.float() / temperature, dim=1)
    ent = -(p * torch.log(p + 1e-5)).sum(dim=1).detach()
    w = 1.0 + torch.exp(-ent)
    w = (n * w / w.sum()).unsqueeze(1)  # certainty weights, mean 1
    conf = (p * w).t() @ p  # C x C class confusion, symmetric
    conf = conf / conf.sum(dim=1, keepdim=True)  # each row sums to 1
    return (conf.sum() - torch.trace(conf)) / c


class EndlessBatches:
    """Batches over unlabelled images, epoch after epoch without end (one per training step);
    under torchrun each process draws from its own equal share of the images."""

    what = "target images"

    def __init__(self, samples: list[Any], ctx: ObjectiveContext) -> None:
        from tlstudio.core.data.dataset import Split
        from tlstudio.core.models.backbones import data_config
        from tlstudio.core.tasks.adaptation.ranks import shard

        cfg = ctx.config
        model = ctx.full_model if ctx.full_model is not None else ctx.model
        self.data_cfg = data_config(getattr(model, "module", model), cfg.image_size)
        self.split = Split(train=shard(samples), val=[], test=[], seed=cfg.seed, val_fraction=0.0)
        self.device = ctx.device
        self.epoch = 0
        self._it = None

    def epoch_batches(self, epoch: int):
        """The batches of one pass over the images (an iterable)."""
        raise NotImplementedError

    def take(self, item):
        """What ``next`` returns for one item of epoch_batches, or None to skip it (no readable image)."""
        raise NotImplementedError

    def next(self):
        for _ in range(3):
            if self._it is None:
                self._it = iter(self.epoch_batches(self.epoch))
            try:
                item = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1
                continue
            out = self.take(item)
            if out is not None:
                return out
        raise RuntimeError(f"no readable {self.what}")


class TargetBatches(EndlessBatches):
    """Augmented target image batches (the same pipeline as the source)."""

    def __init__(self, samples: list[Any], ctx: ObjectiveContext, batch_size: int | None = None) -> None:
        from tlstudio.core.pipeline.loaders import build_loaders

        super().__init__(samples, ctx)
        cfg = ctx.config
        self.loaders = build_loaders(self.split, self.data_cfg, batch_size=batch_size or cfg.batch_size,
                                     augment=cfg.augment, seed=cfg.seed + 7919, workers=cfg.workers, cache=cfg.cache,
                                     cache_budget_mb=max(0, cfg.cache_budget_mb // 2), device=ctx.device,
                                     channels_last=bool(getattr(ctx.precision, "channels_last", False)))

    def epoch_batches(self, epoch: int):
        return self.loaders.train_batches(epoch)

    def take(self, item):
        x = item[0]
        return x.to(self.device, non_blocking=True) if x.shape[0] > 0 else None

    def state_dict(self) -> dict[str, Any]:
        return {"target_epoch": self.epoch}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.epoch = int(d.get("target_epoch", 0))
        self._it = None


class MCCObjective(Objective):
    """Source cross-entropy + weight * MCC on one target batch per source batch.

    Target images enter only through their predictions: their labels (if any) are never read."""

    name = "mcc"

    def __init__(self, target_samples: list[Any], weight: float = 1.0, temperature: float = DEFAULT_TEMPERATURE,
                 label_smoothing: float = 0.0) -> None:
        from tlstudio.core.data.dataset import Sample

        # the target images as unlabelled samples: a label in the caller's list cannot leak in
        self.target_samples = [Sample(str(getattr(s, "path", s)), -1, domain="target") for s in target_samples]
        self.weight = float(weight)
        self.temperature = float(temperature)
        self.label_smoothing = float(label_smoothing)
        self.target: TargetBatches | None = None
        self._pending: dict[str, Any] = {}

    def supports_features_mode(self) -> bool:
        return False  # target batches are images; frozen bodies use the feature path in job.py

    def setup(self, ctx: ObjectiveContext) -> Iterable[Any]:
        from tlstudio.core.events import Log

        self.target = TargetBatches(self.target_samples, ctx)
        if self._pending:
            self.target.load_state_dict(self._pending)
        return [Log(f"MCC: {len(self.target_samples)} unlabelled target images, one batch per source batch "
                    f"(weight {self.weight:g}, temperature {self.temperature:g})")]

    def loss(self, model, x, y, idx):
        import torch
        import torch.nn.functional as F

        xt = self.target.next()
        n = x.shape[0]
        logits = model(torch.cat([x, xt.to(x.dtype)]))
        ls, lt = logits[:n].float(), logits[n:].float()
        ce = F.cross_entropy(ls, y, label_smoothing=self.label_smoothing, ignore_index=-1) \
            if bool((y >= 0).any()) else ls.sum() * 0.0
        m = mcc_loss(lt, self.temperature)
        return ce + self.weight * m, {"source_loss": float(ce.detach()), "target_loss": float(m.detach())}

    def state_dict(self) -> dict[str, Any]:
        return self.target.state_dict() if self.target is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = dict(state)
        if self.target is not None:
            self.target.load_state_dict(state)
