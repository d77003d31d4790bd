"""Anomaly step "Predict": drop images (or folders), get a score, a verdict and a heat map per
image. The false-alarm slider moves the threshold on the run's held-out good scores and the
verdicts update live (no re-scoring: raw scores are kept); "Save threshold" writes it to the
run so exports and the CLI use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.panels.anomaly_widgets import (
    ANOMALY_RED,
    NORMAL_GREEN,
    FalseAlarmSlider,
    HeatmapList,
    score_detail,
    score_label,
)
from tlstudio.gui.state import AppState
from tlstudio.gui.heavy import needing_torch
from tlstudio.gui.workers import start_worker

THUMB_PX = 96


def _name(path: str) -> str:
    """folder/file: test sets reuse file names across defect folders."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _predict(run_dir: str, paths: list[str]) -> list[dict]:  # worker thread
    from tlstudio.core.tasks.registry import kind_of_run

    return kind_of_run(run_dir).predict(run_dir, paths, keep_maps=True)


class AnomalyPredictPanel(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.setAcceptDrops(True)
        self.meta: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        self.threshold: float | None = None  # raw
        self.scale = 1.0

        self.run_label = QLabel()
        self.add_btn = QPushButton("Add images…")
        self.clear_btn = QPushButton("Clear")
        self.drop_hint = QLabel("Drop images or folders here")
        self.drop_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.drop_hint.setStyleSheet("QLabel { border: 2px dashed #90a4ae; border-radius: 8px; padding: 14px; color: #546e7a; }")
        self.slider = FalseAlarmSlider()
        self.f1_btn = QPushButton("Use F1-optimal")
        self.f1_btn.setToolTip("The threshold that gave the best F1 on the run's labelled defects")
        self.save_btn = QPushButton("Save threshold to run")
        self.threshold_label = QLabel()
        self.counts = QLabel()
        self.counts.setTextFormat(Qt.TextFormat.RichText)
        self.status = QLabel()
        self.browser = HeatmapList("Predicted images: score and verdict", THUMB_PX, gallery=False,
                                   above=[(self.drop_hint, 0), (self.counts, 0)], sides=(2, 3))
        self.list, self.overlay, self.detail = self.browser.list, self.browser.overlay, self.browser.detail

        top = QHBoxLayout()
        top.addWidget(self.run_label, 1)
        top.addWidget(self.add_btn)
        top.addWidget(self.clear_btn)
        thr = QHBoxLayout()
        thr.addWidget(QLabel("Threshold:"))
        thr.addWidget(self.slider, 1)
        thr.addWidget(self.f1_btn)
        thr.addWidget(self.save_btn)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("<h2>Check new images</h2>"))
        lay.addLayout(top)
        lay.addLayout(thr)
        lay.addWidget(self.threshold_label)
        lay.addWidget(self.status)
        lay.addWidget(self.browser, 1)

        self.add_btn.clicked.connect(self._choose)
        self.clear_btn.clicked.connect(self.clear)
        self.slider.rate_changed.connect(self.set_false_alarm_rate)
        self.f1_btn.clicked.connect(self.use_f1)
        self.save_btn.clicked.connect(self.save_threshold)
        self.browser.row_selected.connect(self._show_row)
        state.current_run_changed.connect(self._run_changed)
        self._run_changed()

    # --- run and threshold ---------------------------------------------------------------
    def _run_changed(self, *_a) -> None:
        run = self.state.current_run
        self.meta = {}
        if run:
            try:
                from tlstudio.core.runs.folder import read_run

                self.meta = dict((read_run(run).extra or {}).get("anomaly") or {})
            except Exception as exc:  # noqa: BLE001 - unreadable run: say so
                self.status.setText(f"Cannot read the run: {exc}")
        ok = bool(self.meta)
        self.run_label.setText(f"<b>Run:</b> {Path(run).name}" if ok else "No anomaly run: fit one first.")
        for w in (self.add_btn, self.slider, self.save_btn):
            w.setEnabled(ok)
        self.f1_btn.setEnabled(ok and self.meta.get("f1_threshold") is not None)
        if ok:
            self.threshold, self.scale = float(self.meta["threshold"]), float(self.meta["scale"])
            self.slider.blockSignals(True)
            self.slider.set_rate(float(self.meta.get("false_alarm_rate") or 0.01))
            self.slider.blockSignals(False)
            self._refresh()

    def set_false_alarm_rate(self, rate: float) -> None:
        from tlstudio.core.tasks.anomaly.threshold import false_alarm_threshold, normal_scale

        held = self.meta.get("holdout_scores") or []
        if not held:
            return
        self.threshold = false_alarm_threshold(held, rate)
        self.mode = "false_alarm"
        self._refresh()

    def use_f1(self) -> None:
        if self.meta.get("f1_threshold") is None:
            return
        self.threshold = float(self.meta["f1_threshold"])
        self.mode = "f1"
        self._refresh()

    def save_threshold(self) -> None:
        from tlstudio.core.tasks.anomaly.store import set_threshold

        run = self.state.current_run
        if not run or self.threshold is None:
            return
        if getattr(self, "mode", "false_alarm") == "f1":
            self.meta = set_threshold(run, mode="f1")
        else:
            self.meta = set_threshold(run, false_alarm_rate=self.slider.rate())
        self.threshold, self.scale = float(self.meta["threshold"]), float(self.meta["scale"])
        self.status.setText(f"Threshold saved to the run ({self.meta['threshold']:.4g}); export again to ship it.")

    def score_of(self, raw: float) -> float:
        from tlstudio.core.tasks.anomaly.threshold import normalise_np

        return float(normalise_np(raw, self.threshold, self.scale))

    def _refresh(self) -> None:
        if self.threshold is None:
            return
        held = np.asarray(self.meta.get("holdout_scores") or [], dtype=float)
        far = float((held > self.threshold).mean()) if held.size else float("nan")
        self.threshold_label.setText(f"raw threshold {self.threshold:.4g}; on the {held.size} held-out good "
                                     f"images {far:.1%} would be flagged")
        flagged = 0
        for item, r in self.browser.items():
            if r.get("raw_score") is None:
                continue
            bad = r["raw_score"] > self.threshold
            flagged += bad
            item.setText(f"{_name(r['path'])}\n{'ANOMALY' if bad else 'normal'}  score "
                         f"{score_label(self.score_of(r['raw_score']), r['raw_score'], self.threshold)}")
            item.setForeground(Qt.GlobalColor.red if bad else Qt.GlobalColor.darkGreen)
        scored = sum(1 for r in self.rows if r.get("raw_score") is not None)
        if scored:
            self.counts.setText(f"<b>{flagged}</b> of {scored} images flagged as anomalous")
        if self.browser.current_row() is not None:
            self._show_row(self.browser.current_row())

    # --- images ----------------------------------------------------------------------------
    def _choose(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Images to check", "",
                                                "Images (*.png *.jpg *.jpeg *.bmp *.tif *.tiff *.webp)")
        if files:
            self.add_paths(files)

    def dragEnterEvent(self, e: QDragEnterEvent) -> None:  # noqa: N802
        if e.mimeData().hasUrls() and self.meta:
            e.acceptProposedAction()

    def dropEvent(self, e: QDropEvent) -> None:  # noqa: N802
        paths = [u.toLocalFile() for u in e.mimeData().urls() if u.isLocalFile()]
        if paths:
            self.add_paths(paths)
            e.acceptProposedAction()

    def add_paths(self, paths: list[str]) -> None:
        run = self.state.current_run
        if not run or not self.meta:
            return
        self.status.setText(f"Scoring {len(paths)} item(s)…")
        start_worker(self, needing_torch(_predict), run, list(paths), returned=self.add_rows,
                     errored=lambda exc: self.status.setText(f"Cannot score: {exc}"))

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        self.rows += rows
        for r in rows:
            if r.get("error"):
                item = self.browser.add(r, f"{_name(r['path'])}\ncannot score: {r['error']}", thumbnail=False)
                item.setForeground(Qt.GlobalColor.gray)
            else:  # the text (verdict at the current threshold) is written by _refresh
                self.browser.add(r, "", heatmap=r.get("map"), opacity=0.4)
        self.status.setText(f"{len(self.rows)} images")
        self.browser.select_first()
        self._refresh()

    def clear(self) -> None:
        self.rows = []
        self.browser.clear()
        self.counts.clear()

    def _show_row(self, r: dict) -> None:
        if r.get("error"):
            self.browser.show_image(r["path"], None, f"<b>{Path(r['path']).name}</b>: {r['error']}")
            return
        # the map is kept normalised at the fit's threshold: re-normalise at the current one
        m = r.get("map")
        if m is not None and self.threshold is not None:
            from tlstudio.core.tasks.anomaly.threshold import renormalise

            old = (float(self.meta["threshold"]), float(self.meta["scale"]))
            m = renormalise(m.astype(np.float64), old, (self.threshold, self.scale)).astype(np.float32)
        bad = r["raw_score"] > self.threshold
        colour = ANOMALY_RED if bad else NORMAL_GREEN
        self.browser.show_image(r["path"], m, f"<b>{_name(r['path'])}</b>: "
                                f"{score_detail(self.score_of(r['raw_score']), r['raw_score'], self.threshold)} "
                                f"(0.5 = threshold) → <span style='color:{colour}'><b>{'anomaly' if bad else 'normal'}"
                                f"</b></span>")


if __name__ == "__main__":  # preview: python -m tlstudio.gui.panels.anomaly_predict RUN [IMAGES...]
    import sys

    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv)
    st = AppState()
    w = AnomalyPredictPanel(st)
    if len(sys.argv) > 1:
        st.set_current_run(sys.argv[1])
        if len(sys.argv) > 2:
            w.add_paths(sys.argv[2:])
    w.resize(1100, 760)
    w.show()
    sys.exit(app.exec())
