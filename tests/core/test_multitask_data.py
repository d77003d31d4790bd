"""Multi-task data: label tables with empty cells, typing, refusals, splits, task folder trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from tlstudio.core.data.dataset import DatasetError
from tlstudio.core.data.multitask import (
    guess_type,
    is_multitask_data,
    make_multitask_split,
    scan_multitask,
)


def _img(path: Path, colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)


def _table(root: Path, header: str, rows: list[str], name: str = "labels.csv") -> Path:
    for r in rows:
        rel = r.split(",")[0] if "," in r else r.split("\t")[0]
        if rel and not rel.startswith("missing") and not (root / rel).exists():
            _img(root / rel)
    p = root / name
    p.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return p


def test_guess_type():
    assert guess_type(["cat", "dog", ""]) == "categorical"
    assert guess_type(["0", "1", "2", "9"]) == "categorical"  # few integers: classes (digits)
    assert guess_type(["1.5", "2.25", "", "3"]) == "numeric"
    assert guess_type([str(i) for i in range(40)]) == "numeric"  # many distinct integers: a quantity
    assert guess_type(["a;b", "b", ""]) == "multilabel"


def test_empty_cells_are_missing_labels_and_rows_still_train(tmp_path):
    rows = [f"img{i}.png,{'cat' if i % 2 else 'dog'},{'' if i % 3 == 0 else ('in' if i < 6 else 'out')},"
            f"{i * 1.5 if i != 4 else ''},{'a;b' if i % 2 else 'b'}" for i in range(12)]
    p = _table(tmp_path, "path,animal,place,size,tags", rows)
    rep = scan_multitask(p)
    assert rep.layout == "table" and [t.name for t in rep.tasks] == ["animal", "place", "size", "tags"]
    types = {t.name: t.type for t in rep.tasks}
    assert types == {"animal": "categorical", "place": "categorical", "size": "numeric", "tags": "multilabel"}
    place = rep.task("place")
    assert place.missing == 4 and place.labelled == 8 and place.classes == ["in", "out"]
    assert place.counts == {"in": 4, "out": 4}
    size = rep.task("size")
    assert size.missing == 1 and size.mean == pytest.approx(sum(i * 1.5 for i in range(12) if i != 4) / 11)
    assert rep.task("tags").classes == ["a", "b"] and rep.task("tags").counts == {"a": 6, "b": 12}
    assert len(rep.samples) == 12  # every row kept: a missing cell masks one task only
    s0 = next(s for s in rep.samples if s.path.endswith("img0.png"))
    assert "place" not in s0.targets and s0.targets["animal"] == 1 and s0.label == 1  # dog = index 1
    assert s0.targets["tags"] == [1]
    s4 = next(s for s in rep.samples if s.path.endswith("img4.png"))
    assert "size" not in s4.targets
    schema = rep.label_schema["tasks"]
    assert schema[0] == {"name": "animal", "type": "categorical", "classes": ["cat", "dog"]}
    assert schema[2]["type"] == "numeric" and schema[2]["std"] > 0
    assert is_multitask_data(tmp_path) and "4 label columns" in is_multitask_data(p)


def test_types_override_and_task_subset(tmp_path):
    rows = [f"i{i}.png,{i % 3},{i}" for i in range(20)]
    p = _table(tmp_path, "file,digit,count", rows)
    rep = scan_multitask(p, tasks=["digit"], types={"digit": "numeric"})
    assert [t.name for t in rep.tasks] == ["digit"] and rep.tasks[0].type == "numeric"
    with pytest.raises(DatasetError, match="no column 'nope'"):
        scan_multitask(p, tasks=["nope"])


@pytest.mark.parametrize("cells,match", [
    (["x"] * 6, "column 'flag' has a single class \\('x'\\)"),
    ([""] * 6, "column 'flag' has no labels at all"),
])
def test_useless_task_refused_with_one_line_naming_the_column(tmp_path, cells, match):
    rows = [f"i{i}.png,{'a' if i % 2 else 'b'},{c}" for i, c in enumerate(cells)]
    p = _table(tmp_path, "path,kind,flag", rows)
    with pytest.raises(DatasetError, match=match) as e:
        scan_multitask(p)
    assert "\n" not in str(e.value)


def test_split_column_honoured_and_bad_files_skipped_with_reasons(tmp_path):
    rows = [f"i{i}.png,{'a' if i % 2 else 'b'},{'x' if i % 3 else 'y'},{'val' if i >= 8 else 'train'}" for i in range(10)]
    rows.append("missing.png,a,x,train")
    rows.append("../outside.png,a,x,train")
    p = _table(tmp_path, "path,t1,t2,split", rows)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    p.write_text(p.read_text() + "broken.png,a,y,train\n")
    rep = scan_multitask(p)
    reasons = {os.path.basename(s.path): s.reason for s in rep.skipped}
    assert "not found" in reasons["missing.png"]
    assert "outside" in reasons["outside.png"]
    assert "broken.png" in reasons
    split = make_multitask_split(rep)
    assert len(split.val) == 2 and all(s.path.endswith(("i8.png", "i9.png")) for s in split.val)
    assert len(split.train) == 8


def test_seeded_split_without_split_column_keeps_every_class_in_val(tmp_path):
    rows = [f"i{i}.png,{'a' if i < 20 else 'b'},{'' if i % 4 == 0 else 'x' if i % 2 else 'y'}" for i in range(30)]
    rep = scan_multitask(_table(tmp_path, "path,t1,t2", rows))
    s1, s2 = make_multitask_split(rep, 0.2, seed=1), make_multitask_split(rep, 0.2, seed=1)
    assert [s.path for s in s1.val] == [s.path for s in s2.val]
    assert {s.targets["t1"] for s in s1.val} == {0, 1}
    assert len(s1.train) + len(s1.val) == 30 and not {s.path for s in s1.train} & {s.path for s in s1.val}


def test_task_folder_trees_matched_by_relative_path(tmp_path):
    for i in range(6):
        _img(tmp_path / "shape" / ("round" if i % 2 else "square") / f"im{i}.png")
        if i != 5:  # im5 has no colour label
            _img(tmp_path / "colour" / ("red" if i < 3 else "blue") / f"im{i}.png")
    rep = scan_multitask(tmp_path)
    assert rep.layout == "trees" and [t.name for t in rep.tasks] == ["colour", "shape"]
    im5 = next(s for s in rep.samples if s.path.endswith("im5.png"))
    assert im5.targets == {"shape": 0}  # classes sorted: round = 0
    assert rep.task("colour").missing == 1
    assert "2 task folders" in is_multitask_data(tmp_path)


def test_plain_class_folder_is_not_multitask(tmp_path):
    for c in ("a", "b"):
        for i in range(3):
            _img(tmp_path / c / f"{i}.png")
    assert is_multitask_data(tmp_path) is None
