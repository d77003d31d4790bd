"""Live training curves: batch loss (raw + smoothed), validation loss/accuracy, learning rate.

Points go into numpy buffers (amortised growth, then halved by decimation past a cap, so memory
stays bounded however long a run is); the plots are redrawn at most 5 times a second
(superqt ``qthrottled``) and not at all while hidden, so a fast engine never waits for the
painter and pyqtgraph's (Python) axis painting stays off the UI thread's critical path. pyqtgraph's auto
down-sampling and clip-to-view keep 100,000+ points cheap to draw.

x axis: epochs (fractional within an epoch), so batch points and epoch points line up.

Every chart keeps a readable plot area (``PLOT_MIN_PX`` high): when many charts (one per metric of
a multi-task run) do not fit, the charts scroll (the mouse wheel scrolls them, Ctrl+wheel zooms a
chart). Legends sit under their chart's x axis, never over the curves, and name a metric chart's
curves by their task only (the chart's title names the metric).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, Qt
from PySide6.QtWidgets import QApplication, QFrame, QScrollArea, QVBoxLayout, QWidget
from superqt.utils import qthrottled

from tlstudio.gui.widgets.curve_data import (  # noqa: F401 - Series, _nice_ceil: used by tests too
    _ACC_COLOR,
    _METRIC_COLORS,
    _PHASE_PENS,
    MAX_POINTS,
    Series,
    _nice_ceil,
    _PhaseCurves,
    chart_of,
    chart_title,
    curve_label,
    split_metric,
)

PLOT_MIN_PX = 90  # the smallest plot area (inside the axes) of a chart; the charts scroll below that
LOSS_PLOT_MIN_PX = 110
LEGEND_TEXT = (60, 60, 60)


def legend_label(name: str, phase: str, chart: str) -> str:
    """The legend text of a curve: in a metric chart (its title names the metric) the task alone,
    "object" for "val_acc/object"; in the Loss chart the whole name; "(baseline)" etc. appended."""
    task = split_metric(name)[1]
    text = task if (task and chart != "loss") else curve_label(name)
    return text + ("" if phase in ("main", "distill") else f" ({phase})")


class CurvesWidget(QWidget):
    """The Loss chart (batch loss raw/smoothed and every validation loss), one chart per other
    metric base name (``val_acc``, ``weight`` ...) with one curve per ``/task`` suffix, and the
    learning rate. Metric charts appear when their metric first arrives (or ``add_charts``)."""

    def __init__(self, parent: QWidget | None = None, smoothing: float = 0.95, redraw_ms: int = 200) -> None:
        super().__init__(parent)
        self.smoothing = smoothing
        self.view = pg.GraphicsLayoutWidget()
        self.view.setBackground("w")
        self.view.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # reachable by Tab; A resets the view
        self.view.installEventFilter(self)
        self.view.viewport().installEventFilter(self)  # the wheel scrolls the charts when they overflow
        self.view.setAccessibleName("Training curves")
        # many charts (a multi-task run) keep their height and scroll instead of shrinking to slivers
        self.scroll = QScrollArea()
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setWidgetResizable(True)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setAccessibleName("Training curves, scrolled when they do not all fit")
        self.scroll.setWidget(self.view)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.scroll)
        self.loss_plot = self.view.addPlot(row=0, col=0, colspan=2, title="Loss")
        self.lr_plot = self.view.addPlot(row=1, col=1, title="Learning rate")
        self.view.ci.layout.setRowStretchFactor(0, 3)
        self.view.ci.layout.setRowStretchFactor(1, 2)
        self.charts: dict[str, Any] = {"loss": self.loss_plot}  # chart key -> PlotItem
        self.legends: dict[str, Any] = {}
        self._spans: dict[str, int] = {"loss": 2}  # columns each chart spans (of 2)
        for p in (self.loss_plot, self.lr_plot):
            self._style(p)
        # Ranges are set by us, in coarse steps, instead of pyqtgraph's auto-range: an axis whose
        # range did not change keeps its cached picture, and axis painting (Python) is what costs
        # the UI thread most while the training thread competes for the GIL.
        self.phases: dict[str, _PhaseCurves] = {}
        self.items: dict[str, dict[str, pg.PlotDataItem]] = {}
        self.epochs_hint = 0
        self._ranges: dict[Any, tuple] = {}
        self._user_ranged: set[Any] = set()
        self.view.scene().sigMouseClicked.connect(self._on_click)
        self.loss_legend = self._legend("loss", self.loss_plot)
        self._dirty = False
        self.redraws = 0
        self._throttled = qthrottled(self._redraw, timeout=redraw_ms, leading=False, parent=self)
        self._arrange()
        self._apply_ranges()

    @property
    def acc_plot(self) -> Any:
        """The validation accuracy chart (classification), made if it is not there yet."""
        return self._chart("val_acc")

    def _style(self, p: Any) -> None:
        p.showGrid(x=True, y=True, alpha=0.25)
        p.setLabel("bottom", "epoch")
        p.setClipToView(True)
        p.setDownsampling(auto=True, mode="peak")
        p.getAxis("left").setWidth(52)  # room for "0.0015" before the first paint
        p.getViewBox().setMinimumHeight(LOSS_PLOT_MIN_PX if p is getattr(self, "loss_plot", None) else PLOT_MIN_PX)
        p.disableAutoRange()
        p.getViewBox().sigRangeChangedManually.connect(lambda *_, p=p: self._user_ranged.add(p))

    def _legend(self, key: str, plot: Any) -> Any:
        """The chart's legend, in a row of the chart's own layout under the x axis: outside the
        plot area, so it never covers a curve. Entries are added by ``_add_legend_entry``."""
        legend = pg.LegendItem(labelTextSize="8pt", labelTextColor=LEGEND_TEXT, horSpacing=4, verSpacing=-4)
        legend.setParentItem(plot)
        legend.frame = False
        plot.layout.addItem(legend, 4, 1, alignment=Qt.AlignmentFlag.AlignHCenter)
        legend.setVisible(False)  # an empty legend is an empty row: shown once it has curves
        self.legends[key] = legend
        return legend

    def _add_legend_entry(self, key: str, item: Any, text: str) -> None:
        legend = self.legends[key]
        legend.addItem(item, text)
        # one curve needs no legend (the chart's title names it); the Loss chart always has two
        legend.setVisible(key == "loss" or len(legend.items) > 1)
        self._fit_legend(key)

    def _fit_legend(self, key: str) -> None:
        """As many legend columns as fit the chart's width (one row when they all fit)."""
        legend, plot = self.legends.get(key), self.charts.get(key)
        if legend is None or plot is None or not legend.items:
            return
        widths = [s.boundingRect().width() + lab.item.boundingRect().width() + 8 for s, lab in legend.items]
        # the chart's share of the view's width (the plots' own widths lag behind a resize), less its y axis
        view_w = self.view.width() if self.view.width() > 200 else 640
        room = view_w * self._spans.get(key, 1) / 2 - 70
        cols = len(widths)
        while cols > 1 and sum(max(widths[j::cols]) for j in range(cols)) > room:
            cols -= 1
        if cols != legend.columnCount:
            legend.setColumnCount(cols)
        self._update_min_height()

    def _update_min_height(self) -> None:
        """The charts' area is never shorter than every chart's smallest readable height; the
        scroll area shows a scroll bar when the window is shorter than that."""
        ci = self.view.ci
        ci.layout.invalidate()
        need = ci.effectiveSizeHint(Qt.SizeHint.MinimumSize).height()
        self.view.setMinimumHeight(int(need) + 2 * self.view.frameWidth() + 2)

    def legend_texts(self, key: str) -> list[str]:
        """The texts shown in chart ``key``'s legend (tests)."""
        legend = self.legends.get(key)
        return [] if legend is None else [lab.text for _s, lab in legend.items]

    def _chart(self, key: str) -> Any:
        """The chart of a metric base name, added after the others (2 per row under the loss)."""
        if key in self.charts:
            return self.charts[key]
        plot = pg.PlotItem(title=chart_title(key))
        self._style(plot)
        self.charts[key] = plot
        self._legend(key, plot)
        self._ranges.pop(plot, None)
        self._arrange()
        return plot

    def _arrange(self) -> None:
        """Loss across the top; below it the metric charts, then the learning rate, two per row
        (the last one spans both columns when it is alone in its row)."""
        ci = self.view.ci
        below = [p for k, p in self.charts.items() if k != "loss"] + [self.lr_plot]
        for p in below:
            if p in ci.items:
                ci.removeItem(p)
        self._spans = {"loss": 2}
        keys = {id(p): k for k, p in self.charts.items()}
        for i, p in enumerate(below):
            row, col = 1 + i // 2, i % 2
            span = 2 if (i == len(below) - 1 and col == 0) else 1
            ci.addItem(p, row=row, col=col, colspan=span)
            self._spans[keys.get(id(p), "lr")] = span
            ci.layout.setRowStretchFactor(row, 2)
        for key in self.legends:
            self._fit_legend(key)
        self._update_min_height()

    def add_charts(self, names: list[str]) -> None:
        """Show these metrics' charts now (e.g. the kind's best metric before the first epoch)."""
        for name in names:
            self._chart(chart_of(name))

    def reset_charts(self, names: list[str]) -> None:
        """No data, and only the Loss, learning-rate and ``names``' charts (another kind chosen)."""
        self.clear()
        for key in [k for k in self.charts if k != "loss"]:
            self.view.removeItem(self.charts.pop(key))
            self.legends.pop(key, None)
        self._arrange()
        self.add_charts(names)

    # --- data in ---------------------------------------------------------------------------
    def _phase(self, phase: str) -> _PhaseCurves:
        if phase not in self.phases:
            pens = _PHASE_PENS.get(phase, _PHASE_PENS["main"])
            style = dict() if phase != "baseline" else dict(style=Qt.PenStyle.DashLine)
            suffix = "" if phase in ("main", "distill") else f" ({phase})"
            self.items[phase] = {
                "loss": self.loss_plot.plot(pen=pg.mkPen(pens["raw"], width=1), name=f"batch loss{suffix}"),
                "smooth": self.loss_plot.plot(pen=pg.mkPen(pens["smooth"], width=2, **style),
                                              name=f"smoothed{suffix}"),
                "lr": self.lr_plot.plot(pen=pg.mkPen(pens["lr"], width=2, **style)),
            }
            self.phases[phase] = _PhaseCurves(phase)  # after its items: _redraw pairs the two dicts
            for k in ("loss", "smooth"):
                self._add_legend_entry("loss", self.items[phase][k], self.items[phase][k].name())
        return self.phases[phase]

    def _metric_item(self, phase: str, name: str) -> None:
        items = self.items[phase]
        if name in items:
            return
        key = chart_of(name)
        plot = self._chart(key)
        n_same = sum(1 for k in items if k not in ("loss", "smooth", "lr") and chart_of(k) == key)
        # the single accuracy curve is green; in a chart of per-task curves every curve has its own colour
        color = _ACC_COLOR if (name == "val_acc" and n_same == 0) else _METRIC_COLORS[n_same % len(_METRIC_COLORS)]
        if phase == "baseline":
            color = tuple(int(c * 0.5 + 200 * 0.5) for c in color)
        style = dict() if phase != "baseline" else dict(style=Qt.PenStyle.DashLine)
        items[name] = plot.plot(pen=pg.mkPen(color, width=2, **style), symbol="o", symbolSize=6,
                                symbolBrush=color, name=legend_label(name, phase, "loss"))  # the whole name
        self._add_legend_entry(key, items[name], legend_label(name, phase, key))

    def add_batch(self, epoch: int, batch: int, batches: int, loss: float, lr: float, phase: str = "main") -> None:
        c = self._phase(phase)
        x = epoch + (batch + 1) / max(1, batches)
        if c.loss.n and c.loss.x[-1] >= x:  # replay after resume: the EMA restarts too
            c.reset_ema()
        if np.isfinite(loss):
            c.loss.append(x, loss)
            c.smooth.append(x, c.smoothed(loss, self.smoothing))
        c.lr.append(x, lr)
        self._schedule()

    def add_epoch(self, epoch: int, train_loss: float, metrics: dict[str, float], phase: str = "main") -> None:
        """One epoch's metrics dictionary (any names; ``base/task`` gives per-task curves)."""
        c = self._phase(phase)
        x = float(epoch + 1)
        c.train_loss.append(x, train_loss)
        for name, value in metrics.items():
            if value is None:
                continue
            self._metric_item(phase, name)
            c.metrics.setdefault(name, Series(64)).append(x, float(value))
        self._schedule()

    def load_history(self, rows: list[dict[str, float]], phase: str = "main") -> None:
        """Pre-fill the epoch curves from a run's history.csv (resuming a run from disk): every
        column but the bookkeeping ones is a metric."""
        skip = {"epoch", "train_loss", "lr", "seconds", "best", "trainable_params", "phase", "time"}
        for r in rows:
            if "epoch" in r:  # history.csv counts epochs from 1, events from 0
                metrics = {k: v for k, v in r.items() if k not in skip and isinstance(v, (int, float))}
                self.add_epoch(int(r["epoch"]) - 1, r.get("train_loss", np.nan), metrics, phase=phase)

    def clear(self) -> None:
        self._ranges.clear()
        self._user_ranged.clear()
        self.epochs_hint = 0
        for phase in list(self.items):
            for item in self.items[phase].values():
                for plot in self.charts.values():
                    if item in plot.listDataItems():
                        plot.removeItem(item)
                if item in self.lr_plot.listDataItems():
                    self.lr_plot.removeItem(item)
        for legend in self.legends.values():
            legend.clear()
            legend.setVisible(False)
        self._update_min_height()
        self.phases.clear()
        self.items.clear()
        self._throttled.cancel()
        self._dirty = False

    # --- drawing ---------------------------------------------------------------------------
    def _schedule(self) -> None:
        self._dirty = True
        self._throttled()

    def flush(self) -> None:
        """Redraw now (tests, end of a run)."""
        self._throttled.cancel()
        self._redraw(force=True)

    def showEvent(self, ev) -> None:  # noqa: ANN001 - catch up with what arrived while hidden
        super().showEvent(ev)
        if self._dirty:
            self._throttled()

    def _redraw(self, force: bool = False) -> None:
        if not self._dirty:
            return
        if not force and not self.isVisible():
            return  # another step is on screen: painting would only cost the UI thread time
        self._dirty = False
        self.redraws += 1
        for phase, c in list(self.phases.items()):
            for name, item in self.items.get(phase, {}).items():
                ser = c.series(name)
                if ser is not None:
                    item.setData(ser.x, ser.y)
        self._apply_ranges()
        self.view.setAccessibleDescription(self.summary())

    # --- ranges ------------------------------------------------------------------------------
    def set_epochs(self, epochs: int) -> None:
        """The run's length: the x axes span it from the start, so they never need rescaling."""
        self.epochs_hint = max(0, int(epochs))
        self._apply_ranges()

    def summary(self) -> str:
        """The latest value of every curve, as one sentence (screen readers, the tooltip)."""
        parts = []
        for phase, c in self.phases.items():
            if c.loss.n:
                parts.append(f"batch loss {c.loss.y[-1]:.4g}")
            parts += [f"{curve_label(n)} {s.y[-1]:.4g} at epoch {int(s.x[-1])}" for n, s in c.metrics.items() if s.n]
        return "; ".join(parts) or "No training data yet"

    def eventFilter(self, obj, ev) -> bool:  # noqa: ANN001
        """Keyboard on the focused charts: A or Home = automatic ranges again (as a double-click);
        the wheel scrolls the charts when they overflow (Ctrl+wheel zooms the chart under the mouse)."""
        if obj is self.view and ev.type() == QEvent.Type.KeyPress and ev.key() in (Qt.Key.Key_A, Qt.Key.Key_Home):
            self._user_ranged.clear()
            self._ranges.clear()
            self._apply_ranges()
            return True
        if obj is self.view and ev.type() == QEvent.Type.Resize:
            for key in self.legends:
                self._fit_legend(key)
        if (obj is self.view.viewport() and ev.type() == QEvent.Type.Wheel and self.overflowing()
                and not ev.modifiers() & Qt.KeyboardModifier.ControlModifier):
            QApplication.sendEvent(self.scroll.verticalScrollBar(), ev)  # scroll the charts, not zoom one
            return True
        return super().eventFilter(obj, ev)

    def overflowing(self) -> bool:
        """True when the charts are taller than the room they have (a scroll bar is shown)."""
        return self.scroll.verticalScrollBar().maximum() > 0

    def _on_click(self, ev) -> None:  # noqa: ANN001 - double-click: back to automatic ranges
        if ev.double():
            self._user_ranged.clear()
            self._ranges.clear()
            self._apply_ranges()

    def _bounds(self, key: str) -> tuple[float, float, float]:
        """(x max, y min, y max) over the series drawn in chart ``key`` (finite values only)."""
        xmax, ylo, yhi = 0.0, np.inf, -np.inf
        for c in self.phases.values():
            if key == "lr":
                sers = [c.lr]
            elif key == "loss":
                sers = [c.loss, c.smooth, c.train_loss] + [s for n, s in c.metrics.items() if chart_of(n) == "loss"]
            else:
                sers = [s for n, s in c.metrics.items() if chart_of(n) == key]
            for ser in sers:
                if ser.n:
                    xmax = max(xmax, float(ser.x[-1]))
                    y = ser.y[np.isfinite(ser.y)]
                    if y.size:
                        ylo, yhi = min(ylo, float(y.min())), max(yhi, float(y.max()))
        return xmax, ylo, yhi

    def _apply_ranges(self) -> None:
        for key, plot in [*self.charts.items(), ("lr", self.lr_plot)]:
            if plot in self._user_ranged:
                continue
            xmax, ylo, yhi = self._bounds(key)
            x1 = float(max(1, self.epochs_hint, int(np.ceil(xmax - 1e-9))))
            unit = key not in ("loss", "lr") and (yhi < ylo or (ylo >= 0 and yhi <= 1))
            if unit:  # scores and fractions: always 0..1, so curves of two runs compare at a glance
                y0, y1 = 0.0, 1.0
            elif yhi < ylo:  # no data yet
                y0, y1 = 0.0, 1.0
            else:
                old = self._ranges.get(plot)
                y0 = 0.0 if ylo >= 0 else -_nice_ceil(-ylo)
                y1 = _nice_ceil(yhi * 1.05) if yhi > 0 else 1.0
                # hysteresis: keep the old range while the data fills at least 40% of it
                if old is not None and old[2] <= y0 and old[3] >= yhi * 1.02 and yhi - y0 >= 0.4 * (old[3] - old[2]):
                    y0, y1 = old[2], old[3]
            new = (0.0, x1, y0, y1)
            if self._ranges.get(plot) != new:
                self._ranges[plot] = new
                plot.setRange(xRange=(0.0, x1), yRange=(y0, y1), padding=0.02)

    # --- read back (tests, screenshots) ----------------------------------------------------
    def points(self, name: str, phase: str = "main") -> int:
        """How many points the drawn curve ``name`` holds (loss, smooth, lr, or a metric name)."""
        item = self.items.get(phase, {}).get(name)
        if item is None:
            return 0
        x = item.xData  # the data set, before view down-sampling
        return 0 if x is None else len(x)

    def chart_curves(self, key: str) -> list[str]:
        """The curve names (legend texts) in chart ``key``."""
        plot = self.charts.get(key)
        return [] if plot is None else [i.name() for i in plot.listDataItems() if i.name()]

    def memory_bytes(self) -> int:
        return sum(s.nbytes for c in self.phases.values()
                   for s in (c.loss, c.smooth, c.lr, c.train_loss, *c.metrics.values()))
