"""The backbone catalogue as a Qt table model (recommended first, sortable) and the proxy
that filters it by words, size class and weight availability (Model step)."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QColor, QFont

from tlstudio.gui.tooltips import tip
from tlstudio.gui.widgets.layer_strip import human_count

SIZES = {"all": (0, 10**13), "small": (0, 10_000_000), "medium": (10_000_000, 50_000_000),
         "large": (50_000_000, 10**13)}


class BackboneTableModel(QAbstractTableModel):
    # "Weights": ✓ offline (on this computer) / download (pretrained, needs the internet) / none;
    # one column, so the names keep their room at 1024 px
    COLUMNS = ("", "Name", "Family", "Params", "Input", "Weights")
    TIPS = ("recommended", "backbone", "family", "params", "input_size", "offline")
    SortRole = Qt.ItemDataRole.UserRole + 1

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.infos: list[Any] = []
        self._rows: dict[str, int] = {}

    def set_infos(self, infos: list[Any]) -> None:
        self.beginResetModel()
        self.infos = list(infos)
        self._rows = {m.name: i for i, m in enumerate(self.infos)}
        self.endResetModel()

    def row_of(self, name: str) -> int:
        """The row of a backbone name, -1 if it is not listed."""
        return self._rows.get(name, -1)

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.infos)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return len(self.COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal:
            if role == Qt.ItemDataRole.DisplayRole:
                return self.COLUMNS[section]
            if role == Qt.ItemDataRole.ToolTipRole:
                return tip(self.TIPS[section])
        return None

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        m, c = self.infos[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return ("★" if m.recommended else "", m.name, m.family, human_count(m.params) if m.params else "?",
                    f"{m.input_size}", "✓ offline" if m.offline else "download" if m.pretrained else "none")[c]
        if role == self.SortRole:
            return (0 if m.recommended else 1, m.name, m.family, m.params, m.input_size,
                    -(2 * int(m.offline) + int(m.pretrained)))[c]
        if role == Qt.ItemDataRole.ToolTipRole:
            extra = " Recommended starting point." if m.recommended else ""
            off = (" Weights are on this computer: works offline." if m.offline else
                   " Pretrained weights must be downloaded first (needs the internet)." if m.pretrained else "")
            return f"{m.name} ({m.family}): {m.params:,} weights, {m.input_size} px input.{extra}{off}" \
                + ("" if m.pretrained or m.offline else " No pretrained weights: from scratch only.")
        if role == Qt.ItemDataRole.FontRole and m.recommended:
            f = QFont()
            f.setBold(True)
            return f
        if role == Qt.ItemDataRole.ForegroundRole and c == 0:
            return QColor("#e8a10a")
        if role == Qt.ItemDataRole.ForegroundRole and c == 5:
            return QColor("#2e7d32") if m.offline else QColor("#777777")
        if role == Qt.ItemDataRole.TextAlignmentRole and c in (3, 4):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class BackboneFilter(QSortFilterProxyModel):
    """Text filter (every word must match name or family) and a size class."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.words: list[str] = []
        self.size = "all"
        self.pretrained_only = False
        self.setSortRole(BackboneTableModel.SortRole)

    def _refilter(self, change) -> None:  # noqa: ANN001
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.10 (invalidateFilter is deprecated there)
            self.beginFilterChange()
            change()
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            change()
            self.invalidateFilter()

    def set_text(self, text: str) -> None:
        self._refilter(lambda: setattr(self, "words", text.lower().split()))

    def set_size(self, size: str) -> None:
        self._refilter(lambda: setattr(self, "size", size))

    def set_pretrained_only(self, on: bool) -> None:
        self._refilter(lambda: setattr(self, "pretrained_only", on))

    def filterAcceptsRow(self, row: int, parent: QModelIndex) -> bool:
        m = self.sourceModel().infos[row]
        lo, hi = SIZES[self.size]
        if self.size != "all" and not (m.params and lo <= m.params < hi):  # unknown size: only in "all"
            return False
        if self.pretrained_only and not (m.pretrained or m.offline):
            return False
        hay = f"{m.name} {m.family}".lower()
        return all(w in hay for w in self.words)
