"""The Model step's background jobs (torch and timm are imported only inside them, in a worker
thread): list the catalogue, build a backbone's structure, download its pretrained weights;
and the small helpers the panel uses around them."""

from __future__ import annotations

import threading
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


def list_models_job() -> list[Any]:
    from tlstudio.gui.heavy import ensure_imported

    ensure_imported()
    from tlstudio.core.models.backbones import list_models

    return list_models("")


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
