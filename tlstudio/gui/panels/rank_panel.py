"""Step Rank: which backbone or earlier run to start from, scored on the user's images first.

Left: the candidates, ticked by the user: backbones whose ImageNet weights are on this machine
(first, marked "offline"), earlier runs from the project's runs folder (a local model hub),
a few popular backbones that need a download (listed with the reason, unticked), and a
random-weights floor; a name box adds any timm backbone. Rank runs
``tlstudio.core.tasks.ranking.job.rank`` in the shared JobRunner with progress and Stop.
Right: the ranked table (LogME, linear probe, k-NN, ms per image, parameters), the summary in
plain words and "Train the top one" (or the selected one), which sets the backbone, its
weights source and input size in AppState and moves on to the next step.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from tlstudio.core import events as ev
from tlstudio.gui.panels.run_common import engine_job

#: shown (unticked, with the reason) when their weights are not on this machine
POPULAR = ("resnet18", "resnet50", "mobilenetv3_large_100", "efficientnet_b0", "convnext_nano")
BASELINE = "random:tf_efficientnet_lite0"
ROLE = Qt.ItemDataRole.UserRole
COLUMNS = ("#", "Candidate", "LogME", "Linear probe", "k-NN", "ms / image", "Parameters", "Note")


def list_candidates(runs_dir: str | None) -> dict[str, list[Any]]:
    """(worker thread) {"offline": [...], "runs": [...], "download": [...], "baseline": [...]} of Candidates.
    No torch/timm import: the list shows at once, even while the app still loads torch."""
    from tlstudio.core.tasks.ranking.candidates import earlier_runs, offline_backbones, resolve

    offline = [resolve(n, quick=True) for n in offline_backbones(quick=True)]
    names = {c.backbone for c in offline}
    download = [resolve(n, quick=True) for n in POPULAR if n not in names]
    return {"offline": offline, "runs": earlier_runs(runs_dir), "download": download,
            "baseline": [resolve(BASELINE, quick=True)]}


class RankPanel(QWidget):
    candidates_loaded = Signal(object)
    ranked = Signal(object)  # RankResult

    def __init__(self, state, runner=None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from tlstudio.gui.runner import JobRunner

        self.state = state
        self.runner = runner if runner is not None else JobRunner(self)
        self._mine = False
        self.result: Any = None
        self._build()
        self.candidates_loaded.connect(self.set_candidates)
        self.runner.event.connect(self._on_event)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.running_changed.connect(lambda _r: self._update_buttons())
        state.dataset_changed.connect(self._update_buttons)
        state.runs_changed.connect(self.refresh_candidates)
        self.refresh_candidates()
        self._update_buttons()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        split = QSplitter(Qt.Orientation.Horizontal, self)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        intro = QLabel("<b>Which starting point fits your images?</b> Before training, each ticked "
                       "candidate looks at a sample of your images once (with its own preprocessing) and is "
                       "scored: <b>LogME</b> (higher = its features separate your classes better), the "
                       "accuracy of a simple linear classifier on its features, k-nearest-neighbour "
                       "accuracy, and its speed on this computer.")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        lay.addWidget(split, 1)

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(QLabel("Candidates"))
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Candidate", "Status"])
        self.tree.setAccessibleName("Candidates to rank")
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.itemChanged.connect(lambda *_: self._update_buttons())
        ll.addWidget(self.tree, 1)
        add_row = QHBoxLayout()
        self.add_edit = QLineEdit()
        self.add_edit.setPlaceholderText("add a backbone by name (timm), e.g. resnet18")
        self.add_edit.setAccessibleName("Backbone name to add")
        self.add_edit.returnPressed.connect(self._add_typed)
        self.add_btn = QPushButton("Add")
        self.add_btn.clicked.connect(self._add_typed)
        add_row.addWidget(self.add_edit, 1)
        add_row.addWidget(self.add_btn)
        ll.addLayout(add_row)
        srow = QHBoxLayout()
        srow.addWidget(QLabel("Images to score"))
        self.samples = QSpinBox()
        self.samples.setRange(20, 20000)
        self.samples.setSingleStep(100)
        self.samples.setValue(500)
        self.samples.setToolTip("A stratified sample of this many images (every class kept). When the whole "
                                "data set is this small, the features are those the training will use.")
        self.samples.setAccessibleName("Images to score")
        srow.addWidget(self.samples)
        srow.addStretch(1)
        ll.addLayout(srow)
        brow = QHBoxLayout()
        self.rank_btn = QPushButton("Rank")
        self.rank_btn.setDefault(True)
        self.rank_btn.clicked.connect(self.start)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.clicked.connect(self.stop)
        brow.addWidget(self.rank_btn)
        brow.addWidget(self.stop_btn)
        ll.addLayout(brow)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setVisible(False)
        ll.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        ll.addWidget(self.status)
        split.addWidget(left)

        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setAccessibleName("Ranked candidates")
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        hh = self.table.horizontalHeader()
        for i in range(len(COLUMNS)):
            hh.setSectionResizeMode(i, QHeaderView.ResizeMode.ResizeToContents)
        hh.setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        # a run's name is long: the candidate column is capped (its date and time stay in view, the
        # whole name is in the tooltip) so the scores and the note stay in view (_fit_candidate_column)
        hh.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
        self.table.setWordWrap(False)
        self.table.itemSelectionChanged.connect(self._on_select)
        rl.addWidget(self.table, 2)
        self.summary = QLabel("Tick candidates and press Rank.")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        rl.addWidget(self.summary)
        self.detail = QLabel("")
        self.detail.setWordWrap(True)
        self.detail.setStyleSheet("color: palette(dark);")
        rl.addWidget(self.detail)
        trow = QHBoxLayout()
        self.train_top_btn = QPushButton("Train the top one")
        self.train_top_btn.setToolTip("Use the best-ranked candidate as the starting point and go to the next step")
        self.train_top_btn.clicked.connect(lambda: self.use_row(0))
        self.train_sel_btn = QPushButton("Use the selected one")
        self.train_sel_btn.clicked.connect(lambda: self.use_row(self.table.currentRow()))
        trow.addStretch(1)
        trow.addWidget(self.train_sel_btn)
        trow.addWidget(self.train_top_btn)
        rl.addLayout(trow)
        split.addWidget(right)
        split.setSizes([330, 700])

    # ------------------------------------------------------------------ candidates
    def refresh_candidates(self) -> None:
        from tlstudio.gui.workers import start_worker

        self.status.setText("Looking for backbones and earlier runs...")
        start_worker(self, list_candidates, self._runs_root(), returned=self.candidates_loaded.emit,
                     errored=lambda e: self.status.setText(f"Could not list candidates: {e}"))

    def _runs_root(self) -> str:
        """The project's runs folder, else the default one (as the Runs step)."""
        if self.state.runs_dir:
            return str(self.state.runs_dir)
        from tlstudio.core.paths import default_runs_dir

        return str(default_runs_dir())

    def set_candidates(self, groups: dict[str, list[Any]]) -> None:
        checked = set(self.checked_specs()) if self.tree.topLevelItemCount() else None
        self.tree.blockSignals(True)
        self.tree.clear()
        titles = {"offline": "Offline: ImageNet weights on this computer", "runs": "Your earlier runs",
                  "download": "Need a download", "baseline": "Baseline (no transfer)"}
        for key in ("offline", "runs", "download", "baseline"):
            cands = groups.get(key, [])
            if not cands:
                continue
            top = QTreeWidgetItem([titles[key], ""])
            f = QFont(top.font(0))
            f.setBold(True)
            top.setFont(0, f)
            top.setFlags(Qt.ItemFlag.ItemIsEnabled)
            self.tree.addTopLevelItem(top)
            for n, c in enumerate(cands):
                # ticked at first: the offline ImageNet backbones and the 3 newest runs (each costs a pass)
                first = c.available and (key == "offline" or (key == "runs" and n < 3))
                self._add_item(top, c, default=first if checked is None else c.spec in checked)
            top.setExpanded(True)
        self.tree.blockSignals(False)
        self.status.setText("")
        self._update_buttons()

    def _add_item(self, parent: QTreeWidgetItem, c: Any, default: bool) -> QTreeWidgetItem:
        mark = "offline" if c.available and c.offline else ("download" if c.available else "unavailable")
        item = QTreeWidgetItem([c.label, mark])
        item.setData(0, ROLE, c.spec)
        item.setToolTip(0, c.reason or c.spec)
        item.setToolTip(1, c.reason)
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsSelectable
        item.setFlags(flags)
        item.setCheckState(0, Qt.CheckState.Checked if default else Qt.CheckState.Unchecked)
        if not c.available:
            item.setForeground(1, QColor("#b45309"))
        elif c.offline:
            item.setForeground(1, QColor("#15803d"))
        parent.addChild(item)
        return item

    def _add_typed(self) -> None:
        name = self.add_edit.text().strip()
        if not name or name in self.checked_specs():
            return
        from tlstudio.core.tasks.ranking.candidates import resolve

        c = resolve(name)
        parent = None
        for i in range(self.tree.topLevelItemCount()):
            if self.tree.topLevelItem(i).text(0).startswith("Added"):
                parent = self.tree.topLevelItem(i)
        if parent is None:
            parent = QTreeWidgetItem(["Added by you", ""])
            parent.setFlags(Qt.ItemFlag.ItemIsEnabled)
            self.tree.addTopLevelItem(parent)
            parent.setExpanded(True)
        self._add_item(parent, c, default=True)
        self.add_edit.clear()
        if not c.available:
            self.status.setText(f"{name}: {c.reason}")
        self._update_buttons()

    def _items(self):
        for i in range(self.tree.topLevelItemCount()):
            top = self.tree.topLevelItem(i)
            for j in range(top.childCount()):
                yield top.child(j)

    def all_specs(self) -> list[str]:
        return [it.data(0, ROLE) for it in self._items()]

    def checked_specs(self) -> list[str]:
        return [it.data(0, ROLE) for it in self._items() if it.checkState(0) == Qt.CheckState.Checked]

    def set_checked(self, specs: list[str]) -> None:
        for it in self._items():
            it.setCheckState(0, Qt.CheckState.Checked if it.data(0, ROLE) in specs else Qt.CheckState.Unchecked)

    # ------------------------------------------------------------------ job
    def _busy(self) -> bool:
        return bool(self.runner.running)

    def _update_buttons(self) -> None:
        busy = self._busy()
        has_data = bool(self.state.data_dir)
        self.rank_btn.setEnabled(not busy and has_data and bool(self.checked_specs()))
        self.rank_btn.setToolTip("" if has_data else "Open a folder of labelled images in the Data step first")
        self.stop_btn.setEnabled(busy and self._mine)
        has = self.result is not None and self.result.top() is not None
        self.train_top_btn.setEnabled(has and not busy)
        row = self.table.currentRow()
        self.train_sel_btn.setEnabled(has and not busy and 0 <= row < len(self.result.ranked()) if has else False)
        hint = "Open a folder of labelled images in the Data step first."
        if not has_data and not busy:
            self.status.setText(hint)
        elif self.status.text() == hint:
            self.status.setText("")

    def make_config(self):
        from tlstudio.core.tasks.ranking.job import RankConfig

        s = self.state.settings
        from tlstudio.gui.state import new_run_dir

        out_dir = str(new_run_dir(self._runs_root(), "ranking"))
        return RankConfig(data_dir=self.state.data_dir or "", out_dir=out_dir, candidates=self.checked_specs(),
                          samples=int(self.samples.value()), seed=int(s.get("seed", 0) or 0),
                          val_fraction=float(s.get("val_fraction", 0.2) or 0.2),
                          device=str(s.get("device", "auto") or "auto"), leave_one_core=True)

    def start(self) -> None:
        if self._busy() or not self.checked_specs():
            return
        config = self.make_config()
        self._mine = True
        self.result = None
        self.table.setRowCount(0)
        self.summary.setText("Ranking...")
        self.detail.setText("")
        self.progress.setRange(0, len(config.candidates))
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.state.set_step_status("rank", "busy")
        self.runner.start(engine_job("tlstudio.core.tasks.ranking.job", "rank", config), owner=self)
        self._update_buttons()

    def stop(self) -> None:
        if self._mine:
            self.runner.stop()
            self.status.setText("Stopping after the current batch...")

    def _owned(self) -> bool:
        return self._mine and getattr(self.runner, "owner", self) is self

    def _on_event(self, e: Any) -> None:
        if not self._owned():
            return
        if isinstance(e, ev.Progress):
            if e.task == "rank":
                self.progress.setRange(0, max(1, e.total or 1))
                self.progress.setValue(e.done)
                self.progress.setFormat(f"{e.done} / {e.total}")
                self.status.setText(e.message)
            elif e.total:
                self.status.setText(f"{e.message or e.task}: {e.done} / {e.total}")
        elif isinstance(e, ev.Warn):
            self.detail.setText(e.message.split(". Choices")[0])
        elif isinstance(e, ev.Log):
            self.status.setText(e.message)

    def _on_finished(self, result: Any) -> None:
        if not self._owned():
            return
        self._mine = False
        self.progress.setVisible(False)
        self.show_result(result)
        self.state.runs_changed.emit()  # the ranking's folder is listed in the Runs step

    def _on_failed(self, message: str, tb: str) -> None:
        if not self._owned():
            return
        self._mine = False
        self.progress.setVisible(False)
        self.summary.setText(f"Ranking failed: {message}")
        self.state.set_step_status("rank", "attention")
        self._update_buttons()

    # ------------------------------------------------------------------ results
    def show_result(self, result: Any) -> None:
        self.result = result
        self.table.setRowCount(0)
        stopped = getattr(result, "status", "") == "stopped"
        for r in result.rows:
            self._add_row(r)
        self._fit_candidate_column()
        if result.ranked():
            self.table.selectRow(0)
        self.summary.setText(("Stopped: partial ranking. " if stopped else "") + (result.summary or ""))
        self.status.setText(f"{result.n_images} images scored in {result.seconds:.0f} s" if result.n_images else "")
        self.state.set_step_status("rank", "done" if result.ranked() else "attention")
        self.ranked.emit(result)
        self._update_buttons()

    def _add_row(self, r: Any) -> None:
        i = self.table.rowCount()
        self.table.insertRow(i)
        c = r.candidate
        label = c["label"] + ("" if c.get("offline", True) else "  (downloaded)")

        def cell(text: str, tip: str = "", align_right: bool = True) -> QTableWidgetItem:
            it = QTableWidgetItem(text)
            if align_right:
                it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            if tip:
                it.setToolTip(tip)
            return it

        if r.rank is None:
            vals = ["-", label, "", "", "", "", _params(r.params), f"not ranked: {(r.error or c.get('reason', ''))}"]
        else:
            probe = f"{r.probe_acc:.0%}" + (f" ± {r.probe_std:.0%}" if r.probe_std else "")
            vals = [str(r.rank), label, f"{r.logme:.3f}", probe, f"{r.knn_acc:.0%}",
                    f"{r.latency_ms:.1f}" if r.latency_ms else "-", _params(r.params), r.explanation]
        for col, v in enumerate(vals):
            tip = r.explanation or r.error
            it = cell(v.split(". Choices")[0], tip=f"{label}\n{tip}" if col == 1 else tip, align_right=col not in (1, 7))
            if r.rank is None:
                it.setForeground(QColor("#6b7280"))
            elif r.rank == 1:
                f = QFont(it.font())
                f.setBold(True)
                it.setFont(f)
            self.table.setItem(i, col, it)

    def _fit_candidate_column(self) -> None:
        """The candidate column as wide as its names, at most a third of the table."""
        self.table.resizeColumnToContents(1)
        cap = max(160, self.table.viewport().width() // 3)
        if self.table.columnWidth(1) > cap:
            self.table.setColumnWidth(1, cap)

    def resizeEvent(self, e: Any) -> None:  # noqa: N802 - the cap follows the table's width
        super().resizeEvent(e)
        if self.table.rowCount():
            self._fit_candidate_column()

    def _on_select(self) -> None:
        row = self.table.currentRow()
        if self.result is not None and 0 <= row < len(self.result.rows):
            self.detail.setText(self.result.rows[row].explanation)
        self._update_buttons()

    def use_row(self, row: int) -> None:
        """Set the ranked candidate as the training's starting point and go to the next step."""
        from tlstudio.core.tasks.ranking.job import train_settings

        if self.result is None or not (0 <= row < len(self.result.ranked())):
            return
        r = self.result.ranked()[row]
        settings = train_settings(r)
        self.state.update_settings({k: v for k, v in settings.items()})
        self.state.status_message.emit(f"Starting point: {r.candidate['label']} (ranked #{r.rank})")
        win = self.window()
        if hasattr(win, "show_step"):
            from tlstudio.gui.steps import STEPS

            ids = [s.id for s in STEPS]
            nxt = ids[ids.index("rank") + 1] if "rank" in ids and ids.index("rank") + 1 < len(ids) else "model"
            win.show_step(nxt)


def _params(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e6:.1f} M" if n >= 1e5 else f"{n / 1e3:.0f} k"


if __name__ == "__main__":  # preview: python -m tlstudio.gui.panels.rank_panel DATA_DIR
    import sys

    from PySide6.QtWidgets import QApplication

    from tlstudio.gui.state import AppState

    app = QApplication(sys.argv)
    st = AppState()
    if len(sys.argv) > 1:
        st.data_dir = sys.argv[1]
    w = RankPanel(st)
    w.resize(1150, 650)
    w.show()
    app.exec()
