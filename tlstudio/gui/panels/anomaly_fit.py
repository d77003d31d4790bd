"""Anomaly step "Fit": settings (method, backbone, image size, bank size, false-alarm rate),
the expected memory bank before fitting, then progress with ETA and Stop.

The fit is ``registry.get("anomaly").run(config, stop, pause)`` in the window's JobRunner; Stop
sets the engine's stop flag (the coreset search checks it too). The expected bank size comes
from ``anomaly.job.plan`` (a meta-device model: no weights, no forward pass) in a worker.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.panels.anomaly_widgets import FalseAlarmSlider
from tlstudio.gui.runner import JobRunner
from tlstudio.gui.state import AppState
from tlstudio.gui.heavy import needing_torch
from tlstudio.gui.workers import start_worker

DEFAULTS = {"method": "patchcore", "backbone": "tf_efficientnet_lite0", "image_size": 224,
            "coreset_ratio": 0.1, "max_bank": 16384, "false_alarm_rate": 0.01}


def _plan(values: dict[str, Any], data_dir: str) -> dict[str, Any]:  # worker thread
    from tlstudio.core.tasks.anomaly.config import AnomalyConfig
    from tlstudio.core.tasks.anomaly.data import count_normal
    from tlstudio.core.tasks.anomaly.job import plan, plan_text

    if values.get("init") == "run" and values.get("init_run"):  # the run's backbone is the extractor
        from tlstudio.core.runs.folder import read_run

        values = {**values, "backbone": read_run(values["init_run"]).model.backbone}
    cfg = AnomalyConfig(data_dir=data_dir or ".", **values)
    n = count_normal(data_dir) if data_dir else 0
    n_fit = max(0, n - min(max(1, round(cfg.holdout_fraction * n)), max(0, n - 2)))
    p = plan(cfg, n_fit)
    p["text"] = plan_text(p, cfg.method)
    p["normal"] = n
    return p


class AnomalyFitPanel(QWidget):
    def __init__(self, state: AppState, runner: JobRunner | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.runner = runner or JobRunner(self)
        self.last_plan: dict[str, Any] | None = None
        self.result: Any = None

        self.data_label = QLabel()
        self.data_label.setWordWrap(True)

        self.method = QComboBox()
        self.method.addItem("PatchCore: memory bank of normal patches (best)", "patchcore")
        self.method.addItem("PaDiM: a Gaussian per position (lighter, aligned parts)", "padim")
        self.backbone = QLineEdit()
        self.backbone.setPlaceholderText(DEFAULTS["backbone"])
        self.backbone.setToolTip("Feature extractor (timm name). The default has offline ImageNet weights.")
        self.init = QComboBox()
        self.init.addItem("ImageNet weights (offline for the default)", "pretrained")
        self.init.addItem("An earlier TL Studio run…", "run")
        self.init.addItem("A weights file…", "file")
        self.init.addItem("Random weights (no transfer: a baseline)", "scratch")
        self.init.setToolTip("Where the feature extractor's knowledge comes from. An earlier run fine-tuned "
                             "on similar images is chained transfer for anomalies.")
        self.init_path = ""
        self.image_size = QSpinBox()
        self.image_size.setRange(64, 1024)
        self.image_size.setSingleStep(32)
        self.image_size.setSuffix(" px")
        self.coreset = QDoubleSpinBox()
        self.coreset.setRange(0.001, 1.0)
        self.coreset.setDecimals(3)
        self.coreset.setSingleStep(0.05)
        self.coreset.setToolTip("Share of normal patches kept in the memory bank (greedy coreset)")
        self.max_bank = QSpinBox()
        self.max_bank.setRange(256, 1_000_000)
        self.max_bank.setSingleStep(1024)
        self.max_bank.setToolTip("Hard cap on the bank: bounds memory and scoring time whatever the number of images")
        self.false_alarm = FalseAlarmSlider(DEFAULTS["false_alarm_rate"])

        form = QFormLayout()
        form.addRow("Method", self.method)
        form.addRow("Feature extractor", self.backbone)
        form.addRow("Its weights", self.init)
        form.addRow("Image size", self.image_size)
        form.addRow("Coreset share", self.coreset)
        form.addRow("Bank cap (patches)", self.max_bank)
        form.addRow("False alarms", self.false_alarm)
        box = QGroupBox("Settings")
        box.setLayout(form)

        self.expected = QLabel("Expected memory bank: …")
        self.expected.setWordWrap(True)
        self.expected.setStyleSheet("color: #37474f;")

        self.fit_btn = QPushButton("Fit detector")
        self.fit_btn.setDefault(True)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.status = QLabel("Ready")
        self.log = QPlainTextEdit()
        self.log.setAccessibleName("Fit log")
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)

        buttons = QHBoxLayout()
        buttons.addWidget(self.fit_btn)
        buttons.addWidget(self.stop_btn)
        buttons.addStretch(1)
        lay = QVBoxLayout(self)
        title = QLabel("<h2>Fit the anomaly detector</h2>Learns what <i>normal</i> looks like from good "
                       "images only (no training, pretrained features); anything that deviates is flagged.")
        title.setWordWrap(True)
        lay.addWidget(title)
        lay.addWidget(self.data_label)
        lay.addWidget(box)
        lay.addWidget(self.expected)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(self.summary)
        lay.addWidget(self.log, 1)

        self._plan_timer = QTimer(self)
        self._plan_timer.setSingleShot(True)
        self._plan_timer.setInterval(250)
        self._plan_timer.timeout.connect(self.refresh_plan)
        self._load_settings()
        self.init.activated.connect(self._init_chosen)
        for sig in (self.method.currentIndexChanged, self.image_size.valueChanged, self.coreset.valueChanged,
                    self.max_bank.valueChanged, self.backbone.editingFinished, self.false_alarm.rate_changed):
            sig.connect(self._settings_changed)
        self.fit_btn.clicked.connect(self.start)
        self.stop_btn.clicked.connect(self.runner.stop)
        self.runner.event.connect(self._on_event)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.running_changed.connect(self._on_running)
        state.dataset_changed.connect(self._data_changed)
        self._data_changed()

    # --- settings ------------------------------------------------------------------------
    def _load_settings(self) -> None:
        s = {**DEFAULTS, **{k: v for k, v in self.state.task_settings.items() if k in DEFAULTS}}
        backbone = self.state.settings.get("backbone") or s["backbone"]
        self.method.setCurrentIndex(max(0, self.method.findData(s["method"])))
        self.backbone.setText(backbone if backbone != DEFAULTS["backbone"] else "")
        self.image_size.setValue(int(s["image_size"]))
        self.coreset.setValue(float(s["coreset_ratio"]))
        self.max_bank.setValue(int(s["max_bank"]))
        self.false_alarm.set_rate(float(s["false_alarm_rate"]))

    def _init_chosen(self, _i: int) -> None:
        from PySide6.QtWidgets import QFileDialog

        kind = self.init.currentData()
        path = ""
        if kind == "run":
            path = QFileDialog.getExistingDirectory(self, "An earlier TL Studio run folder")
        elif kind == "file":
            path, _ = QFileDialog.getOpenFileName(self, "Weights file", "", "Weights (*.safetensors *.pth *.pt *.bin)")
        if kind in ("run", "file") and not path:
            self.init.setCurrentIndex(0)
        self.set_init(self.init.currentData(), path)

    def set_init(self, kind: str, path: str = "") -> None:
        self.init.setCurrentIndex(max(0, self.init.findData(kind)))
        self.init_path = path if kind in ("run", "file") else ""
        if self.init_path:
            self.init.setToolTip(f"{kind}: {self.init_path}")
        self._settings_changed()

    def values(self) -> dict[str, Any]:
        init = self.init.currentData()
        out = {"method": self.method.currentData(), "backbone": self.backbone.text().strip() or DEFAULTS["backbone"],
               "init": init, "image_size": self.image_size.value(), "coreset_ratio": round(self.coreset.value(), 4),
               "max_bank": self.max_bank.value(), "false_alarm_rate": self.false_alarm.rate()}
        if init == "run":
            out["init_run"] = self.init_path
        elif init == "file":
            out["weights_file"] = self.init_path
        return out

    def _settings_changed(self, *_a) -> None:
        padim = self.method.currentData() == "padim"
        self.coreset.setEnabled(not padim)
        self.max_bank.setEnabled(not padim)
        self.state.set_task_settings(self.values())
        self._plan_timer.start()

    def _data_changed(self) -> None:
        d = self.state.data_dir
        if not d:
            self.data_label.setText("Open a folder of normal images in the Data step first.")
            self.fit_btn.setEnabled(False)
            return
        from tlstudio.core.tasks.anomaly.data import detect

        line = detect(d)
        self.data_label.setText(f"<b>Data:</b> {d}<br>{line or 'This folder does not look like normal images only.'}")
        self.fit_btn.setEnabled(bool(line) and not self.runner.running)
        self._plan_timer.start()

    def refresh_plan(self) -> None:
        start_worker(self, needing_torch(_plan), self.values(), self.state.data_dir or "", returned=self._show_plan,
                     errored=lambda e: self.expected.setText(f"Expected memory bank: cannot estimate ({e})"))

    def _show_plan(self, p: dict[str, Any]) -> None:
        self.last_plan = p
        self.expected.setText(f"<b>Expected:</b> {p['text']}")

    # --- running -------------------------------------------------------------------------
    def config(self):
        from tlstudio.core.tasks.registry import get
        from tlstudio.gui.state import new_run_dir

        values = {**self.values(), "data_dir": self.state.data_dir or ""}
        if self.state.runs_dir:
            values["out_dir"] = str(new_run_dir(self.state.runs_dir, f"anomaly-{values['backbone']}"))
        return get("anomaly").config_cls(**values)

    def start(self) -> None:
        if self.runner.running:
            return
        try:
            config = self.config()
        except Exception as exc:  # noqa: BLE001 - invalid settings: say so, do not crash
            self.status.setText(f"Cannot start: {exc}")
            return
        from tlstudio.core.tasks.registry import get

        kind = get("anomaly")
        self.log.clear()
        self.summary.clear()
        self.progress.setRange(0, 0)
        self.status.setText("Starting…")
        self.runner.start(lambda stop, pause: kind.run(config, stop=stop, pause=pause), owner=self)

    def _on_running(self, running: bool) -> None:
        if self.runner.owner is not self:
            return
        self.fit_btn.setEnabled(not running and bool(self.state.data_dir))
        self.stop_btn.setEnabled(running)
        self.state.set_training(running)
        self.state.set_step_status("anomaly_fit", "busy" if running else self.state.step_status.get("anomaly_fit", "todo"))

    def _on_event(self, ev: Any) -> None:
        if self.runner.owner is not self:
            return
        name = type(ev).__name__
        if name == "Progress":
            if ev.total:
                self.progress.setRange(0, int(ev.total))
                self.progress.setValue(int(ev.done))
            label = {"features": "Reading features", "coreset": "Choosing the memory bank",
                     "eval": "Evaluating"}.get(ev.task, ev.task)
            self.status.setText(f"{label}: {ev.message}")
        elif name in ("Log", "Warn"):
            self.log.appendPlainText(("⚠ " if name == "Warn" else "") + ev.message)
        elif name == "Finished":
            self.result = ev
        self.state.run_event.emit(ev)

    def _on_finished(self, info: Any) -> None:
        if self.runner.owner is not self:
            return
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if info is not None and info.status == "finished" else 0)
        if info is None:
            return
        run_dir = info.config.get("out_dir")
        if info.status != "finished":
            self.status.setText(f"Stopped. Nothing was saved as a detector ({run_dir}).")
            return
        m = info.metrics or {}
        meta = info.extra.get("anomaly", {})
        parts = [f"<b>Done</b> in {info.timings.get('fit_s', 0):.0f} s: bank of {meta.get('bank_size', 0):,} patches, "
                 f"threshold set at {meta.get('false_alarm_rate', 0):.2%} false alarms."]
        if m.get("image_auroc") is not None:
            parts.append(f"Test images: image AUROC <b>{m['image_auroc']:.3f}</b>"
                         + (f", pixel AUROC {m['pixel_auroc']:.3f}" if m.get("pixel_auroc") is not None else "")
                         + (f", F1 {m['f1']:.3f}" if m.get("f1") is not None else ""))
        parts.append("Next: Evaluate, or Predict on new images.")
        self.summary.setText("<br>".join(parts))
        self.status.setText(f"Saved {run_dir}")
        self.state.set_step_status("anomaly_fit", "done")
        self.state.set_current_run(run_dir)
        self.state.runs_changed.emit()

    def _on_failed(self, message: str, _tb: str) -> None:
        if self.runner.owner is not self:
            return
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status.setText(f"Failed: {message}")
        self.state.set_step_status("anomaly_fit", "attention")


if __name__ == "__main__":  # preview: python -m tlstudio.gui.panels.anomaly_fit [DIR]
    import sys

    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv)
    st = AppState()
    st.task_kind = "anomaly"
    if len(sys.argv) > 1:
        st.data_dir = sys.argv[1]
    w = AnomalyFitPanel(st)
    w.resize(760, 820)
    w.show()
    sys.exit(app.exec())
