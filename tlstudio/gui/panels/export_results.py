"""The Export step's results: the table of exported files (size, how each was checked, int8
next to fp32 in amber when it loses accuracy, failures in red) and the one-line summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QHeaderView, QTableWidget, QTableWidgetItem

from tlstudio.gui.panels.export_text import (
    COLUMNS,
    FORMAT_LABELS,
    INT8_DROP_WARN,
    check_text,
    human_size,
)


def int8_drop(int8: dict[str, Any] | None) -> float:
    """Accuracy points (as a fraction) int8 loses against fp32 ONNX; 0 when not measured."""
    d = (int8 or {}).get("accuracy_drop")
    return float(d) if isinstance(d, (int, float)) else 0.0


def make_results_table() -> QTableWidget:
    """Format, file, size and check columns; read-only, whole rows selected, 5 to 7 rows high."""
    table = QTableWidget(0, len(COLUMNS))
    table.setHorizontalHeaderLabels(list(COLUMNS))
    table.setToolTip("Every exported file with its size and how it was checked: the largest "
                     "difference of its outputs from PyTorch's, or int8 accuracy and speed next to fp32.")
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
    hh = table.horizontalHeader()
    hh.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
    hh.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
    hh.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
    hh.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
    table.setColumnWidth(1, 260)
    table.verticalHeader().setDefaultSectionSize(24)
    table.setMinimumHeight(28 + 24 * 5)
    table.setMaximumHeight(32 + 24 * 7)
    return table


def fill_results_table(table: QTableWidget, report: Any) -> None:
    """One row an exported file (and the model card), in a fixed format order."""
    rows: list[tuple[str, str, int | None, str, bool]] = []
    for fmt in ("safetensors", "onnx", "torchscript", "int8"):
        if fmt in report.formats:
            r = report.formats[fmt]
            rows.append((fmt, r.get("path", ""), r.get("bytes"), check_text(fmt, r, report.int8), False))
        if fmt in report.errors:
            rows.append((fmt, "", None, f"failed: {report.errors[fmt]}", True))
    if report.model_card:
        p = Path(report.model_card)
        rows.append(("model card", str(p), p.stat().st_size if p.is_file() else None,
                     check_text("model_card", {}, None), False))
    if "model_card" in report.errors:
        rows.append(("model card", "", None, f"failed: {report.errors['model_card']}", True))
    table.setRowCount(len(rows))
    red = QColor("#b00020")
    for i, (fmt, path, size, check, failed) in enumerate(rows):
        items = [QTableWidgetItem(FORMAT_LABELS.get(fmt, fmt)), QTableWidgetItem(Path(path).name if path else "–"),
                 QTableWidgetItem(human_size(size)), QTableWidgetItem(check)]
        items[1].setToolTip(path)
        items[3].setToolTip(check)
        items[2].setData(Qt.ItemDataRole.UserRole, size)
        items[2].setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if fmt == "int8" and not failed and int8_drop(report.int8) > INT8_DROP_WARN:
            items[3].setForeground(QColor("#a05a00"))
            items[3].setToolTip(f"{check}\nint8 loses more than {100 * INT8_DROP_WARN:.0f} accuracy points on "
                                "this model and data: prefer the fp32 ONNX, or check on more validation images.")
        for j, it in enumerate(items):
            if failed:
                it.setForeground(red)
            table.setItem(i, j, it)


def report_summary(report: Any) -> str:
    """What was exported where and how long it took, failures in red, an int8 warning in amber."""
    ok = [f for f in report.formats]
    text = f"Exported {', '.join(ok) or 'nothing'} to {report.out_dir} in {report.seconds:.1f} s."
    if report.errors:
        text += f" <span style='color:#b00020'>Failed: {', '.join(report.errors)}.</span>"
    drop = int8_drop(report.int8)
    if "int8" in report.formats and drop > INT8_DROP_WARN:
        text += (f" <span style='color:#a05a00'>int8 is {100 * drop:.0f} accuracy points below fp32 here: "
                 "prefer the fp32 ONNX.</span>")
    return text
