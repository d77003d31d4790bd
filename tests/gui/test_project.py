"""Projects in the window: save/open round trip, recent projects, hostile files refused with a message."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import QThreadPool

from tlstudio.gui.main_window import MainWindow
from tlstudio.gui.widgets import error_dialog


@pytest.fixture
def errors():
    error_dialog.CAPTURE = []
    yield error_dialog.CAPTURE
    error_dialog.CAPTURE = None


@pytest.fixture
def make_win(qtbot, errors):
    made = []

    def make():
        w = MainWindow()
        qtbot.addWidget(w)
        w.show()
        made.append(w)
        return w

    yield make
    for w in made:
        w.panel("data").stop_scan()
    QThreadPool.globalInstance().waitForDone(60_000)


def test_save_and_open_round_trip(qtbot, make_win, tmp_path):
    from tlstudio.core.data.synthetic import make_synthetic_folder

    proj_dir = tmp_path / "myproject"
    data = make_synthetic_folder(proj_dir / "images", per_class=6, size=32)
    w1 = make_win()
    with qtbot.waitSignal(w1.panel("data").scan_finished, timeout=30_000):
        w1.open_folder(str(data))
    w1.state.update_settings({"backbone": "resnet10t", "epochs": 4, "freeze": "last:2", "lr": 0.002})
    assert w1._save_to(str(proj_dir / "exp1"))
    saved = proj_dir / "exp1.tlsproj"
    raw = json.loads(saved.read_text())
    assert raw["data_dir"] == "images" and raw["runs_dir"] == "runs"
    assert w1.state.project_path == str(saved)
    assert w1.state.runs_dir == str(proj_dir / "runs")
    # runs of this project are written inside it
    cfg = w1.state.make_config()
    assert cfg.out_dir.startswith(str(proj_dir / "runs"))
    assert "TL Studio — exp1" in w1.windowTitle()

    w2 = make_win()
    assert str(saved) in w2.recent_projects()  # recent list survives a relaunch
    assert w2.recent_menu.actions()[0].toolTip() == str(saved)
    with qtbot.waitSignal(w2.panel("data").scan_finished, timeout=30_000):
        assert w2.open_project(str(saved))
    s = w2.state.settings
    assert (s["backbone"], s["epochs"], s["freeze"], s["lr"]) == ("resnet10t", 4, "last:2", 0.002)
    assert w2.state.scan_report.classes == ["circle", "square", "triangle"]
    assert w2.state.data_dir == str(data.resolve())


@pytest.mark.parametrize("content, fragment", [
    ({"data_dir": "../../../etc"}, "outside the project folder"),
    ({"runs_dir": "/tmp/elsewhere"}, "absolute path"),
    ({"settings": {"epochs": "lots"}}, "epochs"),
    ({"settings": {"out_dir": "/home/victim"}}, "out_dir"),
    ("{{{{ not json", "not valid JSON"),
])
def test_hostile_project_refused_with_message(qtbot, make_win, tmp_path, errors, content, fragment):
    w = make_win()
    w.state.update_settings({"epochs": 9})
    f = tmp_path / "p" / "evil.tlsproj"
    f.parent.mkdir()
    f.write_text(content if isinstance(content, str) else json.dumps(content))
    assert w.open_project(str(f)) is False
    assert errors and fragment in errors[-1][1] and "evil.tlsproj" in errors[-1][1]
    assert w.state.settings == {"epochs": 9}  # nothing of the bad file was applied
    assert w.state.project_path is None
    assert str(f) not in w.recent_projects()
    assert w.isVisible()


def test_missing_data_folder_is_reported(qtbot, make_win, tmp_path, errors):
    f = tmp_path / "p" / "gone.tlsproj"
    f.parent.mkdir()
    f.write_text(json.dumps({"data_dir": "images", "settings": {"epochs": 3}}))
    w = make_win()
    assert w.open_project(str(f))
    assert w.state.settings["epochs"] == 3
    assert errors and "does not exist" in errors[-1][1]
    assert w.state.step_status["data"] == "attention"


def test_new_project_resets(qtbot, make_win, shapes3):
    w = make_win()
    with qtbot.waitSignal(w.panel("data").scan_finished, timeout=30_000):
        w.open_folder(str(shapes3))
    w.state.set_setting("epochs", 5)
    w.new_project()
    assert w.state.scan_report is None and w.state.settings == {}
    assert w.state.step_status["data"] == "todo"
    assert w.panel("data").right.currentWidget() is w.panel("data").hint
