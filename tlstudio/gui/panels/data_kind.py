"""The Data step's "What do you want to do?" chooser: every kind of learning in the task registry
(``tlstudio.core.tasks.registry.all_kinds()``), classification first, then the kinds whose
``detect(folder)`` answers for the open data set, marked as suggested with their reason.

Loading the registry imports every kind module (about a second) and ``detect`` reads the folder,
so both run in a worker thread; the chooser shows "classification" at once. Choosing a kind sets
``AppState.task_kind``; a kind set elsewhere (the task table, the unlabelled-images zone) is shown.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from tlstudio.gui.state import DEFAULT_KIND, AppState
from tlstudio.gui.workers import start_worker

SUGGESTED = " (suggested for this folder)"

# what the Data step's drop zone asks for, per kind (others: the classification text, DROP_HINT)
KIND_DROP_HINTS = {
    "anomaly": (
        "<h2>Drop a folder of normal images here</h2>"
        "<p>Good parts only (for example <i>good/</i>): the detector learns what normal looks like<br>"
        "and flags whatever differs; no defect images are needed.</p>"
        "<p>An MVTec AD category works too: <i>train/good/</i>, <i>test/good/</i>, <i>test/&lt;defect&gt;/</i>,<br>"
        "with optional <i>ground_truth/&lt;defect&gt;/&lt;name&gt;_mask.png</i> masks.</p>"
        "<p>You can also click <b>Open folder…</b> (Ctrl+O).</p>"
    ),
}


def drop_hint(kind: str) -> str:
    from tlstudio.gui.panels.data_views import DROP_HINT

    return KIND_DROP_HINTS.get(kind, DROP_HINT)


def load_kinds() -> list[Any]:
    """Worker thread: the kinds the chooser offers (TaskKind), classification first."""
    from tlstudio.core.tasks.registry import all_kinds

    kinds = [k for k in all_kinds() if k.in_chooser]
    return sorted(kinds, key=lambda k: k.kind != DEFAULT_KIND)


def detect_kinds(path: str, kinds: list[Any]) -> dict[str, str]:
    """Worker thread: kind -> why ``path`` suits it, for every kind whose detect answers."""
    import logging

    out: dict[str, str] = {}
    for k in kinds:
        if k.detect is None:
            continue
        try:
            why = k.detect(path)
        except Exception:  # noqa: BLE001 - one kind's detector must not hide the others
            logging.getLogger("tlstudio.gui").exception("detect of %s failed on %s", k.kind, path)
            continue
        if why:
            out[k.kind] = str(why)
    return out


def optional_widget(module: str, cls: str, state: AppState) -> QWidget | None:
    """``module.cls(state)`` when that module exists in this install (other owners write them),
    else None. Checked once, when the Data panel is built."""
    if importlib.util.find_spec(module) is None:
        return None
    from importlib import import_module

    return getattr(import_module(module), cls)(state)


class KindChooser(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.kinds: list[Any] = []
        self.reasons: dict[str, str] = {}
        self._detect_gen = 0
        self.combo = QComboBox()
        self.combo.setAccessibleName("What do you want to do?")
        self.combo.setToolTip("The kind of learning. Classification (one label per image) is the default; "
                              "kinds that suit the open folder are marked as suggested.")
        self.combo.addItem("Classification", DEFAULT_KIND)
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.combo.currentIndexChanged.connect(self._chosen)
        self.why = QLabel("")
        self.why.setWordWrap(True)
        self.why.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.why.setAccessibleName("Why this kind of learning")
        title = QLabel("<b>What do you want to do?</b>")
        title.setBuddy(self.combo)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(title)
        row.addWidget(self.combo)
        row.addStretch(1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addLayout(row)
        lay.addWidget(self.why)
        state.dataset_changed.connect(self.detect)
        state.task_kind_changed.connect(self._show_kind)
        # a running job belongs to the kind it started with: no switching under it
        state.training_changed.connect(lambda running: self.combo.setEnabled(not running))
        self.loading = start_worker(self, load_kinds, returned=self._kinds_loaded,
                                    errored=lambda exc: self.why.setText(f"Kinds of learning not available: {exc}"))

    # --- filling ----------------------------------------------------------------------------
    def _kinds_loaded(self, kinds: list[Any]) -> None:
        self.kinds = kinds
        self._fill()
        self.detect()

    def detect(self) -> None:
        """Ask every kind's detect about the open folder (in a worker thread)."""
        path = self.state.data_dir
        self._detect_gen += 1
        if not path or not self.kinds:
            self.reasons = {}
            self._fill()
            return
        gen = self._detect_gen
        start_worker(self, detect_kinds, path, list(self.kinds),
                     returned=lambda r, g=gen: self._detected(g, r))

    def _detected(self, gen: int, reasons: dict[str, str]) -> None:
        if gen == self._detect_gen:
            self.reasons = reasons
            self._fill()

    def _fill(self) -> None:
        """Classification, then the suggested kinds, then the others; the current kind stays."""
        order = sorted(self.kinds, key=lambda k: (k.kind != DEFAULT_KIND, k.kind not in self.reasons))
        self.combo.blockSignals(True)
        self.combo.clear()
        for k in order:
            self.combo.addItem(k.title + (SUGGESTED if k.kind in self.reasons else ""), k.kind)
            self.combo.setItemData(self.combo.count() - 1, self.reasons.get(k.kind, k.summary),
                                   Qt.ItemDataRole.ToolTipRole)
        self.combo.blockSignals(False)
        self._show_kind(self.state.task_kind)

    def _show_kind(self, kind: str) -> None:
        i = self.combo.findData(kind)
        if i >= 0 and i != self.combo.currentIndex():
            self.combo.blockSignals(True)
            self.combo.setCurrentIndex(i)
            self.combo.blockSignals(False)
        self._explain(kind)

    def _explain(self, kind: str) -> None:
        # the Data panel's empty drop zone (objectName "dropHint") asks for this kind's data
        hint = self.parentWidget().findChild(QLabel, "dropHint") if self.parentWidget() is not None else None
        if hint is not None:
            hint.setText(drop_hint(kind))
        k = next((k for k in self.kinds if k.kind == kind), None)
        if k is None:
            self.why.setText("")
            return
        text = k.summary[:1].upper() + k.summary[1:] + "."
        if kind in self.reasons:
            text = f"<b>Suggested:</b> {self.reasons[kind]}<br>{text}"
        others = [x.title for x in self.kinds if x.kind in self.reasons and x.kind != kind]
        if others:
            text += f"<br><span style='color:#555'>This folder also suits: {', '.join(others)}.</span>"
        self.why.setText(text)

    def _chosen(self, _index: int) -> None:
        kind = self.combo.currentData()
        if kind:
            self.state.set_task_kind(str(kind))
            self._explain(str(kind))
