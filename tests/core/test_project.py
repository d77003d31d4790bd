"""Project files: round trip, relative paths, and hostile/corrupt files refused with a message."""

from __future__ import annotations

import json
import os

import pytest

from tlstudio.core.runs.project import ProjectError, load_project, save_project


def test_round_trip_relative_paths(tmp_path):
    proj_dir = tmp_path / "proj"
    data = proj_dir / "data"
    data.mkdir(parents=True)
    settings = {"backbone": "resnet10t", "epochs": 3, "freeze": "last:2", "val_fraction": 0.25, "seed": 7}
    p = save_project(proj_dir / "my", data_dir=data, settings=settings)
    assert p.name == "my.tlsproj"
    raw = json.loads(p.read_text())
    assert raw["data_dir"] == "data"  # stored relative: the folder can be moved
    assert raw["runs_dir"] == "runs"
    # move the whole project folder: paths still resolve
    moved = tmp_path / "moved"
    proj_dir.rename(moved)
    proj = load_project(moved / "my.tlsproj")
    assert proj.data_dir == (moved / "data").resolve()
    assert proj.runs_dir == (moved / "runs").resolve()
    assert proj.settings == settings
    assert proj.name == "my"


def test_absolute_data_dir_outside_is_kept(tmp_path):
    data = tmp_path / "elsewhere" / "imgs"
    data.mkdir(parents=True)
    p = save_project(tmp_path / "proj" / "a.tlsproj", data_dir=data, settings={})
    assert load_project(p).data_dir == data.resolve()


def _write(tmp_path, obj) -> str:
    f = tmp_path / "proj" / "bad.tlsproj"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(f)


@pytest.mark.parametrize(
    "obj, fragment",
    [
        ({"data_dir": "../../etc"}, "outside the project folder"),
        ({"runs_dir": "../out"}, "outside the project folder"),
        ({"runs_dir": "/tmp/evil"}, "absolute path"),
        ({"current_run": "../../x"}, "outside the project folder"),
        ({"settings": {"out_dir": "/tmp/evil"}}, "out_dir is not allowed"),
        ({"settings": {"weights_file": "../../secret.pth"}}, "outside the project folder"),
        ({"settings": {"epochs": "many"}}, "epochs"),
        ({"settings": {"freeze": "rm -rf"}}, "freeze"),
        ({"settings": {"no_such_field": 1}}, "no_such_field"),
        ({"settings": ["not", "a", "dict"]}, "settings"),
        ({"data_dir": 42}, "data_dir"),
        ({"unknown": 1}, "unknown"),
        ({"schema_version": 99}, "schema_version"),
        ([1, 2, 3], "JSON object"),
        ("{not json", "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_hostile_files_refused(tmp_path, obj, fragment):
    with pytest.raises(ProjectError) as ei:
        load_project(_write(tmp_path, obj))
    assert fragment in str(ei.value)
    assert "bad.tlsproj" in str(ei.value)


def test_symlink_escape_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    proj = tmp_path / "proj"
    proj.mkdir()
    os.symlink(outside, proj / "runs")
    f = proj / "p.tlsproj"
    f.write_text(json.dumps({"runs_dir": "runs"}))
    with pytest.raises(ProjectError, match="outside the project folder"):
        load_project(f)


def test_missing_binary_and_huge_files(tmp_path):
    with pytest.raises(ProjectError, match="cannot read"):
        load_project(tmp_path / "nope.tlsproj")
    b = tmp_path / "bin.tlsproj"
    b.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ProjectError, match="not valid JSON"):
        load_project(b)
    h = tmp_path / "huge.tlsproj"
    h.write_bytes(b" " * 2_000_000)
    with pytest.raises(ProjectError, match="too large"):
        load_project(h)
    with pytest.raises(ProjectError, match="expected a .tlsproj"):
        load_project(tmp_path / "x.json")


def test_save_refuses_runs_outside(tmp_path):
    with pytest.raises(ProjectError, match="must be inside"):
        save_project(tmp_path / "p" / "a.tlsproj", data_dir=None, settings={}, runs_dir=tmp_path / "runs")
    with pytest.raises(ProjectError, match="invalid settings"):
        save_project(tmp_path / "p" / "a.tlsproj", data_dir=None, settings={"epochs": 0})


def test_kind_of_learning_and_its_settings_round_trip(tmp_path):
    proj = tmp_path / "p.tlsproj"
    save_project(proj, data_dir=None, settings={}, task="anomaly",
                 task_settings={"method": "padim", "false_alarm": 0.02})
    raw = json.loads(proj.read_text(encoding="utf-8"))
    assert raw["schema_version"] == 2 and raw["task"] == "anomaly"
    p = load_project(proj)
    assert p.task == "anomaly" and p.task_settings == {"method": "padim", "false_alarm": 0.02}


def test_a_first_wave_project_file_opens_as_classification(tmp_path):
    proj = tmp_path / "old.tlsproj"
    proj.write_text(json.dumps({"schema_version": 1, "app": "tlstudio", "name": "old", "data_dir": None,
                                "runs_dir": "runs", "settings": {"epochs": 3}, "current_run": None}))
    p = load_project(proj)
    assert p.task == "classification" and p.task_settings == {} and p.settings == {"epochs": 3}


def test_a_kind_name_that_is_not_a_name_is_refused(tmp_path):
    proj = tmp_path / "bad.tlsproj"
    proj.write_text(json.dumps({"schema_version": 2, "task": "../../etc"}))
    with pytest.raises(ProjectError, match="task"):
        load_project(proj)
