"""How much memory one training step will take, estimated before training starts.

Kept apart from `layers` (which decides what trains) because it is the one place that runs the
model: a forward pass on fake tensors measures every layer's output size without allocating it.
The Layers step shows the estimate for each freeze choice.
"""

from __future__ import annotations

import weakref
from typing import Any

from tlstudio.core.models.layers import LayerGroup, check_trainable, effective_trainable


def _activation_sizes(model, groups: list[LayerGroup], image_size: int) -> list[int] | None:
    """Per-sample output elements of each leaf module, attributed to layer groups.

    Measured with a forward pass on fake (meta-like) tensors: no memory, no real compute.
    """
    import torch

    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
    except Exception:
        return None
    owner: dict[str, int] = {}
    for g in groups:
        for n in g.param_names:
            owner[n.rsplit(".", 1)[0]] = g.index
    sizes = [0] * len(groups)
    hooks = []

    def module_group(mname: str) -> int:
        m = mname
        while m:
            if m in owner:
                return owner[m]
            m = m.rsplit(".", 1)[0] if "." in m else ""
        # parameter-free module (activation, pool): the group of the nearest child with params
        for k, v in owner.items():
            if k.startswith(mname + "."):
                return v
        return 0

    peak = [0]

    def hook_for(idx):
        def _h(_m, _i, out):
            if isinstance(out, torch.Tensor):
                sizes[idx] += out.numel()
                peak[0] = max(peak[0], out.numel())
        return _h

    for mname, mod in model.named_modules():
        if mname and not any(True for _ in mod.children()):
            hooks.append(mod.register_forward_hook(hook_for(module_group(mname))))
    was_training = model.training
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            x = mode.from_tensor(torch.empty(1, 3, image_size, image_size))
            model.eval()
            with torch.no_grad():
                model(x)
    except Exception:
        return None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sizes + [peak[0]]  # last entry: the largest single output (the transient peak)


_ACT_CACHE: "weakref.WeakKeyDictionary[Any, dict[tuple[int, int], list[int] | None]]" = weakref.WeakKeyDictionary()


def estimate_train_memory(model, groups: list[LayerGroup], trainable: list[bool], batch_size: int,
                          image_size: int) -> int:
    """Rough bytes for one fp32 training step (AdamW):
    weights + (grads + two moments) of trainable params
    + activations: the larger of those kept for backward (every leaf output from the first
      trainable group on) and the transient forward peak (3x the largest single output)
    + the input batch + ~150 MB of framework workspace.

    Output sizes come from a forward pass on fake tensors (no memory, no compute; cached per model
    and size); if that fails, a per-pixel rule (~60 floats per input pixel per sample).
    On CPU (Lite0, 160 px, batch 16) it was 6-17% above the measured peak for head / last:2 / none.
    """
    check_trainable(groups, trainable)
    eff = effective_trainable(groups, trainable)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    train = sum(params[n].numel() for g, t in zip(groups, eff) if t for n in g.param_names if n in params)
    per_model = _ACT_CACHE.setdefault(model, {})
    key = (int(image_size), len(groups))
    if key not in per_model:
        per_model[key] = _activation_sizes(model, groups, int(image_size))
    sizes = per_model[key]
    first = next((i for i, t in enumerate(eff) if t), len(eff) - 1)
    if sizes is not None:
        saved, peak = sum(sizes[first:-1]), sizes[-1]
    else:
        frac = sum(g.n_params for g in groups[first:]) / max(1, total)
        saved, peak = int(60 * image_size * image_size * max(frac, 0.05)), 3 * image_size * image_size * 8
    b = 4
    act = max(saved, 3 * peak) * batch_size
    return int(b * (total + 3 * train) + b * act + b * batch_size * 3 * image_size ** 2 + 150e6)
