"""Data step: the kind chooser (registry + detect), the duplicates tab, and a labels CSV picked or
dropped (issue 17 item 21)."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QThreadPool, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from tlstudio.gui.main_window import MainWindow
from tlstudio.gui.panels.data_kind import SUGGESTED
from tlstudio.gui.panels.data_panel import DataPanel
from tlstudio.gui.state import AppState


def _images(folder, n, color, size=40):
    """``n`` different pictures (coarse random blocks, tinted by ``color``): no two look alike."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash((str(folder), color))) % 2**32)
    for i in range(n):
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        im = Image.fromarray(blocks).resize((size, size), Image.Resampling.NEAREST)
        Image.blend(im, Image.new("RGB", (size, size), color), 0.3).save(folder / f"img_{i:02d}.png")


@pytest.fixture
def panel(qtbot):
    p = DataPanel(AppState())
    qtbot.addWidget(p)
    p.resize(1100, 700)
    p.show()
    yield p
    p.stop_scan()
    QThreadPool.globalInstance().waitForDone(30_000)


def _scan(qtbot, panel, path):
    with qtbot.waitSignal(panel.scan_finished, timeout=30_000):
        panel.open_folder(str(path))


def test_kind_chooser_lists_the_registry_and_suggests_detected_kinds(qtbot, panel, tmp_path):
    chooser = panel.kind_chooser
    qtbot.waitUntil(lambda: chooser.combo.count() > 1, timeout=30_000)
    kinds = [chooser.combo.itemData(i) for i in range(chooser.combo.count())]
    from tlstudio.core.tasks.registry import all_kinds

    assert kinds[0] == "classification" and sorted(kinds) == sorted(k.kind for k in all_kinds() if k.in_chooser)
    assert "ranking" not in kinds and {"multitask", "anomaly"} <= set(kinds)  # ranking is classification's Rank step
    assert chooser.combo.currentData() == "classification" == panel.state.task_kind
    # a folder of good images and defect folders: anomaly detection's detect answers
    _images(tmp_path / "inspect" / "good", 12, (90, 120, 200))
    _images(tmp_path / "inspect" / "scratch", 12, (200, 90, 60))
    _scan(qtbot, panel, tmp_path / "inspect")
    qtbot.waitUntil(lambda: "anomaly" in chooser.reasons, timeout=30_000)
    i = chooser.combo.findData("anomaly")
    assert i == 1 and chooser.combo.itemText(i).endswith(SUGGESTED)  # right after classification
    assert "anomaly" not in chooser.why.text().lower() or "also suits" in chooser.why.text()
    chooser.combo.setCurrentIndex(i)
    assert panel.state.task_kind == "anomaly"
    assert "good images" in chooser.why.text()  # the detector's reason is shown
    # a kind set elsewhere (the task table, the unlabelled zone) is shown by the chooser
    panel.state.set_task_kind("classification")
    assert chooser.combo.currentData() == "classification"
    panel.state.set_training(True)  # no switching under a running job
    assert not chooser.combo.isEnabled()
    panel.state.set_training(False)
    assert chooser.combo.isEnabled()


def test_duplicates_tab_lists_the_pairs(qtbot, panel, tmp_path):
    root = tmp_path / "dups"
    _images(root / "cat", 8, (200, 60, 60))
    _images(root / "dog", 8, (60, 60, 200))
    shutil.copy(root / "dog" / "img_01.png", root / "dog" / "again.png")  # an exact copy
    # a near copy: the same picture, resized and saved as JPEG
    Image.open(root / "cat" / "img_02.png").resize((56, 56)).save(root / "cat" / "bigger.jpg", quality=90)
    _scan(qtbot, panel, root)
    t = panel.dup_table
    assert panel.tabs.tabText(3) == "Duplicates (2)" and t.rowCount() == 2
    rows = [[t.item(r, c).text() for c in range(4)] for r in range(t.rowCount())]
    assert rows[0][:2] in (["dog/again.png", "dog/img_01.png"], ["dog/img_01.png", "dog/again.png"])
    assert rows[0][2:] == ["exact copy", "dog"]  # exact copies first
    assert sorted(rows[1][:2]) == ["cat/bigger.jpg", "cat/img_02.png"]
    assert rows[1][2].startswith("near copy (difference") and rows[1][3] == "cat"
    assert t.item(0, 0).data(Qt.ItemDataRole.UserRole) == str(root / rows[0][0])  # double-click opens it


def _csv_folder(tmp_path):
    root = tmp_path / "csvdata"
    _images(root / "pics", 16, (120, 120, 120))
    lines = ["path,label"] + [f"pics/img_{i:02d}.png,{'odd' if i % 2 else 'even'}" for i in range(16)]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    (root / "other.csv").write_text("x,y\n1,2\n")  # two CSVs: the folder alone is not enough
    return root / "labels.csv"


def test_a_dropped_labels_csv_is_opened(qtbot, tmp_path):
    csv = _csv_folder(tmp_path)
    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    data = win.panel("data")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(csv))])
    pos = QPoint(50, 50)
    enter = QDragEnterEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(win.sidebar, enter)
    assert enter.isAccepted()
    with qtbot.waitSignal(data.scan_finished, timeout=30_000):
        QApplication.sendEvent(win.sidebar, QDropEvent(QPointF(pos), Qt.DropAction.CopyAction, mime,
                                                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier))
    rep = win.state.scan_report
    assert rep.layout == "csv" and sorted(rep.classes) == ["even", "odd"] and len(rep.samples) == 16
    assert win.state.data_dir == str(csv.resolve())  # training scans this CSV, not the folder
    assert win.state.make_config().data_dir == str(csv.resolve())
    data.stop_scan()
    QThreadPool.globalInstance().waitForDone(30_000)


def test_open_labels_csv_button(qtbot, panel, tmp_path, monkeypatch):
    csv = _csv_folder(tmp_path)
    from PySide6.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(csv), "CSV files (*.csv)"))
    with qtbot.waitSignal(panel.scan_finished, timeout=30_000):
        qtbot.mouseClick(panel.csv_btn, Qt.MouseButton.LeftButton)
    assert panel.state.scan_report.layout == "csv"
    assert panel.path_label.text() == str(csv.resolve())


def test_the_two_classes_rule_is_for_classifying_kinds_only(qtbot, panel, tmp_path):
    _images(tmp_path / "normal" / "good", 12, (90, 120, 200))
    _scan(qtbot, panel, tmp_path / "normal")
    assert "at least two classes" in panel.summary.text() and panel.state.step_status["data"] == "attention"
    panel.state.set_task_kind("anomaly")  # one folder of normal images is what it needs
    assert "at least two classes" not in panel.summary.text() and panel.state.step_status["data"] == "done"
    panel.state.set_task_kind("classification")
    assert panel.state.step_status["data"] == "attention"
