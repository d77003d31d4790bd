"""Main window: steps and shortcuts, real drag-and-drop events (folder, zip, image files),
settings persisted between launches, closing while training, crash handling, smoke mode."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QThreadPool, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from tlstudio.gui.main_window import MainWindow
from tlstudio.gui.state import STEPS
from tlstudio.gui.widgets import error_dialog

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def errors():
    error_dialog.CAPTURE = []
    yield error_dialog.CAPTURE
    error_dialog.CAPTURE = None


@pytest.fixture
def win(qtbot, errors):
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(1100, 700)
    w.show()
    qtbot.waitExposed(w)
    w.ensure_panels(shown_only=True)
    yield w
    if w.runner.running:
        w.runner.stop()
        w.runner.wait(10_000)
    w.panel("data").stop_scan()
    QThreadPool.globalInstance().waitForDone(60_000)  # no background job outlives its window


def _mime(paths) -> QMimeData:
    m = QMimeData()
    m.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    return m


def _drop(target, paths, pos: QPoint | None = None) -> tuple[bool, bool]:
    """A real drag-enter + drop on ``target`` (a child widget: Qt propagates to the window)."""
    mime = _mime(paths)
    pos = pos or QPoint(target.width() // 2, target.height() // 2)
    enter = QDragEnterEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(target, enter)
    accepted = enter.isAccepted()
    drop = QDropEvent(QPointF(pos), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(target, drop)
    return accepted, drop.isAccepted()


def test_steps_sidebar_and_shortcuts(qtbot, win):
    classic = ["data", "model", "layers", "train", "distill", "evaluate", "predict", "runs", "export"]
    assert win.stack.count() == win.sidebar.count() == len(STEPS) >= 9
    shown = win.sidebar.visible_steps()
    # classification shows the classic steps in order (plus steps every kind has, e.g. Rank);
    # other kinds' steps are hidden
    assert [s for s in shown if s in classic] == classic
    assert not {"anomaly_fit", "mt_evaluate"} & set(shown)
    win.activateWindow()
    for i in (2, 0, 7):
        qtbot.keyClick(win, Qt.Key(Qt.Key.Key_1 + i), Qt.KeyboardModifier.ControlModifier)
        assert win.current_step() == shown[i]
    win.sidebar.setCurrentRow(STEPS.index("train"))
    assert win.current_step() == "train"
    # status icons follow the state
    win.state.set_step_status("layers", "attention")
    assert win.sidebar.status_of("layers") == "attention"
    assert "needs attention" in win.sidebar.item(STEPS.index("layers")).toolTip()
    # every step has its real panel, inside its page of the stack
    expected = {"data": "DataPanel", "model": "ModelPanel", "layers": "LayersPanel", "train": "TrainPanel",
                "distill": "DistillPanel", "evaluate": "EvaluatePanel", "predict": "PredictPanel",
                "runs": "RunsPanel", "export": "ExportPanel"}
    for step in classic:
        assert type(win.panel(step)).__name__ == expected[step]
        assert win.stack.widget(STEPS.index(step)).isAncestorOf(win.panel(step))


def test_drop_folder_anywhere_opens_it(qtbot, win, shapes3):
    data = win.panel("data")
    win.show_step(STEPS.index("layers"))  # drop while another step is shown
    with qtbot.waitSignal(data.scan_finished, timeout=30_000):
        ok_enter, ok_drop = _drop(win.sidebar, [shapes3])
    assert ok_enter and ok_drop
    assert win.current_step() == "data"
    assert win.state.scan_report.classes == ["circle", "square", "triangle"]
    assert win.sidebar.status_of("data") == "done"


def test_drop_zip_is_extracted_safely_and_scanned(qtbot, win, shapes3, tmp_path):
    z = tmp_path / "shapes.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in shapes3.rglob("*.png"):
            zf.write(f, f"shapes/{f.relative_to(shapes3)}")
    data = win.panel("data")
    with qtbot.waitSignal(data.scan_finished, timeout=30_000):
        assert _drop(data.hint, [z]) == (True, True)
    rep = win.state.scan_report
    assert len(rep.classes) == 3 and len(rep.samples) == 36
    assert Path(rep.root).resolve().is_relative_to(Path(os.environ["TLSTUDIO_HOME"]).resolve())


def test_drop_hostile_zip_gives_message(qtbot, win, tmp_path, errors):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../../escape.txt", "x")
        zf.writestr("a/b.png", "x")
    _drop(win, [z])
    qtbot.waitUntil(lambda: bool(errors), timeout=10_000)
    assert "evil.zip" in errors[0][1] or "escape" in errors[0][1]
    assert not (tmp_path.parent / "escape.txt").exists()
    assert win.isVisible()


def test_drop_images_adds_them_to_a_class(qtbot, win, shapes3, tmp_path):
    data = win.panel("data")
    with qtbot.waitSignal(data.scan_finished, timeout=30_000):
        win.open_folder(str(shapes3))
    from tlstudio.core.data.synthetic import make_synthetic_folder

    extra = make_synthetic_folder(tmp_path / "extra", classes=("ring",), per_class=3, size=32)
    files = sorted((extra / "ring").iterdir())
    win.ask_class = lambda classes, n: "circle" if n == 3 and "circle" in classes else None
    with qtbot.waitSignal(data.scan_finished, timeout=30_000):
        assert _drop(win.stack, files) == (True, True)
    assert win.state.scan_report.counts["circle"] == 15
    assert len(list((shapes3 / "circle").iterdir())) == 15


def test_drop_images_on_a_class_row_needs_no_question(qtbot, win, shapes3, tmp_path):
    data = win.panel("data")
    with qtbot.waitSignal(data.scan_finished, timeout=30_000):
        win.open_folder(str(shapes3))
    from tlstudio.core.data.synthetic import make_synthetic_folder

    extra = make_synthetic_folder(tmp_path / "extra", classes=("ring",), per_class=2, size=32)
    win.ask_class = lambda classes, n: pytest.fail("should not ask: dropped on a class row")
    row = win.state.scan_report.classes.index("square")
    vp = data.class_table.viewport()
    pos = QPoint(20, data.class_table.rowViewportPosition(row) + 5)
    with qtbot.waitSignal(data.scan_finished, timeout=30_000):
        assert _drop(vp, sorted((extra / "ring").iterdir()), pos) == (True, True)
    assert win.state.scan_report.counts["square"] == 14


def test_drop_of_other_files_is_refused(win, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    assert _drop(win, [f]) == (False, False)
    assert win.state.scan_report is None


def test_settings_and_geometry_persist_between_launches(qtbot, errors):
    w1 = MainWindow()
    qtbot.addWidget(w1)
    w1.resize(1040, 720)  # at least the Data page's minimum size
    w1.show()
    size1 = (w1.width(), w1.height())
    w1.state.set_setting("epochs", 7)
    w1.state.set_setting("batch_size", 16)
    w1.state.set_setting("weights_file", "/somewhere/w.pth")  # paths are not carried over
    w1.close()
    w2 = MainWindow()
    qtbot.addWidget(w2)
    assert w2.state.settings["epochs"] == 7 and w2.state.settings["batch_size"] == 16
    assert "weights_file" not in w2.state.settings
    # restored as it was, within the screen (the offscreen screen is only 800 px wide)
    screen = w2.screen().availableGeometry()
    assert w2.height() == min(size1[1], screen.height())
    assert abs(w2.width() - min(size1[0], screen.width())) <= 4
    from tlstudio.core.paths import user_config_dir

    assert (user_config_dir() / "tlstudio.ini").is_file()


def _endless(events_seen: list, stopped: threading.Event):
    from tlstudio.core import events as ev

    def factory(stop, pause):
        def gen():
            i = 0
            while not stop.is_set():
                i += 1
                yield ev.Log(f"batch {i}")
                stop.wait(0.01)
            yield ev.Checkpointed(path="last.pt", epoch=0, kind="last")  # what the engine does on stop
            stopped.set()
            return "stopped"

        return gen()

    return factory


def test_close_while_training_asks_then_stops_cleanly(qtbot, win):
    stopped = threading.Event()
    got = []
    win.runner.event.connect(lambda e: got.append(type(e).__name__))
    win.runner.start(_endless(got, stopped))
    qtbot.waitUntil(lambda: len(got) > 3, timeout=5000)
    asked = []
    win.confirm_close_while_training = lambda: asked.append(1) or False
    win.close()
    assert asked and win.isVisible() and win.runner.running  # "No": keep training
    win.confirm_close_while_training = lambda: asked.append(2) or True
    win.close()
    assert asked == [1, 2]
    assert not win.isVisible()
    assert stopped.is_set() and not win.runner.running
    assert got[-1] == "Checkpointed"  # the checkpoint event was delivered before closing


def test_escape_and_f5_shortcuts_control_training(qtbot, win):
    stopped = threading.Event()
    win.runner.start(_endless([], stopped))
    qtbot.waitUntil(lambda: win.runner.running, timeout=3000)
    win.activateWindow()
    qtbot.keyClick(win, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: stopped.is_set() and not win.runner.running, timeout=5000)
    # F5 with no data: stays on Train and explains, no crash
    qtbot.keyClick(win, Qt.Key.Key_F5)
    assert win.current_step() == "train"
    assert not win.runner.running


def test_excepthook_logs_and_shows_dialog(win, errors):
    from tlstudio.core.paths import log_file
    from tlstudio.gui.app import _excepthook, setup_logging

    setup_logging()
    try:
        raise RuntimeError("boom in a slot")
    except RuntimeError as exc:
        _excepthook(type(exc), exc, exc.__traceback__)
    sys.excepthook = sys.__excepthook__
    assert errors and "boom in a slot" in errors[-1][1]
    assert "Traceback" in errors[-1][2]  # the details behind the button
    for h in __import__("logging").getLogger("tlstudio").handlers:
        h.flush()
    assert "boom in a slot" in log_file().read_text()


def test_exception_in_a_python_thread_reaches_the_ui(qtbot, win, errors):
    from tlstudio.gui.app import install_excepthook

    old = threading.excepthook
    install_excepthook()
    try:
        t = threading.Thread(target=lambda: 1 / 0)
        t.start()
        t.join()
        qtbot.waitUntil(lambda: bool(errors), timeout=5000)
    finally:
        threading.excepthook = old
        sys.excepthook = sys.__excepthook__
    assert "ZeroDivisionError" in errors[-1][1] and "Traceback" in errors[-1][2]
    assert win.isVisible()


def test_smoke_mode_subprocess(tmp_path):
    env = dict(os.environ, TLSTUDIO_SMOKE="1", QT_QPA_PLATFORM="offscreen", TLSTUDIO_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "tlstudio"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("SMOKE")][-1]
    _, ok, n_classes, n_images = line.split()
    assert ok == "OK" and int(n_classes) >= 2 and int(n_images) > int(n_classes)
    assert (tmp_path / "logs" / "tlstudio.log").is_file()


def test_every_control_of_the_first_steps_has_a_tooltip(win):
    from PySide6.QtWidgets import QAbstractButton, QAbstractItemView, QAbstractSpinBox, QComboBox, QLineEdit

    missing, checked = [], 0
    data = win.panel("data")
    # widgets of other owners embedded in the Data step have their own tests
    others = [o for o in (getattr(data, "unlabelled_zone", None), getattr(data, "task_table", None)) if o]
    for step in ("data", "model", "layers"):
        for cls in (QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit, QAbstractItemView):
            for w in win.panel(step).findChildren(cls):
                if any(o is w or o.isAncestorOf(w) for o in others):
                    continue
                if w.parent() is not None and isinstance(w.parent(), (QAbstractSpinBox, QComboBox)):
                    continue  # the line edit inside a spin box / combo box
                if type(w).__name__ in ("QTabBar", "QHeaderView") or not w.isVisibleTo(win.panel(step)):
                    continue
                checked += 1
                if not w.toolTip():
                    missing.append(f"{step}: {type(w).__name__} {getattr(w, 'text', lambda: '')()!r}")
    assert not missing, missing
    assert checked > 25, checked
