"""DistillObjective: the KD loss in the engine's shared training loop."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tlstudio.core.events import Event, Log, Progress
from tlstudio.core.tasks.distill.config import DistillConfig, DistillError, parse_feature_loss
from tlstudio.core.tasks.distill.losses import _as_map, hint_loss, kd_loss_from_probs, soft_targets
from tlstudio.core.tasks.distill.teachers import (
    Teacher,
    _teacher_data_cfg,
    check_teacher_classes,
    load_teacher,
    stage_capture,
)
from tlstudio.core.training.objectives import Objective, ObjectiveContext

# --------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------
class DistillObjective(Objective):
    """KD loss for the engine's loop: soft (teacher) + hard (labels) [+ feature hint]."""

    name = "distill"

    def __init__(self, config: DistillConfig, teachers: list[Teacher] | None = None) -> None:
        self.config = config
        self.T = float(config.temperature)
        self.alpha = float(config.alpha)
        self.teachers: list[Teacher] = list(teachers or [])
        self.weights = config.teacher_weights
        self.cached_probs = None  # [N, C] teacher probabilities at T, rows = ctx.train_samples
        self.adapter = None
        self._t_cap: Any = None  # models.features.StageCapture of the hint's teacher / student stage
        self._s_cap: Any = None
        self._renorm: list[tuple[Any, Any] | None] = []
        self.cache_reason = ""
        self._pair = self._pair_of = None  # the student + adapter pair DDP wraps (see _student_step)

    # -- Objective API ---------------------------------------------------------------
    def supports_features_mode(self) -> bool:
        # a hint needs the student's intermediate maps, which cached body features do not have
        return self.config.feature_loss is None

    def extra_modules(self) -> list[Any]:
        return [self.adapter] if self.adapter is not None else []

    def fit_head(self, ctx: ObjectiveContext, loaders: Any, stop: Any) -> Iterable[Event]:
        """Head only on cached features: fit the student's head to the teacher's answers (the label
        where there is one, else the teacher's top class) before the KD epochs, as plain
        classification fits its head (training/head_fit.py); the student trained on the labels
        alone is fitted, and a KD student left to the epochs would start behind it."""
        if self.cached_probs is None:
            return ()
        import numpy as np

        from tlstudio.core.training.head_fit import fit_head_on_cache

        y = np.asarray(loaders.labels)
        top = self.cached_probs.argmax(1).cpu().numpy()
        return fit_head_on_cache(ctx.full_model, loaders, label_smoothing=self.config.label_smoothing,
                                 class_weight=None, stop=stop, seed=int(self.config.seed),
                                 labels=np.where(y >= 0, y, top[: len(y)]))

    def setup(self, ctx: ObjectiveContext) -> Iterable[Event]:
        self.device = ctx.device
        if not self.teachers:
            for k, run in enumerate(self.config.teachers):
                yield Progress("teacher", k, len(self.config.teachers), f"loading teacher {Path(run).name}")
                self.teachers.append(load_teacher(run, ctx.classes, ctx.device))
        else:
            for t in self.teachers:
                t.perm = check_teacher_classes(t.run_dir, t.info.model.classes, ctx.classes)
                t.model.to(ctx.device).eval().requires_grad_(False)
        names = ", ".join(f"{t.name} ({t.backbone})" for t in self.teachers)
        yield Log(f"Distillation: {len(self.teachers)} teacher(s): {names}; T={self.T:g}, alpha={self.alpha:g}")
        if len(self.teachers) > 1:
            w = self.weights or [1.0] * len(self.teachers)
            yield Log("Multi-teacher: soft targets are the " + ("weighted" if self.weights else "plain")
                      + " average of the teachers' probabilities at T (weights "
                      + ", ".join(f"{x / sum(w):.2f}" for x in w) + ")")
        student_backbone = self.config.backbone
        if any(t.backbone == student_backbone for t in self.teachers):
            yield Log(f"Self-distillation: a {student_backbone} teacher teaches a fresh {student_backbone} student")
        n_unlab = sum(1 for s in ctx.train_samples if s.label < 0)
        if n_unlab:
            yield Log(f"{n_unlab} unlabelled images are labelled by the teacher's soft targets (soft term only)")

        self._setup_inputs(ctx)
        if self.config.feature_loss:
            yield from self._setup_hint(ctx)

        deterministic = ctx.features_mode or self.config.augment == "none"
        if self.config.feature_loss:
            self.cache_reason = ("the teacher runs on every batch: the feature loss needs its intermediate "
                                 "maps for the same (augmented) images the student sees")
        elif not self.config.cache_teacher and not ctx.features_mode:
            self.cache_reason = "the teacher runs on every batch: caching is switched off"
        elif not deterministic:
            self.cache_reason = (f"the teacher runs on every batch: augment={self.config.augment!r} gives "
                                 "each epoch different images (set augment to none to cache its outputs)")
        if self.cache_reason:
            yield Log(self.cache_reason.capitalize())
            return
        yield from self._cache_teacher(ctx)

    def loss(self, model, x, y, idx):
        import torch

        logits, s_feat = self._student_step(model, x)
        with torch.no_grad():
            probs, t_feat = self.teacher_probs(x, idx)
        total, parts = kd_loss_from_probs(logits, probs, y, self.T, self.alpha, self.config.label_smoothing)
        if s_feat is not None and t_feat is not None:
            h = self.config.feature_weight * hint_loss(s_feat, t_feat)
            total = total + h
            parts["feature"] = float(h.detach())
        return total, parts

    def _student_step(self, model, x):
        """(logits, the hint's student feature through the adapter, or None) from ONE forward
        through the model the loop trains: a DDP wrapper then syncs the gradients of both
        (calling the plain model inside it would not). Under DDP with an adapter, the student and
        the adapter go through one DDP-wrapped pair, so the adapter's gradients are averaged over
        the processes too (it is an extra module, outside the engine's wrapper)."""
        if self._s_cap is None:
            return self.forward_student(model, x), None
        if self.adapter is not None:
            from tlstudio.core.runtime.parallel import unwrap as unwrap_ddp

            if unwrap_ddp(model) is not model:
                return self._pair_for(model)(x)
        logits, feat = self._s_cap(model, x)
        return logits, _adapt(self.adapter, feat)

    def _pair_for(self, model):
        """The DDP-wrapped (student, adapter) pair for the engine's DDP-wrapped ``model`` (made
        again when the engine re-wraps: gradual unfreezing, a smaller batch after out-of-memory)."""
        from tlstudio.core.runtime.parallel import distributed_context, unwrap, wrap_ddp

        if self._pair is None or self._pair_of is not model:
            inner = unwrap(model)  # the student, or torch.compile's wrapper around it
            pair = _pair_class()(inner, self.adapter, self._s_cap)
            self._pair = wrap_ddp(pair, distributed_context(), next(inner.parameters()).device)
            self._pair_of = model
        return self._pair

    # -- teacher outputs ---------------------------------------------------------------
    def teacher_probs(self, x, idx):
        """Soft targets for a batch: from the cache by sample index, else by running the teachers."""

        if self.cached_probs is not None:
            return self.cached_probs[idx.to(self.cached_probs.device)].to(x.device), None
        outs, feat = [], None
        for k, t in enumerate(self.teachers):
            xt = x
            if self._renorm[k] is not None:
                scale, shift = self._renorm[k]
                xt = x * scale.to(x.dtype) + shift.to(x.dtype)
            if k == 0 and self._t_cap is not None:
                logits, feat = self._t_cap(t.model, xt)
            else:
                logits = t.model(xt)
            outs.append(logits[:, t.perm] if t.perm is not None else logits)
        return soft_targets(outs, self.T, self.weights), feat

    def _setup_inputs(self, ctx: ObjectiveContext) -> None:
        """Teachers trained with another mean/std get the student's input re-normalised."""
        import torch

        self._renorm = [None] * len(self.teachers)
        if ctx.features_mode:
            return
        s_mean, s_std = self._student_norm(ctx)
        for k, t in enumerate(self.teachers):
            tm, ts = tuple(t.info.model.mean), tuple(t.info.model.std)
            if (tm, ts) == (s_mean, s_std):
                continue
            sm = torch.tensor(s_mean).view(1, 3, 1, 1)
            ss = torch.tensor(s_std).view(1, 3, 1, 1)
            tmt = torch.tensor(tm).view(1, 3, 1, 1)
            tst = torch.tensor(ts).view(1, 3, 1, 1)
            # x_t = (x * s_std + s_mean - t_mean) / t_std
            self._renorm[k] = ((ss / tst).to(ctx.device), ((sm - tmt) / tst).to(ctx.device))

    def _student_norm(self, ctx) -> tuple[tuple, tuple]:
        """The student's own mean/std (from the whole, plain model: the trained module may be a DDP
        or torch.compile wrapper)."""
        from tlstudio.core.models.backbones import data_config
        from tlstudio.core.models.features import unwrap

        cfg = data_config(unwrap(ctx.full_model or ctx.model), self.config.image_size)
        return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])

    def _cache_teacher(self, ctx: ObjectiveContext) -> Iterable[Event]:
        """Teacher probabilities for every training sample, once, from its deterministic view."""
        import torch

        samples = ctx.train_samples
        n = len(samples)
        n_classes = len(ctx.classes)
        probs = torch.full((n, n_classes), 1.0 / n_classes)
        done = 0
        yield Progress("teacher", 0, n, "computing teacher outputs once")
        per_teacher = []
        for t in self.teachers:
            logits = torch.zeros(n, n_classes)
            seen = torch.zeros(n, dtype=torch.bool)
            for x, _y, idx in _eval_batches(samples, _teacher_data_cfg(t.info.model), self.config.batch_size,
                                            self.config.workers):
                with torch.no_grad():
                    out = t.model(x.to(ctx.device)).float().cpu()
                if t.perm is not None:
                    out = out[:, t.perm]
                logits[idx] = out
                seen[idx] = True
                done += len(idx)
                yield Progress("teacher", min(done, n * len(self.teachers)), n * len(self.teachers),
                               f"teacher {t.name}")
            per_teacher.append((logits, seen))
        seen_all = per_teacher[0][1].clone()
        for _, s in per_teacher[1:]:
            seen_all &= s
        mixed = soft_targets([lg for lg, _ in per_teacher], self.T, self.weights)
        probs[seen_all] = mixed[seen_all]
        self.cached_probs = probs.to(ctx.device)
        why = "the engine trains on cached features (fixed views)" if ctx.features_mode else "augment is none"
        yield Log(f"Teacher outputs computed once for {int(seen_all.sum())} images and cached "
                  f"(the teacher is frozen and {why}); it does not run during training")

    # -- feature hint ------------------------------------------------------------------
    def _setup_hint(self, ctx: ObjectiveContext) -> Iterable[Event]:
        import torch

        if ctx.features_mode:
            raise DistillError("the feature loss needs images, but the engine is training on cached features")
        t_stage, s_stage = parse_feature_loss(self.config.feature_loss)
        teacher = self.teachers[0]
        self._t_cap = stage_capture(teacher.model, t_stage, f"teacher {teacher.name}")
        # ctx.model is what the loop trains (DDP / torch.compile wrappers around the student):
        # the stage resolves on the plain student inside and is read during the wrapper's forward
        self._s_cap = stage_capture(ctx.model, s_stage, f"student {self.config.backbone}")
        t_name, s_name = self._t_cap.stage.module, self._s_cap.stage.module
        # widths from one tiny forward each (feature_info can be off for odd stages)
        size = self.config.image_size or 64
        x = torch.zeros(1, 3, min(size, 96), min(size, 96), device=ctx.device)
        was_training = ctx.model.training
        ctx.model.eval()
        try:
            with torch.no_grad():
                s_ch = _as_map(self._s_cap(ctx.model, x)[1]).shape[1]
                t_ch = _as_map(self._t_cap(teacher.model, x)[1]).shape[1]
        finally:
            ctx.model.train(was_training)
        if s_ch != t_ch:
            self.adapter = torch.nn.Conv2d(s_ch, t_ch, kernel_size=1, bias=False).to(ctx.device)
            note = f"through a learned 1x1 adapter {s_ch}->{t_ch} channels"
        else:
            note = f"({s_ch} channels on both sides, no adapter needed)"
        yield Log(f"Feature loss: student {s_name} matches teacher {teacher.name} {t_name} {note}, "
                  f"weight {self.config.feature_weight:g}")


def _adapt(adapter, feat):
    """The student's stage feature in the teacher's width (the 1x1 adapter), or as it is."""
    if adapter is None:
        return feat
    return adapter(_as_map(feat).to(next(adapter.parameters()).dtype))


def _pair_class():
    import torch

    class StudentWithAdapter(torch.nn.Module):
        """The student and the hint's adapter in one forward: (logits, adapted stage feature).
        Under torchrun this pair is what DDP wraps, so both get their gradients averaged."""

        def __init__(self, student, adapter, capture) -> None:
            super().__init__()
            self.student, self.adapter = student, adapter
            self.capture = capture  # models.features.StageCapture on the student's stage

        def forward(self, x):
            logits, feat = self.capture(self.student, x)
            return logits, _adapt(self.adapter, feat)

    return StudentWithAdapter


def _eval_batches(samples, data_cfg: dict, batch_size: int, workers: int | None):
    """(x, y, idx) batches of ``samples`` with the deterministic eval transform (unreadable
    images are left out)."""
    from tlstudio.core.pipeline.loaders import eval_loader

    yield from eval_loader(list(samples), data_cfg, batch_size=batch_size, workers=workers)
