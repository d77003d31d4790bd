"""AppState: the one model the panels observe (napari-style: state + events, views subscribe).

Panels take the state in their constructor, read its attributes, call its setters, and
connect to its signals. Nothing here imports torch or timm (the window must open fast).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal

STEPS = ("data", "model", "layers", "train", "distill", "evaluate", "predict", "runs", "export")
STEP_TITLES = {
    "data": "Data", "model": "Model", "layers": "Layers", "train": "Train", "distill": "Distill",
    "evaluate": "Evaluate", "predict": "Predict", "runs": "Runs", "export": "Export",
}


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

    def set_step_status(self, step: str, status: str) -> None:
        if self.step_status.get(step) != status:
            self.step_status[step] = status
            self.step_status_changed.emit(step, status)

    def make_config(self) -> Any:
        """The TrainConfig the user has set up (raises pydantic.ValidationError when invalid)."""
        from tlstudio.core.config import TrainConfig

        values = dict(self.settings)
        if self.runs_dir and not values.get("out_dir"):
            values["out_dir"] = str(new_run_dir(self.runs_dir, values.get("backbone") or "model"))
        return TrainConfig(data_dir=self.data_dir or "", **values)


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
