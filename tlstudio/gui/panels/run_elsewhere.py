"""The Export step's "Run elsewhere" group: the run's config.json and the exact headless
``tlstudio train`` and ``torchrun`` commands that repeat its training on another machine or a
cluster, with Copy and Save config as…"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from tlstudio.gui.panels.export_text import MASTER_PORT, rerun_commands


class RunElsewhereMixin:
    """The widgets of the group (``self.data_edit``, ``self.nproc_spin``, ``self.command_text``,
    ...) and the commands they make. The panel provides ``self.state``, ``self._run`` (the
    selected run folder), ``self.summary`` (where errors are shown) and ``self.format_checks``
    (the export group's format boxes, which ``_apply_kind`` narrows to the run's kind)."""

    def _build_run_elsewhere(self) -> QGroupBox:
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
        self._cluster_form, self._cluster_row = form, form.rowCount() - 1
        self.trains = True  # False: the run's kind does not train (no torchrun / DDP to offer)
        rl.addLayout(form)
        self.command_text = QPlainTextEdit()
        self.command_text.setReadOnly(True)
        self.command_text.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.command_text.setMinimumHeight(80)  # the page fits a 700 px high window
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
        return rbox

    def _apply_kind(self, formats: tuple[str, ...], trains: bool) -> None:
        """Offer only the formats the run's kind writes, and torchrun only for kinds that train."""
        self.formats = tuple(formats)
        for f, cb in self.format_checks.items():
            cb.setVisible(f in self.formats)
        self.trains = bool(trains)
        self._cluster_form.setRowVisible(self._cluster_row, self.trains)
        self.update_commands()

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
        if not self.trains:  # nothing to spread over processes: the fit runs once, headless
            return f"# the same fit, headless on this or another machine (it does not train: nothing to spread over processes)\n{headless}\n"
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
