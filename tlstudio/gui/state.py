"""AppState: the one model the panels observe (napari-style: state + events, views subscribe).

Panels take the state in their constructor, read its attributes, call its setters, and
connect to its signals. Nothing here imports torch or timm (the window must open fast).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal

from tlstudio.gui import steps as _steps

# ids and titles of every step in tlstudio.gui.steps.STEPS, in order (the project file and the
# screenshot tool iterate over them); which are shown depends on the task kind
STEPS: tuple[str, ...] = _steps.step_ids()
STEP_TITLES: dict[str, str] = {s.id: s.title for s in _steps.STEPS}
DEFAULT_KIND = "classification"


class AppState(QObject):
    dataset_changed = Signal()  # scan_report / split replaced
    split_changed = Signal()  # split replaced for the same scan (val fraction / seed)
    settings_changed = Signal(str)  # name of the TrainConfig field that changed ("" = many)
    model_changed = Signal()  # backbone / model_info / groups replaced
    freeze_changed = Signal()  # trainable list changed
    run_event = Signal(object)  # every tlstudio.core.events.Event from the running job
    training_changed = Signal(bool)  # a job started (True) or ended (False)
    current_run_changed = Signal(str)  # run folder selected / produced
    runs_changed = Signal()  # the list of runs on disk changed
    step_status_changed = Signal(str, str)  # step, "todo" | "done" | "attention" | "busy"
    status_message = Signal(str)
    task_kind_changed = Signal(str)  # the kind of learning chosen in the Data step
    task_settings_changed = Signal()  # the kind's own settings (task table, unlabelled folder ...)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.data_dir: str | None = None
        self.scan_report: Any = None  # tlstudio.core.data.dataset.ScanReport
        self.split: Any = None  # tlstudio.core.data.dataset.Split
        # TrainConfig fields the user set (data_dir is filled in by make_config)
        self.settings: dict[str, Any] = {}
        self.model_info: Any = None  # tlstudio.core.models.backbones.ModelInfo
        # the built torch module, for its structure only (layer groups, memory estimate); large
        # models are on the meta device (no weights): never train or run it
        self.model: Any = None
        self.groups: list[Any] = []  # tlstudio.core.models.layers.LayerGroup
        self.trainable: list[bool] = []
        self.advice: Any = None  # tlstudio.core.models.advice.Advice
        self.training = False
        self.current_run: str | None = None
        self.runs_dir: str | None = None
        self.project_path: str | None = None
        self.step_status: dict[str, str] = {s: "todo" for s in STEPS}
        # the kind of learning (tlstudio.core.tasks.registry name) and its own config fields,
        # merged over the common train settings when the Train step builds the kind's config
        self.task_kind: str = DEFAULT_KIND
        self.task_settings: dict[str, Any] = {}

    # --- setters that emit -------------------------------------------------------------
    def set_dataset(self, data_dir: str, report: Any, split: Any = None) -> None:
        self.data_dir, self.scan_report, self.split = data_dir, report, split
        self.dataset_changed.emit()

    def set_split(self, split: Any) -> None:
        """A new train/val split of the same scan (val fraction or seed changed)."""
        self.split = split
        self.split_changed.emit()

    def set_advice(self, advice: Any) -> None:
        self.advice = advice

    def set_setting(self, name: str, value: Any) -> None:
        if self.settings.get(name) != value:
            self.settings[name] = value
            self.settings_changed.emit(name)

    def update_settings(self, values: dict[str, Any]) -> None:
        self.settings.update(values)
        self.settings_changed.emit("")

    def set_model(self, info: Any, groups: list[Any], trainable: list[bool], model: Any = None) -> None:
        self.model_info, self.groups, self.trainable = info, list(groups), list(trainable)
        self.model = model
        self.model_changed.emit()
        self.freeze_changed.emit()

    def set_trainable(self, trainable: list[bool]) -> None:
        if list(trainable) != self.trainable:
            self.trainable = list(trainable)
            self.freeze_changed.emit()

    def set_training(self, running: bool) -> None:
        self.training = running
        self.training_changed.emit(running)

    def set_current_run(self, run_dir: str | None) -> None:
        self.current_run = run_dir
        self.current_run_changed.emit(run_dir or "")

    def set_task_kind(self, kind: str) -> None:
        if kind != self.task_kind:
            self.task_kind = kind
            self.task_kind_changed.emit(kind)

    def set_task_settings(self, values: dict[str, Any], replace: bool = False) -> None:
        """Merge (or, with ``replace``, set) the task kind's own settings."""
        new = dict(values) if replace else {**self.task_settings, **values}
        if new != self.task_settings:
            self.task_settings = new
            self.task_settings_changed.emit()

    def set_step_status(self, step: str, status: str) -> None:
        if self.step_status.get(step) != status:
            self.step_status[step] = status
            self.step_status_changed.emit(step, status)

    def make_config(self) -> Any:
        """The config of the chosen kind of learning: its ``config_cls`` validated from the common
        train settings it has fields for, plus ``task_settings`` (raises pydantic.ValidationError
        when invalid, UserError for an unknown kind)."""
        from tlstudio.core.tasks.registry import get

        kind = get(self.task_kind)
        cls = kind.config_cls
        if cls is None:
            from tlstudio.core.errors import UserError

            raise UserError(f"{kind.title} has no settings to start from the app.")
        fields = cls.model_fields
        values = {k: v for k, v in self.settings.items() if k in fields}
        if "data_dir" in fields:
            values["data_dir"] = self.data_dir or ""
        values.update(self.task_settings)
        if "out_dir" in fields and self.runs_dir and not values.get("out_dir"):
            values["out_dir"] = str(new_run_dir(self.runs_dir, values.get("backbone") or kind.kind))
        return cls.model_validate(values)


def new_run_dir(runs_dir: str, backbone: str) -> Any:
    """A fresh run folder name inside a project's runs folder (same naming as the engine)."""
    import re
    import time
    from pathlib import Path

    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone)[:80]
    base = Path(runs_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path
