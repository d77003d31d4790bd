"""Issue 17 items 1 and 4: from scratch trains every layer; the advice counts training images only."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tlstudio.core.config import TrainConfig
from tlstudio.core.data.dataset import make_split, scan
from tlstudio.core.data.synthetic import SHAPES, make_image
from tlstudio.core.models.advice import advise, advise_for_report, scratch_freeze_warning, train_images_per_class


def test_scratch_defaults_to_every_layer_trainable():
    assert TrainConfig(data_dir=".", init="scratch").freeze == "none"
    assert TrainConfig(data_dir=".").freeze == "head"  # transfer keeps its default
    # an explicit choice is kept (and warned about, below)
    assert TrainConfig(data_dir=".", init="scratch", freeze="head").freeze == "head"
    assert TrainConfig(data_dir=".", init="scratch", freeze="last:2").freeze == "last:2"


def test_scratch_config_round_trips_through_json(tmp_path):
    cfg = TrainConfig(data_dir=".", init="scratch")
    cfg.to_json_file(tmp_path / "c.json")
    assert TrainConfig.from_json_file(tmp_path / "c.json").freeze == "none"


def test_explicit_frozen_body_with_scratch_is_warned():
    assert scratch_freeze_warning("scratch", "head") is not None
    assert "random" in scratch_freeze_warning("scratch", "head")
    assert scratch_freeze_warning("scratch", "last:2") is not None
    assert scratch_freeze_warning("scratch", "none") is None
    assert scratch_freeze_warning("scratch", "gradual:2") is not None
    assert scratch_freeze_warning("pretrained", "head") is None
    assert scratch_freeze_warning("scratch", "none", frozen_groups=[0, 1]) is not None


@pytest.mark.parametrize("ipc", [5, 50, 300, 5000])
@pytest.mark.parametrize("sim", ["high", "low", "unknown"])
def test_advice_for_scratch_trains_everything(ipc, sim):
    a = advise(ipc, sim, 3, init="scratch")
    assert a.freeze == "none" and "scratch" in a.reason.lower()
    assert a.reason.endswith(".") and a.reason.count(". ") == 0


def _folder(root: Path, split_layout: bool) -> Path:
    rng = random.Random(0)
    for ci, c in enumerate(("a", "b")):
        for part, n in (("train", 10), ("val", 170)) if split_layout else (("", 50),):
            d = root / part / c if part else root / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                make_image(SHAPES[ci], 24, rng).save(d / f"{c}{i}.png")
    return root


def test_advice_counts_training_images_of_a_presplit_set(tmp_path):
    r = scan(_folder(tmp_path / "ds", True), near_duplicates=False)
    assert len(r.samples) == 360
    assert train_images_per_class(r) == pytest.approx(10)
    a = advise_for_report(r, similarity="unknown")
    assert "10 images per class" in a.reason and "180" not in a.reason
    assert a.epochs == advise(10, "unknown", 2).epochs


def test_advice_counts_training_side_of_the_automatic_split(tmp_path):
    r = scan(_folder(tmp_path / "ds", False), near_duplicates=False)
    for vf in (0.2, 0.5):
        n_train = len(make_split(r, vf).train)
        assert train_images_per_class(r, val_fraction=vf) == pytest.approx(n_train / 2)
    assert "40 images per class" in advise_for_report(r, val_fraction=0.2).reason


def test_cli_scratch_run_config_trains_every_layer_and_warns_on_frozen_head(tmp_path, capsys):
    from tlstudio.cli.main import _train_config, build_parser

    args = build_parser().parse_args(["train", str(tmp_path), "--scratch"])
    assert _train_config(args).freeze == "none"
    args = build_parser().parse_args(["train", str(tmp_path), "--scratch", "--freeze", "head"])
    assert _train_config(args).freeze == "head"
    err = capsys.readouterr().err
    assert "warning:" in err and "random" in err
