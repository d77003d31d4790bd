"""Review queue: the model's proposed labels for unlabelled images, for you to accept or correct.

Thumbnails sorted by confidence (most confident first) with the proposed class. Click an image and
press A (accept), R (reject), 1-9 (it is class N instead), U (undo), or use the buttons; the next
undecided image is selected after each decision. "Save labels" writes a CSV of path,label beside
your images (your files are never moved or copied), which the Data step opens as labelled data.
The decisions themselves are kept in the run folder (review.json), so a review can be continued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QModelIndex, QSize, Qt, QTimer
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QListView,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.widgets.thumbnails import THUMB, ThumbnailModel, ThumbnailView

_COLOURS = {"accepted": QColor("#cdebd3"), "rejected": QColor("#f4c7c3"), "relabelled": QColor("#cfe0f7")}
_MARK = {"pending": "", "accepted": "\u2713 ", "rejected": "\u2717 ", "relabelled": "\u2192 "}


class _Row:
    """Adapter: a review item as the (path, label) sample the thumbnail model expects."""

    __slots__ = ("item",)

    def __init__(self, item) -> None:
        self.item = item

    @property
    def path(self) -> str:
        return self.item.path

    @property
    def label(self) -> int:
        return self.item.proposed


class ReviewModel(ThumbnailModel):
    def __init__(self, parent=None) -> None:
        super().__init__(parent=parent)
        self.queue = None

    def set_queue(self, queue) -> None:
        self.queue = queue
        self.set_samples([_Row(it) for it in queue.items] if queue else [], queue.classes if queue else [])

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if self.queue is None or not index.isValid() or index.row() >= len(self.queue.items):
            return super().data(index, role)
        it = self.queue.items[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            name = self.queue.classes[it.label if it.decision == "relabelled" else it.proposed]
            return f"{_MARK[it.decision]}{name} {it.confidence:.0%}"
        if role == Qt.ItemDataRole.SizeHintRole:  # the view's uniform item size: room for "✓ triangle 85%"
            return QSize(THUMB + 20, THUMB + 30)
        if role == Qt.ItemDataRole.BackgroundRole:
            return _COLOURS.get(it.decision)
        if role == Qt.ItemDataRole.ToolTipRole:
            top = ", ".join(f"{self.queue.classes[c]} {p:.0%}" for c, p in it.top)
            return f"{it.path}\nproposed: {top}\ndecision: {it.decision}"
        return super().data(index, role)

    def refresh_row(self, row: int) -> None:
        ix = self.index(row)
        self.dataChanged.emit(ix, ix, [Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.BackgroundRole])


class ReviewQueuePanel(QWidget):
    def __init__(self, state: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.queue = None
        self.run_dir: str | None = None
        self.csv_path: Path | None = None
        lay = QVBoxLayout(self)
        self.title = QLabel("<b>Review the proposed labels</b>")
        lay.addWidget(self.title)
        self.info = QLabel("Train with unlabelled images of the same kind (semi-supervised) to get proposals here.")
        self.info.setWordWrap(True)
        lay.addWidget(self.info)
        self.counts = QLabel("")
        lay.addWidget(self.counts)

        self.model = ReviewModel(self)
        self.view = ThumbnailView()
        self.view.setAccessibleName("Unlabelled images with their proposed labels, most confident first")
        self.view.setModel(self.model)
        self.view.setGridSize(QSize(THUMB + 24, THUMB + 34))
        self.view.setWordWrap(True)
        self.view.setSelectionMode(QListView.SelectionMode.SingleSelection)
        self.view.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        lay.addWidget(self.view, 1)

        row = QHBoxLayout()
        self.accept_btn = QPushButton("Accept (A)")
        self.reject_btn = QPushButton("Reject (R)")
        self.relabel = QComboBox()
        self.relabel.setToolTip("It is this class instead (keys 1-9)")
        self.relabel_btn = QPushButton("Relabel")
        self.undo_btn = QPushButton("Undo (U)")
        self.accept_btn.clicked.connect(lambda: self.decide("accept"))
        self.reject_btn.clicked.connect(lambda: self.decide("reject"))
        self.relabel_btn.clicked.connect(lambda: self.decide("relabel", self.relabel.currentIndex()))
        self.undo_btn.clicked.connect(lambda: self.decide("undo"))
        for w in (self.accept_btn, self.reject_btn, QLabel("It is:"), self.relabel, self.relabel_btn, self.undo_btn):
            row.addWidget(w)
        row.addStretch(1)
        self.bulk = QDoubleSpinBox()
        self.bulk.setAccessibleName("Confidence above which to accept every proposed label")
        self.bulk.setRange(0.5, 1.0)
        self.bulk.setSingleStep(0.01)
        self.bulk.setValue(0.95)
        self.bulk_btn = QPushButton("Accept all at or above")
        self.bulk_btn.clicked.connect(self.accept_above)
        self.bulk.valueChanged.connect(lambda _v: self._update())  # the button says how many it would accept
        row.addWidget(self.bulk_btn)
        row.addWidget(self.bulk)
        lay.addLayout(row)

        save_row = QHBoxLayout()
        self.save_btn = QPushButton("Save labels to CSV")
        self.save_btn.clicked.connect(self.save_csv)
        self.saved = QLabel("")
        self.saved.setWordWrap(True)
        save_row.addWidget(self.save_btn)
        save_row.addWidget(self.saved, 1)
        lay.addLayout(save_row)

        self.view.installEventFilter(self)  # A / R / U / 1-9 while the grid has the focus
        self._save_timer = QTimer(self, singleShot=True, interval=800)
        self._save_timer.timeout.connect(self._save_state)
        state.current_run_changed.connect(self._on_run)
        if getattr(state, "current_run", None):
            self._on_run(state.current_run)
        self._update()

    def eventFilter(self, obj, ev) -> bool:  # noqa: N802
        if obj is self.view and ev.type() == QEvent.Type.KeyPress and not ev.modifiers() & ~Qt.KeyboardModifier.KeypadModifier:
            key = ev.key()
            if key == Qt.Key.Key_A:
                self.decide("accept")
                return True
            if key == Qt.Key.Key_R:
                self.decide("reject")
                return True
            if key == Qt.Key.Key_U:
                self.decide("undo")
                return True
            if Qt.Key.Key_1 <= key <= Qt.Key.Key_9:
                self.decide("relabel", int(key - Qt.Key.Key_1))
                return True
        return super().eventFilter(obj, ev)

    # ------------------------------------------------------------------ loading
    def _on_run(self, run_dir: str) -> None:
        from tlstudio.core.tasks.semisupervised.job import REVIEW_JSON
        from tlstudio.core.tasks.semisupervised.review import ReviewQueue

        path = Path(run_dir or "") / REVIEW_JSON
        if run_dir and path.is_file():
            self.set_queue(ReviewQueue.load(path), run_dir)

    def set_queue(self, queue, run_dir: str | None = None) -> None:
        self.queue, self.run_dir = queue, run_dir
        self.model.set_queue(queue)
        self.relabel.clear()
        if queue is not None:
            self.relabel.addItems([f"{i + 1}. {c}" if i < 9 else c for i, c in enumerate(queue.classes)])
            self.info.setText(f"{len(queue.items)} unlabelled images with the label the model proposes, most "
                              "confident first. Select one and press A to accept, R to reject, 1-9 for another "
                              "class, U to undo.")
            first = queue.next_pending(0)
            if first is not None:
                self.view.setCurrentIndex(self.model.index(first))
        self._update()

    # ------------------------------------------------------------------ decisions
    def current_row(self) -> int | None:
        ix = self.view.currentIndex()
        return ix.row() if ix.isValid() else None

    def decide(self, what: str, label: int | None = None) -> None:
        row = self.current_row()
        if self.queue is None or row is None:
            return
        if what == "accept":
            self.queue.accept(row)
        elif what == "reject":
            self.queue.reject(row)
        elif what == "relabel":
            if label is None or not 0 <= label < len(self.queue.classes):
                return
            self.queue.relabel(row, label)
        else:
            self.queue.undo(row)
        self.model.refresh_row(row)
        if what != "undo":
            nxt = self.queue.next_pending(row + 1)
            if nxt is not None:
                self.view.setCurrentIndex(self.model.index(nxt))
        self._changed()

    def accept_above(self) -> None:
        if self.queue is None:
            return
        self.queue.accept_above(self.bulk.value())
        self.model.dataChanged.emit(self.model.index(0), self.model.index(max(0, len(self.queue.items) - 1)))
        self._changed()

    def _changed(self) -> None:
        self._update()
        self._save_timer.start()

    def _save_state(self) -> None:
        if self.queue is not None and self.run_dir:
            from tlstudio.core.tasks.semisupervised.job import REVIEW_JSON

            self.queue.save(Path(self.run_dir) / REVIEW_JSON)

    def _update(self) -> None:
        has = self.queue is not None
        for w in (self.accept_btn, self.reject_btn, self.relabel, self.relabel_btn, self.undo_btn, self.bulk_btn,
                  self.save_btn):
            w.setEnabled(has)
        if not has:
            self.counts.setText("")
            return
        n = sum(1 for it in self.queue.items if it.decision == "pending" and it.confidence >= self.bulk.value())
        self.bulk_btn.setText(f"Accept the {n} at or above")
        self.bulk_btn.setEnabled(n > 0)
        c = self.queue.counts()
        per = ", ".join(f"{k} {v}" for k, v in c["labelled_per_class"].items() if v)
        self.counts.setText(f"{c['total']} images: {c['pending']} to review, {c['accepted']} accepted, "
                            f"{c['relabelled']} relabelled, {c['rejected']} rejected"
                            + (f"  |  new labels: {per}" if per else ""))

    # ------------------------------------------------------------------ CSV
    def _folders(self) -> tuple[str | None, str | None]:
        data = getattr(self.state, "data_dir", None)
        unl = (getattr(self.state, "task_settings", {}) or {}).get("unlabeled_dir")
        if self.run_dir and (not data or not unl):
            from tlstudio.core.runs.folder import read_run

            cfg = read_run(self.run_dir).config
            data, unl = data or cfg.get("data_dir"), unl or cfg.get("unlabeled_dir")
        return data, unl

    def save_csv(self, csv_path: str | Path | None = None) -> Path | None:
        from tlstudio.core.errors import UserError
        from tlstudio.core.tasks.semisupervised.review import default_csv_path, existing_labels

        if self.queue is None:
            return None
        data, unl = self._folders()
        try:
            path = Path(csv_path) if csv_path else default_csv_path(*(f for f in (data, unl) if f))
            existing = existing_labels(data) if data else []
            out = self.queue.write_csv(path, existing)
        except UserError as exc:
            self.saved.setText(f"Not saved: {exc}")
            if hasattr(self.state, "set_step_status"):
                self.state.set_step_status("review", "attention")
            return None
        self._save_state()
        self.csv_path = out
        if hasattr(self.state, "set_step_status"):  # the labels are saved: the sidebar ticks the step
            self.state.set_step_status("review", "done")
        n = len(self.queue.labelled())
        self.saved.setText(f"Saved {n} reviewed + {len(existing)} labelled images to {out}. Open this CSV in the "
                           "Data step to train with them (your image files were not moved or copied).")
        return out
