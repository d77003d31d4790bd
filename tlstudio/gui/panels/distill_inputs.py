"""The Distill step's inputs: teacher runs, the student backbone (small ones first, the full
catalogue loaded in the background), temperature and alpha, the unlabelled folder and the
advanced options, and the DistillConfig they make together.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible, QLabeledDoubleSlider, QSearchableComboBox

from tlstudio.core.tasks.distill import ALPHA_HELP, TEMPERATURE_HELP

log = logging.getLogger("tlstudio.gui")

#: shown at once; the catalogue (with offline marks) replaces it in the background. The first is
#: the default student: its ImageNet weights ship with the app, so distillation works offline
QUICK_STUDENTS = ("tf_efficientnet_lite0", "mobilenetv3_small_100", "mobilenetv3_large_100", "efficientnet_b0",
                  "resnet18", "resnet10t", "mobilenetv3_small_050", "lcnet_100", "ghostnet_100")
OFFLINE_MARK = "  ✓ offline"

#: TrainConfig settings that describe the teacher's model in the Train step, not the student
_NOT_FOR_STUDENT = ("backbone", "init", "weights_file", "init_run", "freeze", "frozen_groups", "out_dir", "baseline")

# runs whose model is one classifier over the data's classes (a multi-task run has a head per
# task, an anomaly run a memory bank: neither can teach)
TEACHER_TASKS = ("classification", "adaptation", "semisupervised", "distillation")

TIPS = {
    "teachers": "Trained runs whose knowledge the student copies. Pick several to average their soft targets "
                "(multi-teacher). A teacher with the student's own architecture gives self-distillation.",
    "student": "The smaller network that learns from the teacher. Small, fast backbones are listed first.",
    "init": "Pretrained: the student starts from ImageNet weights (better with little data). "
            "Scratch: random weights.",
    "freeze": "Which student layers train. Everything gives the student the most room to copy the teacher.",
    "unlabelled": "Optional folder of images without labels: the teacher labels them with its soft "
                  "predictions, so the student learns from more images than were labelled.",
    "feature_loss": "Feature-based KD: also match an intermediate teacher stage to a student stage "
                    "(e.g. -1:-1 = last stages). A small 1x1 adapter is learned when widths differ.",
    "baseline": "Also train the same student without a teacher, to show what the teacher adds.",
    "curves": "Soft: the part of the loss that follows the teacher; hard: the part that follows the labels. "
              "Both should go down.",
    "scatter": "Every model measured in a distillation: up is more accurate, left is faster. "
               "Red: teachers, blue: distilled students, grey: students without a teacher.",
}


class DistillInputsMixin:
    """The left-hand form of the Distill panel and what reads it. The panel provides
    ``self.state``, ``self.runner``, ``self.students_loaded`` and ``self._update_buttons``."""

    # ------------------------------------------------------------------ building
    def _build_inputs(self, form_lay: QVBoxLayout) -> None:
        """Intro, teacher list, student, distillation settings and advanced options."""
        intro = QLabel("<b>Knowledge distillation</b>: a big trained <i>teacher</i> teaches a small, fast "
                       "<i>student</i>. The report shows how much accuracy the speed costs.")
        intro.setWordWrap(True)
        form_lay.addWidget(intro)

        tbox = QGroupBox("Teacher run(s)")
        tl = QVBoxLayout(tbox)
        self.teacher_list = QListWidget()
        self.teacher_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.teacher_list.setToolTip(TIPS["teachers"])
        self.teacher_list.setMinimumHeight(90)
        self.teacher_list.itemSelectionChanged.connect(self._check_ready)
        tl.addWidget(self.teacher_list)
        row = QHBoxLayout()
        self.refresh_btn = QPushButton("Refresh")
        self.refresh_btn.clicked.connect(self.refresh_runs)
        self.teacher_note = QLabel("")
        self.teacher_note.setWordWrap(True)
        row.addWidget(self.teacher_note, 1)
        row.addWidget(self.refresh_btn)
        tl.addLayout(row)
        form_lay.addWidget(tbox)

        sbox = QGroupBox("Student")
        sf = QFormLayout(sbox)
        self.student_combo = QSearchableComboBox()
        self.student_combo.setToolTip(TIPS["student"])
        self.student_combo.addItems(list(QUICK_STUDENTS))
        sf.addRow("Backbone", self.student_combo)
        self.student_note = QLabel("")  # a student as large as its teacher: no faster model
        self.student_note.setWordWrap(True)
        self.student_note.setStyleSheet("color: #8a5a00;")
        sf.addRow("", self.student_note)
        self._params: dict[str, int] = {}  # backbone -> parameters, from the catalogue
        self.student_combo.currentIndexChanged.connect(lambda _i: self._check_ready())
        self.init_combo = QComboBox()
        self.init_combo.addItem("Pretrained (ImageNet)", "pretrained")
        self.init_combo.addItem("From scratch", "scratch")
        self.init_combo.setToolTip(TIPS["init"])
        sf.addRow("Start from", self.init_combo)
        self.freeze_combo = QComboBox()
        for label, value in (("Everything trains", "none"), ("Last 2 groups + head", "last:2"),
                             ("Head only", "head")):
            self.freeze_combo.addItem(label, value)
        self.freeze_combo.setToolTip(TIPS["freeze"])
        sf.addRow("Layers", self.freeze_combo)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(10)
        sf.addRow("Epochs", self.epochs_spin)
        form_lay.addWidget(sbox)

        kbox = QGroupBox("Distillation")
        kl = QVBoxLayout(kbox)
        self.t_slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.t_slider.setRange(1.0, 20.0)
        self.t_slider.setDecimals(1)
        self.t_slider.setSingleStep(0.5)
        self.t_slider.setValue(4.0)
        self.t_slider.setToolTip(TEMPERATURE_HELP)
        kl.addWidget(QLabel("Temperature T"))
        kl.addWidget(self.t_slider)
        self.t_help = QLabel("Typical 3..10: higher T shows the student which wrong classes look alike.")
        self.t_help.setWordWrap(True)
        self.t_help.setStyleSheet("color: #555;")
        kl.addWidget(self.t_help)
        self.a_slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.a_slider.setRange(0.0, 1.0)
        self.a_slider.setDecimals(2)
        self.a_slider.setSingleStep(0.05)
        self.a_slider.setValue(0.7)
        self.a_slider.setToolTip(ALPHA_HELP)
        kl.addWidget(QLabel("Alpha (weight of the teacher)"))
        kl.addWidget(self.a_slider)
        self.a_help = QLabel("Typical 0.5..0.9: the share of the loss that follows the teacher; "
                             "the rest follows the labels.")
        self.a_help.setWordWrap(True)
        self.a_help.setStyleSheet("color: #555;")
        kl.addWidget(self.a_help)
        urow = QHBoxLayout()
        self.unlabelled_edit = QLineEdit()
        self.unlabelled_edit.setPlaceholderText("optional folder of unlabelled images")
        self.unlabelled_edit.setToolTip(TIPS["unlabelled"])
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse_unlabelled)
        urow.addWidget(self.unlabelled_edit, 1)
        urow.addWidget(browse)
        kl.addWidget(QLabel("Unlabelled images"))
        kl.addLayout(urow)
        form_lay.addWidget(kbox)

        adv = QCollapsible("Advanced")
        aw = QWidget()
        af = QFormLayout(aw)
        self.feature_edit = QLineEdit()
        self.feature_edit.setPlaceholderText("e.g. -1:-1 (off when empty)")
        self.feature_edit.setToolTip(TIPS["feature_loss"])
        af.addRow("Feature loss", self.feature_edit)
        self.feature_weight = QDoubleSpinBox()
        self.feature_weight.setRange(0.0, 100.0)
        self.feature_weight.setValue(1.0)
        af.addRow("Feature weight", self.feature_weight)
        self.augment_combo = QComboBox()
        for a in ("light", "none", "strong"):
            self.augment_combo.addItem(a, a)
        self.augment_combo.setToolTip("none lets the teacher's outputs be computed once and cached (faster).")
        af.addRow("Augment", self.augment_combo)
        self.baseline_check = QCheckBox("Also train the student without a teacher")
        self.baseline_check.setChecked(True)
        self.baseline_check.setToolTip(TIPS["baseline"])
        af.addRow(self.baseline_check)
        adv.addWidget(aw)
        form_lay.addWidget(adv)

    # ------------------------------------------------------------------ inputs
    def refresh_runs(self) -> None:
        """List the finished runs in the runs folder as teacher candidates (selection kept)."""
        from tlstudio.core.runs.folder import RunError, list_runs, read_run

        keep = set(self.selected_teachers())
        self.teacher_list.clear()
        root = self.state.runs_dir
        if not root:
            try:
                from tlstudio.core.paths import default_runs_dir

                root = str(default_runs_dir())
            except Exception:  # noqa: BLE001 - no runs folder yet
                root = None
        runs = list_runs(root) if root else []
        for run in runs:
            try:
                info = read_run(run)
            except (RunError, OSError):
                continue
            if not (run / "model.safetensors").is_file() or (info.task or "classification") not in TEACHER_TASKS:
                continue
            acc = "" if info.best_val_acc is None else f", val acc {info.best_val_acc:.1%}"
            kind = " [distilled]" if info.kind == "distill" else ""
            item = QListWidgetItem(f"{run.name} - {info.model.backbone}{acc}{kind}")
            item.setData(Qt.ItemDataRole.UserRole, str(run))
            item.setData(Qt.ItemDataRole.UserRole + 1, list(info.model.classes))
            item.setData(Qt.ItemDataRole.UserRole + 2, info.model.backbone)
            item.setToolTip(f"{run}\nclasses: {', '.join(info.model.classes)}")
            self.teacher_list.addItem(item)
            if str(run) in keep:
                item.setSelected(True)
        if not runs:
            self.teacher_note.setText("No trained runs yet: train a teacher in the Train step first.")
        self.refresh_scatter(root)
        self._check_ready()

    def selected_teachers(self) -> list[str]:
        return [i.data(Qt.ItemDataRole.UserRole) for i in self.teacher_list.selectedItems()]

    def select_teachers(self, run_dirs: list[str]) -> None:
        wanted = {str(r) for r in run_dirs}
        for i in range(self.teacher_list.count()):
            item = self.teacher_list.item(i)
            item.setSelected(item.data(Qt.ItemDataRole.UserRole) in wanted)

    def student_name(self) -> str:
        """The chosen student backbone (the list's text may carry the offline mark)."""
        text = self.student_combo.currentText().strip()
        return text.split()[0] if text else ""

    def set_students(self, infos: list[Any]) -> None:
        """Fill the student list: small students with offline weights first, then recommended,
        then small to large; each marked when its weights are on this computer."""
        current = self.student_name()
        self._params = {m.name: int(m.params) for m in infos if m.params}
        ordered = sorted(infos, key=lambda m: (not m.student, not m.offline, not m.recommended,
                                               m.params or 10**12, m.name))
        self.student_combo.clear()
        for m in ordered:
            self.student_combo.addItem(m.name + (OFFLINE_MARK if m.offline else ""), m.name)
            self.student_combo.setItemData(
                self.student_combo.count() - 1,
                f"{m.name}: weights on this computer, works offline" if m.offline else
                f"{m.name}: pretrained weights are downloaded at the start (needs the internet)"
                if m.pretrained else f"{m.name}: no pretrained weights (from scratch only)",
                Qt.ItemDataRole.ToolTipRole)
        idx = self.student_combo.findData(current)
        self.student_combo.setCurrentIndex(max(0, idx))

    def showEvent(self, e) -> None:  # noqa: N802 - Qt API
        super().showEvent(e)
        if not self._catalog_requested:
            self._catalog_requested = True
            from tlstudio.gui.panels.model_jobs import catalog_models
            from tlstudio.gui.workers import start_worker

            # the shipped catalogue (no timm import); the result arrives on the UI thread
            start_worker(self, catalog_models, returned=self.students_loaded.emit,
                         errored=lambda exc: log.warning("cannot list backbones: %s", exc))

    def _browse_unlabelled(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Folder of unlabelled images")
        if d:
            self.unlabelled_edit.setText(d)

    def _check_ready(self) -> None:
        """Warn (before Start) when a teacher's classes differ from the data set's."""
        note = ""
        data_classes = list(getattr(self.state.scan_report, "classes", []) or [])
        for item in self.teacher_list.selectedItems():
            classes = item.data(Qt.ItemDataRole.UserRole + 1) or []
            if data_classes and sorted(classes) != sorted(data_classes):
                note = (f"{Path(item.data(Qt.ItemDataRole.UserRole)).name} was trained on other classes "
                        f"({', '.join(classes)}) than the data set ({', '.join(data_classes)}).")
                break
        if note:
            self.teacher_note.setText(note)
            self.teacher_note.setStyleSheet("color: #b00020;")
        elif self.teacher_list.count():
            n = len(self.selected_teachers())
            self.teacher_note.setStyleSheet("")
            self.teacher_note.setText(f"{n} teacher(s) selected" + (" (soft targets averaged)" if n > 1 else ""))
        self.student_note.setText(self._size_note())
        self._update_buttons()

    def _size_note(self) -> str:
        """A note when the student is not smaller than the smallest selected teacher: distilling it
        gives no faster model (it can still gain accuracy: self-distillation)."""
        from tlstudio.gui.widgets.layer_strip import human_count

        student = self.student_name()
        s = self._params.get(student)
        teachers = [(i.data(Qt.ItemDataRole.UserRole + 2), self._params.get(i.data(Qt.ItemDataRole.UserRole + 2)))
                    for i in self.teacher_list.selectedItems()]
        known = [(name, n) for name, n in teachers if n]
        if not s or not known:
            return ""
        name, t = min(known, key=lambda kv: kv[1])
        if s < 0.9 * t:
            return ""
        return (f"{student} ({human_count(s)} parameters) is {'as large as' if s < 1.1 * t else 'larger than'} the "
                f"teacher {name} ({human_count(t)}): the distilled model will not be faster. It can still gain "
                "accuracy from the teacher; for speed, choose a smaller student.")

    # ------------------------------------------------------------------ config
    def make_config(self):
        from tlstudio.core.tasks.distill import DistillConfig

        values = {k: v for k, v in self.state.settings.items() if k not in _NOT_FOR_STUDENT}
        feature = self.feature_edit.text().strip() or None
        unl = self.unlabelled_edit.text().strip() or None
        values.update(
            data_dir=self.state.data_dir or "",
            teachers=self.selected_teachers(),
            backbone=self.student_name(),
            init=self.init_combo.currentData(),
            freeze=self.freeze_combo.currentData(),
            epochs=self.epochs_spin.value(),
            temperature=float(self.t_slider.value()),
            alpha=float(self.a_slider.value()),
            feature_loss=feature,
            feature_weight=float(self.feature_weight.value()),
            unlabeled_dir=unl,
            augment=self.augment_combo.currentData(),
            student_baseline=self.baseline_check.isChecked(),
            leave_one_core=True,
        )
        if self.state.runs_dir:
            from datetime import datetime

            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            values["out_dir"] = str(Path(self.state.runs_dir) / f"{stamp}-distill-{values['backbone']}")
        return DistillConfig(**values)
