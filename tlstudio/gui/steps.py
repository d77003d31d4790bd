"""The workflow steps of the main window, as data: the sidebar, the stacked pages, the View menu
and the Ctrl+digit shortcuts are all built from ``STEPS`` (see docs/TASKS.md).

A helper that adds a step appends one ``StepSpec`` here (a small edit, never a rewrite). Panels
are imported lazily from ``module`` when their page is first shown and constructed
``cls(state)`` (``cls(state, runner)`` when ``needs_runner``). A step is shown only for the task
kinds in ``kinds`` (None: every kind) and never for a kind in ``skip_kinds``.

No Qt here: this module is plain data, importable by the window, the project file code and tests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepSpec:
    id: str  # "data", "train", "anomaly" ...: the page's key (AppState.step_status, project files)
    title: str  # sidebar and View menu text
    module: str  # dotted path of the panel's module, imported when the page is first built
    cls: str  # the panel class in that module: cls(state) or cls(state, runner)
    kinds: frozenset[str] | None = None  # task kinds that show this step; None = every kind
    needs_runner: bool = False  # the panel runs engine jobs in the window's shared JobRunner
    tip: str = ""  # sidebar tooltip: what the step is for
    skip_kinds: frozenset[str] = frozenset()  # kinds that hide this step even when kinds is None

    def shown_for(self, kind: str) -> bool:
        """A kind that declares its steps (TaskKind.gui_steps) shows those and the steps made for it
        (``kinds`` naming it); a kind that declares none (classification, the default) shows every
        step whose kinds / skip_kinds allow it."""
        declared = _declared_steps(kind)
        if declared:
            return self.id in declared or (self.kinds is not None and kind in self.kinds)
        if kind in self.skip_kinds:
            return False
        return self.kinds is None or kind in self.kinds


def _declared_steps(kind: str) -> frozenset[str]:
    from tlstudio.core.errors import UserError
    from tlstudio.core.tasks.registry import get

    try:
        return frozenset(get(kind).gui_steps)
    except UserError:  # a kind this version does not know (an old or foreign project file)
        return frozenset()


_P = "tlstudio.gui.panels."

STEPS: list[StepSpec] = [
    StepSpec("data", "Data", _P + "data_panel", "DataPanel",
             tip="Open or drop your images and choose what to learn"),
    StepSpec("rank", "Rank", _P + "rank_panel", "RankPanel", needs_runner=True,
             kinds=frozenset({"classification", "ranking"}),
             tip="Score backbones and your earlier runs on your images before training"),
    StepSpec("model", "Model", _P + "model_panel", "ModelPanel",
             tip="Pick a pre-trained backbone and its starting weights"),
    StepSpec("layers", "Layers", _P + "layers_panel", "LayersPanel",
             tip="Choose which layers train and which stay frozen"),
    StepSpec("train", "Train", _P + "train_panel", "TrainPanel", needs_runner=True,
             skip_kinds=frozenset({"distillation"}),
             tip="Set the hyper-parameters, start and watch the training"),
    StepSpec("distill", "Distill", _P + "distill_panel", "DistillPanel", needs_runner=True,
             kinds=frozenset({"classification", "distillation"}),
             tip="Teach a small student model from a trained teacher"),
    StepSpec("adapt", "Adapt", _P + "adapt_panel", "AdaptPanel", needs_runner=True,
             kinds=frozenset({"adaptation", "semisupervised"}),
             tip="Learn from the unlabelled images: the method, its curves, adapted vs unadapted"),
    StepSpec("review", "Review", _P + "review_queue", "ReviewQueuePanel", kinds=frozenset({"semisupervised"}),
             tip="Accept, reject or correct the labels the model proposes for unlabelled images"),
    StepSpec("anomaly_fit", "Fit", _P + "anomaly_fit", "AnomalyFitPanel", needs_runner=True,
             kinds=frozenset({"anomaly"}),
             tip="Learn what normal looks like from good images; choose how many false alarms to allow"),
    StepSpec("anomaly_evaluate", "Evaluate", _P + "anomaly_evaluate", "AnomalyEvaluatePanel",
             kinds=frozenset({"anomaly"}), tip="AUROC, F1, score histogram and heat maps of test images"),
    StepSpec("anomaly_predict", "Predict", _P + "anomaly_predict", "AnomalyPredictPanel",
             kinds=frozenset({"anomaly"}), tip="Score new images: verdict and heat map; move the threshold live"),
    StepSpec("evaluate", "Evaluate", _P + "evaluate_panel", "EvaluatePanel",
             tip="Metrics, confusion matrix and mistakes of a trained model"),
    StepSpec("predict", "Predict", _P + "predict_panel", "PredictPanel",
             tip="Use a trained model on new images"),
    StepSpec("mt_evaluate", "Evaluate tasks", _P + "multitask_evaluate", "MultiTaskEvaluatePanel",
             kinds=frozenset({"multitask"}),
             tip="Per-task metrics, confusion matrices, multi-task vs separate models, task relatedness"),
    StepSpec("mt_predict", "Predict tasks", _P + "multitask_predict", "MultiTaskPredictPanel",
             kinds=frozenset({"multitask"}), tip="Every task's answer for new images"),
    StepSpec("runs", "Runs", _P + "runs_panel", "RunsPanel",
             tip="Every run of this project: compare, open, continue"),
    StepSpec("export", "Export", _P + "export_panel", "ExportPanel",
             tip="Save the model as safetensors, ONNX, TorchScript or int8"),
]


def step_ids() -> tuple[str, ...]:
    return tuple(s.id for s in STEPS)


def spec(step_id: str) -> StepSpec:
    for s in STEPS:
        if s.id == step_id:
            return s
    raise KeyError(f"no step {step_id!r}; steps: {', '.join(step_ids())}")


def visible_ids(kind: str) -> list[str]:
    """The steps a task kind shows, in sidebar order."""
    return [s.id for s in STEPS if s.shown_for(kind)]


def shortcut_for(position: int) -> str | None:
    """Ctrl+1 .. Ctrl+9 for the first nine shown steps, Ctrl+0 for the tenth, none after."""
    if position < 9:
        return f"Ctrl+{position + 1}"
    return "Ctrl+0" if position == 9 else None
