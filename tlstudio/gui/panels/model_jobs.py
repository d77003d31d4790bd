"""The Model step's background jobs (torch and timm are imported only inside them, in a worker
thread): list the catalogue, build a backbone's structure, download its pretrained weights;
and the small helpers the panel uses around them."""

from __future__ import annotations

import threading
import weakref
from typing import Any

from PySide6.QtCore import QObject, Signal

from tlstudio.gui.state import AppState


class _Cancelled(BaseException):
    """Raised inside the download progress callback to abort it (BaseException: not swallowed)."""


class DownloadProgress(QObject):
    """Carries download progress (bytes done, total) from the worker thread to the GUI."""

    changed = Signal(int, int)


def default_backbone() -> str:
    from tlstudio.core.config import DEFAULT_BACKBONE

    return DEFAULT_BACKBONE


def initial_trainable(state: AppState, groups: list[Any]) -> list[bool]:
    """Keep an explicit per-group choice if it fits, else the freeze preset (default: head only)."""
    from tlstudio.core.models.layers import plan_from_spec

    fg = state.settings.get("frozen_groups")
    if fg is not None and all(0 <= i < len(groups) for i in fg):
        return [not (i in fg) or g.is_head for i, g in enumerate(groups)]
    try:
        return plan_from_spec(state.settings.get("freeze") or "head", groups)[0]
    except Exception:  # noqa: BLE001 - e.g. last:N larger than the model: fall back to head only
        return plan_from_spec("head", groups)[0]


def catalog_models() -> list[Any]:
    """The backbone list from the shipped catalogue, without torch or timm (a fraction of a
    second, where importing timm takes 10-20 s on a busy machine): names, families, sizes,
    pretrained and offline availability. Sorted as ``backbones.list_models`` sorts."""
    from tlstudio.core.models import backbones as bb

    cat = bb._catalog()
    offline = bb._offline_names()
    out = [bb.ModelInfo(name=n, family=str(c.get("family", "")), params=int(c.get("params") or 0),
                        input_size=int(c.get("input_size") or 224),
                        pretrained=bool(c.get("pretrained")) or n in offline, offline=n in offline,
                        recommended=n in bb.RECOMMENDED, student=bool(bb._STUDENT_RE.match(n)))
           for n, c in cat.items()]
    out.sort(key=lambda i: (not i.offline or not i.recommended, not i.recommended, i.name))
    return out


def catalog_is_current() -> bool:
    """True when the shipped catalogue was made for the installed timm (nothing missing from it)."""
    import json
    from importlib.metadata import PackageNotFoundError, version

    from tlstudio.core.models.backbones import catalog_path

    try:
        made_for = json.loads(catalog_path().read_text(encoding="utf-8")).get("timm_version")
        return bool(made_for) and made_for == version("timm")
    except (OSError, ValueError, PackageNotFoundError):
        return False


def list_models_job() -> list[Any]:
    """The full list from timm (imports torch and timm): only when the catalogue is not current."""
    from tlstudio.gui.heavy import ensure_imported

    ensure_imported()
    from tlstudio.core.models.backbones import list_models

    return list_models("")


def quick_list_job() -> tuple[list[Any], bool]:
    """(catalogue list, whether timm's own list is still needed)."""
    return catalog_models(), not catalog_is_current()


def build_job(name: str, n: int, init: str, weights_file: str | None, meta: bool = False) -> tuple[Any, list[Any]]:
    from tlstudio.gui.heavy import ensure_imported

    ensure_imported()
    from tlstudio.core.models.backbones import create_model
    from tlstudio.core.models.layers import layer_groups

    if meta:
        import torch

        with torch.device("meta"):
            model = create_model(name, n, init="scratch")
    else:
        model = create_model(name, n, init=init, weights_file=weights_file)
    return model, layer_groups(model)


def download_job(name: str, n: int, bridge: DownloadProgress, cancel: threading.Event) -> str:
    from tlstudio.gui.heavy import ensure_imported

    ensure_imported()
    from tlstudio.core.models.backbones import create_model

    def progress(done: int, total: int | None) -> None:
        if cancel.is_set():
            raise _Cancelled()
        bridge.changed.emit(int(done), int(total or 0))

    try:
        create_model(name, n, init="pretrained", progress=progress)
    except _Cancelled:
        return "cancelled"
    return "ok"


# private structure-only copies of models the panels show, one per shared model, for the memory
# estimate (which registers forward hooks and runs a fake forward pass on the model it is given)
_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TWIN_LOCK = threading.Lock()


def _twin(model: Any, name: str) -> Any:
    """A meta-device model with the same parameter names and shapes as ``model``, built anew from
    its backbone name (no weights copied); a deep copy when the rebuild does not match."""
    import copy

    import torch

    from tlstudio.core.models.backbones import create_model

    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    head = [v for k, v in shapes.items() if len(v) == 2]
    n_classes = head[-1][0] if head else 2
    if name:
        try:
            with torch.device("meta"):
                twin = create_model(name, n_classes, init="scratch")
            if {n: tuple(p.shape) for n, p in twin.named_parameters()} == shapes:
                return twin
        except Exception:  # noqa: BLE001 - e.g. a model from a file: copy it instead
            pass
    return copy.deepcopy(model)


def memory_job(model: Any, name: str, groups: list[Any], trainable: list[bool], bs: int, size: int) -> int:
    """Worker thread: estimated bytes for one training step, computed on a private twin of
    ``model`` (one estimate at a time; the twin and its cached activation sizes are reused)."""
    from tlstudio.gui.heavy import ensure_imported

    ensure_imported()
    from tlstudio.core.models.layers import estimate_train_memory

    with _TWIN_LOCK:
        twin = _TWINS.get(model)
        if twin is None:
            twin = _TWINS[model] = _twin(model, name)
        return estimate_train_memory(twin, groups, trainable, bs, size)
