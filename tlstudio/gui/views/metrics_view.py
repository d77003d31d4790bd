"""MetricsView: a metrics dictionary as a labelled form (one row per metric), with explicit inputs.

``view.set_metrics({"accuracy": 0.87, "macro_f1": 0.85, "top2_accuracy": 0.98}, source="validation
split", n=120)``. Names follow the metrics convention of docs/TASKS.md: accuracies and rates are
shown as percentages, losses with 4 decimals, other scores with 3; a ``/task`` suffix names the
task head (``accuracy/digit`` -> "Accuracy (digit)"). One view per task head is just one more
instance; nothing here knows a kind of learning.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFormLayout, QGroupBox, QLabel, QVBoxLayout, QWidget

TITLES = {
    "accuracy": "Accuracy", "macro_f1": "Macro-F1", "val_acc": "Validation accuracy",
    "val_macro_f1": "Validation macro-F1", "val_loss": "Validation loss", "auroc": "AUROC",
    "image_auroc": "Image AUROC", "pixel_auroc": "Pixel AUROC", "f1": "F1", "mae": "Mean absolute error",
    "rmse": "Root mean squared error", "threshold": "Threshold",
}
EXPLAIN = {
    "accuracy": "Share of images whose most likely class is the true class.",
    "macro_f1": "F1 (the balance of precision and recall) averaged over classes, so small classes count "
                "as much as big ones.",
    "top_accuracy": "Share of images whose true class is among the k most likely classes.",
    "auroc": "Area under the ROC curve: 1.0 separates every case, 0.5 is chance.",
    "loss": "Lower is better.",
}


def metric_title(name: str) -> str:
    base, _, task = name.partition("/")
    if base.startswith("top") and base.endswith("_accuracy") and base[3:-9].isdigit():
        title = f"Top-{base[3:-9]} accuracy"
    else:
        title = TITLES.get(base) or base.replace("_", " ").capitalize()
    return f"{title} ({task})" if task else title


def is_percent(name: str) -> bool:
    base = name.partition("/")[0]
    return base.endswith(("acc", "accuracy", "rate")) or base in ("precision", "recall")


def format_metric(name: str, value: float | None) -> str:
    if value is None or value != value:
        return "-"
    if is_percent(name):
        return f"{value:.1%}"
    base = name.partition("/")[0]
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 10):
        return f"{int(value):,}"
    return f"{value:.4f}" if base.endswith("loss") else f"{value:.3f}"


def explain(name: str) -> str:
    base = name.partition("/")[0]
    if base.startswith("top") and base.endswith("_accuracy"):
        return EXPLAIN["top_accuracy"]
    for key, text in EXPLAIN.items():
        if base == key or base.endswith(key):
            return text
    return ""


class MetricsView(QWidget):
    """A titled group with one row per metric: "Evaluated on", the metrics, "Images"."""

    def __init__(self, title: str = "Metrics", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.box = QGroupBox(title)
        self.form = QFormLayout(self.box)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.box)
        self.labels: dict[str, QLabel] = {}  # row key ("source", "n" or a metric name) -> value label
        self.set_metrics({})

    def _row(self, key: str, title: str, text: str, tip: str = "") -> None:
        value = QLabel(text)
        value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        value.setAccessibleName(title)
        value.setToolTip(tip)
        self.form.addRow(title, value)
        self.labels[key] = value

    def set_metrics(self, metrics: dict[str, float], source: str = "", n: int | None = None,
                    note: str = "") -> None:
        """Show ``metrics`` (any names, in their order); an empty dict shows "-" rows."""
        while self.form.rowCount():
            self.form.removeRow(0)
        self.labels = {}
        self._row("source", "Evaluated on", source or "-")
        if not metrics:
            self._row("none", "Metrics", "-")
        for name, value in metrics.items():
            self._row(name, metric_title(name), format_metric(name, value), explain(name))
        self._row("n", "Images", "-" if n is None else f"{n:,}" + (f" ({note})" if note else ""))

    def text(self, key: str) -> str:
        """The shown value of a row ("source", "n" or a metric name); "" if there is no such row."""
        label = self.labels.get(key)
        return label.text() if label is not None else ""
