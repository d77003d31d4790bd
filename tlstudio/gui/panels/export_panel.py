"""ExportPanel: write a run's model in formats that work without TL Studio, and show how to
re-run the same training headless or on a cluster.

Export group: run, formats, output folder, Export (tlstudio.core.export.export_run in a worker),
progress, a results table (file, size, check against PyTorch / int8 vs fp32), open folder / card.
"Run elsewhere" group: the run's config.json and the exact `tlstudio train` / `torchrun` command.
Nothing here imports torch or timm at module level (the export worker imports them).
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import QObject, Qt, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices, QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

OPEN_FOLDER_ITEM = "Open run folder…"
MASTER_PORT = 29500
FORMAT_TIPS = {
    "safetensors": "timm weights (model.safetensors + config.json): load with timm.create_model in any "
                   "Python, no TL Studio needed.",
    "onnx": "ONNX (fp32, any batch size): runs with onnxruntime in Python, C++, C#, JavaScript or on phones; "
            "checked against PyTorch.",
    "torchscript": "TorchScript (model.torchscript.pt): load with torch.jit.load, no model code needed; "
                   "checked against PyTorch.",
    "int8": "An 8-bit quantized ONNX model: about 4x smaller and often faster on CPU; its accuracy and "
            "speed are measured next to fp32.",
}
FORMAT_LABELS = {"safetensors": "safetensors (timm)", "onnx": "ONNX", "torchscript": "TorchScript",
                 "int8": "int8 (quantized ONNX)"}
COLUMNS = ("Format", "File", "Size", "Check")
INT8_DROP_WARN = 0.02  # accuracy drop of int8 vs fp32 ONNX shown as a warning above this


def human_size(n: int | None) -> str:
    if not n:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _ms(x: Any) -> str:
    return f"{x:.1f} ms" if isinstance(x, (int, float)) else "–"


def _acc(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "n/a"


def check_text(fmt: str, result: dict[str, Any], int8: dict[str, Any] | None) -> str:
    """The "Check" cell: what was verified for this file."""
    if fmt in ("onnx", "torchscript"):
        d = result.get("max_abs_diff")
        return f"max abs diff vs PyTorch {d:.1e}" if isinstance(d, (int, float)) else "loaded"
    if fmt == "safetensors":
        return "timm state dict + config.json"
    if fmt == "int8":
        if not int8:
            return result.get("method", "")
        a, b = int8.get("fp32_onnx", {}), int8.get("int8_onnx", {})
        return (f"accuracy {_acc(b.get('accuracy'))} vs fp32 {_acc(a.get('accuracy'))} · "
                f"latency {_ms(b.get('latency_ms'))} vs {_ms(a.get('latency_ms'))} "
                f"(n={int8.get('n_val', 0)} val images)")
    if fmt == "model_card":
        return "markdown with metrics, plots, config"
    return ""


def rerun_commands(config: str, data: str, new_run: str, nproc: int = 1, nnodes: int = 1,
                   master_addr: str = "localhost", master_port: int = MASTER_PORT) -> tuple[str, str]:
    """(headless command, torchrun command) that repeat the run's training with its config.json."""
    q = shlex.quote
    tail = f"train {q(data)} --config {q(config)} --out {q(new_run)}"
    headless = f"tlstudio {tail}"
    tr = f"torchrun --nproc_per_node={int(nproc)}"
    if nnodes > 1:
        tr += (f" --nnodes={int(nnodes)} --node_rank=$NODE_RANK --master_addr={q(master_addr or 'localhost')}"
               f" --master_port={int(master_port)}")
    return headless, f"{tr} -m tlstudio {tail}"


class _Progress(QObject):
    """Carries the worker thread's progress callbacks into the GUI thread (queued signal)."""

    message = Signal(str, int, int)


class ExportPanel(QWidget):
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
        for fmt in ("safetensors", "onnx", "torchscript", "int8"):
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
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setToolTip("Every exported file with its size and how it was checked: the largest "
                              "difference of its outputs from PyTorch's, or int8 accuracy and speed next to fp32.")
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        hh.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
        hh.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        hh.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.table.setColumnWidth(1, 260)
        self.table.verticalHeader().setDefaultSectionSize(24)
        self.table.setMinimumHeight(28 + 24 * 5)
        self.table.setMaximumHeight(32 + 24 * 7)
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

        # --- run elsewhere ----------------------------------------------------------
        rbox = QGroupBox("Run elsewhere")
        rbox.setToolTip("Repeat this run's training without the app: headless on any machine, or on a "
                        "cluster with PyTorch DDP (torchrun).")
        rl = QVBoxLayout(rbox)
        form = QFormLayout()
        self.config_label = QLabel("–")
        self.config_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.config_label.setToolTip("The run's full training settings; `tlstudio train --config` reads them "
                                     "(flags given after it override them).")
        form.addRow("Config:", self.config_label)
        self.data_edit = QLineEdit()
        self.data_edit.setToolTip("The image folder on the machine that will train (the run's own data folder "
                                  "by default; change it if the cluster sees the data under another path).")
        self.data_edit.textChanged.connect(self.update_commands)
        form.addRow("Data folder:", self.data_edit)
        self.new_run_edit = QLineEdit()
        self.new_run_edit.setToolTip("The run folder the new training writes (must not be the original run).")
        self.new_run_edit.textChanged.connect(self.update_commands)
        form.addRow("New run folder:", self.new_run_edit)
        crow = QHBoxLayout()
        self.nproc_spin = QSpinBox()
        self.nproc_spin.setRange(1, 256)
        self.nproc_spin.setValue(2)
        self.nproc_spin.setToolTip("Training processes per machine: one per GPU (or a few on a CPU-only machine).")
        self.nnodes_spin = QSpinBox()
        self.nnodes_spin.setRange(1, 1024)
        self.nnodes_spin.setValue(1)
        self.nnodes_spin.setToolTip("Number of machines; with more than one, start the same command on each "
                                    "with NODE_RANK=0 on the master and 1, 2, … on the others.")
        self.master_edit = QLineEdit("localhost")
        self.master_edit.setToolTip("Host name or IP address of the node with rank 0, reachable from every node "
                                    f"(port {MASTER_PORT}).")
        for w in (self.nproc_spin, self.nnodes_spin):
            w.valueChanged.connect(self.update_commands)
        self.master_edit.textChanged.connect(self.update_commands)
        crow.addWidget(QLabel("Processes per node:"))
        crow.addWidget(self.nproc_spin)
        crow.addWidget(QLabel("Nodes:"))
        crow.addWidget(self.nnodes_spin)
        crow.addWidget(QLabel("Master address:"))
        crow.addWidget(self.master_edit, 1)
        form.addRow("Cluster:", crow)
        rl.addLayout(form)
        self.command_text = QPlainTextEdit()
        self.command_text.setReadOnly(True)
        self.command_text.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.command_text.setMinimumHeight(110)
        self.command_text.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.command_text.setToolTip("The exact commands; copy them into a terminal or a cluster job script.")
        rl.addWidget(self.command_text, 1)
        arow = QHBoxLayout()
        arow.addStretch(1)
        self.copy_btn = QPushButton("Copy")
        self.copy_btn.setToolTip("Copy the commands to the clipboard.")
        self.copy_btn.clicked.connect(self.copy_commands)
        self.save_config_btn = QPushButton("Save config as…")
        self.save_config_btn.setToolTip("Save a copy of the run's config.json, to take to another machine.")
        self.save_config_btn.clicked.connect(self._save_config_dialog)
        arow.addWidget(self.copy_btn)
        arow.addWidget(self.save_config_btn)
        rl.addLayout(arow)
        root.addWidget(rbox, 1)

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
        from tlstudio.core.runs import list_runs

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
        from tlstudio.core.runs import is_run_dir

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
                from tlstudio.core.runs import read_run

                info = read_run(run)
                m = info.model
                acc = f", best val acc {100 * info.best_val_acc:.1f}%" if info.best_val_acc is not None else ""
                self.run_label.setText(f"{m.backbone}, {m.num_classes} classes, {m.image_size} px{acc}")
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

    # --- run elsewhere ------------------------------------------------------------------
    def config_path(self) -> Path | None:
        if not self._run:
            return None
        p = Path(self._run) / "config.json"
        return p if p.is_file() else None

    def commands(self) -> tuple[str, str]:
        cfg = self.config_path()
        return rerun_commands(str(cfg) if cfg else "RUN/config.json", self.data_edit.text().strip() or "DATA",
                              self.new_run_edit.text().strip() or "NEW_RUN", self.nproc_spin.value(),
                              self.nnodes_spin.value(), self.master_edit.text().strip() or "localhost")

    def command_block(self) -> str:
        headless, cluster = self.commands()
        nn = self.nnodes_spin.value()
        where = ("one machine" if nn == 1 else
                 f"{nn} machines: run it on each with NODE_RANK=0 on {self.master_edit.text().strip() or 'localhost'}"
                 f" and 1..{nn - 1} on the others (export NODE_RANK=...)")
        return (f"# the same training, headless on this or another machine\n{headless}\n"
                f"# PyTorch DDP with torchrun, {self.nproc_spin.value()} process(es) per node on {where}\n{cluster}\n")

    def update_commands(self, *_: Any) -> None:
        self.master_edit.setEnabled(self.nnodes_spin.value() > 1)
        self.command_text.setPlainText(self.command_block())

    def copy_commands(self) -> str:
        text = self.command_block()
        QGuiApplication.clipboard().setText(text)
        self.state.status_message.emit("Commands copied to the clipboard.")
        return text

    def save_config_to(self, path: str | Path) -> Path:
        cfg = self.config_path()
        if cfg is None:
            raise FileNotFoundError(f"{self._run}: the run has no config.json")
        dest = Path(path)
        shutil.copyfile(cfg, dest)
        self.state.status_message.emit(f"Config saved to {dest}.")
        return dest

    def _save_config_dialog(self) -> None:
        if self.config_path() is None:
            return
        name = f"{Path(self._run or 'run').name}-config.json"
        path, _ = QFileDialog.getSaveFileName(self, "Save config as", str(Path.home() / name), "JSON (*.json)")
        if path:
            try:
                self.save_config_to(path)
            except OSError as exc:
                self.summary.setText(f"<span style='color:#b00020'>Could not save the config: {exc}</span>")

    # --- export ---------------------------------------------------------------------
    def selected_formats(self) -> list[str]:
        return [f for f, cb in self.format_checks.items() if cb.isChecked()]

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
            from tlstudio.core.export import export_run

            return export_run(run, out_dir, formats=fmts, progress=progress)

        from tlstudio.gui.workers import start_worker

        start_worker(self, job, self._run, out, formats, returned=self._export_done, errored=self._export_failed)
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
        self.table.setRowCount(len(rows))
        red = QColor("#b00020")
        for i, (fmt, path, size, check, failed) in enumerate(rows):
            items = [QTableWidgetItem(FORMAT_LABELS.get(fmt, fmt)), QTableWidgetItem(Path(path).name if path else "–"),
                     QTableWidgetItem(human_size(size)), QTableWidgetItem(check)]
            items[1].setToolTip(path)
            items[3].setToolTip(check)
            items[2].setData(Qt.ItemDataRole.UserRole, size)
            items[2].setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            if fmt == "int8" and not failed and self._int8_drop(report.int8) > INT8_DROP_WARN:
                items[3].setForeground(QColor("#a05a00"))
                items[3].setToolTip(f"{check}\nint8 loses more than {100 * INT8_DROP_WARN:.0f} accuracy points on "
                                    "this model and data: prefer the fp32 ONNX, or check on more validation images.")
            for j, it in enumerate(items):
                if failed:
                    it.setForeground(red)
                self.table.setItem(i, j, it)
        ok = [f for f in report.formats]
        text = f"Exported {', '.join(ok) or 'nothing'} to {report.out_dir} in {report.seconds:.1f} s."
        if report.errors:
            text += f" <span style='color:#b00020'>Failed: {', '.join(report.errors)}.</span>"
        drop = self._int8_drop(report.int8)
        if "int8" in report.formats and drop > INT8_DROP_WARN:
            text += (f" <span style='color:#a05a00'>int8 is {100 * drop:.0f} accuracy points below fp32 here: "
                     "prefer the fp32 ONNX.</span>")
        self.summary.setText(text)
        self.open_folder_btn.setEnabled(Path(report.out_dir).is_dir())
        self.open_card_btn.setEnabled(bool(report.model_card) and Path(report.model_card).is_file())

    @staticmethod
    def _int8_drop(int8: dict[str, Any] | None) -> float:
        d = (int8 or {}).get("accuracy_drop")
        return float(d) if isinstance(d, (int, float)) else 0.0

    def open_folder(self) -> bool:
        if self.report is None:
            return False
        return QDesktopServices.openUrl(QUrl.fromLocalFile(self.report.out_dir))

    def open_model_card(self) -> bool:
        if self.report is None or not self.report.model_card:
            return False
        return QDesktopServices.openUrl(QUrl.fromLocalFile(self.report.model_card))
