"""The Evaluate step's numbers (left side) as widgets with explicit inputs: the transfer-vs-from-
scratch comparison with its negative-transfer warning (BaselineView) and the sortable per-class
table (PerClassTable); the metrics themselves are a ``views.metrics_view.MetricsView``."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QGroupBox,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)


class NumItem(QTableWidgetItem):
    """Shows a formatted number, sorts by its value."""

    def __init__(self, value: float, fmt: str) -> None:
        super().__init__(fmt.format(value))
        self.value = value
        self.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        return self.value < getattr(other, "value", 0)


def report_metrics(report: Any) -> dict[str, float]:
    """The metrics dictionary of a classification EvalReport (as the kind's evaluate() returns it)."""
    out = {"accuracy": float(report.accuracy), "macro_f1": float(report.macro_f1)}
    out.update({f"top{k}_accuracy": float(v) for k, v in sorted(report.top_k.items(), key=lambda kv: int(kv[0]))})
    return out


class BaselineView(QGroupBox):
    """Transfer learning vs the same network from scratch: ``set_baseline(baseline, best_val_acc)``
    with the run's ``RunInfo.baseline`` dict; hidden when there is none."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Transfer vs from scratch", parent)
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.label.setAccessibleName("Transfer versus from scratch")
        QVBoxLayout(self).addWidget(self.label)
        self.setToolTip("The same network trained from random weights on the same data: "
                        "the difference is what the pretrained knowledge brings.")
        self.hide()

    def set_baseline(self, b: dict | None, best_val_acc: float | None = None) -> None:
        if not b:
            self.hide()
            return
        transfer = b.get("transfer_val_acc", best_val_acc)
        scratch = b.get("scratch_val_acc")
        gain = b.get("gain")
        if gain is None and transfer is not None and scratch is not None:
            gain = transfer - scratch
        if transfer is None or scratch is None or gain is None:
            self.hide()
            return
        text = (f"Transfer learning: <b>{transfer:.1%}</b> · from scratch: <b>{scratch:.1%}</b><br>"
                f"Gain of transfer: <b>{gain * 100:+.1f} points</b>")
        if gain < 0 or b.get("negative_transfer"):
            text += ("<br><span style='color:#b71c1c'><b>⚠ Negative transfer:</b> the pretrained weights made "
                     "the result worse on this data. Try unfreezing more layers, a lower learning rate, "
                     "or another backbone.</span>")
            self.setStyleSheet("QGroupBox { border: 2px solid #b71c1c; }")
        else:
            self.setStyleSheet("")
        self.label.setText(text)
        self.show()


class PerClassTable(QTableWidget):
    """Precision, recall, F1 and support per class, sortable: ``set_rows(report.per_class)``."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, 5, parent)
        self.setHorizontalHeaderLabels(["Class", "Precision", "Recall", "F1", "Support"])
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.verticalHeader().hide()
        self.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)  # class order
        self.setSortingEnabled(True)
        self.setAccessibleName("Per-class metrics")
        self.setToolTip("Precision: of the images predicted as this class, the share that really are.\n"
                        "Recall: of the images of this class, the share found.\n"
                        "Support: how many images of this class were evaluated.")

    def set_rows(self, rows: list[dict]) -> None:
        self.setSortingEnabled(False)
        self.setRowCount(len(rows))
        for r, row in enumerate(rows):
            self.setItem(r, 0, QTableWidgetItem(str(row["name"])))
            for c, key in enumerate(("precision", "recall", "f1"), start=1):
                self.setItem(r, c, NumItem(float(row[key]), "{:.3f}"))
            self.setItem(r, 4, NumItem(int(row["support"]), "{}"))
        self.setSortingEnabled(True)
