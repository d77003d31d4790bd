"""Evaluate step of a multi-task run: per-task metrics, a confusion matrix per categorical task,
the comparison with separate single-task models, and the task relatedness matrix.

Shows what training stored in run.json at once (no torch); "Evaluate again" re-runs the best
weights on the validation split, "Evaluate on a table…" on another label table with the same
tasks (both in a worker thread).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QFileDialog,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QWidget,
)

from tlstudio.gui.panels.multitask_page import page_frame, run_job
from tlstudio.gui.widgets.confusion import ConfusionMatrixWidget


def _item(text: str, color: str | None = None, tip: str = "") -> QTableWidgetItem:
    it = QTableWidgetItem(text)
    it.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
    if color:
        it.setForeground(QColor(color))
    if tip:
        it.setToolTip(tip)
    return it


def _table(headers: list[str]) -> QTableWidget:
    t = QTableWidget(0, len(headers))
    t.setAccessibleName(", ".join(str(h) for h in headers))
    t.setHorizontalHeaderLabels(headers)
    t.verticalHeader().setVisible(False)
    t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    t.horizontalHeader().setStretchLastSection(True)
    t.setSizeAdjustPolicy(QTableWidget.SizeAdjustPolicy.AdjustToContents)
    return t


class MultiTaskEvaluatePanel(QWidget):
    def __init__(self, state: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.run_dir: str | None = None
        self.schema: dict[str, Any] = {}
        self.again_btn = QPushButton("Evaluate again")
        self.again_btn.setToolTip("Run the best weights on the validation split")
        self.table_btn = QPushButton("Evaluate on a table…")
        self.table_btn.setToolTip("A CSV/TSV with the same task columns (and classes)")
        self.title, self.status, self.body = page_frame(self, "Multi-task evaluation", [self.again_btn, self.table_btn],
                                                        "Choose a multi-task run (Runs step), or train one.")

        self.body.addWidget(QLabel("<b>Per task</b> (validation split, best epoch)"))
        self.metrics = _table(["Task", "Type", "Labelled images", "Accuracy", "Macro-F1", "MAE", "R²"])
        self.body.addWidget(self.metrics)
        self.base_title = QLabel("<b>Multi-task vs separate models</b>")
        self.body.addWidget(self.base_title)
        self.baseline = _table(["Task", "Multi-task", "Separate model", "Δ (points)", "Noise (± points)", ""])
        self.body.addWidget(self.baseline)
        self.verdict = QLabel()
        self.verdict.setWordWrap(True)
        self.body.addWidget(self.verdict)
        self.body.addWidget(QLabel("<b>Confusion matrices</b> (rows: true class, columns: predicted)"))
        self.conf_tabs = QTabWidget()
        self.conf_tabs.setMinimumHeight(280)
        self.body.addWidget(self.conf_tabs)
        self.rel_title = QLabel("<b>Task relatedness</b>: cosine between the tasks' gradients on the shared layers, "
                                "averaged over training (1 = they pull the same way, 0 = unrelated, "
                                "below 0 = conflicting)")
        self.rel_title.setWordWrap(True)
        self.body.addWidget(self.rel_title)
        self.related = _table([])
        self.related.setAccessibleName("Task relatedness: cosine of the tasks' gradients on the shared layers")
        self.related.horizontalHeader().setStretchLastSection(False)
        self.related.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.related.horizontalHeader().setDefaultSectionSize(90)
        self.body.addWidget(self.related)
        self.body.addStretch(1)

        self.again_btn.clicked.connect(lambda: self.evaluate(None))
        self.table_btn.clicked.connect(self._choose_table)
        state.current_run_changed.connect(lambda d: self.set_run(d or None))
        if getattr(state, "current_run", None):
            self.set_run(state.current_run)
        self._buttons()

    def _buttons(self) -> None:
        ok = bool(self.run_dir)
        self.again_btn.setEnabled(ok)
        self.table_btn.setEnabled(ok)

    # --- showing a run ----------------------------------------------------------------------------
    def set_run(self, run_dir: str | None) -> None:
        from tlstudio.core.runs.folder import read_run

        self.run_dir = None
        if run_dir:
            try:
                info = read_run(run_dir)
            except Exception as exc:  # noqa: BLE001
                self.status.setText(str(exc))
                self._buttons()
                return
            if info.task == "multitask" and info.label_schema:
                self.run_dir = run_dir
                self.schema = info.label_schema
                mt = info.extra.get("multitask") or {}
                self.title.setText(f"<h3>Multi-task evaluation: {Path(run_dir).name}</h3>")
                w = mt.get("weighting", "equal") + (" + PCGrad" if mt.get("pcgrad") else "")
                best = f"best epoch {info.best_epoch + 1}, " if info.best_epoch is not None else ""
                if mt.get("task_epochs") and len(mt["task_epochs"]) > 1:  # head-only: a head per task's best epoch
                    best = "best epochs " + ", ".join(f"{t} {e + 1}" for t, e in mt["task_epochs"].items()) + "; "
                score = info.metrics.get("val_score")
                self.status.setText(f"{info.model.backbone}, {mt.get('sharing', 'hard')} sharing, weighting {w}; "
                                    f"{best}mean task score {score:.3f}" if score is not None else "")
                self.show_per_task(mt.get("per_task") or {})
                self.show_baseline(mt.get("baseline"))
                self.show_relatedness(mt.get("relatedness"), [t["name"] for t in self.schema["tasks"]])
            else:
                self.status.setText(f"{Path(run_dir).name} is not a multi-task run.")
        self._buttons()

    def show_per_task(self, per: dict[str, dict[str, Any]]) -> None:
        types = {t["name"]: t for t in self.schema.get("tasks", [])}
        self.metrics.setRowCount(len(per))
        while self.conf_tabs.count():
            self.conf_tabs.removeTab(0)
        for r, (name, d) in enumerate(per.items()):
            task = types.get(name, {"type": d.get("type", "categorical"), "classes": d.get("classes", [])})
            vals = [name, task["type"], str(d.get("n", "")),
                    f"{d['accuracy']:.1%}" if "accuracy" in d else "",
                    f"{d['macro_f1']:.3f}" if "macro_f1" in d else "",
                    f"{d['mae']:.4g}" if "mae" in d else "", f"{d['r2']:.3f}" if "r2" in d else ""]
            for c, v in enumerate(vals):
                self.metrics.setItem(r, c, _item(v))
            if d.get("confusion") and task["type"] == "categorical":
                cm = ConfusionMatrixWidget()
                cm.set_matrix(d["confusion"], list(task["classes"]))
                self.conf_tabs.addTab(cm, name)
        kinds = {types.get(n, {}).get("type", per[n].get("type")) for n in per}
        for c in (3, 4):  # accuracy and macro-F1: categorical and multi-label tasks
            self.metrics.setColumnHidden(c, not kinds & {"categorical", "multilabel"})
        for c in (5, 6):  # MAE and R^2: numeric tasks
            self.metrics.setColumnHidden(c, "numeric" not in kinds)
        self.metrics.resizeColumnsToContents()
        self.conf_tabs.setVisible(self.conf_tabs.count() > 0)

    def show_baseline(self, base: dict[str, Any] | None) -> None:
        visible = bool(base)
        for w in (self.base_title, self.baseline, self.verdict):
            w.setVisible(True)
        if not visible:
            self.baseline.setRowCount(0)
            self.verdict.setText("No single-task baselines yet: tick \"Also train a separate model per task\" in the "
                                 "Data step (CLI: --baseline) to see whether sharing helps or hurts each task.")
            self.verdict.setStyleSheet("color: palette(mid);")
            return
        rows = base["rows"]
        self.baseline.setRowCount(len(rows))
        for r, row in enumerate(rows):
            neg, better = row["negative"], row.get("better", False)
            color = "#b00020" if neg else ("#1b7f3b" if better else None)
            note = ("negative transfer between tasks" if neg else "better with sharing" if better
                    else "same within the noise")
            self.baseline.setItem(r, 0, _item(row["task"]))
            self.baseline.setItem(r, 1, _item(f"{row['mtl']:.1%}"))
            self.baseline.setItem(r, 2, _item(f"{row['single']:.1%}"))
            self.baseline.setItem(r, 3, _item(f"{row['delta_points']:+.1f}", color))
            noise = row.get("noise_points")
            self.baseline.setItem(r, 4, _item(f"±{noise:.1f}" if noise is not None else "",
                                              tip="One standard error of the difference on these validation images"))
            self.baseline.setItem(r, 5, _item(note, color, "This task did worse in the shared model than alone, "
                                              "beyond the noise" if neg else ""))
        self.baseline.resizeColumnsToContents()
        self.verdict.setText(f"Δm = {base['delta_m']:+.2f} %. {base['verdict']}")
        self.verdict.setStyleSheet("color: #b00020;" if base["negative_tasks"]
                                   else "color: #9a5b00;" if base.get("unrelated_tasks") else "")

    def show_relatedness(self, matrix: list[list[float]] | None, names: list[str]) -> None:
        ok = bool(matrix) and len(names) > 1
        self.rel_title.setVisible(ok)
        self.related.setVisible(ok)
        if not ok:
            return
        self.related.setColumnCount(len(names))
        self.related.setRowCount(len(names))
        self.related.setHorizontalHeaderLabels(names)
        self.related.setVerticalHeaderLabels(names)
        self.related.verticalHeader().setVisible(True)
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                it = _item(f"{v:+.2f}")
                a = min(1.0, abs(v))
                base = (27, 127, 59) if v >= 0 else (176, 0, 32)
                it.setBackground(QColor(*base, int(30 + 150 * a)) if i != j else QColor(220, 220, 220))
                it.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.related.setItem(i, j, it)
        self.related.setFixedWidth(self.related.verticalHeader().sizeHint().width() + 90 * len(names) + 4)

    # --- evaluating again ---------------------------------------------------------------------
    def _choose_table(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Evaluate on a label table with the same tasks", "",
                                              "Label tables (*.csv *.tsv *.txt *.xlsx)")
        if path:
            self.evaluate(path)

    def evaluate(self, data: str | None, wait: bool = False) -> None:
        if not self.run_dir:
            return
        run_dir = self.run_dir

        def job():
            from tlstudio.core.tasks.multitask.artifacts import evaluate

            return evaluate(run_dir, data)

        self.status.setText(f"Evaluating on {data or 'the validation split'}…")
        self.again_btn.setEnabled(False)
        self.table_btn.setEnabled(False)
        self._step("busy")
        run_job(self, job, self._done, self._failed, wait)

    def _step(self, status: str) -> None:
        """The sidebar's mark of this step (a bare stand-in state in some tests has none)."""
        if hasattr(self.state, "set_step_status"):
            self.state.set_step_status("mt_evaluate", status)

    def _done(self, result: dict[str, Any]) -> None:
        self.show_per_task(result["tasks"])
        self.status.setText(f"Evaluated on {result['data']}: {result['n']} images, mean task score "
                            f"{result['metrics'].get('score', 0):.3f}")
        self._buttons()
        self._step("done")  # ticked, as the classification Evaluate step is

    def _failed(self, exc: BaseException) -> None:
        self.status.setText(f"Evaluation failed: {exc}")
        self._buttons()
        self._step("attention")
