"""The data behind the training curves (no Qt): bounded point series, a run phase's series, and
how metric names map to charts (``val_acc/digit`` -> the "val_acc" chart, curve "val acc digit")."""

from __future__ import annotations

import numpy as np

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
    "main": dict(raw=(120, 160, 220), smooth=(25, 90, 200), lr=(130, 60, 170)),
    "baseline": dict(raw=(200, 200, 200), smooth=(140, 140, 140), lr=(170, 150, 190)),
}
# one colour per curve of a metric chart (per task suffix); the from-scratch baseline is dashed
_METRIC_COLORS = [(220, 90, 30), (30, 150, 70), (25, 90, 200), (170, 60, 150), (200, 160, 20),
                  (0, 150, 160), (120, 80, 40), (90, 90, 90)]
_ACC_COLOR = (30, 150, 70)
TITLES = {"val_acc": "Validation accuracy", "val_macro_f1": "Validation macro-F1", "val_loss": "Loss",
          "weight": "Task weights", "val_auroc": "Validation AUROC", "val_f1": "Validation F1"}


def split_metric(name: str) -> tuple[str, str]:
    """("val_acc", "digit") for "val_acc/digit"; ("val_acc", "") for "val_acc"."""
    base, _, task = name.partition("/")
    return base, task


def chart_of(name: str) -> str:
    """The chart a metric is drawn in: every loss in the Loss chart, else one chart per base name."""
    base = split_metric(name)[0]
    return "loss" if base.endswith("loss") else base


def chart_title(base: str) -> str:
    return TITLES.get(base, base.replace("_", " ").replace("val ", "Validation ", 1).capitalize()
                      if not base.startswith("val_") else "Validation " + base[4:].replace("_", " "))


def curve_label(name: str) -> str:
    base, task = split_metric(name)
    text = base.replace("_", " ")
    return f"{text} {task}" if task else text


class _PhaseCurves:
    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.loss = Series()
        self.smooth = Series()
        self.lr = Series()
        self.train_loss = Series(64)
        self.metrics: dict[str, Series] = {}  # every epoch metric by its full name (val_acc/digit)
        self._ema = 0.0
        self._ema_n = 0

    def series(self, name: str) -> Series | None:
        if name in ("loss", "smooth", "lr", "train_loss"):
            return getattr(self, name)
        return self.metrics.get(name)

    def smoothed(self, loss: float, beta: float) -> float:
        # debiased EMA (as TensorBoard's smoothing): the first points are not pulled to 0
        self._ema = beta * self._ema + (1 - beta) * loss
        self._ema_n += 1
        return self._ema / (1 - beta ** self._ema_n)

    def reset_ema(self) -> None:
        self._ema, self._ema_n = 0.0, 0
