"""Layer groups, freezing and discriminative learning rates, generic over timm.

Groups come from the model's own ``group_matcher`` (stem -> stages -> head), never from
per-architecture code. The classifier (``pretrained_cfg['classifier']``) is split out as the
last group and always trains. Freezing is by parameter name; norms with running statistics in
frozen groups are kept in eval mode so their statistics stay bit-identical. The memory a
training step will need for a given plan is estimated in `train_memory`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from tlstudio.core.errors import UserError

_RUNNING_STAT_NORMS: tuple[type, ...] | None = None


@dataclass(frozen=True)
class LayerGroup:
    index: int
    name: str
    param_names: tuple[str, ...]
    n_params: int
    is_head: bool


class FreezeSpecError(UserError):
    """A freeze preset string that cannot be understood."""


# ---------------------------------------------------------------- grouping


def _head_prefixes(model) -> tuple[str, ...]:
    from tlstudio.core.models.weights import head_prefixes

    return head_prefixes(model)


def _matcher_groups(model, named: list[str]) -> tuple[list[list[str]], set[str]] | None:
    """(ordered param-name lists, names timm calls the stem) from timm's group_matcher (coarse,
    then fine), else None."""
    from timm.models import group_parameters

    for coarse in (True, False):
        fn = getattr(model, "group_matcher", None)
        if fn is None:
            return None
        try:
            matcher = fn(coarse=coarse)
            grouped = group_parameters(model, matcher, reverse=False)
        except Exception:
            continue
        groups = [list(v) for _, v in sorted(grouped.items())]
        if len(groups) >= 2:
            stem = matcher.get("stem") if isinstance(matcher, dict) else None
            is_stem = isinstance(stem, str) and all(re.match(stem, n) for n in groups[0])
            return groups, set(groups[0]) if is_stem else set()
    return None


def _auto_groups(model, named: list[str]) -> list[list[str]]:
    """Fallback: timm.optim's automatic layer grouping, else one group per top-level child."""
    try:
        from timm.optim import auto_group_layers

        mapping = auto_group_layers(model, num_groups=8)  # name -> group id
        if isinstance(mapping, dict) and mapping:
            by: dict[int, list[str]] = {}
            for n in named:
                gid = mapping.get(n)
                if gid is None:
                    gid = max(mapping.values())
                by.setdefault(int(gid), []).append(n)
            groups = [by[k] for k in sorted(by)]
            if len(groups) >= 2:
                return groups
    except Exception:
        pass
    by_child: OrderedDict[str, list[str]] = OrderedDict()
    for n in named:
        by_child.setdefault(n.split(".", 1)[0], []).append(n)
    return list(by_child.values())


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    if not parts:
        return ""
    first = parts[0]
    k = 0
    while k < len(first) and all(len(p) > k and p[k] == first[k] for p in parts):
        k += 1
    return ".".join(first[:k])


def _describe(names: list[str]) -> str:
    pre = _common_prefix(names)
    if pre:
        return _short_prefix(pre)
    tops = list(OrderedDict.fromkeys(_top_of(n) for n in names))
    return ", ".join(tops[:3]) + (", ..." if len(tops) > 3 else "")


def _short_prefix(prefix: str) -> str:
    """Up to the first numbered component: 'stages.0.blocks.0' -> 'stages.0', 'layer1.0' -> 'layer1'."""
    out = []
    for part in prefix.split("."):
        out.append(part)
        if any(ch.isdigit() for ch in part):
            break
    return ".".join(out)


def _top_of(name: str) -> str:
    parts = name.split(".")
    if len(parts) > 2 and parts[1].isdigit():
        return ".".join(parts[:2])  # blocks.5
    return parts[0] if len(parts) > 1 else name


def layer_groups(model) -> list[LayerGroup]:
    """stem, stage 1..N, (pre-logits), head: in forward order; head last, always trainable."""
    params = OrderedDict(model.named_parameters())
    named = list(params)
    heads = _head_prefixes(model)
    head_names = [n for n in named if any(n.startswith(p) for p in heads)]
    if not head_names:  # no classifier info: the last top-level child holding params
        last = named[-1].split(".", 1)[0] if named else ""
        head_names = [n for n in named if n.split(".", 1)[0] == last]
    head_set = set(head_names)
    body = [n for n in named if n not in head_set]

    raw, stem_names = _matcher_groups(model, named) or (_auto_groups(model, named), set())
    groups = [[n for n in g if n not in head_set] for g in raw]
    groups = [g for g in groups if g]
    seen = {n for g in groups for n in g}
    stray = [n for n in body if n not in seen]
    if stray:  # anything the matcher missed: with the stem if root-level, else at the end
        groups[-1:] = [groups[-1] + stray] if groups else [stray]

    stem_like = re.compile(r"^(cls_token|reg_token|dist_token|pos_embed|patch_embed|stem|conv_stem|conv1|bn1|"
                           r"norm_pre|act1|maxpool)")
    out: list[LayerGroup] = []
    n_body = len(groups)
    stage = 0
    for i, g in enumerate(groups):
        desc = _describe(g)
        if i == 0 and (all(stem_like.match(n) for n in g) or set(g) <= stem_names):
            name = "stem"
        elif i == n_body - 1 and n_body > 2 and not any(re.search(r"\d", n.rsplit(".", 1)[0]) for n in g):
            name = f"pre-logits ({desc})"  # e.g. conv_head / head.norm: before the classifier
        else:
            stage += 1
            name = f"stage {stage} ({desc})"
        out.append(LayerGroup(i, name, tuple(g), sum(params[n].numel() for n in g), False))
    out.append(LayerGroup(len(out), "head", tuple(head_names), sum(params[n].numel() for n in head_names), True))
    return out


# ---------------------------------------------------------------- plans


def plan_from_spec(spec: str, groups: list[LayerGroup]) -> tuple[list[bool], int | None]:
    """(trainable per group, gradual_every) for head | none | last:N | gradual:K."""
    n = len(groups)
    s = (spec or "head").strip().lower()
    if s == "head":
        return [g.is_head for g in groups], None
    if s in ("none", "all"):
        return [True] * n, None
    m = re.fullmatch(r"last:(\d+)", s)
    if m:
        k = int(m.group(1))
        return [g.is_head or i >= n - 1 - k for i, g in enumerate(groups)], None
    m = re.fullmatch(r"gradual:(\d+)", s)
    if m:
        every = int(m.group(1))
        if every < 1:
            raise FreezeSpecError("gradual:K needs K >= 1 (epochs between unfreezing steps)")
        return gradual_plan(groups, 0, every), every
    raise FreezeSpecError(f"freeze must be head, none, last:N or gradual:K, not {spec!r}")


def plan_from_settings(freeze: str, frozen_groups: list[int] | None,
                       groups: list[LayerGroup]) -> tuple[list[bool], int | None]:
    """(trainable per group, gradual_every) from a run's settings: the groups frozen by index
    (``frozen_groups``, set in the Layers step; the head always trains) win over ``freeze``."""
    if frozen_groups is not None:
        frozen = set(frozen_groups)
        return [g.is_head or g.index not in frozen for g in groups], None
    return plan_from_spec(freeze, groups)


def gradual_plan(groups: list[LayerGroup], epoch: int, every: int) -> list[bool]:
    """Head only at epoch 0; one more body group (from the top) opens every ``every`` epochs."""
    n_open = max(0, int(epoch)) // max(1, int(every))
    n = len(groups)
    return [g.is_head or i >= n - 1 - n_open for i, g in enumerate(groups)]


def frozen_prefix_is_whole_body(trainable: list[bool]) -> bool:
    """True when only the head trains (the body's features can be cached)."""
    return bool(trainable) and trainable[-1] and not any(trainable[:-1])


def check_trainable(groups, trainable) -> None:
    """One trainable flag per layer group, or ValueError."""
    if len(trainable) != len(groups):
        raise ValueError(f"trainable has {len(trainable)} entries for {len(groups)} groups")


def effective_trainable(groups: list[LayerGroup], trainable: list[bool]) -> list[bool]:
    """The plan as applied: the head trains whatever the plan says."""
    return [bool(t) or g.is_head for g, t in zip(groups, trainable)]


def apply_freeze(model, groups: list[LayerGroup], trainable: list[bool]) -> None:
    """requires_grad by parameter name; the head always trains."""
    check_trainable(groups, trainable)
    eff = effective_trainable(groups, trainable)
    flag = {n: t for g, t in zip(groups, eff) for n in g.param_names}
    for n, p in model.named_parameters():
        p.requires_grad_(flag.get(n, True))


def _norm_types() -> tuple[type, ...]:
    global _RUNNING_STAT_NORMS
    if _RUNNING_STAT_NORMS is None:
        from torch import nn

        _RUNNING_STAT_NORMS = (nn.modules.batchnorm._NormBase,)  # BatchNorm*, SyncBN, InstanceNorm*
    return _RUNNING_STAT_NORMS


def set_train_mode(model, groups: list[LayerGroup], trainable: list[bool]) -> None:
    """model.train(), then norms with running statistics inside frozen groups go to eval."""
    check_trainable(groups, trainable)
    model.train()
    eff = effective_trainable(groups, trainable)
    frozen = {n for g, t in zip(groups, eff) if not t for n in g.param_names}
    if not frozen:
        return
    frozen_prefixes = {n.rsplit(".", 1)[0] for n in frozen}
    for mname, mod in model.named_modules():
        if not isinstance(mod, _norm_types()):
            continue
        own = [f"{mname}.{pn}" if mname else pn for pn, _ in mod.named_parameters(recurse=False)]
        if own:
            is_frozen = all(n in frozen for n in own)
        else:  # affine=False norm: frozen when its parent module's parameters are frozen
            parent = mname.rsplit(".", 1)[0] if "." in mname else ""
            sib = [p for p in frozen_prefixes if p == parent or p.startswith(parent + ".")] if parent else []
            is_frozen = bool(sib)
        if is_frozen and getattr(mod, "track_running_stats", True):
            mod.eval()


# ---------------------------------------------------------------- optimiser groups and counts


def _no_decay_names(model) -> set[str]:
    fn = getattr(model, "no_weight_decay", None)
    try:
        return set(fn()) if fn else set()
    except Exception:
        return set()


def param_groups(
    model,
    groups: list[LayerGroup],
    trainable: list[bool],
    *,
    lr: float,
    body_lr_mult: float = 0.1,
    layer_decay: float | None = None,
    weight_decay: float = 0.05,
) -> list[dict[str, Any]]:
    """Optimiser param groups: head at ``lr``, body at ``lr * body_lr_mult`` (optionally decayed by
    ``layer_decay`` per group towards the stem, so deeper groups learn faster); no weight decay on
    norms, biases and tokens; frozen parameters left out. Each dict has ``name`` and ``lr_scale``.
    """
    check_trainable(groups, trainable)
    eff = effective_trainable(groups, trainable)
    params = dict(model.named_parameters())
    skip = _no_decay_names(model)
    body_idx = [g.index for g in groups if not g.is_head]
    last_body = max(body_idx) if body_idx else 0
    out: list[dict[str, Any]] = []
    for g, t in zip(groups, eff):
        if not t:
            continue
        if g.is_head:
            scale = 1.0
        else:
            scale = body_lr_mult * (layer_decay ** (last_body - g.index) if layer_decay else 1.0)
        decay, no_decay = [], []
        for n in g.param_names:
            p = params.get(n)
            if p is None:  # by plan, not requires_grad: gradual unfreezing reuses these groups
                continue
            (no_decay if p.ndim <= 1 or n in skip or n.endswith(".bias") else decay).append(p)
        for plist, wd, tag in ((decay, weight_decay, ""), (no_decay, 0.0, " (no decay)")):
            if plist:
                out.append({"params": plist, "lr": lr * scale, "weight_decay": wd,
                            "lr_scale": scale, "name": g.name + tag})
    return out


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def __getattr__(name: str):
    # estimate_train_memory lives in models.train_memory; gui/panels/model_jobs.py still imports it
    # from here (lazily: train_memory imports this module)
    if name == "estimate_train_memory":
        from tlstudio.core.models.train_memory import estimate_train_memory

        return estimate_train_memory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
