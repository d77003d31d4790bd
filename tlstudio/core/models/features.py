"""Intermediate feature maps of any timm body, through timm's own APIs.

One module for every job that needs mid-level features (anomaly memory banks, feature
distillation, domain adaptation, transferability ranking), so no job writes per-architecture
code. timm describes each model's stages in ``model.feature_info`` (channels, reduction =
stride, module name); ``forward_intermediates`` (timm >= 1.0, nearly every family) returns
them in one pass and can stop after the deepest one needed. Models without it fall back to
forward hooks on the modules that ``feature_info`` names. Transformer token outputs come back
as NCHW grids (prefix tokens dropped), so callers always get ``(B, C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tlstudio.core.errors import UserError


class FeatureError(UserError):
    """The model does not describe feature stages that can be read."""


def unwrap(model: Any) -> Any:
    """The plain timm model inside DDP / DataParallel / torch.compile wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if inner is not None:
            model = inner
            continue
        cls = type(model).__name__
        if cls in ("DistributedDataParallel", "DataParallel") and hasattr(model, "module"):
            model = model.module
            continue
        break
    return model


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
