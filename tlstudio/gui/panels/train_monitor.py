"""The Train step's live feedback: status line, progress bars with speed and ETA, loss and
accuracy curves, warnings, log, and the notification when a run ends.

Per-event work is tiny (append to numpy buffers, set a few labels); the curves redraw at most
10 times a second, so the UI keeps up with any engine speed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QSizePolicy,
    QSplitter,
    QSystemTrayIcon,
    QVBoxLayout,
    QWidget,
)

from tlstudio.core import events as ev
from tlstudio.gui.panels.run_common import fmt_count, make_log_view, progress_text
from tlstudio.gui.panels.train_settings import TIPS
from tlstudio.gui.widgets.curves import CurvesWidget

log = logging.getLogger("tlstudio.gui")


def fmt_metric(name: str, value: float | None) -> str:
    """"val acc 80.0%", "val macro f1 0.790", "val loss/digit 0.6000": accuracies as percentages."""
    base, _, task = name.partition("/")
    # multi-task: val_score is the mean of the task scores (accuracy, macro-F1, R^2), not an accuracy
    label = ("mean task score" if base == "val_score" else base.replace("_", " ")) + (f" {task}" if task else "")
    if value is None or value != value:
        return f"{label} -"
    if base.endswith("acc") or base.endswith("accuracy"):
        return f"{label} {value:.1%}"
    return f"{label} {value:.4f}" if base.endswith("loss") else f"{label} {value:.3f}"


def sub_run_task(phase: str) -> str | None:
    """The task of a multi-task run's single-task baseline sub-run (phase "baseline:<task>"): its
    curves stay out of the main charts (the Evaluate step compares it), else None."""
    return (phase.partition(":")[2] or None) if phase.startswith("baseline:") else None


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "--:--"
    s = int(seconds + 0.5)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"



class TrainMonitorMixin:
    """The right-hand side of the Train panel and the engine events that update it.
    The panel provides ``self.state``, ``self._mine`` and the per-run timing fields."""

    # ------------------------------------------------------------------ building
    def _build_monitor(self) -> QWidget:
        """Status, progress, curves, warnings and log (the right side of the splitter)."""
        right = QWidget()
        rv = QVBoxLayout(right)
        self.status_label = QLabel("Not started")
        self.status_label.setStyleSheet("font-weight: bold;")
        self.status_label.setWordWrap(True)
        self.status_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.device_label = QLabel("Device: -")
        self.device_label.setToolTip("Where training runs and the number format it uses.")
        self.params_label = QLabel("")
        # the status has the whole width; counts and device go on the line below (at 1024 px the
        # three side by side cut each other off)
        rv.addWidget(self.status_label)
        info = QHBoxLayout()
        info.addWidget(self.params_label)
        info.addStretch(1)
        info.addWidget(self.device_label)
        rv.addLayout(info)
        grid = QGridLayout()
        self.epoch_bar = QProgressBar()
        self.epoch_bar.setFormat("Epoch %v / %m")
        self.batch_bar = QProgressBar()
        self.batch_bar.setFormat("Batch %v / %m")
        self.speed_label = QLabel("")
        self.eta_label = QLabel("")
        grid.addWidget(QLabel("Run"), 0, 0)
        grid.addWidget(self.epoch_bar, 0, 1)
        grid.addWidget(self.eta_label, 0, 2)
        grid.addWidget(QLabel("Epoch"), 1, 0)
        grid.addWidget(self.batch_bar, 1, 1)
        grid.addWidget(self.speed_label, 1, 2)
        grid.setColumnStretch(1, 1)
        # fixed widths/heights: text that changes every batch must not re-layout (and so
        # re-render) the plots below
        fm = self.fontMetrics()
        self.eta_label.setFixedWidth(fm.horizontalAdvance("ETA 00:00:00") + 12)
        self.speed_label.setFixedWidth(fm.horizontalAdvance("99999 img/s · epoch ETA 00:00:00") + 12)
        self.status_label.setFixedHeight(2 * fm.lineSpacing() + 4)
        rv.addLayout(grid)
        self.metrics_label = QLabel("")
        self.metrics_label.setFixedHeight(fm.lineSpacing() + 4)
        # many metrics (one per task) must not widen the window: the full text is in the tooltip/log
        self.metrics_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        rv.addWidget(self.metrics_label)

        self.curves = CurvesWidget()
        self.curves.setToolTip(TIPS["curves"])
        self.curves.setMinimumHeight(260)
        lower = QWidget()
        lower_l = QHBoxLayout(lower)
        lower_l.setContentsMargins(0, 0, 0, 0)
        wbox = QGroupBox("Warnings")
        wl = QVBoxLayout(wbox)
        self.warnings = QListWidget()
        self.warnings.setWordWrap(True)
        self.warnings.setToolTip("Problems noticed while training (unreadable images, precision fallbacks, "
                                 "out-of-memory retries, negative transfer); training goes on unless it cannot.")
        wl.addWidget(self.warnings)
        lbox = QGroupBox("Log")
        ll = QVBoxLayout(lbox)
        self.log_view = make_log_view()
        ll.addWidget(self.log_view)
        lower_l.addWidget(wbox)
        lower_l.addWidget(lbox)
        vsplit = QSplitter(Qt.Orientation.Vertical)
        vsplit.addWidget(self.curves)
        vsplit.addWidget(lower)
        vsplit.setStretchFactor(0, 4)
        vsplit.setStretchFactor(1, 1)
        rv.addWidget(vsplit, 1)
        return right

    def _build_toast(self) -> None:
        """The in-window message shown for a few seconds when a run ends."""
        self.toast = QLabel(self)
        self.toast.setStyleSheet("background: #263238; color: white; padding: 10px 16px; border-radius: 6px;")
        self.toast.setWordWrap(True)
        self.toast.hide()
        self._toast_timer = QTimer(self)
        self._toast_timer.setSingleShot(True)
        self._toast_timer.timeout.connect(self.toast.hide)

    # ------------------------------------------------------------------ engine events
    def _on_event(self, e: Any) -> None:
        if not self._mine:
            return
        self.events_seen += 1
        self.state.run_event.emit(e)
        if isinstance(e, ev.BatchEnd):
            self._on_batch(e)
        elif isinstance(e, ev.EpochEnd):
            self._on_epoch(e)
        elif isinstance(e, ev.RunStarted):
            self._on_started(e)
        elif isinstance(e, ev.Warn):
            self._add_warning(e.message + (f" ({e.path})" if e.path else ""))
        elif isinstance(e, ev.Log):
            self._log(e.message)
        elif isinstance(e, ev.Progress):
            self.status_label.setText(progress_text(e))
        elif isinstance(e, ev.Unfrozen):
            self._log(f"Epoch {e.epoch + 1}: unfroze {e.group} ({fmt_count(e.trainable_params)} trainable)")
            self.params_label.setText(f"Trainable: {fmt_count(e.trainable_params)}")
        elif isinstance(e, ev.Checkpointed):
            if e.kind == "best":
                self._log(f"Epoch {e.epoch + 1}: best so far, weights kept")
        elif isinstance(e, ev.Finished):
            self._on_finished_event(e)

    def _reset_timing(self) -> None:
        self._t_first: float | None = None  # when the first batch of this phase was seen
        self._n_first = 0  # batches done by then (a resumed run starts mid-way)
        self._batches_seen = 0
        self._epoch_seconds: list[float] = []

    def _on_started(self, e: ev.RunStarted) -> None:
        self._phase = e.phase
        sub = sub_run_task(e.phase)
        if sub is not None:  # a separate single-task model after the multi-task run: not charted
            self._reset_timing()
            self.epoch_bar.setRange(0, e.epochs)
            self.epoch_bar.setValue(e.start_epoch)
            self.batch_bar.setRange(0, max(1, e.batches_per_epoch))
            self.batch_bar.setValue(0)
            self._epochs = e.epochs
            self.status_label.setText(f"Separate model for '{sub}' (to compare with the multi-task run): "
                                      f"{e.n_train} train / {e.n_val} val images")
            self._log(f"Separate model for '{sub}' started in {e.run_dir}")
            return
        self._main_epochs = e.epochs  # the bars show it again when its separate models are done
        self._epochs = e.epochs
        self._last_run_dir = e.run_dir if e.phase == "main" else self._last_run_dir
        self._reset_timing()
        self.eta_label.setText("")
        self.epoch_bar.setRange(0, e.epochs)
        self.epoch_bar.setValue(e.start_epoch)
        self.curves.set_epochs(e.epochs)
        self.batch_bar.setRange(0, max(1, e.batches_per_epoch))
        self.batch_bar.setValue(0)
        what = "From-scratch baseline" if e.phase == "baseline" else "Training"
        resumed = f", resumed at epoch {e.start_epoch + 1}" if e.start_epoch else ""
        self.status_label.setText(f"{what} {e.backbone}: {e.n_train} train / {e.n_val} val images{resumed}")
        self.device_label.setText(f"Device: {e.device} · {e.precision}")
        self.params_label.setText(f"Trainable: {fmt_count(e.trainable_params)} of {fmt_count(e.total_params)}")
        self._log(f"{what} started in {e.run_dir}")
        if e.phase == "main" and e.run_dir != self.state.current_run:
            self.state.set_current_run(e.run_dir)

    def _on_batch(self, e: ev.BatchEnd) -> None:
        if sub_run_task(e.phase) is None:
            self.curves.add_batch(e.epoch, e.batch, e.batches, e.loss, e.lr, phase=e.phase)
        now = time.monotonic()
        done = e.epoch * e.batches + e.batch + 1  # batches of this phase done so far
        if self._t_first is None:
            self._t_first, self._n_first = now, done
        self._batches_seen += 1
        if self.batch_bar.maximum() != e.batches:
            self.batch_bar.setRange(0, e.batches)
        self.batch_bar.setValue(e.batch + 1)
        self.epoch_bar.setValue(e.epoch)
        # the rate over the whole run so far: events arrive in bursts, one gap means nothing
        elapsed, n = now - self._t_first, done - self._n_first
        if n >= 3 and elapsed >= 1.0:
            per_batch = elapsed / n
            left_epoch = (e.batches - e.batch - 1) * per_batch
            per_epoch = (sum(self._epoch_seconds) / len(self._epoch_seconds)) if self._epoch_seconds \
                else e.batches * per_batch
            left_total = left_epoch + max(0, self._epochs - e.epoch - 1) * per_epoch
            self.eta_label.setText(f"ETA {_fmt_eta(left_total)}")
            self.speed_label.setText(f"{e.images_per_s:.0f} img/s · epoch ETA {_fmt_eta(left_epoch)}")
        else:
            self.eta_label.setText("ETA …")  # not known yet (a few batches and a second first)
            self.eta_label.setToolTip("Estimating the time left from the first batches.")
            self.speed_label.setText(f"{e.images_per_s:.0f} img/s")

    def _on_epoch(self, e: ev.EpochEnd) -> None:
        sub = sub_run_task(e.phase)
        if sub is None:
            self.curves.add_epoch(e.epoch, e.train_loss, dict(e.metrics), phase=e.phase)
        self._epoch_seconds.append(e.seconds)
        self.epoch_bar.setRange(0, e.epochs)
        self.epoch_bar.setValue(e.epoch + 1)
        star = "  ★ best" if e.best else ""
        if e.best and e.kept_score is not None:  # some task kept this epoch's head: the kept model's score
            star = f"  ★ head kept · kept heads' {fmt_metric(e.best_metric, e.kept_score)}"
        prefix = "Baseline " if e.phase == "baseline" else f"Separate model '{sub}': " if sub else ""
        # what matters first (a multi-task line runs past the panel's width; the rest is in the
        # tooltip and the log): the epoch, its time, the metric that picks the best epoch
        key = e.best_metric if e.best_metric in e.metrics else None
        parts = ([fmt_metric(key, e.metrics[key])] if key else []) + [f"train loss {e.train_loss:.4f}"] + \
            [fmt_metric(k, v) for k, v in e.metrics.items() if k != key]
        text = f"{prefix}Epoch {e.epoch + 1}/{e.epochs} ({e.seconds:.1f} s): " + " · ".join(parts) + star
        if sub is None:  # the metrics line keeps the multi-task run's last epoch
            self.metrics_label.setText(text)
            self.metrics_label.setToolTip(text)
        else:
            self.status_label.setText(text)
        self._log(text)

    def _on_finished_event(self, e: ev.Finished) -> None:
        self.curves.flush()
        self.eta_label.setText("")  # nothing left to estimate
        acc = ""
        if e.best_epoch is not None and (e.best_val_acc is not None or e.metrics):
            name = "val_score" if "val_score" in (e.metrics or {}) else \
                "val_acc" if e.best_val_acc is not None else next(iter(e.metrics))
            value = e.metrics[name] if name in (e.metrics or {}) else e.best_val_acc
            acc = f", best {fmt_metric(name, value)} (epoch {e.best_epoch + 1})"
        # a multi-task run's own Finished comes again after its baselines' (same run folder)
        main = self._phase == "main" or (sub_run_task(self._phase) is not None and e.run_dir == self._last_run_dir)
        sub = sub_run_task(self._phase) if not main else None
        phase = "Baseline" if self._phase == "baseline" else f"Separate model '{sub}'" if sub else "Training"
        text = f"{phase} {e.status.replace('_', ' ')}{acc}." + (f" {e.message}" if e.message else "")
        if main and sub_run_task(self._phase) is not None:  # back to the multi-task run's own progress
            epochs = getattr(self, "_main_epochs", 0) or self.epoch_bar.maximum()
            self.epoch_bar.setRange(0, epochs)
            self.epoch_bar.setValue(epochs if e.status in ("finished", "early_stopped") else self.epoch_bar.value())
        if main:
            self._finish_message = e.message
            self._best_text = acc.split(" (epoch")[0]
        self.status_label.setText(text)
        self._log(text)

    # ------------------------------------------------------------------ feedback helpers
    def _add_warning(self, text: str) -> None:
        item = QListWidgetItem(text)
        item.setToolTip(text)
        self.warnings.addItem(item)
        if self.warnings.count() > 500:  # bounded: a run with thousands of bad files stays light
            self.warnings.takeItem(0)
        self.warnings.scrollToBottom()

    def _log(self, text: str) -> None:
        self.log_view.appendPlainText(text)

    def notify(self, message: str) -> None:
        """Status bar message, a desktop notification when a tray exists, and an in-window toast."""
        self.notifications.append(message)
        self.state.status_message.emit(message)
        try:
            if QSystemTrayIcon.isSystemTrayAvailable():
                if self._tray is None:
                    icon = self.window().windowIcon()
                    if icon.isNull():
                        from PySide6.QtWidgets import QStyle

                        icon = self.style().standardIcon(QStyle.StandardPixmap.SP_DialogApplyButton)
                    self._tray = QSystemTrayIcon(icon, self)
                self._tray.show()
                self._tray.showMessage("TL Studio", message, QSystemTrayIcon.MessageIcon.Information, 6000)
                QTimer.singleShot(8000, self._tray.hide)  # no icon left behind in the tray
        except Exception:  # noqa: BLE001 - a notification must never break the app
            log.exception("tray notification failed")
        self.toast.setText(message)
        self.toast.adjustSize()
        self.toast.setMaximumWidth(max(200, self.width() - 40))
        self.toast.adjustSize()
        self.toast.move(max(10, self.width() - self.toast.width() - 20), max(10, self.height() - self.toast.height() - 20))
        self.toast.raise_()
        self.toast.show()
        self._toast_timer.start(6000)
