"""A lazily loaded thumbnail grid that stays smooth with tens of thousands of images.

Model/view, never one widget per image: ``ThumbnailModel`` (a QAbstractListModel over the scan's
samples) answers ``data(DecorationRole)`` from an LRU cache or with a placeholder, and asks the
``ThumbnailLoader`` to decode that one file. The view (QListView, IconMode, uniform item sizes)
only asks for the rows it paints, so only visible rows are decoded. The loader decodes in a small
thread pool, newest request first (the rows on screen now), and forgets the oldest pending
requests when the user scrolls fast, so the number of decodes stays bounded.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QObject,
    QRunnable,
    QSize,
    Qt,
    QThreadPool,
    Signal,
)
from PySide6.QtGui import QColor, QImage, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QListView, QWidget

THUMB = 96  # pixels (long side)
CACHE_SIZE = 3000  # decoded thumbnails kept (~100 MB worst case at 96 px RGB)
MAX_PENDING = 400  # requests beyond this are dropped, oldest first (scrolled away)


def _default_decode(path: str, size: int) -> QImage:
    """Decode one image into a QImage of at most size x size (runs in a worker thread)."""
    from tlstudio.core.data.images import load_rgb

    img = load_rgb(path)
    img.thumbnail((size, size))
    data = img.tobytes("raw", "RGB")
    qimg = QImage(data, img.width, img.height, img.width * 3, QImage.Format.Format_RGB888)
    return qimg.copy()  # own the bytes: `data` dies with this frame


class _Signals(QObject):
    wake = Signal()  # results are waiting (at most one wake in flight)


class _Job(QRunnable):
    def __init__(self, loader: "ThumbnailLoader") -> None:
        super().__init__()
        self.loader = loader

    def run(self) -> None:
        self.loader._work()


class ThumbnailLoader(QObject):
    """Decodes files off the UI thread; emits ``loaded([(path, QImage, error), ...])`` on the UI
    thread, batched: one queued wake-up per burst, not one event per image."""

    loaded = Signal(list)

    def __init__(self, decode: Callable[[str, int], QImage] | None = None, size: int = THUMB,
                 threads: int = 2, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.decode = decode or _default_decode
        self.size = size
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self._lock = threading.Lock()
        self._pending: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._running = 0
        self.requests = 0  # decode requests accepted (tests assert this stays bounded)
        self.decoded = 0
        self._results: collections.deque[tuple[str, QImage, str]] = collections.deque()
        self._wake_pending = False
        self._signals = _Signals()
        self._signals.wake.connect(self._drain)

    def request(self, path: str) -> None:
        with self._lock:
            if path in self._pending:
                self._pending.move_to_end(path)  # still wanted: now the newest
                return
            self._pending[path] = None
            self.requests += 1
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
            start = self._running < self.pool.maxThreadCount()
            if start:
                self._running += 1
        if start:
            self.pool.start(_Job(self))

    def forget_pending(self) -> None:
        with self._lock:
            self._pending.clear()

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._running -= 1
                    return
                path, _ = self._pending.popitem(last=True)  # newest first: what is on screen now
            try:
                img, err = self.decode(path, self.size), ""
            except Exception as exc:  # noqa: BLE001 - a bad file shows a placeholder, never a crash
                img, err = QImage(), str(exc) or type(exc).__name__
            with self._lock:
                self.decoded += 1
                self._results.append((path, img, err))
                wake = not self._wake_pending
                self._wake_pending = True
            if wake:
                try:
                    self._signals.wake.emit()
                except RuntimeError:  # the widget is gone (window closed, app quitting)
                    return

    def _drain(self) -> None:
        with self._lock:
            batch = list(self._results)
            self._results.clear()
            self._wake_pending = False
        if batch:
            self.loaded.emit(batch)

    def wait(self, msecs: int = 5000) -> bool:
        return self.pool.waitForDone(msecs)


class ThumbnailModel(QAbstractListModel):
    """Rows are (path, label) samples, optionally filtered to one class."""

    PathRole = Qt.ItemDataRole.UserRole + 1
    LabelRole = Qt.ItemDataRole.UserRole + 2

    def __init__(self, loader: ThumbnailLoader | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.loader = loader or ThumbnailLoader(parent=self)
        self.loader.loaded.connect(self._on_loaded)
        self._samples: Sequence[Any] = []
        self._rows: list[int] | range = range(0)
        self._classes: list[str] = []
        self._cache: collections.OrderedDict[str, QPixmap] = collections.OrderedDict()
        self._errors: dict[str, str] = {}
        self._row_of: dict[str, int] | None = None
        self._placeholder = self._make_placeholder(QColor("#d9dde3"))
        self._broken = self._make_placeholder(QColor("#f4c7c3"))

    @staticmethod
    def _make_placeholder(color: QColor) -> QPixmap:
        pm = QPixmap(THUMB, THUMB)
        pm.fill(color)
        return pm

    # --- content ------------------------------------------------------------------------
    def set_samples(self, samples: Sequence[Any], classes: list[str]) -> None:
        """``samples``: objects with ``.path`` and ``.label`` (tlstudio.core.data.dataset.Sample)."""
        self.beginResetModel()
        self._samples, self._classes = samples, list(classes)
        self._rows = range(len(samples))
        self._row_of = None
        self.loader.forget_pending()
        self.endResetModel()

    def set_class_filter(self, label: int | None) -> None:
        self.beginResetModel()
        if label is None:
            self._rows = range(len(self._samples))
        else:
            self._rows = [i for i, s in enumerate(self._samples) if s.label == label]
        self._row_of = None
        self.loader.forget_pending()
        self.endResetModel()

    # --- Qt model API -------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._rows):
            return None
        s = self._samples[self._rows[index.row()]]
        if role == Qt.ItemDataRole.DecorationRole:
            pm = self._cache.get(s.path)
            if pm is not None:
                self._cache.move_to_end(s.path)
                return pm
            if s.path in self._errors:
                return self._broken
            self.loader.request(s.path)
            return self._placeholder
        if role == Qt.ItemDataRole.ToolTipRole:
            name = self._classes[s.label] if 0 <= s.label < len(self._classes) else "unlabelled"
            err = self._errors.get(s.path)
            return f"{s.path}\nclass: {name}" + (f"\ncannot show: {err}" if err else "")
        if role == self.PathRole:
            return s.path
        if role == self.LabelRole:
            return s.label
        return None

    def _on_loaded(self, batch: list[tuple[str, QImage, str]]) -> None:
        rows = []
        for path, img, err in batch:
            if img.isNull():
                self._errors[path] = err or "cannot decode"
            else:
                self._cache[path] = QPixmap.fromImage(img)
            row = self._find_row(path)
            if row is not None:
                rows.append(row)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        if rows:  # one repaint for the whole burst
            self.dataChanged.emit(self.index(min(rows)), self.index(max(rows)), [Qt.ItemDataRole.DecorationRole])

    def _find_row(self, path: str) -> int | None:
        if self._row_of is None:  # built once per content change, only when a thumbnail arrives
            self._row_of = {self._samples[i].path: r for r, i in enumerate(self._rows)}
        return self._row_of.get(path)


class ThumbnailView(QListView):
    """IconMode grid with uniform item sizes: layout cost does not grow with the image count."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setUniformItemSizes(True)
        self.setIconSize(QSize(THUMB, THUMB))
        self.setGridSize(QSize(THUMB + 10, THUMB + 10))
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setLayoutMode(QListView.LayoutMode.Batched)
        self.setBatchSize(2000)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setSpacing(0)


def image_extensions() -> frozenset[str]:
    """File extensions the data set scan accepts (lower-case, with the dot)."""
    from tlstudio.core.data.images import IMAGE_EXTENSIONS

    return frozenset(IMAGE_EXTENSIONS)
