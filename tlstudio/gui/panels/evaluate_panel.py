"""Step 5, Evaluate: metrics, per-class table, confusion heat map, misclassified gallery.

Shows the current run's eval.json (written by the engine after training) and can evaluate again,
on the validation split or on any other folder with the same classes, in a background job.
Clicking a confusion cell lists that cell's images in the gallery. When the run also trained a
from-scratch baseline, the gain of transfer is shown, with a clear warning when it is negative.

This module has the panel, its top bar and the loading of a run. The metrics, baseline and
per-class table are in ``evaluate_metrics``, the confusion heat map and mistakes gallery in
``evaluate_errors``, the background evaluation in ``evaluate_job``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.panels.evaluate_errors import GALLERY_LIMIT, EvalErrorsMixin
from tlstudio.gui.panels.evaluate_errors import GalleryModel as _GalleryModel
from tlstudio.gui.panels.evaluate_errors import Shot as _Shot
from tlstudio.gui.panels.evaluate_job import EvalJobMixin
from tlstudio.gui.panels.evaluate_job import EvalProgress as _Relay
from tlstudio.gui.panels.evaluate_metrics import BaselineView, PerClassTable, report_metrics
from tlstudio.gui.panels.evaluate_metrics import NumItem as _NumItem
from tlstudio.gui.runner import JobRunner
from tlstudio.gui.state import AppState

# the gallery and table helpers stay importable from here under their old names
__all__ = ["GALLERY_LIMIT", "EvaluatePanel", "_GalleryModel", "_NumItem", "_Relay", "_Shot"]

log = logging.getLogger("tlstudio.gui")


class EvaluatePanel(EvalErrorsMixin, EvalJobMixin, QWidget):
    report_shown = Signal()

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.report: Any = None  # tlstudio.core.evaluation.evaluate.EvalReport
        self.info: Any = None  # tlstudio.core.runs.folder.RunInfo
        self.run_dir: str | None = None
        self.job = JobRunner(self)
        self._relay = _Relay(self)
        self._build()
        self.job.finished.connect(self._on_eval_done)
        self.job.failed.connect(self._on_eval_failed)
        self.job.running_changed.connect(self._on_busy)
        self._relay.progress.connect(self._on_progress)
        state.current_run_changed.connect(self.load_run)
        state.training_changed.connect(lambda _: self._update_buttons())
        self.load_run(state.current_run or "")

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        root = QVBoxLayout(self)
        top = QHBoxLayout()
        self.run_label = QLabel("No run selected: train a model or open one in Runs.")
        self.run_label.setWordWrap(True)
        self.eval_btn = QPushButton("Evaluate validation split")
        self.eval_btn.setToolTip("Measure the best weights on the images held back for validation.")
        self.folder_btn = QPushButton("Evaluate another folder…")
        self.folder_btn.setToolTip("Measure the model on a different labelled folder with the same class "
                                   "names (e.g. a separate test set).")
        self.busy = QProgressBar()
        self.busy.setMaximumWidth(200)
        self.busy.hide()
        top.addWidget(self.run_label, 1)
        top.addWidget(self.busy)
        top.addWidget(self.eval_btn)
        top.addWidget(self.folder_btn)
        root.addLayout(top)
        self.eval_btn.clicked.connect(lambda: self.evaluate())
        self.folder_btn.clicked.connect(self._choose_folder)

        split = QSplitter(Qt.Orientation.Horizontal)
        root.addWidget(split, 1)
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        from tlstudio.gui.views.metrics_view import MetricsView

        self.metrics_view = MetricsView("Metrics")
        self.baseline_view = BaselineView()
        self.table = PerClassTable()
        lv.addWidget(self.metrics_view)
        lv.addWidget(self.baseline_view)
        lv.addWidget(self.table, 1)
        split.addWidget(left)  # metrics, baseline, per-class table
        split.addWidget(self._build_errors_side())  # confusion heat map over the mistakes gallery
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setSizes([430, 650])  # the per-class names keep their room at 1024 px

    # ------------------------------------------------------------------ loading
    def load_run(self, run_dir: str) -> None:
        """Show the run's eval.json (if any) and its baseline comparison."""
        from tlstudio.core.evaluation.evaluate import EvalReport
        from tlstudio.core.runs.folder import EVAL_JSON, RunError, read_run

        self.run_dir = run_dir or None
        self.info = None
        self.show_report(None)
        self.baseline_view.set_baseline(None)
        if not run_dir:
            self.run_label.setText("No run selected: train a model or open one in Runs.")
            self._update_buttons()
            return
        try:
            self.info = read_run(run_dir)
        except (RunError, OSError) as exc:
            self.run_label.setText(str(exc))
            self._update_buttons()
            return
        name = self.info.name or Path(run_dir).name
        self.run_label.setText(f"<b>{name}</b> · {self.info.model.backbone} · {self.info.status.replace('_', ' ')}")
        self.baseline_view.set_baseline(self.info.baseline, self.info.best_val_acc)
        path = Path(run_dir) / EVAL_JSON
        if path.is_file():
            try:
                self.show_report(EvalReport.from_json(json.loads(path.read_text(encoding="utf-8"))))
            except Exception as exc:  # noqa: BLE001 - a damaged eval.json: offer to evaluate again
                log.warning("cannot read %s: %s", path, exc)
                self.gallery_label.setText(f"{path.name} is unreadable; click Evaluate to measure again.")
        else:
            self.gallery_label.setText("This run has not been evaluated yet: click Evaluate.")
        self._update_buttons()

    def show_report(self, report: Any) -> None:
        self.report = report
        if report is None:
            self.metrics_view.set_metrics({})
            self.table.set_rows([])
        else:
            fails = len(getattr(report, "failures", []) or [])
            self.metrics_view.set_metrics(report_metrics(report), source=report.source or "validation split",
                                          n=report.n, note=f"{fails} unreadable, skipped" if fails else "")
            self.table.set_rows(report.per_class)
        self._show_errors(report)
        if report is None:
            return
        self.state.set_step_status("evaluate", "done")
        self.report_shown.emit()
