"""Step 4, Train: hyper-parameters, Start/Pause/Stop, live curves, progress, warnings.

The panel builds the TrainConfig from the app state, hands ``engine.fit`` (imported lazily, in
the worker thread) to the shared JobRunner, and turns the events it yields into widget updates.
Per-event work is tiny (append to numpy buffers, set a few labels); the curves redraw at most
10 times a second, so the UI keeps up with any engine speed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QDoubleValidator, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QSystemTrayIcon,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from tlstudio.core import events as ev
from tlstudio.gui.runner import JobRunner
from tlstudio.gui.state import AppState
from tlstudio.gui.widgets.curves import CurvesWidget

log = logging.getLogger("tlstudio.gui")

_TIPS = {
    "epochs": "How many times training goes through all the training images.",
    "batch_size": "How many images are processed together in one step; larger is faster but needs more memory.",
    "lr": "Learning rate: how big each weight update is. Leave blank to use the advised value for your data.",
    "augment": "Random flips, crops and colour changes applied to training images so the model does not "
               "memorise them. None: off; light: mild; strong: more variety for small data sets.",
    "optimizer": "The rule that updates the weights from the gradients. AdamW is a safe default; SGD with "
                 "momentum sometimes generalises slightly better.",
    "weight_decay": "A pull of every weight towards zero that discourages over-fitting.",
    "warmup_epochs": "The learning rate ramps up from zero during these first epochs so early updates do not "
                     "wreck the pretrained weights.",
    "label_smoothing": "Asks the model to be slightly less than 100% sure of the labels, which usually "
                       "generalises better.",
    "class_weights": "Gives rare classes more weight in the loss so the model does not ignore them.",
    "early_stop_patience": "Stop when validation accuracy has not improved for this many epochs (0 = never).",
    "body_lr_mult": "The pretrained layers learn this fraction of the head's learning rate "
                    "(discriminative learning rates), so their knowledge is adjusted gently.",
    "layer_decay": "Each layer further from the head gets this factor less learning rate (0 = off).",
    "precision": "Number format for training: bf16/fp16 (mixed precision) are faster on GPUs; fp32 is exact.",
    "device": "Where training runs: auto picks a GPU (CUDA or Apple MPS) when there is one, else the CPU.",
    "seed": "A number that fixes the random choices so the same settings give the same result.",
    "baseline": "Also train the same network from random weights to measure how much transfer learning "
                "helps (warns about negative transfer). Doubles the training time.",
    "cache": "Keep decoded images (and frozen-body features) in memory or on disk so epochs run faster.",
    "start": "Start training with these settings (F5).",
    "pause": "Pause training after the current batch; Resume continues exactly where it paused.",
    "stop": "Stop after the current batch; a checkpoint is saved so the run can be continued later.",
    "continue": "Continue the selected stopped run from its last checkpoint.",
    "curves": "Loss should go down and validation accuracy up. A validation loss that rises while the "
              "training loss falls means over-fitting.",
}


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "--:--"
    s = int(seconds + 0.5)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


class TrainPanel(QWidget):
    """Hyper-parameters, run control and live feedback for one training job at a time."""

    run_finished = Signal(str, str)  # run_dir, status

    def __init__(self, state: AppState, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state, self.runner = state, runner
        self._syncing = False
        self._mine = False  # the runner's job was started by this panel
        self._phase = "main"
        self._epochs = 0
        self._batch_t: float | None = None
        self._sec_per_batch: float | None = None
        self._epoch_seconds: list[float] = []
        self._last_run_dir: str | None = None
        self._finish_message = ""
        self.events_seen = 0
        self.notifications: list[str] = []  # what was announced (tests read it)
        self._tray: QSystemTrayIcon | None = None

        self._build()
        self._load_settings()
        state.settings_changed.connect(self._on_settings_changed)
        state.current_run_changed.connect(self._on_current_run)
        state.dataset_changed.connect(self._update_buttons)
        runner.event.connect(self._on_event)
        runner.finished.connect(self._on_finished)
        runner.failed.connect(self._on_failed)
        runner.running_changed.connect(self._on_running_changed)
        runner.paused_changed.connect(self._on_paused_changed)
        self._update_buttons()

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        root = QHBoxLayout(self)
        split = QSplitter(Qt.Orientation.Horizontal)
        root.addWidget(split)

        # left: settings and controls (scrolls when the window is short)
        left = QWidget()
        lv = QVBoxLayout(left)
        basic = QGroupBox("Training settings")
        form = QFormLayout(basic)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10_000)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 4096)
        self.lr = QLineEdit()
        self.lr.setPlaceholderText("advised")
        v = QDoubleValidator(0.0, 10.0, 10, self.lr)
        v.setNotation(QDoubleValidator.Notation.ScientificNotation)
        self.lr.setValidator(v)
        self.augment = QComboBox()
        self.augment.addItems(["none", "light", "strong"])
        form.addRow("Epochs", self.epochs)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Learning rate", self.lr)
        form.addRow("Augmentation", self.augment)
        lv.addWidget(basic)

        self.advanced = QCollapsible("Advanced settings", expandedIcon="▼", collapsedIcon="▶")
        adv = QWidget()
        af = QFormLayout(adv)
        self.optimizer = QComboBox()
        self.optimizer.addItems(["adamw", "sgd"])
        self.weight_decay = self._dspin(0, 1, 0.01, 4)
        self.warmup_epochs = self._dspin(0, 100, 0.5, 1)
        self.label_smoothing = self._dspin(0, 0.9, 0.05, 2)
        self.class_weights = QCheckBox("Balance classes")
        self.early_stop_patience = QSpinBox()
        self.early_stop_patience.setRange(0, 1000)
        self.early_stop_patience.setSpecialValueText("off")
        self.body_lr_mult = self._dspin(0.001, 1.0, 0.05, 3)
        self.layer_decay = self._dspin(0.0, 1.0, 0.05, 2)
        self.layer_decay.setSpecialValueText("off")
        self.precision = QComboBox()
        self.precision.addItems(["auto", "fp32", "bf16", "fp16"])
        self.device = QComboBox()
        self.device.setEditable(True)
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.baseline = QCheckBox("Also train from scratch")
        self.cache = QComboBox()
        self.cache.addItems(["auto", "off"])
        for label, w in [("Optimizer", self.optimizer), ("Weight decay", self.weight_decay),
                         ("Warm-up epochs", self.warmup_epochs), ("Label smoothing", self.label_smoothing),
                         ("Class weights", self.class_weights), ("Early-stopping patience", self.early_stop_patience),
                         ("Body LR multiplier", self.body_lr_mult), ("Layer decay", self.layer_decay),
                         ("Precision", self.precision), ("Device", self.device), ("Seed", self.seed),
                         ("Baseline", self.baseline), ("Cache", self.cache)]:
            af.addRow(label, w)
        self.advanced.addWidget(adv)
        self.advanced.setToolTip("Optimizer, regularisation, schedule, hardware and reproducibility settings; "
                                 "the defaults suit most data sets.")
        for b in self.advanced.findChildren(QPushButton):
            b.setToolTip(self.advanced.toolTip())
        lv.addWidget(self.advanced)

        self._fields: dict[str, QWidget] = {
            "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "augment": self.augment,
            "optimizer": self.optimizer, "weight_decay": self.weight_decay, "warmup_epochs": self.warmup_epochs,
            "label_smoothing": self.label_smoothing, "class_weights": self.class_weights,
            "early_stop_patience": self.early_stop_patience, "body_lr_mult": self.body_lr_mult,
            "layer_decay": self.layer_decay, "precision": self.precision, "device": self.device,
            "seed": self.seed, "baseline": self.baseline, "cache": self.cache,
        }
        for name, w in self._fields.items():
            w.setToolTip(_TIPS.get(name, ""))
            self._connect_field(name, w)

        buttons = QGridLayout()
        self.start_btn = QPushButton("Start training")
        self.start_btn.setToolTip(_TIPS["start"])
        self.start_btn.setDefault(True)
        self.pause_btn = QPushButton("Pause")
        self.pause_btn.setToolTip(_TIPS["pause"])
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setToolTip(_TIPS["stop"])
        self.continue_btn = QPushButton("Continue stopped run")
        self.continue_btn.setToolTip(_TIPS["continue"])
        buttons.addWidget(self.start_btn, 0, 0, 1, 2)
        buttons.addWidget(self.pause_btn, 1, 0)
        buttons.addWidget(self.stop_btn, 1, 1)
        buttons.addWidget(self.continue_btn, 2, 0, 1, 2)
        lv.addLayout(buttons)
        self.start_btn.clicked.connect(self.start)
        self.pause_btn.clicked.connect(self.toggle_pause)
        self.stop_btn.clicked.connect(self.stop)
        self.continue_btn.clicked.connect(self.continue_run)
        self.shortcut = QShortcut(QKeySequence("F5"), self)
        self.shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
        self.shortcut.activated.connect(self._f5)

        self.hint = QLabel("")
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: #8a5a00;")
        lv.addWidget(self.hint)
        lv.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(left)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # wide enough for the expanded advanced form, so nothing is cut off on the right
        self.advanced.expand(animate=False)
        scroll.setMinimumWidth(left.sizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 4)
        self.advanced.collapse(animate=False)
        split.addWidget(scroll)

        # right: status, progress, curves, warnings/log
        right = QWidget()
        rv = QVBoxLayout(right)
        self.status_label = QLabel("Not started")
        self.status_label.setStyleSheet("font-weight: bold;")
        self.status_label.setWordWrap(True)
        self.status_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.device_label = QLabel("Device: -")
        self.device_label.setToolTip("Where training runs and the number format it uses.")
        self.params_label = QLabel("")
        top = QHBoxLayout()
        top.addWidget(self.status_label, 1)
        top.addWidget(self.params_label)
        top.addWidget(self.device_label)
        rv.addLayout(top)
        grid = QGridLayout()
        self.epoch_bar = QProgressBar()
        self.epoch_bar.setFormat("Epoch %v / %m")
        self.batch_bar = QProgressBar()
        self.batch_bar.setFormat("Batch %v / %m")
        self.speed_label = QLabel("")
        self.eta_label = QLabel("")
        grid.addWidget(QLabel("Run"), 0, 0)
        grid.addWidget(self.epoch_bar, 0, 1)
        grid.addWidget(self.eta_label, 0, 2)
        grid.addWidget(QLabel("Epoch"), 1, 0)
        grid.addWidget(self.batch_bar, 1, 1)
        grid.addWidget(self.speed_label, 1, 2)
        grid.setColumnStretch(1, 1)
        # fixed widths/heights: text that changes every batch must not re-layout (and so
        # re-render) the plots below
        fm = self.fontMetrics()
        self.eta_label.setFixedWidth(fm.horizontalAdvance("ETA 00:00:00") + 12)
        self.speed_label.setFixedWidth(fm.horizontalAdvance("99999 img/s · epoch ETA 00:00:00") + 12)
        self.status_label.setFixedHeight(2 * fm.lineSpacing() + 4)
        rv.addLayout(grid)
        self.metrics_label = QLabel("")
        self.metrics_label.setFixedHeight(fm.lineSpacing() + 4)
        rv.addWidget(self.metrics_label)

        self.curves = CurvesWidget()
        self.curves.setToolTip(_TIPS["curves"])
        self.curves.setMinimumHeight(260)
        lower = QWidget()
        lower_l = QHBoxLayout(lower)
        lower_l.setContentsMargins(0, 0, 0, 0)
        wbox = QGroupBox("Warnings")
        wl = QVBoxLayout(wbox)
        self.warnings = QListWidget()
        self.warnings.setWordWrap(True)
        self.warnings.setToolTip("Problems noticed while training (unreadable images, precision fallbacks, "
                                 "out-of-memory retries, negative transfer); training goes on unless it cannot.")
        wl.addWidget(self.warnings)
        lbox = QGroupBox("Log")
        ll = QVBoxLayout(lbox)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)  # bounded memory on long runs
        ll.addWidget(self.log_view)
        lower_l.addWidget(wbox)
        lower_l.addWidget(lbox)
        vsplit = QSplitter(Qt.Orientation.Vertical)
        vsplit.addWidget(self.curves)
        vsplit.addWidget(lower)
        vsplit.setStretchFactor(0, 4)
        vsplit.setStretchFactor(1, 1)
        rv.addWidget(vsplit, 1)
        split.addWidget(right)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([scroll.minimumWidth(), 900])

        self.toast = QLabel(self)
        self.toast.setStyleSheet("background: #263238; color: white; padding: 10px 16px; border-radius: 6px;")
        self.toast.setWordWrap(True)
        self.toast.hide()
        self._toast_timer = QTimer(self)
        self._toast_timer.setSingleShot(True)
        self._toast_timer.timeout.connect(self.toast.hide)

    @staticmethod
    def _dspin(lo: float, hi: float, step: float, decimals: int) -> QDoubleSpinBox:
        w = QDoubleSpinBox()
        w.setRange(lo, hi)
        w.setSingleStep(step)
        w.setDecimals(decimals)
        return w

    # ------------------------------------------------------------------ settings <-> state
    def _connect_field(self, name: str, w: QWidget) -> None:
        def changed(*_: Any) -> None:
            if not self._syncing:
                self._write_setting(name, self._value(name))
        if isinstance(w, (QSpinBox, QDoubleSpinBox)):
            w.valueChanged.connect(changed)
        elif isinstance(w, QComboBox):
            w.currentTextChanged.connect(changed)
        elif isinstance(w, QCheckBox):
            w.toggled.connect(changed)
        elif isinstance(w, QLineEdit):
            w.editingFinished.connect(changed)

    def _write_setting(self, name: str, value: Any) -> None:
        if name not in self.state.settings and value is None:
            # set_setting skips None for a missing key, but None may differ from the default
            # (early stopping "off" vs 5): store it explicitly without reloading our widgets
            self._syncing = True
            try:
                self.state.update_settings({name: None})
            finally:
                self._syncing = False
        else:
            self.state.set_setting(name, value)

    def _value(self, name: str) -> Any:
        w = self._fields[name]
        if name == "lr":
            text = self.lr.text().strip().replace(",", ".")
            try:
                val = float(text)
            except ValueError:
                return None
            return val if val > 0 else None
        if name == "early_stop_patience":
            return self.early_stop_patience.value() or None
        if name == "layer_decay":
            return self.layer_decay.value() or None
        if isinstance(w, QSpinBox):
            return w.value()
        if isinstance(w, QDoubleSpinBox):
            return round(w.value(), w.decimals())
        if isinstance(w, QComboBox):
            return w.currentText().strip()
        if isinstance(w, QCheckBox):
            return w.isChecked()
        return None

    def _set_widget(self, name: str, value: Any) -> None:
        w = self._fields[name]
        if name == "lr":
            self.lr.setText("" if value is None else f"{value:g}")
        elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
            w.setValue(0 if value is None else value)
        elif isinstance(w, QComboBox):
            i = w.findText(str(value))
            if i >= 0:
                w.setCurrentIndex(i)
            elif w.isEditable():
                w.setEditText(str(value))
        elif isinstance(w, QCheckBox):
            w.setChecked(bool(value))

    def _load_settings(self) -> None:
        """Show state.settings, falling back to TrainConfig's defaults."""
        from tlstudio.core.config import TrainConfig

        fields = TrainConfig.model_fields
        self._syncing = True
        try:
            for name in self._fields:
                value = self.state.settings.get(name, fields[name].default)
                self._set_widget(name, value)
        finally:
            self._syncing = False

    def _on_settings_changed(self, name: str) -> None:
        if self._syncing:
            return
        if name == "" or name in self._fields:
            self._load_settings()

    # ------------------------------------------------------------------ run control
    def _f5(self) -> None:
        if self.start_btn.isEnabled():
            self.start()

    def make_config(self):
        # flush a half-typed learning rate
        self._write_setting("lr", self._value("lr"))
        config = self.state.make_config()
        config.leave_one_core = True  # keep a core for the UI thread
        if self.state.runs_dir and not config.out_dir:
            # the project's runs folder (the one the Runs step lists), named like the engine does
            from datetime import datetime
            from pathlib import Path

            base = Path(self.state.runs_dir) / f"{datetime.now():%Y%m%d-%H%M%S}-{config.backbone}"
            path, i = base, 1
            while path.exists():
                i += 1
                path = base.with_name(f"{base.name}-{i}")
            config.out_dir = str(path)
        return config

    def _why_not_ready(self) -> str:
        if self.runner.running:
            return "A job is already running."
        if not self.state.data_dir:
            return "Open a data folder first (step Data)."
        return ""

    def start(self) -> bool:
        """Start a new run from the current settings. Returns False (with a hint) if it cannot."""
        reason = self._why_not_ready()
        if reason:
            self.hint.setText(reason)
            return False
        try:
            config = self.make_config()
        except Exception as exc:  # pydantic ValidationError: show which setting is wrong
            msg = str(exc).splitlines()
            self.hint.setText("Invalid settings: " + " ".join(msg[1:3] if len(msg) > 2 else msg))
            return False

        def factory(stop, pause):
            from tlstudio.core.engine import fit

            return fit(config, stop, pause)

        self._begin(f"Starting {config.backbone} ...", fresh=True)
        self.runner.start(factory, owner=self)
        return True

    def continue_run(self, run_dir: str | None = None) -> bool:
        """Resume a stopped run (engine.resume) from its last checkpoint."""
        run_dir = run_dir or self._resumable_run()
        if not run_dir or self.runner.running:
            return False

        def factory(stop, pause):
            from tlstudio.core.engine import resume

            return resume(run_dir, stop, pause)

        self._begin("Continuing the stopped run ...", fresh=self._last_run_dir != run_dir)
        if self._last_run_dir != run_dir:
            from tlstudio.core.runs import read_history

            try:
                self.curves.load_history(read_history(run_dir))
            except Exception:  # noqa: BLE001 - a missing/odd history only means fewer points
                log.exception("cannot read the history of %s", run_dir)
        self._last_run_dir = run_dir
        self.runner.start(factory, owner=self)
        return True

    def toggle_pause(self) -> None:
        if not self._mine:
            return
        if self.runner.paused:
            self.runner.resume()
        else:
            self.runner.pause()

    def stop(self) -> None:
        if self._mine and self.runner.running:
            self.runner.stop()
            self.status_label.setText("Stopping after this batch (saving a checkpoint) ...")
            self._update_buttons()

    def _begin(self, message: str, fresh: bool) -> None:
        self._mine = True
        self._finish_message = ""
        self._phase = "main"
        self._batch_t = None
        self._sec_per_batch = None
        self._epoch_seconds = []
        self.hint.setText("")
        if fresh:
            self.curves.clear()
            self.warnings.clear()
            self.log_view.clear()
            self.metrics_label.setText("")
        self.epoch_bar.setValue(0)
        self.batch_bar.setValue(0)
        self.status_label.setText(message)
        self.state.set_step_status("train", "busy")

    def _resumable_run(self) -> str | None:
        """The run Continue would resume: this panel's last run, else the selected run, if stopped."""
        from tlstudio.core.runs import LAST_CKPT, first_run

        return first_run((self._last_run_dir, self.state.current_run), lambda path, info: (
            info.kind == "train" and info.status in ("stopped", "failed", "running")
            and (path / LAST_CKPT).is_file()))

    def _on_current_run(self, run_dir: str) -> None:
        """An earlier run opened (Runs step): show its epoch curves, ready to be continued."""
        if run_dir and not self.runner.running and run_dir != self._last_run_dir:
            from pathlib import Path

            from tlstudio.core.runs import RunError, read_history, read_run

            try:
                info = read_run(run_dir)
                rows = read_history(run_dir)
            except (RunError, OSError, ValueError):
                rows, info = [], None
            if info is not None:
                self.curves.clear()
                self.curves.set_epochs(int(info.config.get("epochs", 0) or 0))
                self.curves.load_history(rows)
                self.curves.flush()
                self.warnings.clear()
                self.metrics_label.setText("")
                self.status_label.setText(
                    f"Run {info.name or Path(run_dir).name}: {info.status.replace('_', ' ')}, "
                    f"{info.epochs_done} epoch(s) done (curves from its history)")
                self._last_run_dir = run_dir
        self._update_buttons()

    def _update_buttons(self, *_: Any) -> None:
        running = self.runner.running
        mine = running and self._mine
        self.start_btn.setEnabled(not running and bool(self.state.data_dir))
        self.pause_btn.setEnabled(mine and not self.runner.stopping)
        self.stop_btn.setEnabled(mine and not self.runner.stopping)
        self.pause_btn.setText("Resume" if mine and self.runner.paused else "Pause")
        self.continue_btn.setEnabled(not running and self._resumable_run() is not None)
        for w in self._fields.values():
            w.setEnabled(not running)
        if not self.state.data_dir and not running:
            self.start_btn.setToolTip("Open a data folder first (step Data).")
        else:
            self.start_btn.setToolTip(_TIPS["start"])

    # ------------------------------------------------------------------ runner signals
    def _on_running_changed(self, running: bool) -> None:
        if self._mine:
            self.state.set_training(running)
        self._update_buttons()

    def _on_paused_changed(self, paused: bool) -> None:
        if not self._mine:
            return
        self.status_label.setText("Paused" if paused else "Training")
        self._batch_t = None  # the pause must not count as a slow batch
        self._update_buttons()

    def _on_event(self, e: Any) -> None:
        if not self._mine:
            return
        self.events_seen += 1
        self.state.run_event.emit(e)
        if isinstance(e, ev.BatchEnd):
            self._on_batch(e)
        elif isinstance(e, ev.EpochEnd):
            self._on_epoch(e)
        elif isinstance(e, ev.RunStarted):
            self._on_started(e)
        elif isinstance(e, ev.Warn):
            self._add_warning(e.message + (f" ({e.path})" if e.path else ""))
        elif isinstance(e, ev.Log):
            self._log(e.message)
        elif isinstance(e, ev.Progress):
            total = f"/{e.total}" if e.total else ""
            self.status_label.setText(f"{e.task}: {e.done}{total} {e.message}".strip())
        elif isinstance(e, ev.Unfrozen):
            self._log(f"Epoch {e.epoch + 1}: unfroze {e.group} ({_fmt_count(e.trainable_params)} trainable)")
            self.params_label.setText(f"Trainable: {_fmt_count(e.trainable_params)}")
        elif isinstance(e, ev.Checkpointed):
            if e.kind == "best":
                self._log(f"Epoch {e.epoch + 1}: best so far, weights kept")
        elif isinstance(e, ev.Finished):
            self._on_finished_event(e)

    def _on_started(self, e: ev.RunStarted) -> None:
        self._phase = e.phase
        self._epochs = e.epochs
        self._last_run_dir = e.run_dir if e.phase == "main" else self._last_run_dir
        self._batch_t = None
        self._sec_per_batch = None
        self._epoch_seconds = []
        self.epoch_bar.setRange(0, e.epochs)
        self.epoch_bar.setValue(e.start_epoch)
        self.curves.set_epochs(e.epochs)
        self.batch_bar.setRange(0, max(1, e.batches_per_epoch))
        self.batch_bar.setValue(0)
        what = "From-scratch baseline" if e.phase == "baseline" else "Training"
        resumed = f", resumed at epoch {e.start_epoch + 1}" if e.start_epoch else ""
        self.status_label.setText(f"{what} {e.backbone}: {e.n_train} train / {e.n_val} val images{resumed}")
        self.device_label.setText(f"Device: {e.device} · {e.precision}")
        self.params_label.setText(f"Trainable: {_fmt_count(e.trainable_params)} of {_fmt_count(e.total_params)}")
        self._log(f"{what} started in {e.run_dir}")
        if e.phase == "main" and e.run_dir != self.state.current_run:
            self.state.set_current_run(e.run_dir)

    def _on_batch(self, e: ev.BatchEnd) -> None:
        self.curves.add_batch(e.epoch, e.batch, e.batches, e.loss, e.lr, phase=e.phase)
        now = time.monotonic()
        if self._batch_t is not None:
            dt = now - self._batch_t
            self._sec_per_batch = dt if self._sec_per_batch is None else 0.9 * self._sec_per_batch + 0.1 * dt
        self._batch_t = now
        if self.batch_bar.maximum() != e.batches:
            self.batch_bar.setRange(0, e.batches)
        self.batch_bar.setValue(e.batch + 1)
        self.epoch_bar.setValue(e.epoch)
        if self._sec_per_batch is not None:
            left_epoch = (e.batches - e.batch - 1) * self._sec_per_batch
            per_epoch = (sum(self._epoch_seconds) / len(self._epoch_seconds)) if self._epoch_seconds \
                else e.batches * self._sec_per_batch
            left_total = left_epoch + max(0, self._epochs - e.epoch - 1) * per_epoch
            self.eta_label.setText(f"ETA {_fmt_eta(left_total)}")
            self.speed_label.setText(f"{e.images_per_s:.0f} img/s · epoch ETA {_fmt_eta(left_epoch)}")
        else:
            self.speed_label.setText(f"{e.images_per_s:.0f} img/s")

    def _on_epoch(self, e: ev.EpochEnd) -> None:
        self.curves.add_epoch(e.epoch, e.train_loss, e.val_loss, e.val_acc, phase=e.phase)
        self._epoch_seconds.append(e.seconds)
        self.epoch_bar.setRange(0, e.epochs)
        self.epoch_bar.setValue(e.epoch + 1)
        star = "  ★ best" if e.best else ""
        prefix = "Baseline " if e.phase == "baseline" else ""
        self.metrics_label.setText(
            f"{prefix}Epoch {e.epoch + 1}/{e.epochs}: train loss {e.train_loss:.4f} · val loss {e.val_loss:.4f} · "
            f"val acc {e.val_acc:.1%} · macro-F1 {e.val_macro_f1:.3f} · {e.seconds:.1f} s{star}")
        self._log(self.metrics_label.text())

    def _on_finished_event(self, e: ev.Finished) -> None:
        self.curves.flush()
        acc = f", best val acc {e.best_val_acc:.1%} (epoch {e.best_epoch + 1})" \
            if e.best_val_acc is not None and e.best_epoch is not None else ""
        phase = "Baseline" if self._phase == "baseline" else "Training"
        text = f"{phase} {e.status.replace('_', ' ')}{acc}." + (f" {e.message}" if e.message else "")
        if self._phase == "main":
            self._finish_message = e.message
        self.status_label.setText(text)
        self._log(text)

    def _on_finished(self, result: Any) -> None:
        if not self._mine:
            return
        self._mine = False
        self.curves.flush()
        run_dir = self._last_run_dir or ""
        if not run_dir and isinstance(getattr(result, "config", None), dict):
            run_dir = str(result.config.get("out_dir") or "")
        status = getattr(result, "status", "finished")
        best = getattr(result, "best_val_acc", None)
        if status in ("finished", "early_stopped"):
            self.state.set_step_status("train", "done")
        else:
            self.state.set_step_status("train", "attention")
        name = run_dir.rstrip("/\\").rsplit("/", 1)[-1] if run_dir else "run"
        msg = f"Training {status.replace('_', ' ')}: {name}" + (f", best val acc {best:.1%}" if best is not None else "")
        base = getattr(result, "baseline", None)
        if isinstance(base, dict) and base.get("gain") is not None:
            msg += f"; from scratch {base.get('scratch_val_acc', 0):.1%} (gain {base['gain'] * 100:+.1f} points)"
        if status == "stopped":
            msg += " (Continue stopped run resumes it)"
        elif status == "failed" and self._finish_message:
            msg += f". {self._finish_message}"  # e.g. the loss became NaN: say why and what to try
        self.status_label.setText(msg)
        if run_dir:
            self._last_run_dir = run_dir
            self.state.set_current_run(run_dir)
        self.state.runs_changed.emit()
        self.notify(msg)
        self.run_finished.emit(run_dir, status)
        self._update_buttons()

    def _on_failed(self, message: str, tb: str) -> None:
        if not self._mine:
            return
        self._mine = False
        self.state.set_step_status("train", "attention")
        self.status_label.setText(f"Failed: {message}")
        self._add_warning(f"Training failed: {message}")
        self.state.runs_changed.emit()
        from tlstudio.gui.widgets.error_dialog import show_error

        from tlstudio.core.errors import UserError

        # a UserError names the file and the problem: no traceback behind it
        kind = message.split(":", 1)[0].strip()
        user_error = kind in {t.__name__ for t in _subclasses(UserError)}
        show_error(self, "Training failed", message.split(":", 1)[1].strip() if user_error else message,
                   "" if user_error else tb, modal=False)
        self._update_buttons()

    # ------------------------------------------------------------------ feedback helpers
    def _add_warning(self, text: str) -> None:
        item = QListWidgetItem(text)
        item.setToolTip(text)
        self.warnings.addItem(item)
        if self.warnings.count() > 500:  # bounded: a run with thousands of bad files stays light
            self.warnings.takeItem(0)
        self.warnings.scrollToBottom()

    def _log(self, text: str) -> None:
        self.log_view.appendPlainText(text)

    def notify(self, message: str) -> None:
        """Status bar message, a desktop notification when a tray exists, and an in-window toast."""
        self.notifications.append(message)
        self.state.status_message.emit(message)
        try:
            if QSystemTrayIcon.isSystemTrayAvailable():
                if self._tray is None:
                    icon = self.window().windowIcon()
                    if icon.isNull():
                        from PySide6.QtWidgets import QStyle

                        icon = self.style().standardIcon(QStyle.StandardPixmap.SP_DialogApplyButton)
                    self._tray = QSystemTrayIcon(icon, self)
                self._tray.show()
                self._tray.showMessage("TL Studio", message, QSystemTrayIcon.MessageIcon.Information, 6000)
                QTimer.singleShot(8000, self._tray.hide)  # no icon left behind in the tray
        except Exception:  # noqa: BLE001 - a notification must never break the app
            log.exception("tray notification failed")
        self.toast.setText(message)
        self.toast.adjustSize()
        self.toast.setMaximumWidth(max(200, self.width() - 40))
        self.toast.adjustSize()
        self.toast.move(max(10, self.width() - self.toast.width() - 20), max(10, self.height() - self.toast.height() - 20))
        self.toast.raise_()
        self.toast.show()
        self._toast_timer.start(6000)


def _subclasses(cls: type) -> list[type]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_subclasses(sub))
    return out
