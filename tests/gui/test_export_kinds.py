"""The Export step shows a kind's own export report (anomaly, multi-task: a dict) like a classifier's."""

from __future__ import annotations

from PySide6.QtWidgets import QTableWidget

from tlstudio.gui.panels.export_panel import KindExportReport
from tlstudio.gui.panels.export_results import fill_results_table, report_summary


def test_a_kind_report_fills_the_results_table(qtbot, tmp_path):
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# card")
    d = {"out_dir": str(tmp_path), "formats": {"onnx": {"path": str(tmp_path / "anomaly.onnx"), "bytes": 2048,
                                                        "max_abs_diff": 1e-6}},
         "errors": {"torchscript": "tracing failed"}, "model_card": str(card), "sidecar": "x.json"}
    rep = KindExportReport.of(d, 1.5)
    assert not rep.ok and rep.int8 is None
    table = QTableWidget(0, 4)
    qtbot.addWidget(table)
    fill_results_table(table, rep)
    cells = [[table.item(r, c).text() for c in range(4)] for r in range(table.rowCount())]
    assert cells[0][1] == "anomaly.onnx" and "failed: tracing failed" in cells[1][3] and cells[2][1] == "MODEL_CARD.md"
    text = report_summary(rep)
    assert "Exported onnx" in text and "Failed: torchscript" in text and "1.5 s" in text
