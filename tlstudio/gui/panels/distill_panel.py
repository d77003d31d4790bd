"""Step Distill: a trained teacher run teaches a small student; the trade-off is shown.

Left: teacher run(s), student backbone (small ones first), T and alpha with one-line
explanations, optional unlabelled folder, Start/Stop. Right: live loss components (soft
from the teacher and hard from the labels, drawn apart), validation accuracy, the trade-off
table and an accuracy-vs-latency scatter of every distillation measured so far. The work
runs in ``tlstudio.core.distill.distill`` through the shared JobRunner; torch and timm are
only imported by the worker.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible, QLabeledDoubleSlider, QSearchableComboBox
from superqt.utils import qthrottled

from tlstudio.core import events as ev
from tlstudio.core.distill import ALPHA_HELP, TEMPERATURE_HELP

log = logging.getLogger("tlstudio.gui")

#: shown at once (no timm import); the full catalogue replaces it in the background
QUICK_STUDENTS = ("mobilenetv3_small_100", "mobilenetv3_large_100", "tf_efficientnet_lite0", "efficientnet_b0",
                  "resnet18", "resnet10t", "mobilenetv3_small_050", "lcnet_100", "ghostnet_100")

#: TrainConfig settings that describe the teacher's model in the Train step, not the student
_NOT_FOR_STUDENT = ("backbone", "init", "weights_file", "init_run", "freeze", "frozen_groups", "out_dir", "baseline")

_COLORS = {"soft": (31, 119, 180), "hard": (255, 127, 14), "feature": (44, 160, 44), "total": (120, 120, 120),
           "baseline": (150, 150, 150)}
_ROLE_BRUSH = {"teacher": (214, 39, 40), "student": (31, 119, 180), "student_baseline": (160, 160, 160)}

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


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.0f} k" if n >= 1e3 else str(n)


class DistillPanel(QWidget):
    students_loaded = Signal(object)  # list[ModelInfo] from the background catalogue load

    def __init__(self, state, runner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.runner = runner
        self._mine = False
        self._catalog_requested = False
        self.last_report: dict | None = None
        self.last_run_dir: str | None = None
        self.events_seen = 0
        self._build()
        self.students_loaded.connect(self.set_students)
        state.runs_changed.connect(self.refresh_runs)
        state.dataset_changed.connect(self._check_ready)
        state.training_changed.connect(lambda _running: self._update_buttons())
        state.current_run_changed.connect(self._on_current_run)
        runner.event.connect(self._on_event)
        runner.finished.connect(self._on_finished)
        runner.failed.connect(self._on_failed)
        runner.running_changed.connect(self._on_running_changed)
        self.refresh_runs()
        self._update_buttons()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        split = QSplitter(Qt.Orientation.Horizontal, self)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addWidget(split)

        # ---- left: settings
        left = QWidget()
        form_lay = QVBoxLayout(left)
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

        brow = QHBoxLayout()
        self.start_btn = QPushButton("Start distillation")
        self.start_btn.clicked.connect(self.start)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.clicked.connect(self.stop)
        self.continue_btn = QPushButton("Continue")
        self.continue_btn.setToolTip("Finish a stopped distillation: the rest of its training, the student "
                                     "without a teacher, and the report.")
        self.continue_btn.clicked.connect(lambda: self.continue_run())
        brow.addWidget(self.start_btn)
        brow.addWidget(self.stop_btn)
        brow.addWidget(self.continue_btn)
        form_lay.addLayout(brow)
        self.hint = QLabel("")
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: #b35900;")
        form_lay.addWidget(self.hint)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        form_lay.addWidget(self.status_label)
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        form_lay.addWidget(self.progress)
        form_lay.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(left)
        scroll.setMinimumWidth(330)
        split.addWidget(scroll)

        # ---- right: curves, table, scatter
        right = QWidget()
        rl = QVBoxLayout(right)
        self.plots = pg.GraphicsLayoutWidget()
        self.plots.setBackground("w")
        self.plots.setToolTip(TIPS["curves"])
        self.loss_plot = self.plots.addPlot(row=0, col=0, title="Loss components")
        self.acc_plot = self.plots.addPlot(row=0, col=1, title="Validation accuracy")
        self.scatter_plot = self.plots.addPlot(row=0, col=2, title="Accuracy vs latency")
        for p in (self.loss_plot, self.acc_plot):
            p.showGrid(x=True, y=True, alpha=0.25)
            p.setLabel("bottom", "epoch")
        self.scatter_plot.showGrid(x=True, y=True, alpha=0.25)
        self.scatter_plot.setLabel("bottom", "ms / image (batch 1)")
        self.scatter_plot.setLabel("left", "accuracy (%)")
        self.scatter_plot.getAxis("left").enableAutoSIPrefix(False)
        self.scatter_plot.getViewBox().setDefaultPadding(0.12)
        self.acc_plot.setYRange(0, 1)
        self.loss_plot.addLegend(offset=(-5, 5))
        self.acc_plot.addLegend(offset=(-5, -5))
        self._series: dict[str, tuple[list[float], list[float]]] = {}
        self._items: dict[str, pg.PlotDataItem] = {}
        self._curve_specs = {
            "soft": (self.loss_plot, "soft (teacher)", _COLORS["soft"], None),
            "hard": (self.loss_plot, "hard (labels)", _COLORS["hard"], None),
            "feature": (self.loss_plot, "feature hint", _COLORS["feature"], None),
            "baseline_loss": (self.loss_plot, "no teacher: loss", _COLORS["baseline"], Qt.PenStyle.DashLine),
            "val_acc": (self.acc_plot, "distilled", _COLORS["soft"], None),
            "baseline_acc": (self.acc_plot, "no teacher", _COLORS["baseline"], Qt.PenStyle.DashLine),
        }
        self._scatter = pg.ScatterPlotItem(size=11, pen=pg.mkPen("k", width=0.5))
        self.scatter_plot.addItem(self._scatter)
        self._scatter_labels: list[pg.TextItem] = []
        self.scatter_points: list[dict] = []
        self._redraw_throttled = qthrottled(self._redraw, timeout=100, leading=False, parent=self)
        self.plots.setMinimumHeight(230)
        rl.addWidget(self.plots, 3)

        self.summary_label = QLabel("The trade-off report appears here when a distillation finishes.")
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        rl.addWidget(self.summary_label)
        from tlstudio.core.tradeoff import TABLE_COLUMNS

        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(TABLE_COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(110)
        self.table.setMaximumHeight(170)
        rl.addWidget(self.table, 1)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        self.log_view.setMaximumHeight(120)
        rl.addWidget(self.log_view, 1)
        split.addWidget(right)
        split.setStretchFactor(1, 3)

    # ------------------------------------------------------------------ inputs
    def refresh_runs(self) -> None:
        """List the finished runs in the runs folder as teacher candidates (selection kept)."""
        from tlstudio.core.runs import RunError, list_runs, read_run

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
            if not (run / "model.safetensors").is_file():
                continue
            acc = "" if info.best_val_acc is None else f", val acc {info.best_val_acc:.1%}"
            kind = " [distilled]" if info.kind == "distill" else ""
            item = QListWidgetItem(f"{run.name} - {info.model.backbone}{acc}{kind}")
            item.setData(Qt.ItemDataRole.UserRole, str(run))
            item.setData(Qt.ItemDataRole.UserRole + 1, list(info.model.classes))
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

    def set_students(self, infos: list[Any]) -> None:
        """Fill the student list: recommended small students first, then small to large."""
        current = self.student_combo.currentText()
        ordered = sorted(infos, key=lambda m: (not m.student, not m.recommended, not m.offline,
                                               m.params or 10**12, m.name))
        self.student_combo.clear()
        for m in ordered:
            label = m.name
            self.student_combo.addItem(label, m.name)
        idx = self.student_combo.findText(current)
        self.student_combo.setCurrentIndex(max(0, idx))

    def showEvent(self, e) -> None:  # noqa: N802 - Qt API
        super().showEvent(e)
        if not self._catalog_requested:
            self._catalog_requested = True
            threading.Thread(target=self._load_catalog, name="tlstudio-students", daemon=True).start()

    def _load_catalog(self) -> None:  # worker thread: list_models imports timm
        try:
            from tlstudio.core.backbones import list_models

            infos = list_models()
        except Exception:  # noqa: BLE001 - keep the quick list
            import sys

            if not sys.is_finalizing():  # the app quit while timm was importing: nothing to report
                log.exception("cannot list backbones")
            return
        try:
            self.students_loaded.emit(infos)
        except RuntimeError:  # the panel was deleted meanwhile
            pass

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
        self._update_buttons()

    # ------------------------------------------------------------------ config and control
    def make_config(self):
        from tlstudio.core.distill import DistillConfig

        values = {k: v for k, v in self.state.settings.items() if k not in _NOT_FOR_STUDENT}
        feature = self.feature_edit.text().strip() or None
        unl = self.unlabelled_edit.text().strip() or None
        values.update(
            data_dir=self.state.data_dir or "",
            teachers=self.selected_teachers(),
            backbone=self.student_combo.currentText().strip(),
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

    def _why_not_ready(self) -> str:
        if self.runner.running:
            return "A job is already running."
        if not self.state.data_dir:
            return "Open a data folder first (step Data)."
        if not self.selected_teachers():
            return "Select at least one teacher run."
        if not self.student_combo.currentText().strip():
            return "Choose a student backbone."
        return ""

    def start(self) -> bool:
        reason = self._why_not_ready()
        if reason:
            self.hint.setText(reason)
            return False
        try:
            config = self.make_config()
        except Exception as exc:  # pydantic ValidationError: say which setting
            lines = str(exc).splitlines()
            self.hint.setText("Invalid settings: " + " ".join(lines[1:3] if len(lines) > 2 else lines))
            return False

        def factory(stop, pause):
            from tlstudio.core.distill import distill

            return distill(config, stop, pause)

        self._mine = True
        self.hint.setText("")
        self.clear_curves()
        self.log_view.clear()
        self.status_label.setText(f"Starting: {len(config.teachers)} teacher(s) -> {config.backbone} ...")
        self.state.set_step_status("distill", "busy")
        self.runner.start(factory, owner=self)
        return True

    def resumable_run(self) -> str | None:
        """This panel's last distillation, or the selected run, if it is a distillation without its report."""
        from tlstudio.core.runs import first_run
        from tlstudio.core.tradeoff import TRADEOFF_JSON

        return first_run((self.last_run_dir, self.state.current_run),
                         lambda path, info: info.kind == "distill" and not (path / TRADEOFF_JSON).is_file())

    def continue_run(self, run_dir: str | None = None) -> bool:
        run_dir = run_dir or self.resumable_run()
        if not run_dir or self.runner.running:
            return False

        def factory(stop, pause):
            from tlstudio.core.distill import resume_distill

            return resume_distill(run_dir, stop, pause)

        self._mine = True
        self.hint.setText("")
        self.last_run_dir = run_dir
        self.status_label.setText(f"Continuing {Path(run_dir).name} ...")
        self.state.set_step_status("distill", "busy")
        self.runner.start(factory, owner=self)
        return True

    def stop(self) -> None:
        if self._mine and self.runner.running:
            self.runner.stop()
            self.status_label.setText("Stopping after this batch ...")

    def _update_buttons(self) -> None:
        running = self.runner.running
        self.start_btn.setEnabled(not running and not self._why_not_ready())
        self.start_btn.setToolTip(self._why_not_ready() or "Distil the teacher(s) into the student.")
        self.stop_btn.setEnabled(running and self._mine)
        self.continue_btn.setEnabled(not running and self.resumable_run() is not None)

    # ------------------------------------------------------------------ runner signals
    def _is_mine(self) -> bool:
        owner = getattr(self.runner, "owner", self)
        return self._mine and (owner is self or owner is None)

    def _on_running_changed(self, running: bool) -> None:
        if self._is_mine():
            self.state.set_training(running)
        self._update_buttons()

    def _on_event(self, e: Any) -> None:
        if not self._is_mine():
            return
        self.handle_event(e)

    def handle_event(self, e: Any) -> None:
        """Turn one engine event into widget updates (tests feed events here directly)."""
        self.events_seen += 1
        if hasattr(self.state, "run_event"):
            self.state.run_event.emit(e)
        if isinstance(e, ev.BatchEnd):
            x = e.epoch + (e.batch + 1) / max(1, e.batches)
            if e.phase == "student_baseline":
                self._append("baseline_loss", x, e.loss)
            else:
                for name in ("soft", "hard", "feature"):
                    if name in e.parts:
                        self._append(name, x, e.parts[name])
            self.progress.setRange(0, max(1, e.batches))
            self.progress.setValue(e.batch + 1)
        elif isinstance(e, ev.EpochEnd):
            key = "baseline_acc" if e.phase == "student_baseline" else "val_acc"
            self._append(key, e.epoch + 1.0, e.val_acc)
            who = "student without teacher" if e.phase == "student_baseline" else "distilled student"
            self.status_label.setText(f"{who}: epoch {e.epoch + 1}/{e.epochs}, val acc {e.val_acc:.1%}")
        elif isinstance(e, ev.RunStarted):
            if e.phase == "student_baseline":
                self.status_label.setText(f"Training {e.backbone} without a teacher for the comparison ...")
            else:
                self.last_run_dir = e.run_dir
                self.status_label.setText(
                    f"Distilling into {e.backbone}: {e.n_train} train / {e.n_val} val images, "
                    f"{_fmt_count(e.total_params)} parameters")
                if hasattr(self.state, "set_current_run"):
                    self.state.set_current_run(e.run_dir)
        elif isinstance(e, ev.Progress):
            total = f"/{e.total}" if e.total else ""
            self.status_label.setText(f"{e.task}: {e.done}{total} {e.message}".strip())
            if e.total:
                self.progress.setRange(0, e.total)
                self.progress.setValue(e.done)
        elif isinstance(e, ev.Warn):
            self.log_view.appendPlainText("warning: " + e.message)
        elif isinstance(e, ev.Log):
            self.log_view.appendPlainText(e.message)

    def _on_finished(self, result: Any) -> None:
        if not self._is_mine():
            return
        self._mine = False
        self.flush()
        report = (getattr(result, "extra", None) or {}).get("tradeoff")
        if report:
            self.show_report(report)
            self.state.set_step_status("distill", "done")
        else:
            status = getattr(result, "status", "")
            self.status_label.setText(f"Distillation {status or 'ended'} without a trade-off report.")
            self.state.set_step_status("distill", "attention")
        if hasattr(self.state, "runs_changed"):
            self.state.runs_changed.emit()
        self._update_buttons()

    def _on_failed(self, message: str, _tb: str) -> None:
        if not self._is_mine():
            return
        self._mine = False
        self.hint.setText(message)
        self.status_label.setText("Distillation failed.")
        self.state.set_step_status("distill", "attention")
        self._update_buttons()

    # ------------------------------------------------------------------ curves
    def _append(self, name: str, x: float, y: float) -> None:
        if not np.isfinite(y):
            return
        xs, ys = self._series.setdefault(name, ([], []))
        while xs and xs[-1] >= x:  # a resumed run replays from its checkpoint
            xs.pop()
            ys.pop()
        xs.append(float(x))
        ys.append(float(y))
        self._redraw_throttled()

    def _redraw(self) -> None:
        for name, (xs, ys) in self._series.items():
            item = self._items.get(name)
            if item is None:
                plot, label, color, style = self._curve_specs[name]
                pen = pg.mkPen(color, width=2, style=style or Qt.PenStyle.SolidLine)
                sym = dict(symbol="o", symbolSize=6, symbolBrush=color) if plot is self.acc_plot else {}
                item = self._items[name] = plot.plot(pen=pen, name=label, **sym)
            item.setData(np.asarray(xs), np.asarray(ys))

    def flush(self) -> None:
        self._redraw_throttled.cancel()
        self._redraw()

    def clear_curves(self) -> None:
        self._redraw_throttled.cancel()
        for name, item in self._items.items():
            self._curve_specs[name][0].removeItem(item)
        for p in (self.loss_plot, self.acc_plot):
            if p.legend is not None:
                p.legend.clear()
        self._items.clear()
        self._series.clear()

    def curve_points(self, name: str) -> int:
        item = self._items.get(name)
        return 0 if item is None or item.xData is None else len(item.xData)

    # ------------------------------------------------------------------ report
    def _on_current_run(self, run_dir: str) -> None:
        """A distillation selected elsewhere (Runs step): show its saved trade-off."""
        if not run_dir or self.runner.running:
            return
        from tlstudio.core.tradeoff import read_tradeoff

        report = read_tradeoff(run_dir)
        if report:
            self.show_report(report)

    def show_report(self, report: dict) -> None:
        from tlstudio.core.tradeoff import ROLE_TITLES, table_rows

        self.last_report = report
        rows = table_rows(report)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            role = report["rows"][r]["role"]
            row[0] = ROLE_TITLES.get(role, role)  # the run folder goes in the tooltip: keeps the table narrow
            for c, text in enumerate(row):
                item = QTableWidgetItem(text)
                item.setToolTip(report["rows"][r].get("run_dir", ""))
                if c >= 2:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if role == "student":
                    f = item.font()
                    f.setBold(True)
                    item.setFont(f)
                self.table.setItem(r, c, item)
        self.summary_label.setText(" ".join([report.get("summary", ""), *report.get("notes", [])]))
        self.status_label.setText("Distillation finished: trade-off measured on this machine.")
        self.refresh_scatter()

    def refresh_scatter(self, root: str | None = None, extra: list[dict] | None = None) -> None:
        """Accuracy vs latency of every model measured by any distillation in the runs folder."""
        from tlstudio.core.tradeoff import read_tradeoff

        reports = list(extra or [])
        if self.last_report is not None:
            reports.append(self.last_report)
        root = root or self.state.runs_dir
        if root and Path(root).is_dir():
            from tlstudio.core.runs import list_runs

            for run in list_runs(root):
                rep = read_tradeoff(run)
                if rep:
                    reports.append(rep)
        seen: set[tuple[str, str]] = set()
        points = []
        for rep in reports:
            for row in rep.get("rows", []):
                key = (row["role"], row["run_dir"])
                if key in seen or row.get("latency_ms_b1") is None:
                    continue
                seen.add(key)
                points.append(row)
        self.scatter_points = points
        self._scatter.setData(
            [{"pos": (p["latency_ms_b1"], 100.0 * p["accuracy"]), "brush": pg.mkBrush(*_ROLE_BRUSH.get(p["role"], (0, 0, 0))),
              "data": p["name"]} for p in points])
        for t in self._scatter_labels:
            self.scatter_plot.removeItem(t)
        self._scatter_labels = []
        x_max = max((p["latency_ms_b1"] for p in points), default=0.0)
        for p in points:
            right_half = p["latency_ms_b1"] > 0.6 * x_max
            t = pg.TextItem(p["backbone"], color=(60, 60, 60), anchor=(1, 1) if right_half else (0, 1))
            t.setPos(p["latency_ms_b1"], 100.0 * p["accuracy"])
            self.scatter_plot.addItem(t)
            self._scatter_labels.append(t)
        self.scatter_plot.setToolTip(TIPS["scatter"])


if __name__ == "__main__":  # preview the panel on its own
    import sys

    from PySide6.QtWidgets import QApplication

    from tlstudio.gui.runner import JobRunner
    from tlstudio.gui.state import AppState

    app = QApplication(sys.argv)
    st = AppState()
    w = DistillPanel(st, JobRunner())
    w.resize(1300, 760)
    w.show()
    sys.exit(app.exec())
