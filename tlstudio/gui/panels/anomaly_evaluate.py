"""Anomaly step "Evaluate": image AUROC, pixel AUROC (masks), F1 at the threshold, the score
histogram of good vs defect images with the threshold line, per-defect detection, and a
gallery of test images with their heat maps overlaid (click one to inspect it large).

Evaluation is ``registry.kind_of_run(run).evaluate(run, folder, keep_maps=True)`` in a worker;
the folder defaults to the run's own labelled test images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
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
    HeatmapList,
    ScoreHistogram,
    score_detail,
    score_label,
    score_sort_key,
)
from tlstudio.gui.state import AppState
from tlstudio.gui.heavy import needing_torch
from tlstudio.gui.workers import start_worker

THUMB_PX = 112
GALLERY_LIMIT = 300  # thumbnails drawn at most (all rows are in the report)


def _evaluate(run_dir: str, folder: str | None) -> dict:  # worker thread
    from tlstudio.core.tasks.registry import kind_of_run

    return kind_of_run(run_dir).evaluate(run_dir, folder, keep_maps=True, map_size=THUMB_PX)


class _Metric(QLabel):
    def __init__(self, title: str) -> None:
        super().__init__()
        self.title = title
        self.setTextFormat(Qt.TextFormat.RichText)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setMinimumWidth(110)
        self.setStyleSheet("QLabel { border: 1px solid #cfd8dc; border-radius: 6px; padding: 6px; }")
        self.set_value(None)

    def set_value(self, v: float | None, fmt: str = "{:.3f}") -> None:
        text = "–" if v is None else fmt.format(v)
        self.setText(f"<span style='font-size:20px;'><b>{text}</b></span><br>{self.title}")


class AnomalyEvaluatePanel(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.report: dict[str, Any] | None = None
        self.folder: str | None = None

        self.run_label = QLabel()
        self.folder_label = QLabel("Test images: the run's own labelled test set")
        self.folder_btn = QPushButton("Test folder…")
        self.folder_btn.setToolTip("A folder with good/ and defect sub-folders, an MVTec category, or plain images")
        self.own_btn = QPushButton("Run's test set")
        self.eval_btn = QPushButton("Evaluate")
        self.eval_btn.setDefault(True)
        self.status = QLabel()
        self.status.setWordWrap(True)

        self.m_auroc = _Metric("image AUROC")
        self.m_pixel = _Metric("pixel AUROC")
        self.m_f1 = _Metric("F1 at threshold")
        self.m_recall = _Metric("defects caught")
        self.m_far = _Metric("false alarms")
        metrics = QHBoxLayout()
        for m in (self.m_auroc, self.m_pixel, self.m_f1, self.m_recall, self.m_far):
            metrics.addWidget(m)
        self.defects = QLabel()
        self.defects.setWordWrap(True)
        self.defects.setTextFormat(Qt.TextFormat.RichText)

        self.histogram = ScoreHistogram()
        self.sort = QComboBox()
        self.sort.addItems(["most anomalous first", "mistakes first", "by folder"])
        g = QHBoxLayout()
        g.addWidget(QLabel("<b>Test images</b> (border: red = flagged, green = passed)"), 1)
        g.addWidget(self.sort)
        self.browser = HeatmapList("Test images with their anomaly heat maps", THUMB_PX, gallery=True,
                                   above=[(metrics, 0), (self.defects, 0), (self.histogram, 1), (g, 0)],
                                   list_stretch=2, sides=(3, 2))
        self.gallery, self.overlay, self.detail = self.browser.list, self.browser.overlay, self.browser.detail

        top = QHBoxLayout()
        top.addWidget(self.run_label, 1)
        top.addWidget(self.folder_btn)
        top.addWidget(self.own_btn)
        top.addWidget(self.eval_btn)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("<h2>Evaluate the anomaly detector</h2>"))
        lay.addLayout(top)
        lay.addWidget(self.folder_label)
        lay.addWidget(self.status)
        lay.addWidget(self.browser, 1)

        self.eval_btn.clicked.connect(self.start)
        self.folder_btn.clicked.connect(self._choose_folder)
        self.own_btn.clicked.connect(lambda: self.set_folder(None))
        self.browser.row_selected.connect(self._show_row)
        self.sort.currentIndexChanged.connect(lambda _i: self._fill_gallery())
        state.current_run_changed.connect(self._run_changed)
        self._run_changed()

    def _run_changed(self, *_a) -> None:
        run = self.state.current_run
        self.run_label.setText(f"<b>Run:</b> {Path(run).name}" if run else "No anomaly run yet: fit one first.")
        self.eval_btn.setEnabled(bool(run))

    def _choose_folder(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Folder of test images")
        if d:
            self.set_folder(d)

    def set_folder(self, folder: str | None) -> None:
        self.folder = folder
        self.folder_label.setText(f"Test images: {folder}" if folder else "Test images: the run's own labelled test set")

    def start(self) -> None:
        run = self.state.current_run
        if not run:
            return
        self.eval_btn.setEnabled(False)
        self.status.setText("Evaluating… (features of every test image, then the scores and maps)")
        self.state.set_step_status("anomaly_evaluate", "busy")
        start_worker(self, needing_torch(_evaluate), run, self.folder, returned=self.set_report, errored=self._failed)

    def _failed(self, exc: BaseException) -> None:
        self.eval_btn.setEnabled(True)
        self.status.setText(f"Cannot evaluate: {exc}")
        self.state.set_step_status("anomaly_evaluate", "attention")

    def set_report(self, report: dict[str, Any]) -> None:
        self.report = report
        self.eval_btn.setEnabled(bool(self.state.current_run))
        m = report.get("metrics", {})
        self.m_auroc.set_value(m.get("image_auroc"))
        self.m_pixel.set_value(m.get("pixel_auroc"))
        self.m_f1.set_value(m.get("f1"))
        self.m_recall.set_value(m.get("recall"), "{:.0%}")
        self.m_far.set_value(m.get("false_alarm_rate"), "{:.1%}")
        rows = []
        for d, r in report.get("per_defect", {}).items():
            au = "" if r.get("auroc_vs_good") is None else f", AUROC {r['auroc_vs_good']:.3f}"
            rows.append(f"<b>{d}</b>: {r['detected']}/{r['n']} flagged{au}")
        extra = ""
        if report.get("f1_optimal") is not None:
            extra = f"<br>The F1-optimal threshold would give F1 {report['f1_optimal']:.3f} (Predict step: choose it)."
        notes = "".join(f"<br><i>{n}</i>" for n in report.get("notes", []))
        self.defects.setText(" · ".join(rows) + extra + notes)
        self.histogram.set_histogram(report.get("histogram", {}))
        n_fail = len(report.get("failures", []))
        self.status.setText(f"{report.get('n', 0)} images scored" + (f", {n_fail} could not be read" if n_fail else ""))
        self._fill_gallery()
        # the sidebar ticks the step, as the classification Evaluate step does
        self.state.set_step_status("anomaly_evaluate", "done" if report.get("n", 0) else "attention")

    def _sorted_rows(self) -> list[dict]:
        rows = [r for r in (self.report or {}).get("per_image", []) if r.get("score") is not None]
        mode = self.sort.currentIndex()
        if mode == 0:
            return sorted(rows, key=lambda r: -score_sort_key(r))
        if mode == 1:
            def wrong(r):
                return r["label"] >= 0 and (r["verdict"] == "anomaly") != (r["label"] == 1)
            return sorted(rows, key=lambda r: (not wrong(r), -score_sort_key(r)))
        return sorted(rows, key=lambda r: (r["defect"], r["path"]))

    def _fill_gallery(self) -> None:
        self.browser.clear()
        thr = (self.report or {}).get("threshold")
        for r in self._sorted_rows()[:GALLERY_LIMIT]:
            truth = {1: r["defect"], 0: "good"}.get(r["label"], "")
            self.browser.add(r, f"{score_label(r['score'], r.get('raw_score'), thr)} {truth}".strip(),
                             heatmap=r.get("map"), border=ANOMALY_RED if r["verdict"] == "anomaly" else NORMAL_GREEN,
                             tooltip=f"{r['path']}\n{score_detail(r['score'], r.get('raw_score'), thr)} "
                                     f"({r['verdict']}), truth: {truth or 'unknown'}")
        self.browser.select_first()

    def _show_row(self, r: dict) -> None:
        truth = {1: f"defect ({r['defect']})", 0: "good"}.get(r["label"], "unknown")
        colour = ANOMALY_RED if r["verdict"] == "anomaly" else NORMAL_GREEN
        self.browser.show_image(r["path"], r.get("map"), f"<b>{Path(r['path']).name}</b>: "
                                f"{score_detail(r['score'], r.get('raw_score'), (self.report or {}).get('threshold'))} → "
                                f"<span style='color:{colour}'><b>{r['verdict']}</b></span>; truth: {truth}")


if __name__ == "__main__":  # preview: python -m tlstudio.gui.panels.anomaly_evaluate RUN [FOLDER]
    import sys

    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv)
    st = AppState()
    w = AnomalyEvaluatePanel(st)
    if len(sys.argv) > 1:
        st.set_current_run(sys.argv[1])
        w.set_folder(sys.argv[2] if len(sys.argv) > 2 else None)
        w.start()
    w.resize(1200, 820)
    w.show()
    sys.exit(app.exec())
