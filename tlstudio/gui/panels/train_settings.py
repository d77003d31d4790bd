"""The Train step's settings form: basic and advanced hyper-parameters with their tooltips,
kept in sync with ``AppState.settings`` (TrainConfig's defaults when a setting is unset).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtGui import QDoubleValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

TIPS = {
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
    "fit_head": "When only the head trains: before the epochs, fit it to the cached features until it "
                "converges (its penalty chosen by cross-validation). Measured 1-6 points more accurate "
                "with ImageNet bodies on small data sets. Not used for a body from an earlier run or in "
                "domain adaptation.",
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
              "training loss falls means over-fitting. When the charts do not all fit, the mouse wheel scrolls "
              "them and Ctrl+wheel zooms the chart under the mouse; double-click or A resets the ranges.",
}



class TrainSettingsMixin:
    """The settings widgets of the Train panel (``self.epochs``, ``self.lr``, ... and
    ``self._fields`` by setting name) and their two-way sync with ``self.state.settings``.
    The panel provides ``self.state`` and the ``self._syncing`` flag."""

    # ------------------------------------------------------------------ building
    def _build_settings(self, lv: QVBoxLayout) -> None:
        """The "Training settings" group and the collapsible advanced form, added to ``lv``."""
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
        self.fit_head = QCheckBox("Fit before the epochs")
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
                         ("Head fit", self.fit_head),
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
            "early_stop_patience": self.early_stop_patience, "fit_head": self.fit_head,
            "body_lr_mult": self.body_lr_mult,
            "layer_decay": self.layer_decay, "precision": self.precision, "device": self.device,
            "seed": self.seed, "baseline": self.baseline, "cache": self.cache,
        }
        for name, w in self._fields.items():
            w.setToolTip(TIPS.get(name, ""))
            self._connect_field(name, w)

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

