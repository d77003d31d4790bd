"""Intermediate feature maps of any timm body, through timm's own APIs.

One module for every job that needs mid-level features (anomaly memory banks, feature
distillation, domain adaptation, transferability ranking), so no job writes per-architecture
code. timm describes each model's stages in ``model.feature_info`` (channels, reduction =
stride, module name); ``forward_intermediates`` (timm >= 1.0, nearly every family) returns
them in one pass and can stop after the deepest one needed. Models without it fall back to
forward hooks on the modules that ``feature_info`` names. Transformer token outputs come back
as NCHW grids (prefix tokens dropped), so callers always get ``(B, C, H, W)``.

A job that needs a stage's output from the *same* forward pass as the model's output (feature
distillation: the student's logits and its hint feature, whose gradients DDP must sync in one
backward) uses :class:`StageCapture`: the stage is resolved on the plain model inside any
wrapper (DDP's ``module.``, ``torch.compile``'s ``_orig_mod.``) and read while the wrapper runs
its normal forward.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tlstudio.core.errors import UserError


class FeatureError(UserError):
    """The model does not describe feature stages that can be read."""


def wrappers(model: Any) -> list:
    """The chain from ``model`` inwards: ``model`` itself, then each module a DDP / DataParallel /
    torch.compile wrapper holds, ending with the plain timm model."""
    chain = [model]
    while len(chain) < 9:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if inner is None and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = getattr(model, "module", None)
        if inner is None:
            break
        model = inner
        chain.append(model)
    return chain


def unwrap(model: Any) -> Any:
    """The plain timm model inside DDP / DataParallel / torch.compile wrappers."""
    return wrappers(model)[-1]


def is_compiled(model: Any) -> bool:
    """Is a torch.compile wrapper anywhere around the plain model?"""
    return any(hasattr(m, "_orig_mod") for m in wrappers(model))


def _raw_feature_info(model: Any) -> list[dict]:
    fi = getattr(model, "feature_info", None)
    if fi is None:
        raise FeatureError(
            f"{type(model).__name__} does not describe its feature stages (no timm feature_info): "
            "choose a timm backbone with stages (ResNet, EfficientNet, MobileNet, ConvNeXt, ViT ...)"
        )
    # FeatureInfo objects (features_only models) keep the list in .info
    items = getattr(fi, "info", fi)
    return [dict(d) for d in items]


def feature_info(model: Any) -> list[dict]:
    """One dict per readable stage: ``index`` (what ``feature_maps`` takes), ``reduction``
    (stride in pixels), ``channels`` and ``module`` (name inside the model)."""
    model = unwrap(model)
    out = []
    for i, d in enumerate(_raw_feature_info(model)):
        out.append({
            "index": i,
            "reduction": int(d.get("reduction", 0) or 0),
            "channels": int(d.get("num_chs", 0) or 0),
            "module": str(d.get("module", "")),
        })
    if not out:
        raise FeatureError(f"{type(model).__name__}: timm lists no feature stages")
    return out


def stage_indices_for_strides(model: Any, strides: Sequence[int] = (8, 16)) -> list[int]:
    """Stage indices whose stride is each of ``strides`` (the deepest stage at that stride).

    A stride the model lacks maps to the nearest one it has. Models whose stages all share a
    stride (ViT: 16 everywhere) get blocks spread over the middle of the depth instead, since a
    plain transformer has no pyramid. Returned sorted and without duplicates.
    """
    info = feature_info(model)
    reductions = sorted({d["reduction"] for d in info})
    if len(reductions) == 1 and len(info) > 1:
        n = len(strides)
        depth = len(info)
        picks = {min(depth - 1, max(0, round(depth * (k + 1) / (n + 1)) - 1)) for k in range(n)}
        return sorted(picks)
    picks = set()
    for s in strides:
        best = min(reductions, key=lambda r: (abs(r - s), r))
        picks.add(max(d["index"] for d in info if d["reduction"] == best))
    return sorted(picks)


def _tokens_to_map(t: Any, model: Any) -> Any:
    """(B, N, C) transformer tokens -> (B, C, H, W), prefix tokens dropped."""
    if t.ndim != 3:
        return t
    n_prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    tokens = t[:, n_prefix:, :]
    n = tokens.shape[1]
    side = int(round(n ** 0.5))
    if side * side != n:
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        if not grid or grid[0] * grid[1] != n:
            raise FeatureError(f"cannot reshape {n} tokens into a feature grid")
        h, w = int(grid[0]), int(grid[1])
    else:
        h = w = side
    return tokens.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)


def _is_nhwc(t: Any, channels: int) -> bool:
    return t.ndim == 4 and t.shape[-1] == channels and t.shape[1] != channels


def feature_maps(model: Any, x: Any, indices: Sequence[int]) -> list:
    """Feature maps ``(B, C, H, W)`` of the stages ``indices`` (see ``feature_info``), in the
    order given. Runs the body only as deep as the deepest stage asked for. Gradients flow
    (wrap in ``torch.no_grad()`` when only reading)."""
    model = unwrap(model)
    info = feature_info(model)
    idx = [int(i) for i in indices]
    if not idx:
        raise FeatureError("no feature stages asked for")
    for i in idx:
        if not 0 <= i < len(info):
            raise FeatureError(f"stage {i} does not exist: {type(model).__name__} has stages 0..{len(info) - 1}")
    wanted = sorted(set(idx))
    if hasattr(model, "forward_intermediates"):
        try:
            feats = model.forward_intermediates(
                x, indices=wanted, stop_early=True, intermediates_only=True, output_fmt="NCHW"
            )
        except TypeError:  # an older signature without one of the keywords
            feats = model.forward_intermediates(x, indices=wanted, intermediates_only=True)
        by_index = dict(zip(wanted, feats, strict=True))
    else:
        by_index = _hooked(model, x, wanted, info)
    out = []
    for i in idx:
        t = by_index[i]
        if t.ndim == 3:
            t = _tokens_to_map(t, model)
        elif _is_nhwc(t, info[i]["channels"]):
            t = t.permute(0, 3, 1, 2)
        out.append(t)
    return out


class _Stop(Exception):
    pass


def _hooked(model: Any, x: Any, wanted: list[int], info: list[dict]) -> dict[int, Any]:
    """Fallback: forward hooks on the modules feature_info names; stops after the deepest."""
    modules = dict(model.named_modules())
    got: dict[int, Any] = {}
    handles = []
    last = max(wanted)

    def make_hook(i):
        def hook(_m, _inp, out):
            got[i] = out[0] if isinstance(out, (tuple, list)) else out
            if i == last:
                raise _Stop

        return hook

    try:
        for i in wanted:
            name = info[i]["module"]
            mod = modules.get(name)
            if mod is None:
                raise FeatureError(f"{type(model).__name__}: feature module {name!r} not found")
            handles.append(mod.register_forward_hook(make_hook(i)))
        try:
            model(x)
        except _Stop:
            pass
    finally:
        for h in handles:
            h.remove()
    missing = [i for i in wanted if i not in got]
    if missing:
        raise FeatureError(f"{type(model).__name__}: stages {missing} produced no output")
    return got


def output_shapes(model: Any, indices: Sequence[int], image_size: int) -> list[tuple[int, int, int]]:
    """(C, H, W) of each stage for a square ``image_size`` input, from one dry run."""
    import torch

    model = unwrap(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            maps = feature_maps(model, torch.zeros(1, 3, image_size, image_size), indices)
    finally:
        model.train(was_training)
    return [tuple(int(s) for s in m.shape[1:]) for m in maps]


# --------------------------------------------------------------------------------------
# One stage's output during the model's own forward (logits and feature from one pass)
# --------------------------------------------------------------------------------------
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class Stage:
    """A resolved stage: ``module`` is its name inside the plain (unwrapped) model; ``index``
    and ``channels`` come from timm's feature_info (None for a module it does not list)."""

    module: str
    index: int | None = None
    channels: int | None = None


def resolve_stage(model: Any, spec: int | str) -> Stage:
    """A stage spec -> :class:`Stage` of the plain model inside any wrapper.

    ``spec`` is a feature_info index (negative counts from the deepest stage: ``-1``) or a module
    name; a name may carry wrapper prefixes (``module.``, ``_orig_mod.``), which are dropped.
    FeatureError names the stages that exist.
    """
    inner = unwrap(model)
    try:
        info = feature_info(inner)
    except FeatureError:
        info = []
    listing = ", ".join(f"{d['index']}={d['module']} ({d['channels']} ch)" for d in info)
    spec = str(spec).strip()
    if re.fullmatch(r"-?\d+", spec):
        i = int(spec)
        if not info:
            raise FeatureError(f"the model lists no feature stages; give a module name instead of {spec}")
        if not -len(info) <= i < len(info) or not info[i]["module"]:
            raise FeatureError(f"stage {i} does not exist; stages are 0..{len(info) - 1}: {listing}")
        d = info[i]
        return Stage(d["module"], d["index"], d["channels"] or None)
    name = spec
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    try:
        inner.get_submodule(name)
    except AttributeError:
        raise FeatureError(f"no module named {spec!r} (stages: {[d['module'] for d in info]})") from None
    d = next((d for d in info if d["module"] == name), None)
    return Stage(name, d["index"], d["channels"] or None) if d else Stage(name)


class StageCapture:
    """Reads one stage's output while a (possibly wrapped) model runs its normal forward.

    ``cap = StageCapture(model, "-1")`` resolves the stage on the plain model inside ``model``
    and hooks it; ``out, feat = cap(model, x)`` calls ``model(x)`` - the wrapper itself, so DDP
    syncs the gradients that flow back through ``feat`` too - and returns the model's output and
    the stage's (NHWC stages as NCHW; token sequences as they are). Forwards outside ``cap(...)``
    keep nothing. A torch.compile wrapper traced before the hook existed would never call it
    (dynamo does not guard on hooks), so the compile caches are reset once here and the next
    forward is traced with the hook. ``close()`` (or a ``with`` block) removes the hook.
    """

    def __init__(self, model: Any, spec: int | str) -> None:
        self.inner = unwrap(model)
        self.stage = resolve_stage(self.inner, spec)
        self.armed = False
        self.value = None
        self._handle = self.inner.get_submodule(self.stage.module).register_forward_hook(self._hook)
        if is_compiled(model):
            import torch

            torch.compiler.reset()

    def _hook(self, _module: Any, _inputs: Any, output: Any) -> None:
        if self.armed:
            self.value = output[0] if isinstance(output, (list, tuple)) else output

    def __call__(self, model: Any, x: Any) -> tuple[Any, Any]:
        if unwrap(model) is not self.inner:
            raise FeatureError(f"stage {self.stage.module!r} was resolved on another model")
        self.value = None
        self.armed = True
        try:
            out = model(x)
        finally:
            self.armed = False
        feat, self.value = self.value, None
        if feat is None:
            raise FeatureError(f"stage {self.stage.module!r} gave no output during the forward")
        if self.stage.channels and _is_nhwc(feat, self.stage.channels):
            feat = feat.permute(0, 3, 1, 2)
        return out, feat

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> "StageCapture":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
