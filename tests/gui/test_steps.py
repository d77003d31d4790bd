"""The window's steps come from tlstudio.gui.steps.STEPS: a tenth and eleventh step, panels built
lazily from their module path, steps hidden by task kind, shortcuts renumbered."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QWidget

from tlstudio.gui import steps
from tlstudio.gui.main_window import MainWindow
from tlstudio.gui.state import AppState
from tlstudio.gui.steps import StepSpec

BUILT: list[str] = []


class ToyPanel(QWidget):
    """A stand-in panel for the steps added by this test (built with cls(state))."""

    def __init__(self, state: AppState) -> None:
        super().__init__()
        BUILT.append(type(self).__name__)
        self.state = state
        QLabel("toy", self)


class OtherToyPanel(ToyPanel):
    pass


@pytest.fixture
def extra_steps(monkeypatch):
    BUILT.clear()
    extra = [StepSpec("toy", "Toy", __name__, "ToyPanel", tip="a tenth step"),
             StepSpec("toy_only", "Toy only", __name__, "OtherToyPanel", kinds=frozenset({"toy"}))]
    classic = ("data", "model", "layers", "train", "distill", "evaluate", "predict", "runs", "export")
    base = [steps.spec(i) for i in classic]  # without other kinds' steps: positions are known
    monkeypatch.setattr(steps, "STEPS", [*base, *extra])
    return extra


@pytest.fixture
def win(qtbot, extra_steps):
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(1024, 700)
    w.show()
    qtbot.waitExposed(w)
    w.activateWindow()
    return w


def _ctrl(qtbot, win, key) -> None:
    qtbot.keyClick(win, key, Qt.KeyboardModifier.ControlModifier)


def test_tenth_step_has_ctrl0_and_is_built_lazily(qtbot, win):
    assert win.steps[-2:] == ("toy", "toy_only")
    assert win.stack.count() == 11
    # classification shows ten steps: the kind-only step is hidden
    assert win.sidebar.visible_steps()[-1] == "toy"
    assert len(win.sidebar.visible_steps()) == 10
    # shown steps' panels are built right after the window shows, a hidden step's never
    qtbot.waitUntil(lambda: "toy" in win.panels)
    assert BUILT == ["ToyPanel"]
    _ctrl(qtbot, win, Qt.Key.Key_0)
    assert win.current_step() == "toy"
    assert win.stack.currentWidget().isAncestorOf(win.panels["toy"])
    assert win.sidebar.item(9).text().startswith("10  Toy")
    assert "Ctrl+0" in win.sidebar.item(9).toolTip()
    _ctrl(qtbot, win, Qt.Key.Key_4)
    assert win.current_step() == "train"
    # a hidden step cannot be shown, by id or by shortcut
    win.show_step("toy_only")
    assert win.current_step() == "train"
    assert "OtherToyPanel" not in BUILT


def test_task_kind_hides_and_renumbers_steps(qtbot, win):
    win.show_step("layers")
    # a kind that hides Distill (distillation steps are not for "toy"), shows toy_only
    assert "OtherToyPanel" not in BUILT
    win.state.set_task_kind("toy")
    shown = win.sidebar.visible_steps()
    assert "distill" not in shown and "toy_only" in shown
    assert shown.index("toy_only") == 9
    # shortcuts follow the shown order: the 5th shown step is now Evaluate (Distill is hidden)
    _ctrl(qtbot, win, Qt.Key.Key_5)
    assert win.current_step() == "evaluate"
    _ctrl(qtbot, win, Qt.Key.Key_0)
    assert win.current_step() == "toy_only"
    assert win.step_actions["toy_only"].isVisible() and not win.step_actions["distill"].isVisible()
    # back to classification while on a step it hides: the window goes to the first step
    win.state.set_task_kind("classification")
    assert win.current_step() == "data"
    assert "toy_only" not in win.sidebar.visible_steps()
    # Ctrl+PgDown walks the shown steps only
    win.show_step("train")
    _ctrl(qtbot, win, Qt.Key.Key_PageDown)
    assert win.current_step() == "distill"


def test_distillation_kind_hides_train(qtbot, extra_steps):
    assert "train" not in steps.visible_ids("distillation")
    assert "distill" in steps.visible_ids("distillation")
    assert steps.shortcut_for(8) == "Ctrl+9" and steps.shortcut_for(9) == "Ctrl+0"
    assert steps.shortcut_for(10) is None
    with pytest.raises(KeyError, match="no step 'nope'"):
        steps.spec("nope")
