"""Live training curves: batch loss (raw + smoothed), validation loss/accuracy, learning rate.

Points go into numpy buffers (amortised growth, then halved by decimation past a cap, so memory
stays bounded however long a run is); the plots are redrawn at most 5 times a second
(superqt ``qthrottled``) and not at all while hidden, so a fast engine never waits for the
painter and pyqtgraph's (Python) axis painting stays off the UI thread's critical path. pyqtgraph's auto
down-sampling and clip-to-view keep 100,000+ points cheap to draw.

x axis: epochs (fractional within an epoch), so batch points and epoch points line up.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QVBoxLayout, QWidget
from superqt.utils import qthrottled

#: above this many points a series keeps every other point (memory stays bounded)
MAX_POINTS = 200_000


def _nice_ceil(v: float) -> float:
    """The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 x 10^k that is >= v (coarse axis steps)."""
    if v <= 0 or not np.isfinite(v):
        return 1.0
    e = 10.0 ** np.floor(np.log10(v))
    for m in (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0):
        if m * e >= v * (1 - 1e-12):
            return float(m * e)
    return float(10 * e)


class Series:
    """An append-only (x, y) buffer with a hard size bound."""

    def __init__(self, capacity: int = 1024, max_points: int = MAX_POINTS) -> None:
        self._x = np.empty(capacity, dtype=np.float64)
        self._y = np.empty(capacity, dtype=np.float64)
        self.n = 0
        self.max_points = max_points
        self.stride = 1  # how many raw points one stored point stands for (after decimation)
        self._skip = 0

    def __len__(self) -> int:
        return self.n

    @property
    def x(self) -> np.ndarray:
        return self._x[: self.n]

    @property
    def y(self) -> np.ndarray:
        return self._y[: self.n]

    def rewind(self, x: float) -> None:
        """Drop points at or after ``x`` (a resumed run replays from its checkpoint)."""
        if self.n and self._x[self.n - 1] >= x:
            self.n = int(np.searchsorted(self._x[: self.n], x, side="left"))

    def append(self, x: float, y: float) -> None:
        self.rewind(x)
        if self.stride > 1:  # after decimation keep one point in `stride`
            self._skip = (self._skip + 1) % self.stride
            if self._skip:
                return
        if self.n == len(self._x):
            if self.n >= self.max_points:
                half = self.n // 2
                self._x[:half] = self._x[1: self.n: 2][:half]
                self._y[:half] = self._y[1: self.n: 2][:half]
                self.n = half
                self.stride *= 2
            else:
                cap = min(self.max_points, 2 * len(self._x))
                self._x = np.resize(self._x, cap)
                self._y = np.resize(self._y, cap)
        self._x[self.n] = x
        self._y[self.n] = y
        self.n += 1

    def clear(self) -> None:
        self.n, self.stride, self._skip = 0, 1, 0

    @property
    def nbytes(self) -> int:
        return self._x.nbytes + self._y.nbytes


_PHASE_PENS = {
    "main": dict(raw=(120, 160, 220), smooth=(25, 90, 200), val=(220, 90, 30), acc=(30, 150, 70), lr=(130, 60, 170)),
    "baseline": dict(raw=(200, 200, 200), smooth=(140, 140, 140), val=(170, 130, 110), acc=(120, 160, 130),
                     lr=(170, 150, 190)),
}


class _PhaseCurves:
    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.loss = Series()
        self.smooth = Series()
        self.lr = Series()
        self.val_loss = Series(64)
        self.train_loss = Series(64)
        self.val_acc = Series(64)
        self._ema = 0.0
        self._ema_n = 0

    def smoothed(self, loss: float, beta: float) -> float:
        # debiased EMA (as TensorBoard's smoothing): the first points are not pulled to 0
        self._ema = beta * self._ema + (1 - beta) * loss
        self._ema_n += 1
        return self._ema / (1 - beta ** self._ema_n)

    def reset_ema(self) -> None:
        self._ema, self._ema_n = 0.0, 0


class CurvesWidget(QWidget):
    """Three plots: loss (batch raw/smoothed, val per epoch), accuracy, learning rate."""

    def __init__(self, parent: QWidget | None = None, smoothing: float = 0.95, redraw_ms: int = 200) -> None:
        super().__init__(parent)
        self.smoothing = smoothing
        self.view = pg.GraphicsLayoutWidget()
        self.view.setBackground("w")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.view)
        self.loss_plot = self.view.addPlot(row=0, col=0, colspan=2, title="Loss")
        self.acc_plot = self.view.addPlot(row=1, col=0, title="Validation accuracy")
        self.lr_plot = self.view.addPlot(row=1, col=1, title="Learning rate")
        self.view.ci.layout.setRowStretchFactor(0, 3)
        self.view.ci.layout.setRowStretchFactor(1, 2)
        for p in (self.loss_plot, self.acc_plot, self.lr_plot):
            p.showGrid(x=True, y=True, alpha=0.25)
            p.setLabel("bottom", "epoch")
            p.setClipToView(True)
            p.setDownsampling(auto=True, mode="peak")
            p.getAxis("left").setWidth(52)  # room for "0.0015" before the first paint
        self.acc_plot.setLimits(yMin=-0.02, yMax=1.02)
        # Ranges are set by us, in coarse steps, instead of pyqtgraph's auto-range: an axis whose
        # range did not change keeps its cached picture, and axis painting (Python) is what costs
        # the UI thread most while the training thread competes for the GIL.
        self.phases: dict[str, _PhaseCurves] = {}
        self.items: dict[str, dict[str, pg.PlotDataItem]] = {}
        self.epochs_hint = 0
        self._ranges: dict[Any, tuple] = {}
        self._user_ranged: set[Any] = set()
        for p in (self.loss_plot, self.acc_plot, self.lr_plot):
            p.disableAutoRange()
            p.getViewBox().sigRangeChangedManually.connect(lambda *_, p=p: self._user_ranged.add(p))
        self.view.scene().sigMouseClicked.connect(self._on_click)
        self._apply_ranges()
        self.loss_legend = self.loss_plot.addLegend(offset=(-10, 10))
        self.acc_legend = self.acc_plot.addLegend(offset=(-10, -10))
        for legend in (self.loss_legend, self.acc_legend):  # readable over the curves
            legend.setBrush(pg.mkBrush(255, 255, 255, 215))
            legend.setPen(pg.mkPen(200, 200, 200))
            legend.setZValue(1000)
        self._dirty = False
        self.redraws = 0
        self._throttled = qthrottled(self._redraw, timeout=redraw_ms, leading=False, parent=self)

    # --- data in ---------------------------------------------------------------------------
    def _phase(self, phase: str) -> _PhaseCurves:
        if phase not in self.phases:
            pens = _PHASE_PENS.get(phase, _PHASE_PENS["main"])
            suffix = "" if phase in ("main", "distill") else f" ({phase})"
            # dashed for the from-scratch run
            style = dict() if phase != "baseline" else dict(style=Qt.PenStyle.DashLine)
            self.items[phase] = {
                "loss": self.loss_plot.plot(pen=pg.mkPen(pens["raw"], width=1), name=f"batch loss{suffix}"),
                "smooth": self.loss_plot.plot(pen=pg.mkPen(pens["smooth"], width=2, **style),
                                              name=f"smoothed{suffix}"),
                "val_loss": self.loss_plot.plot(pen=pg.mkPen(pens["val"], width=2, **style), symbol="o",
                                                symbolSize=6, symbolBrush=pens["val"], name=f"val loss{suffix}"),
                "val_acc": self.acc_plot.plot(pen=pg.mkPen(pens["acc"], width=2, **style), symbol="o",
                                              symbolSize=6, symbolBrush=pens["acc"], name=f"val acc{suffix}"),
                "lr": self.lr_plot.plot(pen=pg.mkPen(pens["lr"], width=2, **style)),
            }
            self.phases[phase] = _PhaseCurves(phase)  # after its items: _redraw pairs the two dicts
        return self.phases[phase]

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

    def add_epoch(self, epoch: int, train_loss: float, val_loss: float, val_acc: float,
                  phase: str = "main") -> None:
        c = self._phase(phase)
        x = float(epoch + 1)
        c.train_loss.append(x, train_loss)
        c.val_loss.append(x, val_loss)
        c.val_acc.append(x, val_acc)
        self._schedule()

    def load_history(self, rows: list[dict[str, float]], phase: str = "main") -> None:
        """Pre-fill the epoch curves from a run's history.csv (resuming a run from disk)."""
        for r in rows:
            if "epoch" in r:  # history.csv counts epochs from 1, events from 0
                self.add_epoch(int(r["epoch"]) - 1, r.get("train_loss", np.nan), r.get("val_loss", np.nan),
                               r.get("val_acc", np.nan), phase=phase)

    def clear(self) -> None:
        self._ranges.clear()
        self._user_ranged.clear()
        self.epochs_hint = 0
        for phase in list(self.items):
            for item in self.items[phase].values():
                for plot in (self.loss_plot, self.acc_plot, self.lr_plot):
                    if item in plot.listDataItems():
                        plot.removeItem(item)
        for legend in (self.loss_legend, self.acc_legend):
            legend.clear()
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
            it = self.items.get(phase)
            if it is None:
                continue
            it["loss"].setData(c.loss.x, c.loss.y)
            it["smooth"].setData(c.smooth.x, c.smooth.y)
            it["val_loss"].setData(c.val_loss.x, c.val_loss.y)
            it["val_acc"].setData(c.val_acc.x, c.val_acc.y)
            it["lr"].setData(c.lr.x, c.lr.y)
        self._apply_ranges()

    # --- ranges ------------------------------------------------------------------------------
    def set_epochs(self, epochs: int) -> None:
        """The run's length: the x axes span it from the start, so they never need rescaling."""
        self.epochs_hint = max(0, int(epochs))
        self._apply_ranges()

    def _on_click(self, ev) -> None:  # noqa: ANN001 - double-click: back to automatic ranges
        if ev.double():
            self._user_ranged.clear()
            self._ranges.clear()
            self._apply_ranges()

    def _bounds(self, names: tuple[str, ...]) -> tuple[float, float, float]:
        """(x max, y min, y max) over the named series of every phase (finite values only)."""
        xmax, ylo, yhi = 0.0, np.inf, -np.inf
        for c in self.phases.values():
            for name in names:
                ser: Series = getattr(c, name)
                if ser.n:
                    xmax = max(xmax, float(ser.x[-1]))
                    y = ser.y[np.isfinite(ser.y)]
                    if y.size:
                        ylo, yhi = min(ylo, float(y.min())), max(yhi, float(y.max()))
        return xmax, ylo, yhi

    def _apply_ranges(self) -> None:
        specs = (
            (self.loss_plot, ("loss", "smooth", "val_loss", "train_loss"), None),
            (self.acc_plot, ("val_acc",), (0.0, 1.0)),
            (self.lr_plot, ("lr",), None),
        )
        for plot, names, fixed_y in specs:
            if plot in self._user_ranged:
                continue
            xmax, ylo, yhi = self._bounds(names)
            x1 = float(max(1, self.epochs_hint, int(np.ceil(xmax - 1e-9))))
            if fixed_y is not None:
                y0, y1 = fixed_y
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
        """How many points the drawn curve ``name`` holds (loss, smooth, val_loss, val_acc, lr)."""
        if phase not in self.items:
            return 0
        x = self.items[phase][name].xData  # the data set, before view down-sampling
        return 0 if x is None else len(x)

    def memory_bytes(self) -> int:
        return sum(s.nbytes for c in self.phases.values()
                   for s in (c.loss, c.smooth, c.lr, c.val_loss, c.train_loss, c.val_acc))
