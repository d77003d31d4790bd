"""Strategy advice follows the transfer-learning strategy table."""

from __future__ import annotations

import pytest

from tlstudio.core.models.advice import LARGE_PER_CLASS, SMALL_PER_CLASS, Advice, advise
from tlstudio.core.models.backbones import create_model
from tlstudio.core.config import FREEZE_PATTERN, TrainConfig
from tlstudio.core.models.layers import layer_groups, plan_from_spec


def _n_trainable(freeze: str, groups) -> int:
    plan, every = plan_from_spec(freeze, groups)
    return len(groups) if every else sum(plan)  # gradual ends with everything trainable


def test_table_corners():
    small_high = advise(20, "high", 2)
    assert small_high.freeze == "head"  # feature extraction
    small_low = advise(20, "low", 2)
    assert small_low.freeze != "head"  # unfreeze more layers
    assert "risk" in small_low.reason.lower()
    large_high = advise(2000, "high", 10)
    assert large_high.freeze == "none"  # fine-tune the whole model
    large_low = advise(2000, "low", 10)
    assert large_low.freeze == "none"
    assert "scratch" in large_low.reason.lower()


def test_worked_example_skin_disease_100_images():
    a = advise(50, "unknown", 2)  # 100 images, healthy/sick
    assert a.freeze == "head"


@pytest.mark.parametrize("sim", ["high", "low", "unknown"])
def test_more_data_never_freezes_more(sim):
    groups = layer_groups(create_model("test_resnet", 2, init="scratch"))
    counts = [_n_trainable(advise(ipc, sim, 5).freeze, groups) for ipc in (5, 30, SMALL_PER_CLASS,
                                                                            300, LARGE_PER_CLASS, 5000)]
    assert counts == sorted(counts)
    assert counts[0] < counts[-1]


@pytest.mark.parametrize("ipc", [1, 10, 99, 100, 250, 499, 500, 10_000])
@pytest.mark.parametrize("sim", ["high", "low", "unknown"])
def test_every_advice_is_a_valid_config(ipc, sim):
    a = advise(ipc, sim, 4)
    assert isinstance(a, Advice)
    assert FREEZE_PATTERN.match(a.freeze)
    assert 1e-5 <= a.lr <= 1e-2 and 3 <= a.epochs <= 60
    TrainConfig(data_dir=".", freeze=a.freeze, lr=a.lr, epochs=a.epochs)  # accepted as is
    assert a.reason.endswith(".") and len(a.reason) < 300
    assert a.reason.count(". ") == 0  # one sentence


def test_lrs_follow_the_benchmark():
    # bench_realweights: head-only ends best at 1e-3 (higher rates end lower); last:2 needs a
    # higher head rate than head-only because the body runs at 0.1x of it
    assert advise(20, "low").lr > advise(20, "high").lr
    assert advise(200, "high").lr > advise(20, "high").lr


def test_default_lr_matches_the_advice_for_the_same_preset():
    from tlstudio.core.models.advice import default_lr

    for ipc, sim in ((20, "high"), (20, "low"), (200, "high"), (200, "unknown"), (800, "high")):
        a = advise(ipc, sim)
        assert default_lr(a.freeze, ipc) == a.lr, (ipc, sim, a)
    assert default_lr("last:2") > default_lr("head")
