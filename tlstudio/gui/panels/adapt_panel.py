"""Adapt step: learning from the unlabelled images (domain adaptation or semi-supervised).

Top: the method and its settings (written to ``state.task_settings``), Start/Stop. Middle: curves
of the source (labelled) and target (unlabelled) losses and of the validation accuracy while it
runs. Bottom: the result of the current run - adapted vs unadapted (source validation accuracy,
the unsupervised target score, check-set accuracy) and which model was kept and why, or for
semi-supervised runs labelled-only vs with unlabelled images and the pseudo-label statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

METHOD_TEXT = {
    "mcc": ("MCC: minimum class confusion (recommended)",
            "Trains on your labelled images while making the predictions on the new images decided and "
            "distinct. Best in our measurements (+30 points on a camera change)."),
    "selftrain": ("Self-training: class-balanced pseudo-labels",
                  "Rounds of: label the new images the model is surest about (balanced over classes), retrain. "
                  "With BatchNorm re-estimation."),
    "adabn": ("AdaBN: BatchNorm statistics only (seconds)",
              "No training: re-estimates the normalisation of the body on the new images. Not for ViT/ConvNeXt."),
    "dann": ("DANN: domain-adversarial (advanced)",
             "A discriminator tries to tell the two domains apart while the body learns to make them look "
             "alike. Trains the last layers of the body: slower."),
}
SEMI_TEXT = {
    "auto": "Automatic: pseudo-labels (best in our measurements, frozen or training body)",
    "pseudolabel": "Pseudo-labels: confident predictions become labels (class-balanced cap)",
    "fixmatch": "FixMatch: weak/strong augmentation consistency (trains the last layers; advanced)",
}


def bars_text(stats: dict[str, Any]) -> str:
    """A round's confidence bar: "0.50", or one per class ("0.50, 0.17, 0.00") when some were lowered."""
    bars = stats.get("class_thresholds") or []
    thr = float(stats.get("threshold", 0))
    if not bars or all(b >= thr for b in bars):
        return f"{thr:.2f}"
    return ", ".join(f"{b:.2f}" for b in bars)


class AdaptPanel(QWidget):
    def __init__(self, state: Any, runner: Any = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.runner = runner
        self._points: dict[str, list[tuple[float, float]]] = {}
        # how the last run ended ("" before any run), and for which folder: the status line says so
        # until another run starts or another folder is chosen
        self.outcome = ""
        self._outcome_for: tuple | None = None
        self._title = ""  # the running kind's title, for the outcome text
        lay = QVBoxLayout(self)
        self.title = QLabel()
        lay.addWidget(self.title)

        # --- settings -------------------------------------------------------------------
        self.adapt_box = QGroupBox("Adaptation method")
        form = QFormLayout(self.adapt_box)
        self.method = QComboBox()
        for key, (text, _) in METHOD_TEXT.items():
            self.method.addItem(text, key)
        self.method_help = QLabel()
        self.method_help.setWordWrap(True)
        self.weight = QDoubleSpinBox(minimum=0.0, maximum=10.0, singleStep=0.5, value=1.0)
        self.rounds = QSpinBox(minimum=1, maximum=10, value=3)
        self.bn = QComboBox()
        for text, val in (("automatic (as measured)", None), ("on", True), ("off", False)):
            self.bn.addItem(text, val)
        self.applicable = QLabel()
        self.applicable.setWordWrap(True)
        form.addRow("Method", self.method)
        form.addRow("", self.method_help)
        form.addRow("Loss weight", self.weight)
        form.addRow("Rounds", self.rounds)
        form.addRow("Re-estimate BatchNorm", self.bn)
        form.addRow("", self.applicable)
        lay.addWidget(self.adapt_box)

        self.semi_box = QGroupBox("Semi-supervised settings")
        sform = QFormLayout(self.semi_box)
        self.semi_method = QComboBox()
        for key, text in SEMI_TEXT.items():
            self.semi_method.addItem(text, key)
        from tlstudio.core.tasks.semisupervised.config import DEFAULT_THRESHOLD

        self.threshold = QDoubleSpinBox(minimum=0.0, maximum=0.999, singleStep=0.05, decimals=3, value=DEFAULT_THRESHOLD)
        self.threshold.setToolTip("A prediction becomes a pseudo-label only at or above this confidence")
        self.cap = QDoubleSpinBox(minimum=0.1, maximum=10.0, singleStep=0.1, value=1.0)
        self.cap.setToolTip("Per class at most this multiple of its expected share of the unlabelled images")
        self.semi_rounds = QSpinBox(minimum=1, maximum=10, value=2)
        self.class_bars = QCheckBox("Lower it for classes the model is rarely sure of")
        self.class_bars.setChecked(True)
        self.class_bars.setToolTip("Each class's bar follows how often the model is sure of that class, so a hard "
                                   "class still gets pseudo-labels instead of none (FlexMatch's thresholds). Off: "
                                   "one bar for every class.")
        sform.addRow("Method", self.semi_method)
        sform.addRow("Confidence threshold", self.threshold)
        sform.addRow("", self.class_bars)
        sform.addRow("Class cap", self.cap)
        sform.addRow("Rounds", self.semi_rounds)
        lay.addWidget(self.semi_box)

        row = QHBoxLayout()
        self.start_btn = QPushButton("Start")
        self.stop_btn = QPushButton("Stop")
        self.start_btn.clicked.connect(self.start)
        self.stop_btn.clicked.connect(lambda: self.runner and self.runner.stop())
        self.status = QLabel("")
        self.status.setWordWrap(True)
        row.addWidget(self.start_btn)
        row.addWidget(self.stop_btn)
        row.addWidget(self.status, 1)
        lay.addLayout(row)

        # --- curves ---------------------------------------------------------------------
        plots = self._build_curves()
        lay.addLayout(plots, 1)

        # --- results --------------------------------------------------------------------
        self.result_box = QGroupBox("Result")
        rl = QVBoxLayout(self.result_box)
        self.result_text = QLabel("")
        self.result_text.setWordWrap(True)
        self.table = QTableWidget(0, 4)
        self.table.verticalHeader().setVisible(False)
        rl.addWidget(self.result_text)
        rl.addWidget(self.table)
        lay.addWidget(self.result_box)

        for w in (self.method, self.bn, self.semi_method):
            w.currentIndexChanged.connect(self._write_settings)
        for w in (self.weight, self.threshold, self.cap):
            w.valueChanged.connect(self._write_settings)
        for w in (self.rounds, self.semi_rounds):
            w.valueChanged.connect(self._write_settings)
        self.class_bars.toggled.connect(self._write_settings)
        # FixMatch keeps its own fixed bar on weak-view predictions
        self.semi_method.currentIndexChanged.connect(
            lambda _i: self.class_bars.setEnabled(self.semi_method.currentData() != "fixmatch"))
        state.task_kind_changed.connect(lambda _k: self._refresh())
        state.task_settings_changed.connect(self._refresh_status)
        state.current_run_changed.connect(self.show_run)
        state.model_changed.connect(self._refresh_applicable)
        if runner is not None:
            runner.event.connect(self.on_event)
            runner.running_changed.connect(lambda _r: self._refresh_status())
            runner.finished.connect(self._on_finished)
            runner.failed.connect(self._on_failed)
        self._refresh()
        if getattr(state, "current_run", None):
            self.show_run(state.current_run)

    def _build_curves(self) -> QHBoxLayout:
        """The loss chart (source and target loss per step) and the score chart (per epoch), side by side."""
        import pyqtgraph as pg

        self.plot = pg.PlotWidget(background="w")
        self.plot.setAccessibleName("Source and target loss per step")
        self.plot.setMinimumHeight(160)
        self.plot.addLegend(offset=(-10, 10))
        self.plot.setLabel("bottom", "epoch of the adaptation")
        self.plot.setLabel("left", "loss")
        self.plot.getAxis("left").enableAutoSIPrefix(False)  # 0.5, not "500 (x0.001)"
        self.curves = {
            "source_loss": self.plot.plot([], [], pen=pg.mkPen("#1f77b4", width=2), name="source (labelled) loss"),
            "target_loss": self.plot.plot([], [], pen=pg.mkPen("#d62728", width=2), name="target (unlabelled) loss"),
        }
        self.acc_plot = pg.PlotWidget(background="w")
        self.acc_plot.setAccessibleName("Accuracy and target score per epoch")
        self.acc_plot.setMinimumHeight(120)
        self.acc_plot.addLegend(offset=(-10, -10))  # bottom right: accuracy curves run along the top
        self.acc_plot.setYRange(0, 1)
        self.acc_plot.setLabel("left", "score")
        self.curves["val_acc"] = self.acc_plot.plot([], [], pen=pg.mkPen("#2ca02c", width=2),
                                                    name="source validation accuracy")
        self.curves["target_info_max"] = self.acc_plot.plot([], [], pen=pg.mkPen("#9467bd", width=2),
                                                            name="target confidence/diversity")
        plots = QHBoxLayout()
        plots.addWidget(self.plot, 1)
        plots.addWidget(self.acc_plot, 1)
        return plots

    # ------------------------------------------------------------------ settings
    def kind(self) -> str:
        return self.state.task_kind if self.state.task_kind in ("adaptation", "semisupervised") else "adaptation"

    def settings(self) -> dict[str, Any]:
        if self.kind() == "adaptation":
            m = self.method.currentData()
            out: dict[str, Any] = {"adapt": m, "bn_adapt": self.bn.currentData(), "selftrain_rounds": self.rounds.value()}
            if m == "dann":
                out["dann_weight"] = self.weight.value()
            else:
                out["mcc_weight"] = self.weight.value()
            return out
        return {"method": self.semi_method.currentData(), "pseudo_threshold": round(self.threshold.value(), 3),
                "cap_factor": self.cap.value(), "rounds": self.semi_rounds.value(),
                "class_thresholds": self.class_bars.isChecked()}

    def _write_settings(self) -> None:
        from tlstudio.gui.panels.unlabelled_zone import ADAPT, SEMI, kind_keys

        own = (kind_keys(ADAPT) | kind_keys(SEMI)) - {"target_dir", "check_dir", "unlabeled_dir"}
        keep = {k: v for k, v in self.state.task_settings.items() if k not in own}  # folders, other widgets' keys
        self.state.set_task_settings({**keep, **self.settings()}, replace=True)
        self._refresh_help()

    def _refresh(self) -> None:
        adapt = self.kind() == "adaptation"
        self.adapt_box.setVisible(adapt)
        self.semi_box.setVisible(not adapt)
        self.title.setText("<b>Adapt to the new domain</b>" if adapt else
                           "<b>Learn from the unlabelled images</b>")
        self._refresh_help()
        self._refresh_applicable()
        self._refresh_status()

    def _refresh_help(self) -> None:
        m = self.method.currentData()
        self.method_help.setText(METHOD_TEXT[m][1])
        self.weight.setEnabled(m in ("mcc", "dann"))
        self.rounds.setEnabled(m == "selftrain")
        self.bn.setEnabled(m != "adabn")

    def _refresh_applicable(self) -> None:
        model = getattr(self.state, "model", None)
        if model is None:
            self.applicable.setText("")
            return
        from tlstudio.core.tasks.adaptation.adabn import applicability

        ok, reason = applicability(model, getattr(getattr(self.state, "model_info", None), "name", ""))
        self.applicable.setText("" if ok else reason)

    def _refresh_status(self) -> None:
        ts = self.state.task_settings or {}
        folder = ts.get("target_dir") if self.kind() == "adaptation" else ts.get("unlabeled_dir")
        running = bool(self.runner is not None and self.runner.running)
        self.start_btn.setEnabled(bool(folder) and bool(getattr(self.state, "data_dir", None)) and not running)
        self.stop_btn.setEnabled(running)
        if not folder and not running:
            self.status.setText("Add a folder of unlabelled images in the Data step first.")
        elif not running and self.outcome and self._outcome_for == self._inputs():
            self.status.setText(self.outcome)  # how the run ended, as the Train step says it
        elif not running:
            extra = f"; check set {ts['check_dir']}" if ts.get("check_dir") else ""
            self.status.setText(f"Unlabelled images: {folder}{extra}")

    def _inputs(self) -> tuple:
        """The kind and folders a run used: another choice makes the last outcome old news."""
        ts = self.state.task_settings or {}
        return self.kind(), ts.get("target_dir"), ts.get("unlabeled_dir"), ts.get("check_dir")

    # ------------------------------------------------------------------ running
    def make_config(self):
        from tlstudio.core.tasks.registry import get

        kind = get(self.kind())
        base = self.state.make_config().model_dump()
        base.pop("task", None)
        return kind, kind.config_cls(**{**base, **(self.state.task_settings or {}), **self.settings()})

    def start(self) -> None:
        if self.runner is None:
            return
        try:
            kind, cfg = self.make_config()
        except Exception as exc:  # noqa: BLE001 - shown to the user, e.g. a missing folder
            self.status.setText(f"Cannot start: {exc}")
            return
        self.clear_curves()
        self.outcome, self._outcome_for = "", None
        self._title = kind.title
        self.status.setText(f"{kind.title}: running...")
        self.state.set_step_status("adapt", "busy")
        self.runner.start(lambda stop, pause: kind.run(cfg, stop, pause), owner=self)

    def clear_curves(self) -> None:
        self._points = {}
        for c in self.curves.values():
            c.setData([], [])

    def on_event(self, ev: Any) -> None:
        from tlstudio.core import events as E

        if isinstance(ev, E.EpochEnd) and ev.phase in ("adapt", "semi"):
            self._add(ev.epoch + 1, {**ev.metrics, **ev.parts}, per_batch=False)
        elif isinstance(ev, E.BatchEnd) and ev.phase in ("adapt", "semi") and ev.parts:
            # trainable bodies (engine): losses per batch; DANN's domain loss and FixMatch's
            # unlabelled loss are the target-side losses
            p = ev.parts
            values = {"source_loss": p.get("source_loss", p.get("labelled_loss")),
                      "target_loss": p.get("target_loss", p.get("domain_loss", p.get("unlabelled_loss")))}
            self._add(ev.epoch + (ev.batch + 1) / max(1, ev.batches), values, per_batch=True)
        elif isinstance(ev, (E.Log, E.Warn)) and (self.runner is None or self.runner.owner is self):
            self.status.setText(ev.message[:300])
        elif isinstance(ev, E.Finished) and ev.run_dir and self._is_main_run(ev.run_dir):
            self.state.set_current_run(ev.run_dir)  # not the source-only / labelled-only sub-run
            if hasattr(self.state, "set_step_status"):  # the sidebar ticks the step, as Train does
                self.state.set_step_status("adapt", "done" if ev.status in ("finished", "early_stopped")
                                           else "attention")
            if self.runner is None or self.runner.owner is self:
                self._set_outcome(self._finished_text(ev))
            self.show_run(ev.run_dir)

    def _finished_text(self, ev: Any) -> str:
        title = self._title or ("Adaptation" if self.kind() == "adaptation" else "Semi-supervised")
        best = f", best val acc {ev.best_val_acc:.1%}" if ev.best_val_acc is not None else ""
        text = f"{title} {ev.status.replace('_', ' ')}: {Path(ev.run_dir).name}{best}."
        if ev.message:
            text += f" {ev.message}"
        elif ev.status == "finished":
            text += " The result is below." if self.kind() == "adaptation" else \
                " The result is below; review the proposed labels in the Review step."
        return text

    def _set_outcome(self, text: str) -> None:
        self.outcome, self._outcome_for = text, self._inputs()
        self.status.setText(text)

    def _on_finished(self, result: Any) -> None:
        """The job ended (after its last event): the status line and the status bar say how."""
        if self.runner is None or self.runner.owner is not self:
            return
        if not self.outcome:  # no Finished event of the main run (e.g. stopped before it began)
            status = getattr(result, "status", None) or "finished"
            title = self._title or "Run"
            self._set_outcome(f"{title} {str(status).replace('_', ' ')}.")
            self.state.set_step_status("adapt", "done" if status in ("finished", "early_stopped") else "attention")
        self._refresh_status()
        self.state.status_message.emit(self.outcome)
        self.state.runs_changed.emit()

    def _on_failed(self, message: str, tb: str) -> None:
        if self.runner is None or self.runner.owner is not self:
            return
        self.state.set_step_status("adapt", "attention")
        self._set_outcome(f"Failed: {message}")
        self._refresh_status()
        self.state.status_message.emit(self.outcome)
        from tlstudio.gui.widgets.error_dialog import show_error

        show_error(self, "Adaptation failed" if self.kind() == "adaptation" else "Semi-supervised run failed",
                   message, tb, modal=False)

    @staticmethod
    def _is_main_run(run_dir: str) -> bool:
        from tlstudio.core.runs.folder import RunError, read_run

        try:
            return read_run(run_dir).task in ("adaptation", "semisupervised")
        except (RunError, OSError):
            return False

    def _add(self, x: float, values: dict[str, Any], per_batch: bool) -> None:
        for key, curve in self.curves.items():
            v = values.get(key)
            if v is None or (per_batch and key in ("val_acc", "target_info_max")):
                continue
            pts = self._points.setdefault(key, [])
            pts.append((x, float(v)))
            curve.setData([q[0] for q in pts], [q[1] for q in pts])

    # ------------------------------------------------------------------ results
    def show_run(self, run_dir: str | None) -> None:
        from tlstudio.core.runs.folder import RunError, read_history, read_run

        if not run_dir or not Path(run_dir, "run.json").is_file():
            return
        try:
            info = read_run(run_dir)
        except RunError:
            return
        if info.task == "adaptation":
            self._show_adaptation(info.extra.get("adaptation") or {})
        elif info.task == "semisupervised":
            self._show_semi(info.extra.get("semisupervised") or {}, list(info.model.classes or []))
        else:
            return
        if not self._points:  # a finished run opened later: its curves from history.csv
            rows = read_history(run_dir)
            for key, curve in self.curves.items():
                pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
                self._points[key] = pts
                curve.setData([p[0] for p in pts], [p[1] for p in pts])

    def _fill(self, headers: list[str], rows: list[list[str]]) -> None:
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(headers)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, v in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(v))
        self.table.resizeColumnsToContents()
        self.table.setFixedHeight(self.table.horizontalHeader().height() + 6 + sum(
            self.table.rowHeight(i) for i in range(len(rows))))

    def _show_adaptation(self, rep: dict[str, Any]) -> None:
        def pct(v):
            return "-" if v is None else f"{v:.1%}"

        def num(v):
            return "-" if v is None else f"{v:.2f}"

        rows = []
        for who, label in (("unadapted", "Unadapted (source only)"), ("adapted", f"Adapted ({rep.get('method', '')})")):
            s = rep.get(who) or {}
            rows.append([label, pct(s.get("source_val_acc")), num(s.get("target_info_max")),
                         pct(s.get("check_acc")) + (f" of {s['check_n']}" if s.get("check_n") else "")])
        self._fill(["Model", "Source validation accuracy", "Target confidence/diversity", "Check-set accuracy"], rows)
        sel = rep.get("selection") or {}
        gap = rep.get("domain_gap") or {}
        text = []
        if gap.get("score") is not None:
            text.append(f"Domain gap {gap['score']:.2f}: {gap.get('sentence', '')}")
        if sel:
            text.append(f"<b>Kept: the {sel.get('selected')} model.</b> {sel.get('reason', '')}")
        self.result_text.setText("<br>".join(text))

    def _show_semi(self, rep: dict[str, Any], classes: list[str] | None = None) -> None:
        a = (rep.get("semi") or {}).get("val_acc")
        b = (rep.get("labelled_only") or {}).get("val_acc")
        rounds = rep.get("pseudo_labels", [])
        rows = [[f"Round {st['round']}", str(st.get("selected", 0)),
                 ", ".join(str(x) for x in st.get("per_class", [])), bars_text(st)] for st in rounds]
        self._fill(["Round", "Pseudo-labels", "Per class", "Confidence bar"], rows)
        names = list(classes or [])
        if names:  # the numbers are in class order: each round's row names them in its tooltip
            self.table.horizontalHeaderItem(2).setToolTip("In class order: " + ", ".join(names))
            for r, st in enumerate(rounds):
                bars = st.get("class_thresholds") or []
                tip = "\n".join(f"{c}: {n} pseudo-labels" + (f", bar {bars[k]:.2f}" if k < len(bars) else "")
                                 for k, (c, n) in enumerate(zip(names, st.get("per_class", []))))
                for col in (2, 3):
                    self.table.item(r, col).setToolTip(tip)
        parts = []
        if a is not None and b is not None:
            parts.append(f"Validation accuracy: labelled images alone {b:.1%}, with the unlabelled images {a:.1%} "
                         f"({(a - b) * 100:+.1f} points).")
        parts.append(f"{rep.get('unlabelled_images', 0)} unlabelled images, method {rep.get('method', '')}. "
                     "Review the proposed labels in the Review step.")
        self.result_text.setText(" ".join(parts))
