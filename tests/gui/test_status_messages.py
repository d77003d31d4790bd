"""Status-bar messages are transient: a message goes after a while, when the user moves to another
step, or when the run it was said during ends; it never describes an action long over."""

from __future__ import annotations

import pytest

from tlstudio.gui import main_window as mw
from tlstudio.gui.main_window import MainWindow
from tlstudio.gui.runner import JobRunner


def said(win) -> str:
    """The text of the status bar (its message label)."""
    from PySide6.QtWidgets import QLabel

    return win.statusBar().findChildren(QLabel)[0].text()


@pytest.fixture
def win(qtbot):
    w = MainWindow(runner=JobRunner())
    qtbot.addWidget(w)
    w.resize(1280, 800)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.runner.stop()
    w.runner.wait(5000)


def test_a_message_goes_when_the_user_moves_to_another_step(win):
    win.show_step("model")
    win.state.status_message.emit("tf_efficientnet_lite0: 7 layer groups")  # the Model step's news
    assert said(win) == "tf_efficientnet_lite0: 7 layer groups"
    win.show_step("model")  # the same step again: still current
    assert said(win) == "tf_efficientnet_lite0: 7 layer groups"
    win.show_step("layers")
    assert "layer groups" not in said(win)
    assert said(win).startswith("Ready. Drop a folder")  # no data yet: the drop hint is back


def test_a_message_times_out(win, qtbot, monkeypatch):
    monkeypatch.setattr(mw, "MESSAGE_MS", 300, raising=False)
    win.state.data_dir = "/somewhere"  # data open: the idle status bar is empty
    win.state.status_message.emit("Evaluated on the validation split: accuracy 80.0%")
    assert said(win) == "Evaluated on the validation split: accuracy 80.0%"
    qtbot.waitUntil(lambda: said(win) == "", timeout=5000)


def test_what_was_said_during_a_run_goes_when_it_ends(win, qtbot):
    import threading

    release = threading.Event()

    def job(stop, pause):
        while not stop.is_set() and not release.is_set():
            stop.wait(0.01)
        return None
        yield  # noqa: unreachable - a generator for the runner

    win.runner.start(job, owner="test", needs_torch=False)
    win.stop_training()  # the Training menu's Stop: "Stopping after this batch …", kept while it stops
    assert said(win).startswith("Stopping after this batch")
    with qtbot.waitSignal(win.runner.finished, timeout=10_000):
        pass
    assert not said(win).startswith("Stopping")  # the run has stopped: no longer "stopping"
    # a message said after the run (its end message) stays for its time
    win.state.status_message.emit("Training stopped: run-1")
    assert said(win) == "Training stopped: run-1"


def test_the_drop_hint_goes_when_the_drag_leaves(win):
    from PySide6.QtGui import QDragLeaveEvent
    from PySide6.QtWidgets import QApplication

    win.state.data_dir = "/somewhere"
    win.show_message("Drop to open this folder")
    QApplication.sendEvent(win, QDragLeaveEvent())
    assert said(win) == ""
