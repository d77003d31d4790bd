"""The Evaluate step's background evaluation: on the validation split or another folder with
the same classes, through the panel's JobRunner, with progress and the buttons' enabled state.
``tlstudio.core.evaluation.evaluate`` (and with it torch) is imported in the worker thread only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog


class EvalProgress(QObject):
    progress = Signal(int, int)  # emitted from the worker thread, delivered on the UI thread


class EvalJobMixin:
    """Evaluate in the background. The panel provides ``self.state``, ``self.run_dir``,
    ``self.job`` (JobRunner), ``self._relay`` (EvalProgress), ``self.busy``, ``self.eval_btn``,
    ``self.folder_btn`` and ``show_report``."""

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Evaluate on a folder with the same classes")
        if folder:
            self.evaluate(folder)

    def evaluate(self, folder: str | None = None) -> bool:
        """Evaluate the current run (validation split, or ``folder``) in the background."""
        if not self.run_dir or self.job.running:
            return False
        run_dir, relay = self.run_dir, self._relay

        def factory(stop, pause):
            # through the run's kind (a k-NN run has no classifier head; a distilled student is a
            # classifier): every classifying kind's evaluate() returns an EvalReport as a dict
            from tlstudio.core.evaluation.evaluate import EvalReport
            from tlstudio.core.tasks.registry import kind_of_run

            kind = kind_of_run(run_dir)
            result = kind.evaluate(run_dir, folder, progress=lambda d, t: relay.progress.emit(int(d), int(t or 0)))
            return EvalReport.from_json(result)
            yield  # noqa: unreachable - makes this a generator for the runner

        self.busy.setRange(0, 0)
        self.busy.setFormat("Evaluating… %p%")
        self.job.start(factory)
        return True

    def _on_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.busy.setRange(0, total)
            self.busy.setValue(done)

    def _on_busy(self, running: bool) -> None:
        self.busy.setVisible(running)
        self._update_buttons()

    def _on_eval_done(self, report: Any) -> None:
        self.show_report(report)
        where = getattr(report, "source", "") or "validation split"
        self.state.status_message.emit(f"Evaluated on {where}: accuracy {report.accuracy:.1%}")

    def _on_eval_failed(self, message: str, tb: str) -> None:
        from tlstudio.gui.widgets.error_dialog import show_error

        self.state.set_step_status("evaluate", "attention")
        show_error(self, "Evaluation failed", message, tb, modal=False)

    def _update_buttons(self) -> None:
        from tlstudio.core.runs.folder import BEST_WEIGHTS

        has_weights = bool(self.run_dir) and (Path(self.run_dir) / BEST_WEIGHTS).is_file()
        idle = not self.job.running
        self.eval_btn.setEnabled(has_weights and idle)
        self.folder_btn.setEnabled(has_weights and idle)
        if not has_weights and self.run_dir:
            self.eval_btn.setToolTip("This run has no trained weights yet.")
