"""Step 3, Layers: which layer groups are frozen and which are trained.

The network is drawn as its layer groups (``LayerStrip``); a click toggles a group (the head is
always trainable). Presets: head only, last N, all, gradual unfreezing every K epochs. The
strategy advice (``tlstudio.core.models.advice.advise``) is shown with its reason. The trainable and
total parameter counts update live; the training-memory estimate runs in the background.

Settings written: ``freeze`` (head | last:N | none | gradual:K) for a preset, and
``frozen_groups`` (explicit indices, overriding ``freeze``) after a manual click.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.state import AppState
from tlstudio.gui.tooltips import tip
from tlstudio.gui.widgets.layer_strip import LayerStrip, human_count


def human_bytes(n: int) -> str:
    for unit, f in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n} B"


class LayersPanel(QWidget):
    memory_estimated = Signal(int)

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self._mem_gen = 0
        self._workers: list[Any] = []
        self._syncing = False
        self._build()
        self._mem_timer = QTimer(self, singleShot=True, interval=150)
        self._mem_timer.timeout.connect(self._estimate_memory)
        state.model_changed.connect(self._model_changed)
        state.freeze_changed.connect(self._freeze_changed)
        state.dataset_changed.connect(self._update_advice)
        state.settings_changed.connect(self._settings_changed)
        self._model_changed()

    def _build(self) -> None:
        self.strip = LayerStrip()
        self.strip.toggled.connect(self.toggle_group)
        scroll = QScrollArea()
        scroll.setWidget(self.strip)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(320)
        scroll.setToolTip(tip("layer_group"))
        self.title = QLabel("")
        self.title.setWordWrap(True)  # a long backbone name wraps instead of being cut at 1024 px
        legend = QLabel("<span style='color:#e8710a'>■</span> trainable &nbsp; "
                        "<span style='color:#6f8fb3'>■</span> frozen &nbsp; · click a block "
                        "(or Space on it) to toggle it")
        legend.setWordWrap(True)
        legend.setToolTip(tip("frozen") + " " + tip("trainable"))
        left = QVBoxLayout()
        left.addWidget(self.title)
        left.addWidget(legend)
        left.addWidget(scroll, 1)

        # presets
        box = QGroupBox("Which layers to train")
        box.setToolTip(tip("fine_tuning"))
        g = QVBoxLayout(box)
        self.preset_group = QButtonGroup(self)
        self.rb_head = QRadioButton("Head only (feature extraction)")
        self.rb_head.setToolTip(tip("preset_head"))
        self.rb_last = QRadioButton("Head + last")
        self.rb_last.setToolTip(tip("preset_last"))
        self.last_spin = QSpinBox()
        self.last_spin.setRange(1, 64)
        self.last_spin.setValue(2)
        self.last_spin.setSuffix(" groups")
        self.last_spin.setToolTip(tip("preset_last"))
        self.rb_all = QRadioButton("All layers (full fine-tuning)")
        self.rb_all.setToolTip(tip("preset_all"))
        self.rb_gradual = QRadioButton("Gradual: unfreeze one more group every")
        self.rb_gradual.setToolTip(tip("preset_gradual"))
        self.gradual_spin = QSpinBox()
        self.gradual_spin.setRange(1, 100)
        self.gradual_spin.setValue(2)
        self.gradual_spin.setSuffix(" epochs")
        self.gradual_spin.setToolTip(tip("gradual_every"))
        self.rb_custom = QRadioButton("Custom (your clicks on the blocks)")
        self.rb_custom.setToolTip("The layer groups you toggled by hand.")
        self.rb_custom.setEnabled(False)
        for rb in (self.rb_head, self.rb_last, self.rb_all, self.rb_gradual, self.rb_custom):
            self.preset_group.addButton(rb)
        g.addWidget(self.rb_head)
        row = QHBoxLayout()
        row.addWidget(self.rb_last)
        row.addWidget(self.last_spin)
        row.addStretch(1)
        g.addLayout(row)
        g.addWidget(self.rb_all)
        row = QHBoxLayout()
        row.addWidget(self.rb_gradual)
        row.addWidget(self.gradual_spin)
        row.addStretch(1)
        g.addLayout(row)
        g.addWidget(self.rb_custom)
        self.preset_group.buttonClicked.connect(self._preset_clicked)
        self.last_spin.valueChanged.connect(lambda: self._spin_changed(self.rb_last))
        self.gradual_spin.valueChanged.connect(lambda: self._spin_changed(self.rb_gradual))

        # advice
        adv = QGroupBox("Advice")
        adv.setToolTip(tip("advice"))
        av = QVBoxLayout(adv)
        self.similarity = QComboBox()
        for text, key in (("Unknown", "unknown"), ("High: everyday photos, objects, animals", "high"),
                          ("Low: medical, satellite, microscopy, drawings…", "low")):
            self.similarity.addItem(text, key)
        self.similarity.setToolTip(tip("similarity"))
        self.similarity.currentIndexChanged.connect(self._update_advice)
        self.similarity.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.similarity.setMinimumContentsLength(18)
        sim_label = QLabel("How similar are your images to everyday photos (ImageNet)?")
        sim_label.setWordWrap(True)
        sim_label.setToolTip(tip("similarity"))
        av.addWidget(sim_label)
        av.addWidget(self.similarity)
        self.advice_label = QLabel("Load a data set and a model to get advice.")
        self.advice_label.setWordWrap(True)
        self.advice_label.setToolTip(tip("advice"))
        av.addWidget(self.advice_label)
        self.apply_advice_btn = QPushButton("Apply advice")
        self.apply_advice_btn.setToolTip("Use the advised freezing, learning rate and number of epochs.")
        self.apply_advice_btn.clicked.connect(self.apply_advice)
        self.apply_advice_btn.setEnabled(False)
        av.addWidget(self.apply_advice_btn, 0, Qt.AlignmentFlag.AlignLeft)

        # counts
        cnt = QGroupBox("Cost")
        cf = QFormLayout(cnt)
        self.params_label = QLabel("–")
        self.params_label.setToolTip(tip("trainable_params"))
        self.memory_label = QLabel("–")
        self.memory_label.setToolTip(tip("memory"))
        cf.addRow("Trainable weights", self.params_label)
        cf.addRow("Training memory (est.)", self.memory_label)

        right = QVBoxLayout()
        right.addWidget(box)
        right.addWidget(adv)
        right.addWidget(cnt)
        right.addStretch(1)
        rw = QWidget()
        rw.setLayout(right)
        rw.setMaximumWidth(440)

        lay = QHBoxLayout(self)
        lay.addLayout(left, 3)
        lay.addWidget(rw, 2)

    # --- state -> view ------------------------------------------------------------------
    def _model_changed(self) -> None:
        st = self.state
        groups = st.groups
        name = st.model_info.name if st.model_info is not None else ""
        self.title.setText(f"<b>{name}</b>: {len(groups)} layer groups, input at the top, "
                           "output (head) at the bottom" if groups else "No model yet: choose one in the Model step.")
        self.last_spin.blockSignals(True)  # a clamped value is not a user choice
        self.last_spin.setMaximum(max(1, len(groups) - 1))
        self.last_spin.blockSignals(False)
        self._sync_preset_from_settings()
        self.strip.set_groups(groups, st.trainable)
        self._update_counts()
        self._update_advice()
        self.state.set_step_status("layers", "done" if groups else "todo")

    def _freeze_changed(self) -> None:
        self.strip.set_trainable(self.state.trainable)
        self._update_counts()

    def _settings_changed(self, name: str) -> None:
        if name in ("", "batch_size", "image_size"):
            self._mem_timer.start()
        if name in ("", "freeze", "frozen_groups") and not self._syncing and self.state.groups:
            self._sync_preset_from_settings()
        if name in ("init", "val_fraction"):  # the advice depends on both
            self._update_advice()

    def _sync_preset_from_settings(self) -> None:
        s = self.state.settings
        spec = s.get("freeze") or "head"
        self._syncing = True
        try:
            if s.get("frozen_groups") is not None:
                self.rb_custom.setEnabled(True)
                self.rb_custom.setChecked(True)
            elif spec == "head":
                self.rb_head.setChecked(True)
            elif spec == "none":
                self.rb_all.setChecked(True)
            elif spec.startswith("last:"):
                self.last_spin.blockSignals(True)
                self.last_spin.setValue(int(spec.split(":")[1]))
                self.last_spin.blockSignals(False)
                self.rb_last.setChecked(True)
            elif spec.startswith("gradual:"):
                self.gradual_spin.blockSignals(True)
                self.gradual_spin.setValue(int(spec.split(":")[1]))
                self.gradual_spin.blockSignals(False)
                self.rb_gradual.setChecked(True)
        finally:
            self._syncing = False

    def _update_counts(self) -> None:
        groups, tr = self.state.groups, self.state.trainable
        if not groups:
            self.params_label.setText("–")
            self.memory_label.setText("–")
            return
        total = sum(g.n_params for g in groups)
        n = sum(g.n_params for g, t in zip(groups, tr) if t or g.is_head)
        gradual = (self.state.settings.get("freeze") or "").startswith("gradual:") and \
            self.state.settings.get("frozen_groups") is None
        extra = " at the start (more are unfrozen during training)" if gradual else ""
        self.params_label.setText(f"<b>{human_count(n)}</b> of {human_count(total)} "
                                  f"({100 * n / max(1, total):.1f} %){extra}")
        self._mem_timer.start()

    # --- intent -------------------------------------------------------------------------
    def toggle_group(self, i: int) -> None:
        st = self.state
        if not (0 <= i < len(st.groups)):
            return
        if st.groups[i].is_head:
            st.status_message.emit("The head is new and always trained; it cannot be frozen.")
            return
        if st.training:
            st.status_message.emit("Training is running: stop it to change which layers train.")
            return
        tr = list(st.trainable)
        tr[i] = not tr[i]
        self._syncing = True
        try:
            st.set_setting("frozen_groups", [k for k, t in enumerate(tr) if not t])
        finally:
            self._syncing = False
        self.rb_custom.setEnabled(True)
        self.rb_custom.setChecked(True)
        st.set_trainable(tr)

    def _spin_changed(self, rb: QRadioButton) -> None:
        if self._syncing:
            return
        rb.setChecked(True)
        self._preset_clicked()

    def preset_spec(self) -> str | None:
        if self.rb_head.isChecked():
            return "head"
        if self.rb_all.isChecked():
            return "none"
        if self.rb_last.isChecked():
            return f"last:{self.last_spin.value()}"
        if self.rb_gradual.isChecked():
            return f"gradual:{self.gradual_spin.value()}"
        return None  # custom

    def _preset_clicked(self, *_: Any) -> None:
        spec = self.preset_spec()
        if spec is not None:
            self.apply_preset(spec)

    def apply_preset(self, spec: str) -> None:
        from tlstudio.core.models.layers import plan_from_spec

        st = self.state
        self._syncing = True
        try:
            st.set_setting("frozen_groups", None)
            st.set_setting("freeze", spec)
        finally:
            self._syncing = False
        self._sync_preset_from_settings()
        if st.groups:
            trainable, _every = plan_from_spec(spec, st.groups)
            st.set_trainable(trainable)
            self._update_counts()

    # --- advice -------------------------------------------------------------------------
    def _update_advice(self) -> None:
        from tlstudio.core.models.advice import advise_for_report

        r = self.state.scan_report
        if r is None or not r.classes:
            self.advice_label.setText("Load a data set to get advice for its size.")
            self.apply_advice_btn.setEnabled(False)
            return
        # training images only (validation images are not learnt from); from scratch: every layer
        settings = self.state.settings
        a = advise_for_report(r, float(settings.get("val_fraction", 0.2) or 0.2), self.similarity.currentData(),
                              str(settings.get("init", "pretrained") or "pretrained"))
        self.state.set_advice(a)
        self.advice_label.setText(
            f"<b>{_spec_text(a.freeze)}</b>, learning rate {a.lr:g}, {a.epochs} epochs.<br>{a.reason}")
        self.apply_advice_btn.setEnabled(bool(self.state.groups))
        QTimer.singleShot(0, self._fit_advice)

    def _fit_advice(self) -> None:
        """Wrapped labels in a width-capped column can get the height of a wider layout: make
        room for every line of the reason (it must never be cut off)."""
        lab = self.advice_label
        if lab.width() > 0:
            lab.setMinimumHeight(lab.heightForWidth(lab.width()))

    def resizeEvent(self, ev) -> None:  # noqa: ANN001
        super().resizeEvent(ev)
        QTimer.singleShot(0, self._fit_advice)

    def apply_advice(self) -> None:
        a = self.state.advice
        if a is None:
            return
        self.apply_preset(a.freeze)
        self.state.set_setting("lr", a.lr)
        self.state.set_setting("epochs", a.epochs)
        self.state.status_message.emit(f"Advice applied: {_spec_text(a.freeze)}, lr {a.lr:g}, {a.epochs} epochs")

    # --- memory -------------------------------------------------------------------------
    def _estimate_memory(self) -> None:
        st = self.state
        if st.model is None or not st.groups:
            return
        from tlstudio.gui.workers import start_worker

        self._mem_gen += 1
        gen = self._mem_gen
        bs = int(st.settings.get("batch_size") or 32)
        size = int(st.settings.get("image_size") or (st.model_info.input_size if st.model_info else 224))
        self.memory_label.setText("estimating…")
        from tlstudio.gui.panels.model_jobs import memory_job

        # the job estimates on a private meta-device twin of the model: the shared
        # AppState.model is never touched from the worker thread (no hooks, no forward pass)
        name = st.model_info.name if st.model_info is not None else ""
        start_worker(self, memory_job, st.model, name, list(st.groups), list(st.trainable), bs, size,
                     returned=lambda n, g=gen, bs=bs, size=size: self._memory_done(g, n, bs, size),
                     errored=lambda exc, g=gen, bs=bs, size=size: self._memory_done(g, None, bs, size))

    def _memory_done(self, gen: int, n: int | None, bs: int, size: int) -> None:
        if gen != self._mem_gen:
            return
        if n is None:
            self.memory_label.setText("unknown")
            return
        self.memory_label.setText(f"<b>{human_bytes(n)}</b> (batch {bs}, {size} px)")
        self.memory_estimated.emit(int(n))


def _spec_text(spec: str) -> str:
    if spec == "head":
        return "train the head only"
    if spec == "none":
        return "train all layers"
    if spec.startswith("last:"):
        return f"train the head and the last {spec.split(':')[1]} groups"
    if spec.startswith("gradual:"):
        return f"unfreeze gradually, one group every {spec.split(':')[1]} epochs"
    return spec


if __name__ == "__main__":  # preview on its own: python -m tlstudio.gui.panels.layers_panel [BACKBONE]
    import sys

    from tlstudio.gui.qt_app import make_app
    from tlstudio.gui.panels.model_panel import _build_job

    _app = make_app()
    _st = AppState()
    _p = LayersPanel(_st)
    _p.resize(1100, 760)
    _p.show()
    _name = sys.argv[1] if len(sys.argv) > 1 else "tf_efficientnet_lite0"
    _model, _groups = _build_job(_name, 2, "scratch", None)
    from tlstudio.core.models.backbones import model_info

    _st.set_model(model_info(_name), _groups, [g.is_head for g in _groups], _model)
    sys.exit(_app.exec())
