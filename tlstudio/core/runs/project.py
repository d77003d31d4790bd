"""A TL Studio project: one JSON file (.tlsproj) naming the data set, the settings and the runs.

The file may come from someone else, so loading it trusts nothing:
- it is validated with pydantic (unknown keys, wrong types -> ProjectError naming the file);
- the settings must form a valid TrainConfig;
- relative paths are resolved inside the project folder and refused if they escape it
  (``../``, symlinks pointing out); the runs folder (where the app writes) must be inside
  the project folder; an absolute data folder is allowed because it is only read.
Saving writes relative paths whenever the target lies inside the project folder, so a
project folder can be moved or shared as a whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tlstudio.core.errors import UserError

PROJECT_SCHEMA_VERSION = 2  # 2: the kind of learning and its own settings
PROJECT_SUFFIX = ".tlsproj"
MAX_PROJECT_BYTES = 1_000_000  # a project file is small; anything bigger is not ours
# TrainConfig fields that are paths, and whether the app may write there.
_READ_PATH_SETTINGS = ("weights_file", "init_run")
_WRITE_PATH_SETTINGS = ("out_dir",)


class ProjectError(UserError):
    """A project file is missing, corrupt, hostile or points outside its folder."""


class ProjectFile(BaseModel):
    """What is stored in the .tlsproj file (paths as written, maybe relative)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(PROJECT_SCHEMA_VERSION, ge=1, le=PROJECT_SCHEMA_VERSION)
    app: str = "tlstudio"
    name: str = Field("", max_length=200)
    data_dir: str | None = Field(None, max_length=4096)
    runs_dir: str = Field("runs", min_length=1, max_length=4096)
    settings: dict[str, Any] = Field(default_factory=dict)
    current_run: str | None = Field(None, max_length=4096)
    task: str = Field("classification", max_length=64, pattern=r"^[a-z_]+$")
    task_settings: dict[str, Any] = Field(default_factory=dict)  # validated by the kind's config on use


@dataclass
class Project:
    """A loaded project with every path resolved and checked (absolute)."""

    path: Path
    name: str = ""
    data_dir: Path | None = None
    runs_dir: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    current_run: Path | None = None
    task: str = "classification"
    task_settings: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.path.parent


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _resolve(value: str, folder: Path, what: str, project_path: Path, *, allow_absolute: bool) -> Path:
    """Resolve a path read from a project file; refuse it if it escapes the project folder."""
    if "\x00" in value:
        raise ProjectError(f"{project_path}: {what} contains a NUL character")
    p = Path(value).expanduser() if allow_absolute else Path(value)
    if p.is_absolute():
        if not allow_absolute:
            raise ProjectError(
                f"{project_path}: {what} must be a folder inside the project folder, not the absolute path {value!r}"
            )
        return p.resolve()
    resolved = (folder / p).resolve()  # follows symlinks: a link pointing out is caught too
    if not _inside(resolved, folder):
        raise ProjectError(f"{project_path}: {what} {value!r} points outside the project folder {folder}")
    return resolved


def _check_settings(settings: dict[str, Any], project_path: Path) -> dict[str, Any]:
    from tlstudio.core.config import TrainConfig

    settings = dict(settings)
    if "data_dir" in settings:
        raise ProjectError(f"{project_path}: settings must not contain data_dir (it is a project field)")
    for name in _WRITE_PATH_SETTINGS:
        if settings.get(name) is not None:
            raise ProjectError(
                f"{project_path}: settings.{name} is not allowed in a project file "
                "(runs are written to the project's runs folder)"
            )
        settings.pop(name, None)
    try:
        TrainConfig(data_dir=".", **settings)
    except ValidationError as exc:
        raise ProjectError(f"{project_path}: invalid settings: {_short_errors(exc)}") from None
    except TypeError as exc:  # e.g. a non-string key
        raise ProjectError(f"{project_path}: invalid settings: {exc}") from None
    return settings


def _short_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', '')}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def load_project(path: str | Path) -> Project:
    """Read and validate a project file. Raises ProjectError (never anything else for bad input)."""
    path = Path(path).expanduser().resolve()
    if path.suffix.lower() != PROJECT_SUFFIX:
        raise ProjectError(f"{path}: not a TL Studio project (expected a {PROJECT_SUFFIX} file)")
    try:
        size = path.stat().st_size
        if size > MAX_PROJECT_BYTES:
            raise ProjectError(f"{path}: too large for a project file ({size} bytes)")
        raw = path.read_bytes()
    except ProjectError:
        raise
    except OSError as exc:
        raise ProjectError(f"{path}: cannot read the project file ({exc.strerror or exc})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProjectError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ProjectError(f"{path}: a project file must hold a JSON object")
    try:
        pf = ProjectFile.model_validate(data)
    except ValidationError as exc:
        raise ProjectError(f"{path}: {_short_errors(exc)}") from None
    folder = path.parent
    settings = _check_settings(pf.settings, path)
    for name in _READ_PATH_SETTINGS:
        if settings.get(name):
            settings[name] = str(_resolve(str(settings[name]), folder, f"settings.{name}", path, allow_absolute=True))
    data_dir = _resolve(pf.data_dir, folder, "data_dir", path, allow_absolute=True) if pf.data_dir else None
    runs_dir = _resolve(pf.runs_dir, folder, "runs_dir", path, allow_absolute=False)
    current = None
    if pf.current_run:
        current = _resolve(pf.current_run, folder, "current_run", path, allow_absolute=False)
    return Project(path=path, name=pf.name, data_dir=data_dir, runs_dir=runs_dir, settings=settings,
                   current_run=current, task=pf.task, task_settings=dict(pf.task_settings))


def _relative_if_inside(p: str | Path | None, folder: Path) -> str | None:
    if p is None or str(p) == "":
        return None
    ap = Path(p).expanduser().resolve()
    if _inside(ap, folder):
        rel = ap.relative_to(folder).as_posix()
        return rel or "."
    return str(ap)


def save_project(
    path: str | Path,
    *,
    data_dir: str | Path | None,
    settings: dict[str, Any],
    runs_dir: str | Path | None = None,
    current_run: str | Path | None = None,
    name: str = "",
    task: str = "classification",
    task_settings: dict[str, Any] | None = None,
) -> Path:
    """Write a project file atomically. ``runs_dir`` defaults to ``runs`` next to the file and
    must lie inside the project folder (the app writes there)."""
    from tlstudio.core.atomic import atomic_write_text

    path = Path(path).expanduser()
    if path.suffix.lower() != PROJECT_SUFFIX:
        path = path.with_name(path.name + PROJECT_SUFFIX)
    path = path.resolve()
    folder = path.parent
    runs = Path(runs_dir).expanduser().resolve() if runs_dir else folder / "runs"
    if not _inside(runs, folder):
        raise ProjectError(f"{path}: the runs folder {runs} must be inside the project folder {folder}")
    settings = {k: v for k, v in settings.items() if k not in ("data_dir", *_WRITE_PATH_SETTINGS)}
    settings = _check_settings(settings, path)
    for key in _READ_PATH_SETTINGS:
        if settings.get(key):
            settings[key] = _relative_if_inside(settings[key], folder)
    current = _relative_if_inside(current_run, folder) if current_run else None
    if current is not None and Path(current).is_absolute():
        current = None  # a run outside the project cannot be referenced (it would be refused on load)
    pf = ProjectFile(
        name=name or path.stem,
        data_dir=_relative_if_inside(data_dir, folder),
        runs_dir=_relative_if_inside(runs, folder) or "runs",
        settings=settings,
        current_run=current,
        task=task,
        task_settings=dict(task_settings or {}),
    )
    atomic_write_text(path, pf.model_dump_json(indent=2))
    return path
