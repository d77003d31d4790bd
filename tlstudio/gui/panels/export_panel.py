"""ExportPanel: write a run's model in formats that work without TL Studio, and show how to
re-run the same training headless or on a cluster.

Export group: run, formats, output folder, Export (tlstudio.core.export.formats.export_run in a worker),
progress, a results table (file, size, check against PyTorch / int8 vs fp32), open folder / card.
"Run elsewhere" group: the run's config.json and the exact `tlstudio train` / `torchrun` command.
Nothing here imports torch or timm at module level (the export worker imports them).
The results table is drawn by ``export_results``, the "Run elsewhere" group lives in
``run_elsewhere`` and the texts (format tips, sizes, checks, commands) in ``export_text``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import QObject, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.panels.export_results import (
    fill_results_table,
    make_results_table,
    report_summary,
)
from tlstudio.gui.panels.export_text import (
    COLUMNS,
    FORMAT_LABELS,
    FORMAT_TIPS,
    INT8_DROP_WARN,
    MASTER_PORT,
    check_text,
    human_size,
    kind_formats,
    rerun_commands,
    run_line,
)
from tlstudio.gui.panels.run_elsewhere import RunElsewhereMixin

# the formatting helpers and constants stay importable from here
__all__ = ["COLUMNS", "FORMAT_LABELS", "FORMAT_TIPS", "INT8_DROP_WARN", "MASTER_PORT", "OPEN_FOLDER_ITEM",
           "ExportPanel", "check_text", "human_size", "rerun_commands"]

OPEN_FOLDER_ITEM = "Open run folder…"


class _Progress(QObject):
    """Carries the worker thread's progress callbacks into the GUI thread (queued signal)."""

    message = Signal(str, int, int)


@dataclass
class KindExportReport:
    """A kind's export report (a JSON-able dict) with the fields the results table reads."""

    formats: dict[str, Any]
    errors: dict[str, str]
    out_dir: str
    model_card: str | None
    seconds: float
    int8: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return bool(self.formats) and not self.errors

    @classmethod
    def of(cls, d: dict[str, Any], seconds: float) -> "KindExportReport":
        return cls(formats=dict(d.get("formats") or {}), errors=dict(d.get("errors") or {}),
                   out_dir=str(d.get("out_dir", "")), model_card=d.get("model_card"), seconds=seconds,
                   int8=d.get("int8"))


class ExportPanel(RunElsewhereMixin, QWidget):
    export_finished = Signal(object)  # ExportReport, or the exception when nothing could be exported

    def __init__(self, state: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.report: Any = None
        self.exporting = False
        self._run: str | None = None
        self._out_edited = False
        self._progress = _Progress(self)
        self._progress.message.connect(self._on_progress)

        root = QVBoxLayout(self)
        title = QLabel("<b>Export</b> – take a trained model out of TL Studio, or re-run its training elsewhere.")
        root.addWidget(title)

        # --- run picker ---------------------------------------------------------------
        row = QHBoxLayout()
        row.addWidget(QLabel("Run:"))
        self.run_combo = QComboBox()
        self.run_combo.setMinimumWidth(420)
        self.run_combo.setToolTip("The trained run to export; defaults to the run selected in Train or Runs. "
                                  f"“{OPEN_FOLDER_ITEM}” picks any run folder on disk.")
        self.run_combo.activated.connect(self._combo_activated)
        row.addWidget(self.run_combo, 1)
        self.run_label = QLabel("")
        self.run_label.setToolTip("The run's backbone, classes, input size and best validation accuracy.")
        self.run_label.setWordWrap(True)  # a multi-task run's task list must not widen the window
        row.addWidget(self.run_label, 1)
        root.addLayout(row)

        # --- export group -------------------------------------------------------------
        box = QGroupBox("Export the model")
        box.setToolTip("Write the run's best weights in the chosen formats; each file is loaded back and "
                       "checked against PyTorch.")
        bl = QVBoxLayout(box)
        fr = QHBoxLayout()
        fr.addWidget(QLabel("Formats:"))
        self.format_checks: dict[str, QCheckBox] = {}
        self.formats: tuple[str, ...] = tuple(FORMAT_LABELS)  # the selected run's kind writes these
        for fmt in self.formats:
            cb = QCheckBox(FORMAT_LABELS[fmt])
            cb.setChecked(True)
            cb.setToolTip(FORMAT_TIPS[fmt])
            self.format_checks[fmt] = cb
            fr.addWidget(cb)
        fr.addStretch(1)
        bl.addLayout(fr)
        orow = QHBoxLayout()
        orow.addWidget(QLabel("Output folder:"))
        self.out_edit = QLineEdit()
        self.out_edit.setToolTip("Where the exported files and MODEL_CARD.md are written (default: the run's "
                                 "export sub-folder). Existing files of the same name are replaced.")
        self.out_edit.textEdited.connect(lambda _t: setattr(self, "_out_edited", True))
        orow.addWidget(self.out_edit, 1)
        self.browse_btn = QPushButton("Browse…")
        self.browse_btn.setToolTip("Choose another output folder.")
        self.browse_btn.clicked.connect(self._browse_out)
        orow.addWidget(self.browse_btn)
        self.export_btn = QPushButton("Export")
        self.export_btn.setToolTip("Write and verify the checked formats, then the model card (runs in the "
                                   "background; a few seconds to a few minutes).")
        self.export_btn.clicked.connect(self.start_export)
        orow.addWidget(self.export_btn)
        bl.addLayout(orow)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.progress.setTextVisible(True)
        self.progress.setToolTip("Progress of the export: the format being written and checked.")
        bl.addWidget(self.progress)
        self.table = make_results_table()
        bl.addWidget(self.table, 1)
        brow = QHBoxLayout()
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setToolTip("Outcome of the last export.")
        brow.addWidget(self.summary, 1)
        self.open_folder_btn = QPushButton("Open folder")
        self.open_folder_btn.setToolTip("Show the exported files in the file manager.")
        self.open_folder_btn.clicked.connect(self.open_folder)
        self.open_card_btn = QPushButton("Open model card")
        self.open_card_btn.setToolTip("Open MODEL_CARD.md: data, metrics, plots, config and a 10-line "
                                      "onnxruntime example.")
        self.open_card_btn.clicked.connect(self.open_model_card)
        for b in (self.open_folder_btn, self.open_card_btn):
            b.setEnabled(False)
            brow.addWidget(b)
        bl.addLayout(brow)
        root.addWidget(box, 1)

        root.addWidget(self._build_run_elsewhere(), 1)

        state.current_run_changed.connect(self._current_run_changed)
        state.runs_changed.connect(self.refresh_runs)
        self.refresh_runs()
        if state.current_run:
            self.set_run(state.current_run)
        elif self.run_combo.count() > 1:
            self.set_run(self.run_combo.itemData(0))
        else:
            self._update_run_widgets()

    def showEvent(self, ev) -> None:  # noqa: ANN001 - runs made elsewhere (CLI) appear when shown
        super().showEvent(ev)
        if not self.exporting:
            self.refresh_runs()

    # --- runs -------------------------------------------------------------------------
    def runs_dir(self) -> Path:
        if self.state.runs_dir:
            return Path(self.state.runs_dir)
        from tlstudio.core.paths import default_runs_dir

        return default_runs_dir()

    def refresh_runs(self) -> None:
        from tlstudio.core.runs.folder import list_runs

        runs = [str(p) for p in list_runs(self.runs_dir())]
        for extra in (self._run, self.state.current_run):
            if extra and extra not in runs and Path(extra).is_dir():
                runs.insert(0, extra)
        self.run_combo.blockSignals(True)
        self.run_combo.clear()
        for r in runs:
            self.run_combo.addItem(Path(r).name, r)
            self.run_combo.setItemData(self.run_combo.count() - 1, r, Qt.ItemDataRole.ToolTipRole)
        self.run_combo.addItem(OPEN_FOLDER_ITEM, None)
        self._select_in_combo(self._run)
        self.run_combo.blockSignals(False)

    def _select_in_combo(self, run: str | None) -> None:
        i = self.run_combo.findData(run) if run else -1
        self.run_combo.setCurrentIndex(i if i >= 0 else (0 if self.run_combo.count() > 1 else -1))

    def _current_run_changed(self, run: str) -> None:
        if run and not self.exporting:
            self.set_run(run)

    def _combo_activated(self, index: int) -> None:
        run = self.run_combo.itemData(index)
        if run is None:
            d = QFileDialog.getExistingDirectory(self, "Open run folder", str(self.runs_dir()))
            if d:
                self.set_run(d)
            else:
                self._select_in_combo(self._run)
            return
        self.set_run(run)

    def set_run(self, run_dir: str | None) -> bool:
        """Select a run folder; False (and a message) when it is not a run."""
        from tlstudio.core.runs.folder import is_run_dir

        if run_dir and not is_run_dir(run_dir):
            self.summary.setText(f"<span style='color:#b00020'>{run_dir} is not a TL Studio run folder "
                                 "(no run.json).</span>")
            self._select_in_combo(self._run)
            return False
        if run_dir != self._run:
            self._run = str(run_dir) if run_dir else None
            self._out_edited = False
            self.report = None
            self.table.setRowCount(0)
            self.summary.setText("")
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setFormat("")
        if self._run and self.run_combo.findData(self._run) < 0:
            self.refresh_runs()
        self.run_combo.blockSignals(True)
        self._select_in_combo(self._run)
        self.run_combo.blockSignals(False)
        self._update_run_widgets()
        return True

    @property
    def run_dir(self) -> str | None:
        return self._run

    def _update_run_widgets(self) -> None:
        run = self._run
        has = bool(run)
        if not self._out_edited:
            self.out_edit.setText(str(Path(run) / "export") if run else "")
        self.export_btn.setEnabled(has and not self.exporting)
        self.run_label.setText("")
        data = ""
        if run:
            try:
                from tlstudio.core.runs.folder import read_run

                from tlstudio.core.tasks.registry import get, task_of_info

                info = read_run(run)
                kind = get(task_of_info(info))
                self._apply_kind(kind_formats(kind.kind), kind.trains)
                self.run_label.setText(run_line(kind.kind, info))  # multi-task: its tasks, mean task score
                data = str(info.config.get("data_dir") or info.data.get("root") or "")
            except Exception as exc:  # noqa: BLE001 - a damaged run.json: say so, keep the panel usable
                self.run_label.setText(f"<span style='color:#b00020'>{exc}</span>")
        cfg = self.config_path()
        self.config_label.setText(str(cfg) if cfg else ("no config.json in this run" if run else "–"))
        self.save_config_btn.setEnabled(cfg is not None)
        self.copy_btn.setEnabled(cfg is not None)
        for w in (self.data_edit, self.new_run_edit):
            w.blockSignals(True)
        self.data_edit.setText(data or "DATA")
        self.new_run_edit.setText(str(Path(run).with_name(Path(run).name + "-rerun")) if run else "NEW_RUN")
        for w in (self.data_edit, self.new_run_edit):
            w.blockSignals(False)
        self.update_commands()

    # --- export ---------------------------------------------------------------------
    def selected_formats(self) -> list[str]:
        return [f for f, cb in self.format_checks.items() if cb.isChecked() and f in self.formats]

    def set_formats(self, formats: list[str]) -> None:
        for f, cb in self.format_checks.items():
            cb.setChecked(f in formats)

    def _browse_out(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Export to folder", self.out_edit.text() or str(self.runs_dir()))
        if d:
            self.out_edit.setText(d)
            self._out_edited = True

    def start_export(self) -> bool:
        """Start the export of the selected run in the background; False when it cannot start."""
        if self.exporting or not self._run:
            return False
        formats = self.selected_formats()
        if not formats:
            self.summary.setText("<span style='color:#b00020'>Check at least one format.</span>")
            return False
        out = self.out_edit.text().strip() or str(Path(self._run) / "export")
        self.exporting = True
        self.export_btn.setEnabled(False)
        self._set_inputs_enabled(False)
        self.open_folder_btn.setEnabled(False)
        self.open_card_btn.setEnabled(False)
        self.table.setRowCount(0)
        self.summary.setText("Exporting…")
        self.progress.setRange(0, 0)
        self.progress.setFormat("starting…")
        self.state.set_step_status("export", "busy")
        bridge = self._progress

        def progress(msg: str, i: int, n: int) -> None:
            if shiboken6.isValid(bridge):
                bridge.message.emit(msg, i, n)

        def job(run: str, out_dir: str, fmts: list[str]) -> Any:
            # through the run's kind: anomaly and multi-task runs export their own formats
            import time

            from tlstudio.core.tasks.registry import kind_of_run

            kind = kind_of_run(run)
            if kind.export is None:
                from tlstudio.core.errors import UserError

                raise UserError(f"{kind.title} runs have nothing to export")
            t0 = time.time()
            report = kind.export(run, fmts, out_dir, progress)
            return KindExportReport.of(report, time.time() - t0) if isinstance(report, dict) else report

        from tlstudio.gui.heavy import needing_torch
        from tlstudio.gui.workers import start_worker

        start_worker(self, needing_torch(job), self._run, out, formats, returned=self._export_done, errored=self._export_failed)
        return True

    def _on_progress(self, msg: str, i: int, n: int) -> None:
        self.progress.setRange(0, max(1, n))
        self.progress.setValue(min(i, n))
        self.progress.setFormat(f"{msg} (%v/%m)")

    def _set_inputs_enabled(self, on: bool) -> None:
        for w in (self.run_combo, self.out_edit, self.browse_btn, *self.format_checks.values()):
            w.setEnabled(on)

    def _finish(self) -> None:
        self.exporting = False
        self._set_inputs_enabled(True)
        self.export_btn.setEnabled(bool(self._run))

    def _export_failed(self, exc: BaseException) -> None:
        self._finish()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("failed")
        self.summary.setText(f"<span style='color:#b00020'>Export failed: {exc}</span>")
        self.state.set_step_status("export", "attention")
        self.export_finished.emit(exc)

    def _export_done(self, report: Any) -> None:
        self._finish()
        self.report = report
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("done" if report.ok else "done, with errors")
        self.show_report(report)
        self.state.set_step_status("export", "done" if report.ok else "attention")
        self.export_finished.emit(report)

    def show_report(self, report: Any) -> None:
        fill_results_table(self.table, report)
        self.summary.setText(report_summary(report))
        self.open_folder_btn.setEnabled(Path(report.out_dir).is_dir())
        self.open_card_btn.setEnabled(bool(report.model_card) and Path(report.model_card).is_file())

    def open_folder(self) -> bool:
        if self.report is None:
            return False
        return QDesktopServices.openUrl(QUrl.fromLocalFile(self.report.out_dir))

    def open_model_card(self) -> bool:
        """The desktop's Markdown viewer, or (none installed) the card in an in-app dialog."""
        if self.report is None or not self.report.model_card:
            return False
        from tlstudio.gui.widgets.text_dialog import open_document

        self.card_dialog = open_document(self.report.model_card, self)
        return True
