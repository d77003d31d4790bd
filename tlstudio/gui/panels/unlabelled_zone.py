"""The Data step's second drop zone: unlabelled images, and what they are.

"Same kind as my labelled images" -> semi-supervised (pseudo-labels + review queue);
"a new domain to adapt to" -> domain adaptation (with an optional labelled check set). In the
background it measures how different the unlabelled images look from the labelled ones (a linear
domain classifier on ImageNet features) and says so. Sets ``state.task_kind`` and
``state.task_settings`` (target_dir/check_dir or unlabeled_dir).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QButtonGroup,
    QFileDialog,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

ADAPT, SEMI = "adaptation", "semisupervised"
_MY_KEYS = ("target_dir", "check_dir", "unlabeled_dir")
NO_UNLABELLED = ("anomaly", "multitask")  # kinds that take no folder of unlabelled images


def kind_keys(kind: str) -> set[str]:
    """The config fields only ``kind`` has (settings of the other kind are dropped on a switch:
    its config refuses unknown keys)."""
    from tlstudio.core.config import TrainConfig
    from tlstudio.core.tasks.adaptation.config import AdaptConfig
    from tlstudio.core.tasks.semisupervised.config import SemiConfig

    cls = AdaptConfig if kind == ADAPT else SemiConfig
    return set(cls.model_fields) - set(TrainConfig.model_fields)
GAP_IMAGES = 120  # per side: enough for a stable score, a few seconds on a CPU


def count_images(folder: str, limit: int = 100_000) -> int:
    from tlstudio.core.data.images import IMAGE_EXTENSIONS

    n = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        n += sum(1 for f in files if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
        if n >= limit:
            break
    return n


def gap_job(source_paths: list[str], target_dir: str, backbone: str | None, stop: Any = None) -> dict[str, Any]:
    """Background: the domain-gap report between the labelled images and a folder (no Qt).
    ``stop`` (threading.Event) ends it early: another folder was chosen or the window closed."""
    from tlstudio.gui.heavy import ensure_imported

    ensure_imported()  # torch/timm imported by one thread at a time (a concurrent first import breaks)
    from tlstudio.core.data.dataset import scan_unlabelled
    from tlstudio.core.tasks.adaptation.domain_gap import measure_domain_gap

    target, _ = scan_unlabelled(target_dir, stop=stop)
    rep = measure_domain_gap(source_paths, target, backbone=backbone, max_images=GAP_IMAGES, stop=stop)
    if stop is not None and stop.is_set():
        return {"stopped": True}
    return rep


class _DropFrame(QFrame):
    dropped = Signal(str)

    def __init__(self, text: str) -> None:
        super().__init__()
        self.setAcceptDrops(True)
        self.setObjectName("unlabelledDrop")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setStyleSheet("#unlabelledDrop { border: 2px dashed palette(mid); border-radius: 6px; }")
        lay = QVBoxLayout(self)
        self.label = QLabel(text)
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label.setWordWrap(True)
        lay.addWidget(self.label)
        self.setMinimumHeight(56)

    def dragEnterEvent(self, e: QDragEnterEvent) -> None:  # noqa: N802
        urls = e.mimeData().urls()
        if urls and Path(urls[0].toLocalFile()).is_dir():
            e.acceptProposedAction()

    def dropEvent(self, e: QDropEvent) -> None:  # noqa: N802
        urls = e.mimeData().urls()
        if urls and Path(urls[0].toLocalFile()).is_dir():
            self.dropped.emit(urls[0].toLocalFile())
            e.acceptProposedAction()


class UnlabelledZone(QGroupBox):
    """Second drop zone of the Data step (unlabelled images, optional)."""

    gap_ready = Signal(dict)

    def __init__(self, state: Any, parent: QWidget | None = None) -> None:
        super().__init__("Unlabelled images (optional)", parent)
        self.state = state
        self.folder: str | None = None
        self.check_dir: str | None = None
        self.gap: dict[str, Any] | None = None
        self._gap_for: str | None = None
        self._worker = None
        import threading

        self._gap_stop = threading.Event()
        lay = QVBoxLayout(self)
        self.intro = intro = QLabel("More images without labels can make the model better. Drop a folder of them here.")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        row = QHBoxLayout()
        self.drop = _DropFrame("Drop a folder of unlabelled images")
        self.drop.dropped.connect(self.set_folder)
        row.addWidget(self.drop, 1)
        col = QVBoxLayout()
        self.choose_btn = QPushButton("Choose folder...")
        self.choose_btn.clicked.connect(self._choose)
        self.clear_btn = QPushButton("Clear")
        self.clear_btn.clicked.connect(self.clear)
        col.addWidget(self.choose_btn)
        col.addWidget(self.clear_btn)
        row.addLayout(col)
        lay.addLayout(row)

        self.what = QLabel("What are these images?")
        lay.addWidget(self.what)
        # short texts (a radio button does not wrap: a long one widened the window past 1280 px);
        # the whole sentence is the tooltip
        self.same = QRadioButton("Same kind as my labelled images (semi-supervised)")
        self.same.setToolTip("Same kind as my labelled images (semi-supervised: the model proposes labels, "
                             "you review them)")
        self.other = QRadioButton("A new domain to adapt to (domain adaptation)")
        self.other.setToolTip("A new domain to adapt to (another camera, lighting or site: domain adaptation)")
        for b in (self.same, self.other):
            lay.addWidget(b)
        self.choice = QButtonGroup(self)
        self.choice.addButton(self.same)
        self.choice.addButton(self.other)
        self.same.setChecked(True)
        self.choice.buttonToggled.connect(lambda *_: self._apply())

        self.gap_bar = QProgressBar()
        self.gap_bar.setRange(0, 100)
        self.gap_bar.setFormat("domain gap %p%")
        self.gap_text = QLabel("")
        self.gap_text.setWordWrap(True)
        lay.addWidget(self.gap_bar)
        lay.addWidget(self.gap_text)

        # the sentence has the column's whole width and the button goes under it (side by side, the
        # sentence wrapped into a narrow strip that the Data step's left column cut off)
        check_col = QVBoxLayout()
        check_col.setContentsMargins(0, 0, 0, 0)
        self.check_label = QLabel("Check set (optional): 10-20 of the new images that you labelled, a folder "
                                  "per class. Only used to compare the adapted and unadapted models.")
        self.check_label.setWordWrap(True)
        self.check_btn = QPushButton("Choose check set...")
        self.check_btn.clicked.connect(self._choose_check)
        check_col.addWidget(self.check_label)
        btn_row = QHBoxLayout()
        btn_row.addStretch(1)
        btn_row.addWidget(self.check_btn)
        check_col.addLayout(btn_row)
        self.check_box = QWidget()
        self.check_box.setLayout(check_col)
        lay.addWidget(self.check_box)
        self.gap_ready.connect(self._show_gap)
        state.dataset_changed.connect(self._measure)
        state.task_kind_changed.connect(self._kind_changed)
        self._refresh()
        self._kind_changed(state.task_kind)

    def _kind_changed(self, kind: str) -> None:
        """Hidden for kinds that take no unlabelled images (dropping some would switch the kind
        to semi-supervised); kept while it holds a folder."""
        hide = kind in NO_UNLABELLED and self.folder is None
        if hide or self.parentWidget() is not None:  # never shown as a window of its own
            self.setVisible(not hide)

    # ------------------------------------------------------------------ user actions
    def _choose(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Folder of unlabelled images")
        if d:
            self.set_folder(d)

    def _choose_check(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Check set: labelled images of the new domain")
        if d:
            self.set_check_dir(d)

    def set_folder(self, folder: str) -> None:
        self.folder = str(folder)
        n = count_images(self.folder)
        self.drop.label.setText(f"{Path(self.folder).name}\n{n} images")  # the full path: tooltip
        self.drop.label.setToolTip(self.folder)
        self.gap = None
        self._apply()
        self._measure()

    def set_check_dir(self, folder: str | None) -> None:
        self.check_dir = folder
        self._apply()

    def set_kind(self, kind: str) -> None:
        (self.other if kind == ADAPT else self.same).setChecked(True)

    def clear(self) -> None:
        self._gap_stop.set()
        self.folder = self.check_dir = None
        self.gap = None
        self._gap_for = None
        self.drop.label.setText("Drop a folder of unlabelled images")
        self.drop.label.setToolTip("")
        self._apply()

    # ------------------------------------------------------------------ state
    def kind(self) -> str | None:
        if not self.folder:
            return None
        return ADAPT if self.other.isChecked() else SEMI

    def _apply(self) -> None:
        kind = self.kind()
        other = kind_keys(SEMI if kind == ADAPT else ADAPT) if kind else kind_keys(ADAPT) | kind_keys(SEMI)
        settings = {k: v for k, v in self.state.task_settings.items() if k not in _MY_KEYS and k not in other}
        if kind == ADAPT:
            settings["target_dir"] = self.folder
            if self.check_dir:
                settings["check_dir"] = self.check_dir
        elif kind == SEMI:
            settings["unlabeled_dir"] = self.folder
        self.state.set_task_settings(settings, replace=True)
        if kind is not None:
            self.state.set_task_kind(kind)
        elif self.state.task_kind in (ADAPT, SEMI):
            self.state.set_task_kind("classification")
        self._refresh()

    def _refresh(self) -> None:
        has = self.folder is not None
        self.intro.setVisible(not has)  # a dropped folder: its choices need the room (the Data step's left column is full)
        for w in (self.what, self.same, self.other, self.clear_btn, self.gap_bar, self.gap_text):
            w.setVisible(has)
        self.check_box.setVisible(has and self.other.isChecked())
        self.check_label.setText(
            (f"Check set: {Path(self.check_dir).name}." if self.check_dir else
             "Check set (optional): 10-20 of the new images that you labelled, a folder per class.")
            + " Only used to compare the adapted and unadapted models, never to train.")
        self.check_label.setToolTip(self.check_dir or "")
        self.gap_bar.setVisible(has and self.gap is not None and self.gap.get("score") is not None)

    # ------------------------------------------------------------------ domain gap
    def _source_paths(self) -> list[str]:
        rep = getattr(self.state, "scan_report", None)
        if rep is None:
            return []
        import random

        paths = [s.path for s in rep.samples]
        return random.Random(0).sample(paths, GAP_IMAGES) if len(paths) > GAP_IMAGES else paths

    def _measure(self) -> None:
        src = self._source_paths()
        if not self.folder or not src or self._gap_for == self.folder:
            return
        from tlstudio.gui.workers import start_worker

        import threading

        self._gap_stop.set()  # an earlier measurement for another folder is not wanted any more
        self._gap_stop = stop = threading.Event()
        self.destroyed.connect(lambda *_: stop.set())  # the window closed: end the job early
        self._gap_for = self.folder
        self.gap_text.setText("Measuring how different these images look from your labelled images...")
        backbone = (self.state.settings or {}).get("backbone")
        folder = self.folder
        self._worker = start_worker(self, gap_job, src, folder, backbone, stop,
                                    returned=lambda rep: self.gap_ready.emit({**rep, "folder": folder}),
                                    errored=lambda exc: self.gap_text.setText(f"Could not measure the gap: {exc}"))

    def _show_gap(self, rep: dict) -> None:
        if rep.get("stopped") or rep.get("folder") != self.folder:
            return  # a late answer for a folder the user has replaced
        self.gap = rep
        score = rep.get("score")
        if score is not None:
            self.gap_bar.setValue(int(round(score * 100)))
            # suggest the matching choice once; the user's own choice is kept afterwards
            from tlstudio.core.tasks.adaptation.domain_gap import LARGE, SMALL

            if score >= LARGE and self.same.isChecked():
                self.set_kind(ADAPT)
            elif score < SMALL and self.other.isChecked():
                self.set_kind(SEMI)
        self.gap_text.setText(rep.get("sentence", ""))
        self._refresh()


if __name__ == "__main__":  # preview on its own
    import sys

    from PySide6.QtWidgets import QApplication

    from tlstudio.gui.state import AppState

    app = QApplication(sys.argv)
    w = UnlabelledZone(AppState())
    w.show()
    sys.exit(app.exec())
