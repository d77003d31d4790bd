"""Live training curves: batch loss (raw + smoothed), validation loss/accuracy, learning rate.

Points go into numpy buffers (amortised growth, then halved by decimation past a cap, so memory
stays bounded however long a run is); the plots are redrawn at most 10 times a second
(superqt ``qthrottled``), so a fast engine never waits for the painter. pyqtgraph's auto
down-sampling and clip-to-view keep 100,000+ points cheap to draw.

x axis: epochs (fractional within an epoch), so batch points and epoch points line up.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QVBoxLayout, QWidget
from superqt.utils import qthrottled

#: above this many points a series keeps every other point (memory stays bounded)
MAX_POINTS = 200_000


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

    def __init__(self, parent: QWidget | None = None, smoothing: float = 0.95, redraw_ms: int = 100) -> None:
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
        self.acc_plot.setYRange(0, 1)
        self.acc_plot.setLimits(yMin=-0.02, yMax=1.02)
        self.loss_legend = self.loss_plot.addLegend(offset=(-10, 10))
        self.acc_legend = self.acc_plot.addLegend(offset=(-10, -10))
        self.phases: dict[str, _PhaseCurves] = {}
        self.items: dict[str, dict[str, pg.PlotDataItem]] = {}
        self._dirty = False
        self.redraws = 0
        self._throttled = qthrottled(self._redraw, timeout=redraw_ms, leading=False, parent=self)

    # --- data in ---------------------------------------------------------------------------
    def _phase(self, phase: str) -> _PhaseCurves:
        if phase not in self.phases:
            pens = _PHASE_PENS.get(phase, _PHASE_PENS["main"])
            suffix = "" if phase in ("main", "distill") else f" ({phase})"
            style = dict() if phase != "baseline" else dict(style=2)  # dashed for the from-scratch run
            self.phases[phase] = _PhaseCurves(phase)
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
            if "epoch" in r:
                self.add_epoch(int(r["epoch"]), r.get("train_loss", np.nan), r.get("val_loss", np.nan),
                               r.get("val_acc", np.nan), phase=phase)

    def clear(self) -> None:
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
        self._redraw()

    def _redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self.redraws += 1
        for phase, c in self.phases.items():
            it = self.items[phase]
            it["loss"].setData(c.loss.x, c.loss.y)
            it["smooth"].setData(c.smooth.x, c.smooth.y)
            it["val_loss"].setData(c.val_loss.x, c.val_loss.y)
            it["val_acc"].setData(c.val_acc.x, c.val_acc.y)
            it["lr"].setData(c.lr.x, c.lr.y)

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
