"""The backbone catalogue, model creation basics, data config and model spec."""

from __future__ import annotations

import json
import statistics
import time

import pytest
import timm
import torch

from tlstudio.core.models import backbones
from tlstudio.core.models.backbones import (
    UnknownModelError,
    create_model,
    data_config,
    list_models,
    model_info,
    model_spec,
)
from tlstudio.core.errors import UserError
from tlstudio.core.models.layers import count_params


def test_list_models_covers_timm_and_is_fast():
    everything = list_models()
    assert len(everything) == len(timm.list_models()) > 1000
    times = []
    for f in ("", "resnet", "efficientnet lite", "vit*224"):
        t0 = time.process_time()  # CPU time of this process: other programs on a busy machine do not count
        list_models(f)
        times.append(time.process_time() - t0)
    assert statistics.median(times) < 0.2, times


def test_list_models_filter_words_glob_and_pretrained():
    res = list_models("resnet")
    assert res and all("resnet" in (m.name + " " + m.family).lower() for m in res)
    lite = list_models("efficientnet lite")
    assert lite and all("lite" in m.name for m in lite)
    assert {m.name for m in list_models("resnet1*")} >= {"resnet18", "resnet101"}
    assert all(m.name.startswith("resnet1") for m in list_models("resnet1*"))
    pre = {n.split(".")[0] for n in timm.list_pretrained()}
    no_weights = [n for n in timm.list_models() if n not in pre]
    assert no_weights  # timm has some architectures without weights
    only = {m.name for m in list_models(pretrained_only=True)}
    assert not (only & set(no_weights))
    assert "resnet18" in only


def test_starter_backbone_is_first_offline_recommended_student():
    first = list_models()[0]
    assert first.name == "tf_efficientnet_lite0"
    assert first.offline and first.pretrained and first.recommended and first.student
    info = model_info("tf_efficientnet_lite0")
    assert info.input_size == 224 and info.family == "efficientnet"


@pytest.mark.parametrize("name,student", [("mobilenetv3_small_050", True), ("resnet18", True),
                                          ("efficientnet_b0", True), ("resnet50", False),
                                          ("vit_base_patch16_224", False), ("convnext_tiny", False)])
def test_student_flags(name, student):
    assert model_info(name).student is student


@pytest.mark.parametrize("name", ["test_resnet", "mobilenetv3_small_050", "test_vit"])
def test_param_counts_match_real_models(name):
    m = create_model(name, 1000, init="scratch")
    assert model_info(name).params == count_params(m)[1]


def test_unknown_names_are_counted_on_demand(monkeypatch):
    monkeypatch.setattr(backbones, "_catalog", lambda: {})
    backbones._params_on_demand.cache_clear()
    m = create_model("test_convnext", 1000, init="scratch")
    info = model_info("test_convnext")
    assert info.params == count_params(m)[1] and info.family == "convnext"


def test_catalog_file_is_small_and_complete():
    path = backbones.catalog_path()
    assert path.is_file() and path.stat().st_size < 1_000_000
    data = json.loads(path.read_text())
    pre = {n.split(".")[0] for n in timm.list_pretrained()}
    missing = pre - set(data["models"])
    assert not missing, sorted(missing)[:5]
    counted = [v for v in data["models"].values() if v[1] > 0]
    assert len(counted) > 0.95 * len(data["models"])


def test_unknown_backbone_is_a_user_error_with_suggestion():
    with pytest.raises(UnknownModelError) as ei:
        model_info("resnet_18")
    assert isinstance(ei.value, UserError) and "resnet18" in str(ei.value)
    with pytest.raises(UserError):
        create_model("no_such_model_xyz", 3, init="scratch")


def test_create_scratch_and_data_config_and_spec():
    m = create_model("test_resnet", 4, init="scratch")
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    cfg = data_config(m, 96)
    assert cfg["input_size"] == (3, 96, 96)
    assert data_config(m)["input_size"][-1] == m.pretrained_cfg["input_size"][-1]
    spec = model_spec(m, "test_resnet", ["a", "b", "c", "d"], 96)
    assert spec.backbone == "test_resnet" and spec.num_classes == 4 and spec.image_size == 96
    assert tuple(spec.mean) == tuple(pytest.approx(x) for x in m.pretrained_cfg["mean"])
    lite = create_model("tf_efficientnet_lite0", 2, init="scratch")
    s2 = model_spec(lite, "tf_efficientnet_lite0", ["x", "y"])
    assert s2.mean == (0.5, 0.5, 0.5) and s2.std == (0.5, 0.5, 0.5) and s2.image_size == 224


def test_fixed_size_transformers_accept_other_input_sizes():
    m = create_model("vit_tiny_patch16_224", 3, init="scratch")
    assert m(torch.randn(1, 3, 96, 96)).shape == (1, 3)
