"""Project files and persisted settings, seen from the GUI: AppState <-> tlstudio.core.runs.project.

The validation (schema, path confinement) lives in the Qt-free ``tlstudio.core.runs.project``; this
module only moves values between a loaded project and the ``AppState`` the panels observe.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tlstudio.gui.state import STEPS, AppState

log = logging.getLogger("tlstudio.gui")

# settings that name files or folders: never carried over between launches via QSettings
_PATH_SETTINGS = ("weights_file", "init_run", "out_dir")


def _valid_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Only the keys TrainConfig knows, and only if together they form a valid config."""
    from tlstudio.core.config import TrainConfig

    fields = set(TrainConfig.model_fields) - {"data_dir", "schema_version"}
    clean = {k: v for k, v in settings.items() if k in fields}
    TrainConfig(data_dir=".", **clean)  # raises pydantic.ValidationError when invalid
    return clean


def settings_for_saving(state: AppState) -> dict[str, Any]:
    try:
        return _valid_settings(state.settings)
    except Exception:  # noqa: BLE001 - keep what validates one field at a time
        out: dict[str, Any] = {}
        for k, v in state.settings.items():
            try:
                _valid_settings({**out, k: v})
                out[k] = v
            except Exception:  # noqa: BLE001
                log.info("setting %s=%r not saved: invalid", k, v)
        return out


def apply_saved_settings(state: AppState, text: str) -> None:
    """Settings persisted by the last session (QSettings); anything odd is ignored, not fatal."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            return
        data = {k: v for k, v in data.items() if k not in _PATH_SETTINGS}
        state.update_settings(_valid_settings(data))
    except Exception as exc:  # noqa: BLE001 - a damaged settings file must not stop the app
        log.warning("ignoring saved settings: %s", exc)


def save_state(state: AppState, path: str | Path) -> Path:
    from tlstudio.core.runs.project import save_project

    p = Path(path)
    runs = state.runs_dir
    if runs is None or state.project_path is None or Path(state.project_path).parent != p.resolve().parent:
        runs = None  # a new project folder gets its own runs/ folder
    out = save_project(p, data_dir=state.data_dir, settings=settings_for_saving(state), runs_dir=runs,
                       current_run=state.current_run, name=p.stem, task=state.task_kind,
                       task_settings=state.task_settings)
    state.project_path = str(out)
    state.runs_dir = state.runs_dir if runs else str(out.parent / "runs")
    state.runs_changed.emit()
    return out


def open_project_into(state: AppState, path: str | Path) -> Any:
    """Load and validate a project (ProjectError on anything wrong), then apply it to the state.
    The data folder is returned in the project; the caller starts its scan."""
    from tlstudio.core.runs.project import load_project

    proj = load_project(path)  # validates everything before the state is touched
    reset_state(state)
    state.project_path = str(proj.path)
    state.runs_dir = str(proj.runs_dir) if proj.runs_dir else None
    state.update_settings(dict(proj.settings))
    state.set_task_kind(proj.task)
    state.set_task_settings(proj.task_settings, replace=True)
    state.runs_changed.emit()
    if proj.current_run is not None and proj.current_run.is_dir():
        state.set_current_run(str(proj.current_run))
    return proj


def reset_settings(state: AppState) -> None:
    state.settings.clear()
    state.settings_changed.emit("")


def reset_state(state: AppState) -> None:
    """A fresh, empty project (the window stays open)."""
    state.project_path = None
    state.runs_dir = None
    state.set_dataset(None, None, None)  # type: ignore[arg-type]
    state.set_model(None, [], [], None)
    state.set_current_run(None)
    reset_settings(state)
    state.set_task_kind("classification")
    state.set_task_settings({}, replace=True)
    for s in STEPS:
        state.set_step_status(s, "todo")
