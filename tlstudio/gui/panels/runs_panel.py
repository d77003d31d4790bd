"""Step 7, Runs: the history of runs, open one, overlay curves, rename, delete.

Rename changes the run's display name (run.json), never its folder: other runs (chained
transfer) and projects refer to runs by folder. Delete asks first and only removes folders that
are run folders inside the runs directory.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.state import AppState

log = logging.getLogger("tlstudio.gui")

METRICS_MIN_PX = 150  # the metrics column keeps room for "val acc 91.2%, ..." before the name gets more
COLUMNS = ["Name", "Date", "Task", "Backbone", "Status", "Best", "Epochs", "Transfer gain", "Metrics"]
COLUMN_TIPS = ["The run's display name", "When it started", "The kind of learning",
               "The network it trained", "finished, stopped (can be continued), failed ...",
               "The metric that picked the best epoch, at that epoch", "Epochs done / set",
               "Best accuracy minus a from-scratch run's (negative: transfer hurt)",
               "Every validation metric of the best epoch"]


def epochs_set(info: Any) -> Any:
    """The epochs a run was set to train, as counted in its epochs_done: a semi-supervised run with
    pseudo-labels on a frozen body trains its head head_epochs per round (not the Train step's epochs)."""
    cfg, semi = info.config or {}, (info.extra or {}).get("semisupervised") or {}
    if semi.get("method") == "pseudolabel" and semi.get("frozen_body") and cfg.get("head_epochs") and cfg.get("rounds"):
        return int(cfg["head_epochs"]) * int(cfg["rounds"])
    total = cfg.get("epochs", "")
    # a run that counted more epochs than set (another kind's own schedule): what it trained
    return info.epochs_done if isinstance(total, int) and info.epochs_done > total else total


def task_title(task: str) -> str:
    """The kind's title when the registry is loaded (the Data step loads it in the background),
    else the kind's name; never imports the kinds on the UI thread."""
    from tlstudio.core.tasks import registry

    k = registry._REGISTRY.get(task)
    return k.title if k is not None else task.replace("_", " ").capitalize()
_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _runs_root(state: AppState) -> Path:
    if state.runs_dir:
        return Path(state.runs_dir)
    from tlstudio.core.paths import default_runs_dir

    return Path(default_runs_dir())


class EpochAxis(pg.AxisItem):
    """An x axis of whole epochs: no 1.5, 2.5 ticks between the points of a short run."""

    def tickValues(self, minVal, maxVal, size):  # noqa: ANN001, N802, N803 - pyqtgraph's names
        levels, seen = [], set()
        for spacing, values in super().tickValues(minVal, maxVal, size):
            whole = [v for v in values if float(v).is_integer() and v not in seen]
            seen.update(whole)
            if whole:
                levels.append((spacing, whole))
        return levels


def fraction_range(values: list[float]) -> tuple[float, float] | None:
    """The y range of a chart of fractions (accuracy, F1, AUROC: every value in [0, 1]): up to 1.0
    and down to a little below the lowest value (at least 0.1 of room when the curves are flat at
    the top); None when some value lies outside [0, 1] (a loss or an error: pyqtgraph's auto range)."""
    if not values or min(values) < 0.0 or max(values) > 1.0:
        return None
    lo = min(min(values), 0.9)
    return max(0.0, lo - 0.1 * (1.0 - lo)), 1.0


class RunsPanel(QWidget):
    run_opened = Signal(str)

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.runs: list[tuple[Path, Any]] = []  # (run_dir, RunInfo)
        self._name_w: int | None = None  # the run names' measured width (_fit_columns)
        # tests replace these to answer the dialogs
        self.confirm = self._confirm
        self.ask_name = self._ask_name
        self._build()
        state.runs_changed.connect(self.refresh)
        state.current_run_changed.connect(self._select_current)
        state.training_changed.connect(lambda _: self._update_buttons())
        self.refresh()

    def _build(self) -> None:
        root = QVBoxLayout(self)
        self.root_label = QLabel()
        self.root_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.root_label.setWordWrap(True)  # a long runs path never widens the window
        root.addWidget(self.root_label)
        top = QHBoxLayout()
        self.refresh_btn = QPushButton("Refresh")
        self.refresh_btn.setToolTip("Read the runs folder again.")
        self.open_btn = QPushButton("Open run")
        self.open_btn.setToolTip("Make this run the current one: Evaluate, Predict and Export use its model.")
        self.overlay_btn = QPushButton("Compare curves")
        self.overlay_btn.setToolTip("Draw the validation curves of the selected runs on top of each other.")
        self.rename_btn = QPushButton("Rename…")
        self.rename_btn.setToolTip("Change the run's display name (its folder stays the same).")
        self.delete_btn = QPushButton("Delete…")
        self.delete_btn.setToolTip("Delete the selected runs and their files (asks first).")
        self.browse_btn = QPushButton("Open run folder…")
        self.browse_btn.setToolTip("Open a run folder from anywhere (e.g. one copied from another computer).")
        self.folder_btn = QPushButton("Show folder")
        self.folder_btn.setToolTip("Open the run folder in the file manager.")
        for b in (self.refresh_btn, self.browse_btn, self.open_btn, self.overlay_btn, self.rename_btn, self.delete_btn,
                  self.folder_btn):
            top.addWidget(b)
        top.addStretch(1)
        root.addLayout(top)
        self.refresh_btn.clicked.connect(self.refresh)
        self.open_btn.clicked.connect(self.open_selected)
        self.overlay_btn.clicked.connect(self.overlay_selected)
        self.rename_btn.clicked.connect(self.rename_selected)
        self.delete_btn.clicked.connect(self.delete_selected)
        self.folder_btn.clicked.connect(self._show_folder)
        self.browse_btn.clicked.connect(self._browse)

        split = QSplitter(Qt.Orientation.Vertical)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        for c, t in enumerate(COLUMN_TIPS):
            self.table.horizontalHeaderItem(c).setToolTip(t)
        self.table.setAccessibleName("Runs")
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)  # the metrics take what is left
        self.table.setWordWrap(False)
        self.table.setSortingEnabled(True)
        self.table.setToolTip("Every training run in the runs folder. Double-click to open one; select "
                              "several and click Compare curves to overlay them.")
        self.table.itemDoubleClicked.connect(lambda _: self.open_selected())
        self.table.itemSelectionChanged.connect(self._update_buttons)
        split.addWidget(self.table)

        plots = pg.GraphicsLayoutWidget()
        plots.setBackground("w")
        self.acc_plot = plots.addPlot(row=0, col=0, title="Validation accuracy", axisItems={"bottom": EpochAxis("bottom")})
        self.loss_plot = plots.addPlot(row=0, col=1, title="Validation loss", axisItems={"bottom": EpochAxis("bottom")})
        for p in (self.acc_plot, self.loss_plot):
            p.showGrid(x=True, y=True, alpha=0.25)
            p.setLabel("bottom", "epoch")
        self.acc_legend = self.acc_plot.addLegend(offset=(-10, -10))
        self.plots = plots
        plots.setAccessibleName("Compared curves")
        plots.setToolTip("Validation curves of the runs chosen with Compare curves.")
        self.no_curves = QLabel("")  # instead of empty plots: runs without epochs (fits that do not train)
        self.no_curves.setWordWrap(True)
        self.no_curves.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.curves_stack = QStackedWidget()
        self.curves_stack.addWidget(plots)
        self.curves_stack.addWidget(self.no_curves)
        split.addWidget(self.curves_stack)
        split.setSizes([300, 300])
        root.addWidget(split, 1)
        self.overlaid: list[str] = []

    # ------------------------------------------------------------------ table
    def refresh(self) -> None:
        from tlstudio.core.runs.folder import RunError, is_run_dir, list_runs, read_run

        root = _runs_root(self.state)
        self.root_label.setText(f"Runs in {root}")
        selected = set(self.selected_dirs())
        self.runs = []
        dirs = list_runs(root)
        cur = self.state.current_run
        if cur and is_run_dir(cur) and all(Path(cur).resolve() != d.resolve() for d in dirs):
            dirs.insert(0, Path(cur))  # the open run lives elsewhere: list it too
        for d in dirs:
            try:
                self.runs.append((d, read_run(d)))
            except (RunError, OSError) as exc:  # a damaged run is listed, not fatal
                log.warning("%s", exc)
                self.runs.append((d, None))
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(self.runs))
        for r, (d, info) in enumerate(self.runs):
            self._fill_row(r, d, info)
            if str(d) in selected:
                self.table.selectRow(r)
        self.table.setSortingEnabled(True)
        # "Transfer gain" only where some run trained a from-scratch baseline: an empty column
        # would take the width the names need
        gain_col = COLUMNS.index("Transfer gain")
        self.table.setColumnHidden(gain_col, not any(
            (self.table.item(r, gain_col) is not None and self.table.item(r, gain_col).text())
            for r in range(self.table.rowCount())))
        self._select_current(self.state.current_run or "")  # bold, then the widths
        self._update_buttons()

    def _fit_columns(self, measure: bool = True) -> None:
        """Every column as wide as its contents, the run's name at most 40% of the table (a
        name squeezed to "2026120..." says nothing) and never so wide that the metrics get less
        than ``METRICS_MIN_PX`` (a long anomaly run's name pushed them out of view), the metrics
        in what is left. Names and metrics cut short are whole in their tooltips.
        ``measure=False`` (a resize) reuses the contents' widths measured last time: measuring
        every row on each resize event is slow with hundreds of runs."""
        if measure or self._name_w is None:
            self.table.resizeColumnsToContents()
            slack = self.table.fontMetrics().horizontalAdvance("MM")  # a styled bold name measures short
            self._name_w = self.table.columnWidth(0) + slack
        view = self.table.viewport().width()
        last = self.table.columnCount() - 1
        others = sum(self.table.columnWidth(c) for c in range(1, last) if not self.table.isColumnHidden(c))
        cap = max(200, min(int(view * 0.4), view - others - METRICS_MIN_PX))
        self.table.setColumnWidth(0, min(cap, self._name_w))
        self.table.setColumnWidth(last, max(60, view - self.table.columnViewportPosition(last)))

    def resizeEvent(self, e: Any) -> None:  # noqa: N802 - the name's cap follows the table's width
        super().resizeEvent(e)
        if self.table.rowCount():
            self._fit_columns(measure=False)

    def showEvent(self, e: Any) -> None:  # noqa: N802 - fitted while hidden, the table had no real width
        super().showEvent(e)
        if self.table.rowCount():
            QTimer.singleShot(0, self._fit_columns)

    def _fill_row(self, r: int, d: Path, info: Any) -> None:
        def item(text: str, sort: Any = None, right: bool = False) -> QTableWidgetItem:
            it = QTableWidgetItem(text)
            if sort is not None:
                it.setData(Qt.ItemDataRole.UserRole + 1, sort)
            if right:
                it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            it.setData(Qt.ItemDataRole.UserRole, str(d))
            it.setToolTip(str(d))
            return it

        if info is None:
            self.table.setItem(r, 0, item(d.name))
            self.table.setItem(r, 4, item("unreadable"))
            for c in (1, 2, 3, 5, 6, 7, 8):
                self.table.setItem(r, c, item(""))
            return
        from tlstudio.core.tasks.registry import task_of_info
        from tlstudio.gui.panels.train_monitor import fmt_metric

        date = _dt.datetime.fromtimestamp(info.created).strftime("%Y-%m-%d %H:%M")
        metrics = dict(info.metrics or {})
        best_name = info.best_metric or "val_acc"
        best_value = metrics.get(best_name, info.best_val_acc if best_name == "val_acc" else None)
        shown = fmt_metric(best_name, best_value) if best_value is not None else ""
        best = shown.rsplit(" ", 1)[-1] if shown else ""
        epochs_total = epochs_set(info)
        gain = ""
        if info.baseline and info.baseline.get("gain") is not None:
            g = float(info.baseline["gain"])
            gain = f"{g * 100:+.1f} pts" + (" ⚠" if g < 0 else "")
        name = info.name or d.name
        if info.kind != "train":
            name += f" ({info.kind})"
        name_item = item(name)
        name_item.setToolTip(f"{name}\n{d}")  # whole when the column cuts it short
        self.table.setItem(r, 0, name_item)
        self.table.setItem(r, 1, item(date))
        self.table.setItem(r, 2, item(task_title(task_of_info(info))))
        self.table.setItem(r, 3, item(info.model.backbone))
        self.table.setItem(r, 4, item(info.status.replace("_", " ")))
        best_item = item(best, sort=best_value, right=True)
        best_item.setToolTip(f"{shown} (the metric that picked the best epoch)" if shown else "no epoch finished")
        self.table.setItem(r, 5, best_item)
        # no epoch count in the config: a fit without training epochs (anomaly): not "1/"
        self.table.setItem(r, 6, item(f"{info.epochs_done}/{epochs_total}" if epochs_total != "" else "–",
                                      right=True))
        self.table.setItem(r, 7, item(gain, right=True))
        text = " · ".join(fmt_metric(k, v) for k, v in metrics.items())
        m_item = item(text)
        m_item.setToolTip("\n".join(fmt_metric(k, v) for k, v in metrics.items()) or "no metrics yet")
        self.table.setItem(r, 8, m_item)

    def selected_dirs(self) -> list[str]:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        out = []
        for r in rows:
            it = self.table.item(r, 0)
            if it is not None:
                out.append(it.data(Qt.ItemDataRole.UserRole))
        return out

    def select_dirs(self, dirs: list[str]) -> None:
        self.table.clearSelection()
        mode = self.table.selectionMode()
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        for r in range(self.table.rowCount()):
            it = self.table.item(r, 0)
            if it is not None and it.data(Qt.ItemDataRole.UserRole) in dirs:
                self.table.selectRow(r)
        self.table.setSelectionMode(mode)

    def _select_current(self, run_dir: str) -> None:
        for r in range(self.table.rowCount()):
            it = self.table.item(r, 0)
            if it is None:
                continue
            f = it.font()
            f.setBold(bool(run_dir) and it.data(Qt.ItemDataRole.UserRole) == run_dir)
            it.setFont(f)
        self._fit_columns()  # the open run's name is in bold: wider

    def _update_buttons(self) -> None:
        sel = self.selected_dirs()
        running = bool(self.state.training)
        self.open_btn.setEnabled(len(sel) == 1)
        self.overlay_btn.setEnabled(len(sel) >= 1)
        self.rename_btn.setEnabled(len(sel) == 1)
        self.delete_btn.setEnabled(bool(sel) and not running)
        self.folder_btn.setEnabled(len(sel) == 1)

    # ------------------------------------------------------------------ actions
    def open_selected(self) -> None:
        sel = self.selected_dirs()
        if len(sel) == 1:
            self.state.set_current_run(sel[0])
            self.state.status_message.emit(f"Opened run {Path(sel[0]).name}")
            self.run_opened.emit(sel[0])

    def overlay_selected(self) -> None:
        self.overlay(self.selected_dirs())

    def overlay(self, dirs: list[str]) -> None:
        """Draw validation accuracy and loss per epoch of each run (history.csv)."""
        from tlstudio.core.runs.folder import read_history

        self.acc_plot.clear()
        self.loss_plot.clear()
        self.acc_legend.clear()
        self.overlaid = []
        has_loss = False
        metric_values: list[float] = []
        names = {str(d): (i.name if i is not None and i.name else d.name) for d, i in self.runs}
        best = {str(d): (i.best_metric if i is not None and i.best_metric else "val_acc") for d, i in self.runs}
        wanted = {best.get(str(d), "val_acc") for d in dirs}
        from tlstudio.gui.widgets.curves import chart_title, split_metric

        self.acc_plot.setTitle(chart_title(split_metric(next(iter(wanted)))[0]) if len(wanted) == 1
                               else "Best metric of each run")
        for n, d in enumerate(dirs):
            rows = read_history(d)
            if not rows:
                continue
            pen = pg.mkPen(_COLOURS[n % len(_COLOURS)], width=2)
            x = [r["epoch"] for r in rows if "epoch" in r]  # history.csv counts epochs from 1
            name = names.get(str(d), Path(d).name)
            metric = best.get(str(d), "val_acc")
            label = name if len(wanted) == 1 else f"{name}: {metric}"
            self.acc_plot.plot(x, [r.get(metric, float("nan")) for r in rows], pen=pen, symbol="o",
                               symbolSize=5, symbolBrush=_COLOURS[n % len(_COLOURS)], name=label)
            losses = [r.get("val_loss", float("nan")) for r in rows]
            if any(v == v for v in losses):  # semi-supervised head fits record none
                has_loss = True
                self.loss_plot.plot(x, losses, pen=pen, symbol="o",
                                    symbolSize=5, symbolBrush=_COLOURS[n % len(_COLOURS)])
            self.overlaid.append(d)
            metric_values += [v for v in (r.get(metric) for r in rows) if isinstance(v, float) and v == v]
        self.acc_plot.enableAutoRange()
        bounds = fraction_range(metric_values)
        if bounds is not None:  # accuracy-like: 1.0 is the top, never an axis running to 1.4
            self.acc_plot.setYRange(*bounds, padding=0.05)  # room for the 1.0 tick's label
        show, inside = has_loss or not self.overlaid, self.loss_plot in self.plots.ci.items
        if show != inside:  # no empty "Validation loss" plot: the accuracy plot takes the width
            if show:
                self.plots.ci.addItem(self.loss_plot, row=0, col=1)
            else:
                self.plots.ci.removeItem(self.loss_plot)
        self.loss_plot.setVisible(show)
        self.curves_stack.setCurrentWidget(self.no_curves if dirs and not self.overlaid else self.plots)
        if not self.overlaid and dirs:
            tasks = sorted({task_title(i.task) for d, i in self.runs if str(d) in set(map(str, dirs))
                            and i is not None and getattr(i, "task", None)})
            self.no_curves.setText("No curves to draw: the selected runs have no finished epoch"
                                   + (f" ({', '.join(tasks)} fits without training epochs: its metrics are "
                                      "in the table and in its Evaluate step)." if tasks else "."))
            self.state.status_message.emit("The selected runs have no finished epoch to draw yet.")

    def rename_selected(self) -> None:
        from tlstudio.core.runs.folder import read_run, write_run

        sel = self.selected_dirs()
        if len(sel) != 1:
            return
        info = read_run(sel[0])
        new = self.ask_name(info.name or Path(sel[0]).name)
        if new is None:
            return
        new = new.strip()
        if not new or new == info.name:
            return
        info.name = new[:200]
        write_run(sel[0], info)
        self.state.runs_changed.emit()  # this panel and the others that show run names refresh

    def delete_selected(self) -> None:
        sel = self.selected_dirs()
        if not sel or self.state.training:
            return
        names = ", ".join(Path(d).name for d in sel[:5]) + (" …" if len(sel) > 5 else "")
        if not self.confirm(f"Delete {len(sel)} run(s) and all their files?\n{names}\nThis cannot be undone."):
            return
        from tlstudio.core.runs.folder import is_run_dir

        root = _runs_root(self.state).resolve()
        refused = []
        for d in sel:
            p = Path(d).resolve()
            # only real run folders inside the runs directory: never follow a crafted path elsewhere
            if p.parent != root or not is_run_dir(p) or p.is_symlink():
                log.warning("refusing to delete %s (not a run folder in %s)", p, root)
                refused.append(str(p))
                continue
            try:
                shutil.rmtree(p)
            except OSError as exc:
                from tlstudio.gui.widgets.error_dialog import show_error

                show_error(self, "Cannot delete", f"{p}: {exc}", modal=False)
            if self.state.current_run and Path(self.state.current_run).resolve() == p:
                self.state.set_current_run(None)
        if refused:
            from tlstudio.gui.widgets.error_dialog import show_error

            show_error(self, "Not deleted", f"Only run folders inside {root} are deleted here; kept: "
                       + ", ".join(refused), modal=False)
        self.state.runs_changed.emit()  # refreshes this table too

    def _browse(self) -> None:
        from PySide6.QtWidgets import QFileDialog

        d = QFileDialog.getExistingDirectory(self, "Open a run folder", str(_runs_root(self.state)))
        if d:
            self.open_dir(d)

    def open_dir(self, run_dir: str) -> bool:
        """Make any run folder (with a valid run.json) the current run."""
        from tlstudio.core.runs.folder import RunError, read_run

        try:
            read_run(run_dir)
        except (RunError, OSError) as exc:
            from tlstudio.gui.widgets.error_dialog import show_error

            show_error(self, "Not a run folder", str(exc), modal=False)
            return False
        self.state.set_current_run(str(run_dir))
        self.refresh()
        self.run_opened.emit(str(run_dir))
        return True

    def _show_folder(self) -> None:
        sel = self.selected_dirs()
        if len(sel) == 1:
            QDesktopServices.openUrl(QUrl.fromLocalFile(sel[0]))

    # ------------------------------------------------------------------ dialogs
    def _confirm(self, text: str) -> bool:
        r = QMessageBox.question(self, "Delete runs", text,
                                 QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                 QMessageBox.StandardButton.No)
        return r == QMessageBox.StandardButton.Yes

    def _ask_name(self, current: str) -> str | None:
        text, ok = QInputDialog.getText(self, "Rename run", "Name:", text=current)
        return text if ok else None
