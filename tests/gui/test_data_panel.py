"""Data panel: background scan, class table/chart, skipped files, split, thumbnails at scale."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QColor, QImage

from tlstudio.gui.panels.data_panel import DataPanel
from tlstudio.gui.state import AppState
from tlstudio.gui.widgets.thumbnails import ThumbnailLoader, ThumbnailModel, ThumbnailView


@pytest.fixture
def panel(qtbot):
    state = AppState()
    p = DataPanel(state)
    qtbot.addWidget(p)
    p.resize(1100, 700)
    p.show()
    yield p
    p.stop_scan()


def _scan(qtbot, panel, folder):
    with qtbot.waitSignal(panel.scan_finished, timeout=30_000) as blocker:
        panel.open_folder(str(folder))
    return blocker.args[0]


def test_scan_fills_table_chart_thumbnails_and_split(qtbot, panel, shapes3):
    assert panel.state.step_status["data"] == "todo"
    report = _scan(qtbot, panel, shapes3)
    st = panel.state
    assert st.scan_report is report and st.data_dir == report.root
    assert st.step_status["data"] == "done"
    t = panel.class_table
    assert t.rowCount() == 3
    assert sorted(t.item(r, 0).text() for r in range(3)) == ["circle", "square", "triangle"]
    assert all(t.item(r, 1).text() == "12" for r in range(3))
    # split columns: train + val per class add up to the count
    for r in range(3):
        assert int(t.item(r, 3).text()) + int(t.item(r, 4).text()) == 12
    assert panel.chart.values == [12, 12, 12]
    assert panel.class_filter.count() == 4  # "all" + 3 classes
    assert panel.thumb_model.rowCount() == 36
    assert "train: <b>" in panel.split_label.text()
    assert len(st.split.train) + len(st.split.val) == 36
    assert st.settings["val_fraction"] == pytest.approx(0.2)
    assert panel.right.currentWidget() is panel.tabs


def test_val_fraction_and_class_filter(qtbot, panel, shapes3):
    _scan(qtbot, panel, shapes3)
    with qtbot.waitSignal(panel.state.split_changed, timeout=5000):
        panel.val_spin.setValue(0.5)
    assert panel.state.settings["val_fraction"] == pytest.approx(0.5)
    assert len(panel.state.split.val) == 18
    panel.class_filter.setCurrentIndex(2)  # second class only
    assert panel.thumb_model.rowCount() == 12
    label = panel.class_filter.currentData()
    assert all(panel.thumb_model.data(panel.thumb_model.index(r), ThumbnailModel.LabelRole) == label
               for r in range(12))


def test_skipped_files_and_warnings_listed(qtbot, panel, shapes3):
    (shapes3 / "circle" / "empty.jpg").write_bytes(b"")
    (shapes3 / "square" / "notes.png").write_text("this is not an image")
    _scan(qtbot, panel, shapes3)
    assert panel.skipped_table.rowCount() == 2
    files = {panel.skipped_table.item(r, 0).text() for r in range(2)}
    assert any(f.endswith("empty.jpg") for f in files) and any(f.endswith("notes.png") for f in files)
    assert all(panel.skipped_table.item(r, 1).text() for r in range(2))  # a reason for each
    assert "Skipped files (2)" in panel.tabs.tabText(1)


def test_one_class_needs_attention(qtbot, panel, tmp_path):
    from tlstudio.core.data.synthetic import make_synthetic_folder

    one = make_synthetic_folder(tmp_path / "one", classes=("circle",), per_class=4, size=32)
    _scan(qtbot, panel, one)
    assert panel.state.step_status["data"] == "attention"
    assert "class" in panel.summary.text().lower()


def test_missing_folder_reports_failure(qtbot, panel, tmp_path):
    with qtbot.waitSignal(panel.scan_failed, timeout=10_000) as b:
        panel.open_folder(str(tmp_path / "does_not_exist"))
    assert "does_not_exist" in b.args[0]
    assert panel.state.step_status["data"] == "attention"


def test_cancel_scan_ignores_result(qtbot, panel, shapes3):
    panel.open_folder(str(shapes3))
    assert panel.scanning and panel.state.step_status["data"] == "busy"
    panel.stop_scan()
    assert not panel.scanning
    qtbot.wait(300)
    assert panel.state.scan_report is None
    assert panel.state.step_status["data"] == "todo"


def test_thumbnails_decode_real_images(qtbot, shapes3):
    from tlstudio.core.data.dataset import scan

    report = scan(shapes3)
    model = ThumbnailModel()
    view = ThumbnailView()
    qtbot.addWidget(view)
    view.setModel(model)
    model.set_samples(report.samples, report.classes)
    view.resize(500, 300)
    view.show()
    deco = Qt.ItemDataRole.DecorationRole
    qtbot.waitUntil(lambda: model.data(model.index(0), deco) is not model._placeholder, timeout=10_000)
    pm = model.data(model.index(0), deco)
    assert pm is not model._broken
    assert not pm.isNull() and max(pm.width(), pm.height()) <= 96
    # the decoded thumbnail shows the image: not the flat placeholder colour
    img = pm.toImage()
    colours = {img.pixel(x, y) for x in range(0, img.width(), 8) for y in range(0, img.height(), 8)}
    assert len(colours) > 3
    # a broken file gets the "broken" tile and its reason in the tooltip
    from tlstudio.core.data.dataset import Sample

    bad = shapes3 / "circle" / "x.png"
    bad.write_bytes(b"garbage")
    model.set_samples([Sample(str(bad), 0)], report.classes)
    qtbot.waitUntil(lambda: model.data(model.index(0), deco) is model._broken, timeout=10_000)
    assert "cannot show" in model.data(model.index(0), Qt.ItemDataRole.ToolTipRole)


@dataclass(frozen=True)
class _FakeSample:
    path: str
    label: int


def test_thumbnail_grid_50000_items_bounded_decodes(qtbot):
    calls: list[str] = []

    def fake_decode(path: str, size: int) -> QImage:
        calls.append(path)
        img = QImage(size, size, QImage.Format.Format_RGB888)
        img.fill(QColor("red"))
        return img

    loader = ThumbnailLoader(decode=fake_decode)
    model = ThumbnailModel(loader=loader)
    samples = [_FakeSample(f"/fake/{i % 5}/img_{i:05d}.jpg", i % 5) for i in range(50_000)]
    view = ThumbnailView()
    qtbot.addWidget(view)
    view.resize(640, 420)
    t0 = time.process_time()  # CPU time of this process (all its threads), not the wall clock of a busy machine
    view.setModel(model)
    model.set_samples(samples, [f"c{i}" for i in range(5)])
    view.show()
    qtbot.waitExposed(view)
    qtbot.wait(200)
    first = time.process_time() - t0
    assert model.rowCount(QModelIndex()) == 50_000
    visible = (640 // 106 + 1) * (420 // 106 + 1)
    assert 0 < loader.requests <= 3 * visible, loader.requests
    # scroll through: only what is shown is requested, far less than 50,000
    for v in range(0, view.verticalScrollBar().maximum(), view.verticalScrollBar().maximum() // 20):
        view.verticalScrollBar().setValue(v)
        qtbot.wait(10)
    view.verticalScrollBar().setValue(view.verticalScrollBar().maximum())
    qtbot.wait(200)
    loader.wait(5000)
    assert loader.requests < 40 * visible, loader.requests
    assert len(calls) <= loader.requests
    assert first < 3.0, first
    # filtering 50,000 rows to one class is fast too
    t1 = time.process_time()
    model.set_class_filter(3)
    assert model.rowCount() == 10_000
    assert time.process_time() - t1 < 0.5
