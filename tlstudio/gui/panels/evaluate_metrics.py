"""The Evaluate step's numbers (left side): the metrics group, the transfer-vs-from-scratch
comparison with its negative-transfer warning, and the sortable per-class table."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFormLayout,
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


class EvalMetricsMixin:
    """Metrics, baseline comparison and per-class table of the Evaluate panel, which provides
    ``self.info`` (the run's RunInfo, or None)."""

    def _build_metrics_side(self) -> QWidget:
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        box = QGroupBox("Metrics")
        self.metrics_form = QFormLayout(box)
        self.source_label = QLabel("-")
        self.acc_label = QLabel("-")
        self.acc_label.setToolTip("Share of images whose most likely class is the true class.")
        self.f1_label = QLabel("-")
        self.f1_label.setToolTip("F1 (the balance of precision and recall) averaged over classes, so small "
                                 "classes count as much as big ones.")
        self.topk_label = QLabel("-")
        self.topk_label.setToolTip("Share of images whose true class is among the k most likely classes.")
        self.n_label = QLabel("-")
        self.metrics_form.addRow("Evaluated on", self.source_label)
        self.metrics_form.addRow("Accuracy", self.acc_label)
        self.metrics_form.addRow("Macro-F1", self.f1_label)
        self.metrics_form.addRow("Top-k accuracy", self.topk_label)
        self.metrics_form.addRow("Images", self.n_label)
        lv.addWidget(box)

        self.baseline_box = QGroupBox("Transfer vs from scratch")
        bl = QVBoxLayout(self.baseline_box)
        self.baseline_label = QLabel("")
        self.baseline_label.setWordWrap(True)
        self.baseline_label.setTextFormat(Qt.TextFormat.RichText)
        bl.addWidget(self.baseline_label)
        self.baseline_box.setToolTip("The same network trained from random weights on the same data: "
                                     "the difference is what the pretrained knowledge brings.")
        self.baseline_box.hide()
        lv.addWidget(self.baseline_box)

        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["Class", "Precision", "Recall", "F1", "Support"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)  # class order
        self.table.setSortingEnabled(True)
        self.table.setToolTip("Precision: of the images predicted as this class, the share that really are.\n"
                              "Recall: of the images of this class, the share found.\n"
                              "Support: how many images of this class were evaluated.")
        lv.addWidget(self.table, 1)
        return left

    def _show_baseline(self) -> None:
        b = self.info.baseline if self.info is not None else None
        if not b:
            self.baseline_box.hide()
            return
        transfer = b.get("transfer_val_acc", self.info.best_val_acc)
        scratch = b.get("scratch_val_acc")
        gain = b.get("gain")
        if gain is None and transfer is not None and scratch is not None:
            gain = transfer - scratch
        if transfer is None or scratch is None or gain is None:
            self.baseline_box.hide()
            return
        text = (f"Transfer learning: <b>{transfer:.1%}</b> · from scratch: <b>{scratch:.1%}</b><br>"
                f"Gain of transfer: <b>{gain * 100:+.1f} points</b>")
        if gain < 0 or b.get("negative_transfer"):
            text += ("<br><span style='color:#b71c1c'><b>⚠ Negative transfer:</b> the pretrained weights made "
                     "the result worse on this data. Try unfreezing more layers, a lower learning rate, "
                     "or another backbone.</span>")
            self.baseline_box.setStyleSheet("QGroupBox { border: 2px solid #b71c1c; }")
        else:
            self.baseline_box.setStyleSheet("")
        self.baseline_label.setText(text)
        self.baseline_box.show()

    def _show_metrics(self, report: Any) -> None:
        """Fill the metrics group and the per-class table from an EvalReport ("-" and no rows for None)."""
        self.table.setSortingEnabled(False)
        if report is None:
            for w in (self.source_label, self.acc_label, self.f1_label, self.topk_label, self.n_label):
                w.setText("-")
            self.table.setRowCount(0)
            return
        self.source_label.setText(report.source or "validation split")
        self.acc_label.setText(f"{report.accuracy:.1%}")
        self.f1_label.setText(f"{report.macro_f1:.3f}")
        self.topk_label.setText(" · ".join(f"top-{k}: {v:.1%}" for k, v in sorted(report.top_k.items())) or "-")
        fails = len(getattr(report, "failures", []) or [])
        self.n_label.setText(f"{report.n}" + (f" ({fails} unreadable, skipped)" if fails else ""))
        self.table.setRowCount(len(report.per_class))
        for r, row in enumerate(report.per_class):
            self.table.setItem(r, 0, QTableWidgetItem(str(row["name"])))
            for c, key in enumerate(("precision", "recall", "f1"), start=1):
                self.table.setItem(r, c, NumItem(float(row[key]), "{:.3f}"))
            self.table.setItem(r, 4, NumItem(int(row["support"]), "{}"))
        self.table.setSortingEnabled(True)
