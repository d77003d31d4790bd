"""Knowledge distillation: trained teacher run(s) teach a (usually smaller) student.

Response-based KD (the default) matches the teacher's softened class probabilities;
feature-based KD adds a hint loss between a teacher stage and a student stage. Several
teachers average (or weight) their soft targets. A teacher with the student's own
architecture gives self-distillation. Unlabelled images get only the soft term, so the
teacher labels them. ``distill()`` runs the engine with :class:`DistillObjective`, then trains
the same student without a teacher and writes the trade-off report (tradeoff.py).
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from tlstudio.core.config import TrainConfig
from tlstudio.core.errors import UserError
from tlstudio.core.events import BatchEnd, EpochEnd, Event, Finished, Log, Progress, RunStarted, Warn
from tlstudio.core.training.objectives import Objective, ObjectiveContext

FEATURE_LOSS_PATTERN = re.compile(r"^[^:\s]+:[^:\s]+$")
STUDENT_BASELINE_DIR = "student_baseline"

#: Typical ranges, shown next to the controls in the GUI and in the CLI help.
TEMPERATURE_HELP = (
    "Temperature T (3..10): higher T softens the teacher's probabilities so the student also "
    "learns which wrong classes look alike; T=1 keeps only the top guess."
)
ALPHA_HELP = (
    "Alpha (0.5..0.9): the share of the loss that follows the teacher; the rest follows the "
    "labels. Higher alpha trusts the teacher more."
)


class DistillError(UserError):
    """A teacher run cannot teach this student on this data (message names the run)."""


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------
class DistillConfig(TrainConfig):
    """A TrainConfig for the student plus the teacher(s) and the KD settings.

    ``backbone``, ``init``, ``freeze`` ... describe the student. Saved as config.json.
    """

    task: str = "distillation"
    # the student has to move its features towards the teacher's: all its layers train by default
    freeze: str = "none"

    teachers: list[str] = Field(min_length=1)  # run folders
    teacher_weights: list[float] | None = None  # None: equal weights
    temperature: float = Field(4.0, gt=0.0, le=100.0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)
    feature_loss: str | None = None  # "TEACHER_STAGE:STUDENT_STAGE", stage = feature_info index or module name
    feature_weight: float = Field(1.0, ge=0.0)
    unlabeled_dir: str | None = None
    student_baseline: bool = True  # also train the student without a teacher for the report
    cache_teacher: bool = True  # compute teacher outputs once when its inputs are deterministic
    latency_repeats: int = Field(5, ge=1)  # timed passes per latency measurement
    latency_rounds: int = Field(3, ge=1)  # interleaved rounds; the best round counts (robust to load bursts)

    @field_validator("feature_loss")
    @classmethod
    def _check_feature_loss(cls, v: str | None) -> str | None:
        if v is not None and not FEATURE_LOSS_PATTERN.match(v):
            raise ValueError(f"feature_loss must look like TEACHER_STAGE:STUDENT_STAGE (e.g. 3:3), not {v!r}")
        return v

    @model_validator(mode="after")
    def _check_weights(self) -> "DistillConfig":
        w = self.teacher_weights
        if w is not None:
            if len(w) != len(self.teachers):
                raise ValueError(f"{len(w)} teacher weights for {len(self.teachers)} teachers")
            if any(x < 0 for x in w) or sum(w) <= 0:
                raise ValueError("teacher weights must be >= 0 and not all zero")
        return self

    def student_config(self, out_dir: str | None = None) -> TrainConfig:
        """The same student settings as a plain TrainConfig (for the no-teacher baseline)."""
        own = set(DistillConfig.model_fields) - set(TrainConfig.model_fields)
        data = self.model_dump(exclude=own)
        data.update(out_dir=out_dir, baseline=False)
        return TrainConfig(**data)


def parse_feature_loss(spec: str) -> tuple[str, str]:
    t, s = spec.split(":", 1)
    return t, s


# --------------------------------------------------------------------------------------
# Losses (pure functions of tensors)
# --------------------------------------------------------------------------------------
def soft_targets(teacher_logits: list, temperature: float, weights: list[float] | None = None):
    """Teacher probabilities at temperature T, averaged (or weighted) over teachers."""
    import torch

    if not isinstance(teacher_logits, (list, tuple)):
        teacher_logits = [teacher_logits]
    n = len(teacher_logits)
    w = [1.0 / n] * n if weights is None else [x / sum(weights) for x in weights]
    probs = None
    for wi, t in zip(w, teacher_logits):
        p = torch.softmax(t.float() / temperature, dim=1) * wi
        probs = p if probs is None else probs + p
    return probs


def soft_kd_term(student_logits, teacher_probs, temperature: float):
    """KL(teacher || student) at temperature T, summed over classes, mean over rows (batchmean)."""
    import torch

    log_s = torch.log_softmax(student_logits.float() / temperature, dim=1)
    p_t = teacher_probs.float()
    # 0 * log 0 = 0: xlogy handles teacher probabilities that underflow to zero
    kl = torch.special.xlogy(p_t, p_t) - p_t * log_s
    return kl.sum(dim=1).mean()


def kd_loss_from_probs(student_logits, teacher_probs, y, temperature: float, alpha: float,
                       label_smoothing: float = 0.0):
    """alpha*T^2*KL(p_t || p_s) over all rows + (1-alpha)*CE(s, y) over labelled rows (y >= 0).

    Returns (loss, parts) where parts holds the weighted contributions "soft" and "hard"
    (they add up to the loss) as floats.
    """
    import torch
    import torch.nn.functional as F

    s = student_logits.float()
    soft = alpha * temperature**2 * soft_kd_term(s, teacher_probs, temperature) if alpha > 0 else s.sum() * 0.0
    labelled = y >= 0
    if alpha < 1 and bool(labelled.any()):
        hard = (1.0 - alpha) * F.cross_entropy(s[labelled], y[labelled], label_smoothing=label_smoothing)
    else:
        hard = s.sum() * 0.0
    total = soft + hard
    with torch.no_grad():
        parts = {"soft": float(soft.detach()), "hard": float(hard.detach())}
    return total, parts


def kd_loss(student_logits, teacher_logits, y, T: float = 4.0, alpha: float = 0.7,
            label_smoothing: float = 0.0):
    """Hinton KD: alpha*T^2*KL(softmax(t/T) || softmax(s/T)) + (1-alpha)*CE(s, y).

    KL is taken with the teacher as the target distribution, batchmean. Rows with y == -1
    (unlabelled) contribute only to the soft term. ``teacher_logits`` may be a list of
    tensors (several teachers: their probabilities at T are averaged).
    """
    return kd_loss_from_probs(student_logits, soft_targets(teacher_logits, T), y, T, alpha, label_smoothing)


def hint_loss(student_feat, teacher_feat):
    """MSE between standardised feature maps after matching spatial sizes by adaptive pooling.

    Each map is standardised per sample (zero mean, unit variance over C, H, W) so the loss
    has the same scale for any pair of architectures and cannot swamp the KD terms.
    """
    import torch.nn.functional as F

    s, t = _as_map(student_feat.float()), _as_map(teacher_feat.float())
    h, w = min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3])
    if s.shape[2:] != (h, w):
        s = F.adaptive_avg_pool2d(s, (h, w))
    if t.shape[2:] != (h, w):
        t = F.adaptive_avg_pool2d(t, (h, w))
    if s.shape[1] != t.shape[1]:
        raise ValueError(f"hint loss needs equal widths (adapter missing): {s.shape[1]} vs {t.shape[1]}")
    return F.mse_loss(_standardise(s), _standardise(t))


def _standardise(f):
    mean = f.mean(dim=(1, 2, 3), keepdim=True)
    std = f.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (f - mean) / (std + 1e-5)


def _as_map(f):
    """NCHW as is; token sequences (N, L, C) and vectors (N, C) become N x C x 1 x 1 (pooled)."""
    if f.dim() == 4:
        return f
    if f.dim() == 3:
        return f.mean(dim=1)[:, :, None, None]
    if f.dim() == 2:
        return f[:, :, None, None]
    raise ValueError(f"unsupported feature shape {tuple(f.shape)}")


# --------------------------------------------------------------------------------------
# Stage features by forward hooks (works for any timm model with feature_info)
# --------------------------------------------------------------------------------------
def stage_modules(model) -> list[tuple[str, int, int]]:
    """(module name, channels, reduction) per timm feature stage."""
    info = getattr(model, "feature_info", None) or []
    out = []
    for f in info:
        if isinstance(f, dict) and "module" in f:
            out.append((f["module"], int(f.get("num_chs", 0)), int(f.get("reduction", 0))))
    return out


def resolve_stage(model, stage: str, who: str) -> str:
    """A stage spec (feature_info index, negative allowed, or a module name) -> module name."""
    stages = stage_modules(model)
    names = dict(model.named_modules())
    if re.fullmatch(r"-?\d+", stage):
        i = int(stage)
        if not stages:
            raise DistillError(f"{who}: the model lists no feature stages; give a module name instead of {stage}")
        if not -len(stages) <= i < len(stages):
            raise DistillError(
                f"{who}: stage {i} does not exist; stages are 0..{len(stages) - 1}: "
                + ", ".join(f"{k}={m} ({c} ch)" for k, (m, c, _) in enumerate(stages))
            )
        return stages[i][0]
    if stage not in names:
        raise DistillError(f"{who}: no module named {stage!r} (stages: {[m for m, _, _ in stages]})")
    return stage


class _Capture:
    """Forward hook that keeps a module's output only while armed (no leaks at eval time)."""

    def __init__(self, module) -> None:
        self.armed = False
        self.value = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, output) -> None:
        if self.armed:
            self.value = output[0] if isinstance(output, (list, tuple)) else output

    def take(self):
        v, self.value = self.value, None
        return v

    def remove(self) -> None:
        self.handle.remove()


# --------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Teacher:
    run_dir: str
    model: Any
    info: Any  # runs.RunInfo
    perm: list[int] | None  # teacher logit columns in the data set's class order (None: same order)

    @property
    def name(self) -> str:
        return Path(self.run_dir).name

    @property
    def backbone(self) -> str:
        return self.info.model.backbone


def check_teacher_classes(run_dir: str, teacher_classes: list[str], classes: list[str]) -> list[int] | None:
    """Column permutation mapping the teacher's class order to ``classes``; DistillError if the sets differ."""
    if list(teacher_classes) == list(classes):
        return None
    missing = [c for c in classes if c not in teacher_classes]
    extra = [c for c in teacher_classes if c not in classes]
    if missing or extra or len(teacher_classes) != len(classes):
        parts = []
        if missing:
            parts.append(f"the data has {missing} which the teacher does not know")
        if extra:
            parts.append(f"the teacher has {extra} which the data lacks")
        raise DistillError(
            f"teacher run {run_dir}: its classes do not match the data set's: " + "; ".join(parts)
            + f" (teacher: {list(teacher_classes)}, data: {list(classes)})"
        )
    return [list(teacher_classes).index(c) for c in classes]


def load_teacher(run_dir: str, classes: list[str] | None = None, device=None) -> Teacher:
    """Load a run's best weights frozen and in eval mode; check its classes against ``classes``."""
    from tlstudio.core.runs.folder import RunError, read_run
    from tlstudio.core.models.run_model import load_run_model

    try:
        info = read_run(run_dir)
        perm = check_teacher_classes(run_dir, info.model.classes, classes) if classes is not None else None
        model, info = load_run_model(run_dir)
    except RunError as exc:
        raise DistillError(f"teacher run {run_dir}: {exc}") from exc
    model.eval()
    model.requires_grad_(False)
    if device is not None:
        model.to(device)
    return Teacher(str(run_dir), model, info, perm)


def _teacher_data_cfg(spec) -> dict:
    s = int(spec.image_size)
    return {
        "input_size": (3, s, s),
        "mean": tuple(spec.mean),
        "std": tuple(spec.std),
        "interpolation": spec.interpolation,
        "crop_pct": spec.crop_pct,
        "crop_mode": spec.crop_mode,
    }


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
        self._t_cap: _Capture | None = None
        self._s_cap: _Capture | None = None
        self._renorm: list[tuple[Any, Any] | None] = []
        self.cache_reason = ""

    # -- Objective API ---------------------------------------------------------------
    def supports_features_mode(self) -> bool:
        # a hint needs the student's intermediate maps, which cached body features do not have
        return self.config.feature_loss is None

    def extra_modules(self) -> list[Any]:
        return [self.adapter] if self.adapter is not None else []

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

    def forward_student(self, model, x):
        if self._s_cap is None:
            return model(x)
        self._s_cap.armed = True
        try:
            return model(x)
        finally:
            self._s_cap.armed = False

    def loss(self, model, x, y, idx):
        import torch

        logits = self.forward_student(model, x)
        s_feat = self._s_cap.take() if self._s_cap is not None else None
        with torch.no_grad():
            probs, t_feat = self.teacher_probs(x, idx)
        total, parts = kd_loss_from_probs(logits, probs, y, self.T, self.alpha, self.config.label_smoothing)
        if s_feat is not None and t_feat is not None:
            s = self.adapter(_as_map(s_feat).to(next(self.adapter.parameters()).dtype)) \
                if self.adapter is not None else s_feat
            h = self.config.feature_weight * hint_loss(s, t_feat)
            total = total + h
            parts["feature"] = float(h.detach())
        return total, parts

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
                self._t_cap.armed = True
                try:
                    logits = t.model(xt)
                finally:
                    self._t_cap.armed = False
                feat = self._t_cap.take()
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
        try:
            from tlstudio.core.models.backbones import data_config

            cfg = data_config(ctx.model, self.config.image_size)
            return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
        except Exception:  # noqa: BLE001 - models module missing/unknown model: assume ImageNet stats
            return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

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
        t_name = resolve_stage(teacher.model, t_stage, f"teacher {teacher.name}")
        s_name = resolve_stage(ctx.model, s_stage, f"student {self.config.backbone}")
        t_mod = dict(teacher.model.named_modules())[t_name]
        s_mod = dict(ctx.model.named_modules())[s_name]
        self._t_cap, self._s_cap = _Capture(t_mod), _Capture(s_mod)
        # widths from one tiny forward each (feature_info can be off for odd stages)
        size = self.config.image_size or 64
        x = torch.zeros(1, 3, min(size, 96), min(size, 96), device=ctx.device)
        was_training = ctx.model.training
        ctx.model.eval()
        with torch.no_grad():
            self._s_cap.armed = self._t_cap.armed = True
            ctx.model(x)
            teacher.model(x)
            self._s_cap.armed = self._t_cap.armed = False
            s_ch = _as_map(self._s_cap.take()).shape[1]
            t_ch = _as_map(self._t_cap.take()).shape[1]
        ctx.model.train(was_training)
        if s_ch != t_ch:
            self.adapter = torch.nn.Conv2d(s_ch, t_ch, kernel_size=1, bias=False).to(ctx.device)
            note = f"through a learned 1x1 adapter {s_ch}->{t_ch} channels"
        else:
            note = f"({s_ch} channels on both sides, no adapter needed)"
        yield Log(f"Feature loss: student {s_name} matches teacher {teacher.name} {t_name} {note}, "
                  f"weight {self.config.feature_weight:g}")


def _eval_batches(samples, data_cfg: dict, batch_size: int, workers: int | None):
    """(x, y, idx) batches of ``samples`` with the deterministic eval transform.

    The speed owner's parallel loader when present; else evaluate.py's PIL + numpy
    reproduction of timm's eval transform (unreadable images are left out, like the loader).
    """
    try:
        from tlstudio.core.pipeline.loaders import eval_loader
    except ImportError:
        eval_loader = None
    if eval_loader is not None:
        yield from eval_loader(list(samples), data_cfg, batch_size=batch_size, workers=workers)
        return
    import torch

    from tlstudio.core.evaluation.evaluate import load_batch
    from tlstudio.core.runs.folder import ModelSpec

    size = data_cfg["input_size"][-1]
    spec = ModelSpec(backbone="teacher", num_classes=1, classes=["_"], image_size=size, mean=data_cfg["mean"],
                     std=data_cfg["std"], interpolation=data_cfg["interpolation"], crop_pct=data_cfg["crop_pct"],
                     crop_mode=data_cfg["crop_mode"])
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        x, ok, _bad = load_batch([s.path for s in chunk], spec)
        if ok:
            idx = torch.tensor([start + i for i in ok], dtype=torch.long)
            y = torch.tensor([chunk[i].label for i in ok], dtype=torch.long)
            yield torch.from_numpy(x), y, idx


# --------------------------------------------------------------------------------------
# The run: distil, train the student alone, compare
# --------------------------------------------------------------------------------------
def _relay(gen, phase: str | None, state: dict):
    """Yield ``gen``'s events (phase relabelled), remember the run folder; return its value."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if isinstance(ev, RunStarted):
            state.setdefault("run_dir", ev.run_dir)
            state["last_run_dir"] = ev.run_dir
        if isinstance(ev, Finished):
            state["status"] = ev.status
        if phase is not None and isinstance(ev, (RunStarted, BatchEnd, EpochEnd)):
            ev = dataclasses.replace(ev, phase=phase)
        yield ev


def _prepare(config: DistillConfig) -> Generator[Event, None, list | None]:
    """Check the teachers (readable, trained, same classes as each other and as the data) and
    read the unlabelled folder. Runs before any run folder exists. Returns the extra samples."""
    from tlstudio.core.data.dataset import scan
    from tlstudio.core.runs.folder import RunError, read_run

    teacher_classes = {}
    for run in config.teachers:
        try:
            info = read_run(run)
        except RunError as exc:
            raise DistillError(f"teacher run {run}: {exc}") from exc
        if not (Path(run) / "model.safetensors").is_file():
            raise DistillError(f"teacher run {run}: it has no trained weights (model.safetensors missing)")
        teacher_classes[run] = list(info.model.classes)
    yield Log(f"Checking the teachers' classes against {config.data_dir}")
    data_classes = list(scan(config.data_dir).classes)
    if data_classes:
        for run, classes in teacher_classes.items():
            check_teacher_classes(run, classes, data_classes)

    if not config.unlabeled_dir:
        return None
    from tlstudio.core.data.dataset import scan_unlabelled

    extra, skipped = scan_unlabelled(config.unlabeled_dir)
    for s in skipped[:20]:
        yield Warn(f"unlabelled image skipped: {s.reason}", s.path)
    if len(skipped) > 20:
        yield Warn(f"{len(skipped) - 20} more unlabelled images skipped")
    if not extra:
        raise DistillError(f"{config.unlabeled_dir}: no usable images in the unlabelled folder")
    yield Log(f"Unlabelled folder {config.unlabeled_dir}: {len(extra)} images")
    return extra


def distill(config: DistillConfig, stop: threading.Event | None = None,
            pause: threading.Event | None = None) -> Generator[Event, None, Any]:
    """Distil, then train the student without a teacher, then write the trade-off report."""
    from tlstudio.core.training.engine import fit

    extra = yield from _prepare(config)
    state: dict = {}
    info = yield from _relay(fit(config, stop, pause, objective=DistillObjective(config), extra_train=extra,
                                 run_kind="distill", phase="distill"), None, state)
    run_dir = Path(state.get("run_dir") or config.out_dir or "")
    return (yield from _after_main(config, run_dir, info, stop, pause))


def resume_distill(run_dir: str | Path, stop: threading.Event | None = None,
                   pause: threading.Event | None = None) -> Generator[Event, None, Any]:
    """Continue a stopped distillation: the distil run, then the student baseline, then the report."""
    from tlstudio.core.training.engine import fit
    from tlstudio.core.runs.folder import CONFIG_JSON, LAST_CKPT, RunError, read_run

    run_dir = Path(run_dir)
    try:
        info = read_run(run_dir)
    except RunError as exc:
        raise DistillError(str(exc)) from exc
    if info.kind != "distill":
        raise DistillError(f"{run_dir}: not a distillation run (it is a {info.kind} run: use resume)")
    try:
        config = DistillConfig.from_json_file(run_dir / CONFIG_JSON)
    except Exception as exc:  # noqa: BLE001 - pydantic or JSON error: name the file
        raise DistillError(f"{run_dir / CONFIG_JSON}: cannot read the distillation settings: "
                           f"{str(exc).splitlines()[0]}") from exc
    extra = yield from _prepare(config)
    if info.status not in ("finished", "early_stopped"):
        if not (run_dir / LAST_CKPT).is_file():
            raise DistillError(f"{run_dir}: no checkpoint to resume from ({LAST_CKPT} missing)")
        # the engine's resume() reads a plain TrainConfig; fit() with the run folder resumes any kind
        info = yield from _relay(fit(config, stop, pause, objective=DistillObjective(config), extra_train=extra,
                                     run_kind="distill", phase="distill", _resume_from=run_dir), None, {})
    else:
        yield Log(f"{run_dir.name}: the distillation itself had finished; continuing with what is left")
    return (yield from _after_main(config, run_dir, info, stop, pause))


def _after_main(config: DistillConfig, run_dir: Path, info, stop, pause) -> Generator[Event, None, Any]:
    """After the distil run: the student without a teacher (resumed if interrupted), the report."""
    import shutil

    from tlstudio.core.training.engine import fit
    from tlstudio.core.runs.folder import LAST_CKPT, is_run_dir, read_run, write_run

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    if getattr(info, "status", None) in ("stopped", "failed") or stopped():
        yield Log("Distillation stopped; `tlstudio distill-resume` (or Continue) finishes it later")
        return info

    baseline_dir = None
    if config.student_baseline:
        base_dir = run_dir / STUDENT_BASELINE_DIR
        base_cfg = config.student_config(out_dir=str(base_dir))
        done = False
        gen = None
        if is_run_dir(base_dir):
            status = read_run(base_dir).status
            if status in ("finished", "early_stopped"):
                done = True
            elif (base_dir / LAST_CKPT).is_file():
                yield Log("Continuing the student without a teacher where it stopped")
                gen = fit(base_cfg, stop, pause, run_kind="train", phase=STUDENT_BASELINE_DIR,
                          _resume_from=base_dir)
            else:  # interrupted before its first checkpoint: start it again
                shutil.rmtree(base_dir, ignore_errors=True)
        if not done and gen is None:
            yield Log("Training the same student without a teacher (student baseline) for the comparison")
            gen = fit(base_cfg, stop, pause, run_kind="train", phase=STUDENT_BASELINE_DIR)
        if gen is not None:
            yield from _relay(gen, None, {})
        if stopped():
            yield Log("Stopped during the student baseline; `tlstudio distill-resume` (or Continue) finishes it")
            return read_run(run_dir)
        baseline_dir = str(base_dir)

    from tlstudio.core.tasks.tradeoff import build_tradeoff, save_tradeoff, tradeoff_table

    report = yield from build_tradeoff(run_dir, config.teachers, baseline_dir, device=config.device,
                                       repeats=config.latency_repeats, rounds=config.latency_rounds,
                                       batch_size=config.batch_size)
    save_tradeoff(run_dir, report)
    info = read_run(run_dir)
    info.extra["tradeoff"] = report
    write_run(run_dir, info)
    yield Log("Trade-off (same validation images, latency measured on this machine):\n"
              + tradeoff_table(report) + "\n" + report["summary"])
    return info


def _register() -> None:
    from tlstudio.core.tasks import classification
    from tlstudio.core.tasks.registry import TaskKind, register

    register(TaskKind(
        kind="distillation", title="Knowledge distillation",
        summary="a small student learns from trained teacher run(s): same classes, a fraction of the size",
        config_cls=DistillConfig, run=distill, resume=resume_distill, evaluate=classification.evaluate,
        predict=classification.predict, export=classification.export, best_metric=("val_acc", "max"),
        gui_steps=("data", "distill", "evaluate", "predict", "export", "runs"),
        eval_lines=classification.eval_lines, predict_line=classification.predict_line,
    ))


_register()
