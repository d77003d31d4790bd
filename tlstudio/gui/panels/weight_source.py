"""The Model step's "Starting weights" group: pretrained (with Download, its progress, Cancel and
failure message), a weights file, an earlier run (chained transfer) or from scratch, and what
each choice needs to be complete."""

from __future__ import annotations

import threading
from typing import Any

from PySide6.QtWidgets import (
    QButtonGroup,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
)

from tlstudio.gui.panels.model_jobs import DownloadProgress
from tlstudio.gui.tooltips import tip

WEIGHT_FILE_FILTER = "Weights (*.safetensors *.pth *.pt);;All files (*)"


def path_row(placeholder: str, tip_key: str, edited: Any, browse: Any) -> tuple[QHBoxLayout, QLineEdit]:
    """An indented line edit with a Browse… button (weights file, earlier run)."""
    row = QHBoxLayout()
    row.setContentsMargins(22, 0, 0, 0)
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    edit.setToolTip(tip(tip_key))
    edit.editingFinished.connect(edited)
    b = QPushButton("Browse…")
    b.setToolTip(tip(tip_key))
    b.clicked.connect(browse)
    row.addWidget(edit, 1)
    row.addWidget(b)
    return row, edit


class WeightSourceMixin:
    """The weight-source widgets of the Model panel (``self.radios``, ``self.file_edit``,
    ``self.run_edit``, ``self.download_btn``, ...) and their handlers. The panel provides
    ``self.state``, ``self.selected_info``, ``self._select_name``, ``self._fail``,
    ``self._build_timer``, ``self._loaded``, ``self._dl_cancel`` and the download slots."""

    # ------------------------------------------------------------------ building
    def _build_source_box(self) -> QGroupBox:
        """One radio button per source, each with its own row (download, file, run folder)."""
        self.radios: dict[str, QRadioButton] = {}
        self.source_group = QButtonGroup(self)
        src_box = QGroupBox("Starting weights")
        src_box.setToolTip(tip("pretrained"))
        sv = QVBoxLayout(src_box)
        for key, text in (("pretrained", "Pretrained on ImageNet (transfer learning)"),
                          ("file", "A weights file on this computer"),
                          ("run", "A model I trained earlier (chained transfer)"),
                          ("scratch", "From scratch (random weights, no transfer)")):
            rb = QRadioButton(text)
            rb.setToolTip(tip(f"init_{key}"))
            self.radios[key] = rb
            self.source_group.addButton(rb)
            sv.addWidget(rb)
            if key == "pretrained":
                row = QHBoxLayout()
                row.setContentsMargins(22, 0, 0, 0)
                self.download_btn = QPushButton("Download weights now")
                self.download_btn.setToolTip(tip("download"))
                self.download_btn.clicked.connect(self.download_weights)
                self.dl_progress = QProgressBar()
                self.dl_progress.setToolTip(tip("download"))
                self.dl_progress.hide()
                self.dl_cancel_btn = QPushButton("Cancel")
                self.dl_cancel_btn.setToolTip("Stop the download (what was fetched is kept and resumed later).")
                self.dl_cancel_btn.clicked.connect(self.cancel_download)
                self.dl_cancel_btn.hide()
                row.addWidget(self.download_btn)
                row.addWidget(self.dl_progress, 1)
                row.addWidget(self.dl_cancel_btn)
                sv.addLayout(row)
            elif key == "file":
                row, self.file_edit = path_row(".safetensors, .pth or .pt", "init_file",
                                               self._file_edited, self.choose_weights_file)
                sv.addLayout(row)
            elif key == "run":
                row, self.run_edit = path_row("a run folder (contains run.json)", "init_run",
                                              self._run_edited, self.choose_run)
                sv.addLayout(row)
        self.source_group.buttonClicked.connect(self._source_changed)
        return src_box

    # ------------------------------------------------------------------ choosing the source
    def init_kind(self) -> str:
        for k, rb in self.radios.items():
            if rb.isChecked():
                return k
        return "pretrained"

    def _source_changed(self) -> None:
        kind = self.init_kind()
        self.state.set_setting("init", kind)
        if kind == "scratch":  # random weights: a frozen layer would stay random, so every layer trains
            self.state.set_setting("frozen_groups", None)
            self.state.set_setting("freeze", "none")
        self._update_download_button()
        self._check_source()

    def _update_download_button(self) -> None:
        info = self.selected_info()
        ok = self.init_kind() == "pretrained" and info is not None and info.pretrained and not info.offline
        self.download_btn.setEnabled(ok and self._dl_cancel is None)
        if self._dl_cancel is None and info is not None:
            self.download_btn.setText("Weights already on this computer" if info.offline else
                                      "Download weights now" if info.pretrained else "No pretrained weights")
        self.download_btn.setToolTip(tip("download") if ok else
                                     "Nothing to download: the weights are already here, or not pretrained.")

    def choose_weights_file(self) -> None:
        f, _ = QFileDialog.getOpenFileName(self, "Choose a weights file", "", WEIGHT_FILE_FILTER)
        if f:
            self.set_weights_file(f)

    def set_weights_file(self, path: str) -> None:
        self.file_edit.setText(path)
        self.radios["file"].setChecked(True)
        self.state.set_setting("weights_file", path)
        self.state.set_setting("init", "file")
        self._check_source()

    def _file_edited(self) -> None:
        if self.file_edit.text().strip():
            self.set_weights_file(self.file_edit.text().strip())

    def choose_run(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Choose an earlier run folder", self.state.runs_dir or "")
        if d:
            self.set_init_run(d)

    def set_init_run(self, path: str) -> None:
        """Chained transfer: the run decides the backbone; its classes may differ from ours."""
        from tlstudio.core.runs.folder import read_run

        self.run_edit.setText(path)
        self.radios["run"].setChecked(True)
        try:
            info = read_run(path)
        except Exception as exc:  # noqa: BLE001 - RunError / validation: shown, not raised
            self._fail(f"{path}: not a usable run folder ({exc})")
            return
        self.state.set_setting("init_run", path)
        self.state.set_setting("init", "run")
        self.message.setText("")
        if self._loaded:
            self._select_name(info.model.backbone)
        else:
            self.state.set_setting("backbone", info.model.backbone)

    def _run_edited(self) -> None:
        if self.run_edit.text().strip():
            self.set_init_run(self.run_edit.text().strip())

    def _check_source(self) -> None:
        """Needs attention when the chosen source is incomplete; otherwise follows the build."""
        kind = self.init_kind()
        s = self.state.settings
        if kind == "file" and not s.get("weights_file"):
            self._fail("Choose a weights file (.safetensors, .pth or .pt), or pick another source.", dialog=False)
        elif kind == "run" and not s.get("init_run"):
            self._fail("Choose the folder of an earlier run, or pick another source.", dialog=False)
        else:
            self.message.setText("")
            if self.state.model is not None:
                self.state.set_step_status("model", "done")
            if kind == "file":
                self._build_timer.start()  # validates the file against the architecture

    # --- download -----------------------------------------------------------------------
    def download_weights(self) -> None:
        info = self.selected_info()
        if info is None or self._dl_cancel is not None:
            return
        self._dl_gen += 1
        gen = self._dl_gen
        cancel = threading.Event()
        self._dl_cancel = cancel
        bridge = DownloadProgress(self)
        bridge.changed.connect(self._dl_progress)
        self.dl_progress.setRange(0, 0)
        self.dl_progress.setFormat("Downloading… %p%")
        self.dl_progress.show()
        self.dl_cancel_btn.show()
        self.download_btn.setEnabled(False)
        self.message.setText("")
        self.state.status_message.emit(f"Downloading the weights of {info.name} …")
        from tlstudio.gui.panels import model_panel  # looked up there: tests replace the job

        self._start(model_panel._download_job, info.name, self._num_classes(), bridge, cancel,
                    returned=lambda res, g=gen: self._dl_done(g, res),
                    errored=lambda exc, g=gen: self._dl_error(g, exc))

    def cancel_download(self) -> None:
        if self._dl_cancel is not None:
            self._dl_cancel.set()
            self._dl_gen += 1
            self._dl_ended()
            self.state.status_message.emit("Download cancelled.")

    def _dl_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.dl_progress.setRange(0, total)
            self.dl_progress.setValue(done)
            self.dl_progress.setFormat(f"{done / 1e6:.1f} / {total / 1e6:.1f} MB")

    def _dl_ended(self) -> None:
        self._dl_cancel = None
        self.dl_progress.hide()
        self.dl_cancel_btn.hide()
        self._update_download_button()

    def _dl_done(self, gen: int, res: str) -> None:
        if gen != self._dl_gen:
            return
        self._dl_ended()
        if res == "cancelled":
            return
        self.state.status_message.emit("Weights downloaded.")
        self.download_btn.setEnabled(False)
        self.download_btn.setText("Weights downloaded")

    def _dl_error(self, gen: int, exc: BaseException) -> None:
        if gen != self._dl_gen:
            return
        self._dl_ended()
        # the status bar said "Downloading…": it must not go on saying so
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self.state.status_message.emit(f"Download failed: {first}")
        self._fail(str(exc), exc=exc)
