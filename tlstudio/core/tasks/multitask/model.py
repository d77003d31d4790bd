"""One body, one head per task: hard parameter sharing (default) or soft sharing.

Hard sharing: a timm body (classifier removed, so it returns pooled pre-logits) feeds a
``ModuleDict`` of heads; one forward pass gives ``{task: output}``. Soft sharing: one body per
task (same starting weights) and ``soft_penalty()`` = sum over parameters of the squared
distance of each body's copy to their mean, which pulls the bodies together.

The wrapper looks like a timm model to the rest of TL Studio: ``pretrained_cfg["classifier"]``
is ``"heads"`` (the head group of layers.layer_groups, always trainable), ``group_matcher``
maps ``body.*`` names onto the body's own stages (so every backbone's freezing works), and
``forward_features`` / ``forward_head(pre_logits=True)`` give the pooled features the feature
cache stores for head-only training.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def head_width(task: dict[str, Any]) -> int:
    return 1 if task["type"] == "numeric" else len(task["classes"])


def safe_keys(names: list[str]) -> list[str]:
    """ModuleDict keys (no dots) for task names, unique and readable in state dicts."""
    keys: list[str] = []
    for n in names:
        k = re.sub(r"[^0-9A-Za-z_]", "_", n) or "task"
        while k in keys:
            k += "_"
        keys.append(k)
    return keys


class Heads(nn.Module):
    """features -> {task: output}; what get_classifier() returns (and the head-only module)."""

    def __init__(self, heads: nn.ModuleDict, names: list[str], keys: list[str], drop: float = 0.0):
        super().__init__()
        self.heads = heads  # shared with the MultiTaskModel
        self.names, self.keys = list(names), list(keys)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, f: torch.Tensor | list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if isinstance(f, list | tuple):  # soft sharing: one feature tensor per task
            return {n: self.heads[k](self.drop(fi)) for n, k, fi in zip(self.names, self.keys, f)}
        f = self.drop(f)
        return {n: self.heads[k](f) for n, k in zip(self.names, self.keys)}


class MultiTaskModel(nn.Module):
    def __init__(self, bodies: list[nn.Module], tasks: list[dict[str, Any]], drop: float = 0.0):
        super().__init__()
        first = bodies[0]
        self.soft = len(bodies) > 1
        if self.soft:
            self.bodies = nn.ModuleList(bodies)
        else:
            self.body = first
        self.tasks = [dict(t) for t in tasks]
        self.task_names = [t["name"] for t in tasks]
        self.keys = safe_keys(self.task_names)
        self.num_features = int(first.num_features)
        self.heads = nn.ModuleDict({k: nn.Linear(self.num_features, head_width(t)) for k, t in zip(self.keys, tasks)})
        for h in self.heads.values():  # small new heads: pretrained features give +-10 logits otherwise
            nn.init.normal_(h.weight, std=0.01)
            nn.init.zeros_(h.bias)
        self._head_view = [Heads(self.heads, self.task_names, self.keys, drop)]  # list: not a submodule twice
        self.pretrained_cfg = {**dict(getattr(first, "pretrained_cfg", {}) or {}), "classifier": "heads"}
        self.default_cfg = self.pretrained_cfg
        self.drop_rate = 0.0  # the dropout lives in Heads (feature_cache.head_module must not add another)
        self._groups: dict[bool, dict[str, Any]] = {}

    # --- timm-like surface ------------------------------------------------------------------
    def _bodies(self) -> list[nn.Module]:
        return list(self.bodies) if self.soft else [self.body]

    def get_classifier(self) -> Heads:
        return self._head_view[0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.soft:
            raise RuntimeError("soft sharing has one body per task: use features()")
        return self.body.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        f = self.body.forward_head(x, pre_logits=True)
        return f if pre_logits else self.get_classifier()(f)

    def features(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Pooled body features: one tensor (hard sharing) or one per task (soft sharing)."""
        if self.soft:
            return [b(x) for b in self.bodies]
        return self.body(x)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """{task: output}; with ``return_features`` also the pooled body features (the shared
        representation the objective takes per-task gradients on), as (outputs, features)."""
        z = self.features(x)
        out = self.get_classifier()(z)
        return (out, z) if return_features else out

    def group_matcher(self, coarse: bool = False) -> Callable[[str], Any]:
        """timm-style matcher over the wrapper's names: body.* (or bodies.<k>.*) follow the body's
        own groups, so 'freeze up to stage 3' means the same in every body."""
        if coarse not in self._groups:
            from timm.models import group_parameters

            body = self._bodies()[0]
            mapping: dict[str, Any] = {}
            try:
                grouped = group_parameters(body, body.group_matcher(coarse=coarse), reverse=False)
                for gid, names in grouped.items():
                    for n in names:
                        mapping[n] = gid
            except Exception:  # a family without a matcher: one group per top-level child
                for i, (n, _) in enumerate(body.named_parameters()):
                    mapping[n] = n.split(".", 1)[0]
                order = {c: i for i, c in enumerate(dict.fromkeys(mapping.values()))}
                mapping = {n: order[c] for n, c in mapping.items()}
            self._groups[coarse] = mapping
        mapping = self._groups[coarse]
        last = max(mapping.values()) if mapping else 0

        def match(name: str) -> Any:
            inner = re.sub(r"^(body|bodies\.\d+)\.", "", name)
            return mapping.get(inner, last)

        return match

    # --- sharing ----------------------------------------------------------------------------
    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters every task's loss reaches (hard sharing only)."""
        if self.soft:
            return []
        return [p for p in self.body.parameters() if p.requires_grad]

    def soft_penalty(self) -> torch.Tensor:
        """Sum over parameters of sum_k ||w_k - mean_k w||^2 (0 for hard sharing)."""
        if not self.soft:
            return torch.zeros(())
        total = None
        for params in zip(*(b.parameters() for b in self.bodies)):
            if not params[0].requires_grad:
                continue
            stack = torch.stack([p.float() for p in params])
            term = ((stack - stack.mean(0, keepdim=True)) ** 2).sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())


def build_multitask_model(create_body: Callable[[int], nn.Module], tasks: list[dict[str, Any]],
                          sharing: str = "hard") -> MultiTaskModel:
    """create_body(num_classes) -> a timm model with its starting weights (the engine's factory)."""
    import copy

    body = create_body(1)
    drop = float(getattr(body, "drop_rate", 0.0) or 0.0)
    body.reset_classifier(0)
    bodies = [body] + ([copy.deepcopy(body) for _ in tasks[1:]] if sharing == "soft" else [])
    return MultiTaskModel(bodies, tasks, drop=drop)
