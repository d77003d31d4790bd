"""Kinds of learning, by name: each kind module registers one TaskKind at import.

The engine, the CLI and the GUI look a kind up here (and dispatch on it) instead of naming it,
so a new kind of learning is one module plus one entry in ``tasks.KIND_MODULES``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlstudio.core.errors import UserError


@dataclass(frozen=True)
class TaskKind:
    kind: str  # saved as "task" in config.json and run.json
    title: str
    summary: str
    config_cls: type | None
    run: Callable[..., Any]  # run(config, stop=None, pause=None) -> Generator[Event, None, RunInfo]
    resume: Callable[..., Any] | None = None  # resume(run_dir, stop=None, pause=None)
    evaluate: Callable[..., dict] | None = None  # evaluate(run_dir, data=None, progress=None) -> dict
    predict: Callable[..., list] | None = None  # predict(run_dir, paths, **opts) -> list[dict]
    export: Callable[..., Any] | None = None  # export(run_dir, formats, out_dir=None, progress=None)
    best_metric: tuple[str, str] = ("val_acc", "max")
    gui_steps: tuple[str, ...] = ()
    trains: bool = True  # False: no gradient training (memory bank, statistics, scoring)
    # offered in the Data step's "what to learn" chooser; False for helper jobs that serve
    # another kind (ranking runs from classification's Rank step and the CLI)
    in_chooser: bool = True
    # detect(path) -> one line saying why this folder suits this kind ("214 normal images, no
    # defects: anomaly detection"), or None; the Data step offers the kinds that answer
    detect: Callable[[str], str | None] | None = None
    # human-readable CLI output of an evaluate() result and of one predict() row (JSON is generic)
    eval_lines: Callable[[dict], list[str]] | None = None
    predict_line: Callable[[dict], str] | None = None


def lazy(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported on its first call: registering a kind must not import torch."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


_REGISTRY: dict[str, TaskKind] = {}
_loaded = False
_lock = threading.Lock()


def register(kind: TaskKind) -> TaskKind:
    _REGISTRY[kind.kind] = kind
    return kind


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        from tlstudio.core.tasks import KIND_MODULES

        for name in KIND_MODULES:
            importlib.import_module(name)
        _loaded = True


def all_kinds() -> list[TaskKind]:
    _load_all()
    return list(_REGISTRY.values())


def get(name: str) -> TaskKind:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown kind of learning {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def task_of_info(info: Any) -> str:
    """The kind name of a RunInfo (schema 1 folders have no "task": train -> classification)."""
    task = getattr(info, "task", None)
    if task:
        return str(task)
    return "distillation" if getattr(info, "kind", "train") == "distill" else "classification"


def kind_of_run(run_dir: str | Path) -> TaskKind:
    from tlstudio.core.runs.folder import read_run

    return get(task_of_info(read_run(run_dir)))
