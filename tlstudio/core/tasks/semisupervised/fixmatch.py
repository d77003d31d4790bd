"""FixMatch (Sohn et al. 2020): confident predictions on a weakly augmented view of an unlabelled
image become the target for a strongly augmented view of the same image.

Two loaders over the unlabelled images share one seed, so their batches hold the same images in
the same order: the "light" loader gives the weak views, the "strong" one the strong views.
Under torchrun each process draws from its own share of the unlabelled images.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tlstudio.core.tasks.adaptation.mcc import EndlessBatches
from tlstudio.core.training.objectives import Objective, ObjectiveContext


def fixmatch_loss(logits_weak, logits_strong, threshold: float):
    """(mean masked cross-entropy of strong logits against weak pseudo-labels, fraction kept)."""
    import torch
    import torch.nn.functional as F

    probs = torch.softmax(logits_weak.detach().float(), 1)
    conf, pseudo = probs.max(1)
    mask = (conf >= threshold).float()
    loss = (F.cross_entropy(logits_strong.float(), pseudo, reduction="none") * mask).mean()
    return loss, float(mask.mean())


class _PairedBatches(EndlessBatches):
    """(weak view, strong view) batches of the same unlabelled images."""

    what = "unlabelled images"

    def __init__(self, samples: list[Any], ctx: ObjectiveContext, batch_size: int) -> None:
        from tlstudio.core.pipeline.loaders import build_loaders

        super().__init__(samples, ctx)
        cfg = ctx.config
        common = dict(batch_size=batch_size, seed=cfg.seed + 104729, workers=cfg.workers, cache=cfg.cache,
                      cache_budget_mb=max(0, cfg.cache_budget_mb // 4), device=ctx.device)
        self.weak = build_loaders(self.split, self.data_cfg, augment="light", **common)
        self.strong = build_loaders(self.split, self.data_cfg, augment="strong", **common)

    def epoch_batches(self, epoch: int):
        return zip(self.weak.train_batches(epoch), self.strong.train_batches(epoch))

    def take(self, item):
        (xw, _, iw), (xs, _, is_) = item
        if xw.shape[0] and xw.shape[0] == xs.shape[0] and bool((iw == is_).all()):
            return xw.to(self.device), xs.to(self.device)
        return None


class FixMatchObjective(Objective):
    """Labelled cross-entropy + weight * FixMatch consistency on unlabelled images (mu x batch)."""

    name = "fixmatch"

    def __init__(self, unlabelled: list[Any], threshold: float = 0.95, weight: float = 1.0, mu: int = 2,
                 label_smoothing: float = 0.0) -> None:
        from tlstudio.core.data.dataset import Sample

        self.unlabelled = [Sample(str(getattr(s, "path", s)), -1) for s in unlabelled]
        self.threshold, self.weight, self.mu = float(threshold), float(weight), int(mu)
        self.label_smoothing = float(label_smoothing)
        self.pairs: _PairedBatches | None = None

    def supports_features_mode(self) -> bool:
        return False  # strong augmentation needs the pixels

    def setup(self, ctx: ObjectiveContext) -> Iterable[Any]:
        from tlstudio.core.events import Log

        self.pairs = _PairedBatches(self.unlabelled, ctx, max(2, ctx.config.batch_size * self.mu))
        return [Log(f"FixMatch: {len(self.unlabelled)} unlabelled images, threshold {self.threshold:g}, "
                    f"{self.mu}x as many unlabelled as labelled images per step")]

    def loss(self, model, x, y, idx):
        import torch
        import torch.nn.functional as F

        xw, xs = self.pairs.next()
        n, nu = x.shape[0], xw.shape[0]
        logits = model(torch.cat([x, xw.to(x.dtype), xs.to(x.dtype)]))
        ls, lw, lst = logits[:n].float(), logits[n:n + nu], logits[n + nu:]
        ce = F.cross_entropy(ls, y, label_smoothing=self.label_smoothing, ignore_index=-1) \
            if bool((y >= 0).any()) else ls.sum() * 0.0
        lu, kept = fixmatch_loss(lw, lst, self.threshold)
        return ce + self.weight * lu, {"labelled_loss": float(ce.detach()), "unlabelled_loss": float(lu.detach()),
                                       "mask": kept}

    def state_dict(self) -> dict[str, Any]:
        return {"unlabelled_epoch": self.pairs.epoch if self.pairs is not None else 0}
