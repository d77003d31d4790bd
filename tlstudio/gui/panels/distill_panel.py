"""Step Distill: a trained teacher run teaches a small student; the trade-off is shown.

Left: teacher run(s), student backbone (small ones first), T and alpha with one-line
explanations, optional unlabelled folder, Start/Stop. Right: live loss components (soft
from the teacher and hard from the labels, drawn apart), validation accuracy, the trade-off
table and an accuracy-vs-latency scatter of every distillation measured so far. The work
runs in ``tlstudio.core.tasks.distill.distill`` through the shared JobRunner; torch and timm are
only imported by the worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from tlstudio.core import events as ev
from tlstudio.gui.panels.distill_inputs import QUICK_STUDENTS, TIPS, DistillInputsMixin
from tlstudio.gui.panels.distill_report import DistillReportMixin
from tlstudio.gui.panels.run_common import (
    RunStartMixin,
    engine_job,
    fmt_count,
    make_hint_label,
    make_log_view,
    progress_text,
    why_not_ready,
)

__all__ = ["QUICK_STUDENTS", "TIPS", "DistillPanel"]  # the constants stay importable from here


class DistillPanel(DistillInputsMixin, DistillReportMixin, RunStartMixin, QWidget):
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
        self._build_inputs(form_lay)

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
        self.hint = make_hint_label("#b35900")
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
        self._build_report(rl)
        self.log_view = make_log_view(max_height=120)
        rl.addWidget(self.log_view, 1)
        split.addWidget(right)
        split.setStretchFactor(1, 3)

    # ------------------------------------------------------------------ config and control
    def _why_not_ready(self) -> str:
        reason = why_not_ready(self.runner, self.state)
        if reason:
            return reason
        if not self.selected_teachers():
            return "Select at least one teacher run."
        if not self.student_name():
            return "Choose a student backbone."
        return ""

    def start(self) -> bool:
        config = self._checked_config()
        if config is None:
            return False
        self._mine = True
        self.hint.setText("")
        self.clear_curves()
        self.log_view.clear()
        self.status_label.setText(f"Starting: {len(config.teachers)} teacher(s) -> {config.backbone} ...")
        self.state.set_step_status("distill", "busy")
        self.runner.start(engine_job("tlstudio.core.tasks.distill", "distill", config), owner=self)
        return True

    def resumable_run(self) -> str | None:
        """This panel's last distillation, or the selected run, if it is a distillation without its report."""
        from tlstudio.core.runs.folder import first_run
        from tlstudio.core.tasks.tradeoff import TRADEOFF_JSON

        return first_run((self.last_run_dir, self.state.current_run),
                         lambda path, info: info.kind == "distill" and not (path / TRADEOFF_JSON).is_file())

    def continue_run(self, run_dir: str | None = None) -> bool:
        run_dir = run_dir or self.resumable_run()
        if not run_dir or self.runner.running:
            return False
        self._mine = True
        self.hint.setText("")
        self.last_run_dir = run_dir
        self.status_label.setText(f"Continuing {Path(run_dir).name} ...")
        self.state.set_step_status("distill", "busy")
        self.runner.start(engine_job("tlstudio.core.tasks.distill", "resume_distill", run_dir), owner=self)
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
                    f"{fmt_count(e.total_params, digits=0)} parameters")
                if hasattr(self.state, "set_current_run"):
                    self.state.set_current_run(e.run_dir)
        elif isinstance(e, ev.Progress):
            self.status_label.setText(progress_text(e))
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
