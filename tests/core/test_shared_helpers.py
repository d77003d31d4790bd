"""Helpers that replaced code written twice: label tables' image paths (CSV labels and multi-task
tables), the freezing plan from a run's settings (training, multi-task, adaptation), and an
epoch's train mode (training loop and multi-task loop)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from tlstudio.core.data.csv_labels import listed_path, read_csv
from tlstudio.core.models import layers


# ------------------------------------------------------------------ image paths a table lists
def test_listed_path_inside_outside_and_windows_forms(tmp_path):
    root = str(tmp_path / "data")
    assert listed_path(root, "a/b.png") == os.path.join(root, "a", "b.png")
    assert listed_path(root, "a\\b.png") == os.path.join(root, "a", "b.png")  # Windows separators
    assert listed_path(root, "a/../c.png") == os.path.join(root, "c.png")
    assert listed_path(root, os.path.join(root, "x.png")) == os.path.join(root, "x.png")  # absolute, inside
    assert listed_path(root, "../elsewhere/x.png") is None
    assert listed_path(root, str(tmp_path / "elsewhere" / "x.png")) is None  # absolute, outside
    assert listed_path(root, "C:/Users/x.png") is None  # a drive letter is never inside a POSIX folder
    assert listed_path(root, "C:\\Users\\x.png") is None
    assert listed_path(root + "2", "../data/x.png") is None  # a sibling that shares the prefix


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (200, 30, 30)).save(path)


def test_csv_and_multitask_tables_refuse_the_same_paths(tmp_path):
    from tlstudio.core.data.multitask import scan_multitask

    root = tmp_path / "data"
    for i in range(6):
        _img(root / f"i{i}.png")
    _img(tmp_path / "outside.png")
    bad = ["../outside.png", str(tmp_path / "outside.png"), "C:\\outside.png"]
    csv = root / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"i{i}.png,{'ab'[i % 2]}\n" for i in range(6))
                   + "".join(f"{b},a\n" for b in bad))
    rows, skipped, _ = read_csv(str(csv))
    assert len(rows) == 6
    assert [s.reason.split(": ", 1)[1] for s in skipped] == ["path is outside the CSV's folder (refused)"] * 3
    table = root / "tasks.csv"
    table.write_text("path,t1,t2\n" + "".join(f"i{i}.png,{'ab'[i % 2]},{'xy'[i % 3 == 0]}\n" for i in range(6))
                     + "".join(f"{b},a,x\n" for b in bad))
    rep = scan_multitask(table)
    outside = [s for s in rep.skipped if "outside the table's folder" in s.reason]
    assert len(outside) == 3  # the drive-letter path was taken as a file inside the folder before


# ------------------------------------------------------------------ freezing from a run's settings
def _model():
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=3)


def test_plan_from_settings_frozen_groups_win_over_the_freeze_spec():
    groups = layers.layer_groups(_model())
    n = len(groups)
    head = [g.is_head for g in groups]
    assert layers.plan_from_settings("head", None, groups) == (head, None)
    assert layers.plan_from_settings("none", None, groups) == ([True] * n, None)
    trainable, every = layers.plan_from_settings("gradual:2", None, groups)
    assert every == 2 and trainable == layers.gradual_plan(groups, 0, 2)
    # frozen by index (the Layers step): those groups freeze, the rest and the head train
    body = [g.index for g in groups if not g.is_head]
    trainable, every = layers.plan_from_settings("none", [body[0], body[1]], groups)
    assert every is None
    assert trainable == [g.is_head or g.index not in (body[0], body[1]) for g in groups]
    assert trainable.count(False) == 2
    assert layers.plan_from_settings("gradual:2", [], groups) == ([True] * n, None)


def test_adaptation_body_is_frozen_follows_the_same_plan():
    from tlstudio.core.config import TrainConfig
    from tlstudio.core.tasks.adaptation.scaffold import body_is_frozen

    m = _model()
    body = [g.index for g in layers.layer_groups(m) if not g.is_head]
    assert body_is_frozen(TrainConfig(data_dir=".", freeze="head"), m)
    assert not body_is_frozen(TrainConfig(data_dir=".", freeze="none"), m)
    assert not body_is_frozen(TrainConfig(data_dir=".", freeze="gradual:1"), m)  # opens up later
    assert body_is_frozen(TrainConfig(data_dir=".", freeze="none", frozen_groups=body), m)
    assert not body_is_frozen(TrainConfig(data_dir=".", freeze="head", frozen_groups=body[:-1]), m)


# ------------------------------------------------------------------ an epoch's train mode
def test_set_epoch_train_mode_frozen_norms_stay_in_eval_and_the_wrapper_flag_is_on():
    from tlstudio.core.training.loop import set_epoch_train_mode

    m = _model().eval()
    groups = layers.layer_groups(m)
    trainable, _ = layers.plan_from_settings("head", None, groups)

    class Wrapper(torch.nn.Module):  # stands for DDP: its own flag, the model as .module
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    w = Wrapper(m)
    w.training = False
    set_epoch_train_mode(m, w, groups, trainable, features_mode=False)
    assert w.training and m.training and m.fc.training
    assert not m.bn1.training and not m.layer1[0].bn1.training  # frozen body: running stats kept
    # features mode: only the module trained on cached features is put in train mode
    head = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.1)).eval()
    m.eval()
    set_epoch_train_mode(m, head, groups, trainable, features_mode=True)
    assert head.training and head[1].training and not m.training


# ------------------------------------------------------------------ scan progress, throttled
def test_throttled_progress_reports_at_most_every_interval_and_always_the_end(monkeypatch):
    from tlstudio.core.data import probing

    clock = [100.0]
    monkeypatch.setattr(probing, "time", SimpleNamespace(monotonic=lambda: clock[0]))  # this module's clock only
    calls = []
    report = probing._throttled(lambda done, n: calls.append((done, n)), 10)
    for done, t in [(1, 100.0), (2, 100.05), (3, 100.11), (4, 100.15), (9, 100.2), (10, 100.21)]:
        clock[0] = t
        report(done)
    assert calls == [(1, 10), (3, 10), (10, 10)]  # 0.1 s apart, and the last one however soon
    probing._throttled(None, 3)(3)  # no progress callback: nothing to call
