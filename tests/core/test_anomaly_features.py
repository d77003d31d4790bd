"""tlstudio.core.models.features: stage maps over several timm families."""

from __future__ import annotations

import pytest
import timm
import torch

from tlstudio.core.models.features import (
    FeatureError,
    feature_info,
    feature_maps,
    output_shapes,
    stage_indices_for_strides,
    unwrap,
)

CNNS = ["test_resnet", "test_efficientnet", "mobilenetv3_small_050", "test_convnext"]


@pytest.mark.parametrize("name", CNNS)
def test_cnn_strides_8_16(name):
    m = timm.create_model(name, pretrained=False, num_classes=2).eval()
    idx = stage_indices_for_strides(m, (8, 16))
    info = feature_info(m)
    assert [info[i]["reduction"] for i in idx] == [8, 16]
    x = torch.randn(2, 3, 64, 64)
    maps = feature_maps(m, x, idx)
    assert [tuple(t.shape) for t in maps] == [
        (2, info[i]["channels"], 64 // info[i]["reduction"], 64 // info[i]["reduction"]) for i in idx
    ]
    # order follows the request, not sorted
    rev = feature_maps(m, x, idx[::-1])
    assert torch.allclose(rev[0], maps[1]) and torch.allclose(rev[1], maps[0])


def test_vit_token_grid_and_middle_blocks():
    m = timm.create_model("test_vit", pretrained=False, num_classes=2).eval()
    idx = stage_indices_for_strides(m, (8, 16))
    assert len(idx) == 2 and 0 < idx[0] < idx[1] < len(feature_info(m))
    size = m.default_cfg["input_size"][1]
    maps = feature_maps(m, torch.randn(1, 3, size, size), idx)
    assert all(t.ndim == 4 and t.shape[-1] == size // 16 for t in maps)


def test_hook_fallback_matches_forward_intermediates(monkeypatch):
    m = timm.create_model("test_resnet", pretrained=False, num_classes=2).eval()
    x = torch.randn(1, 3, 64, 64)
    direct = feature_maps(m, x, [2, 3])

    class NoIntermediates(torch.nn.Module):  # a model exposing feature_info but no forward_intermediates
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.feature_info = [dict(d, module="inner." + d["module"]) for d in inner.feature_info]

        def forward(self, x):
            return self.inner(x)

    hooked = feature_maps(NoIntermediates(m), x, [2, 3])
    assert all(torch.allclose(a, b) for a, b in zip(direct, hooked, strict=True))


def test_unwrap_compiled_like_and_errors():
    m = timm.create_model("test_efficientnet", pretrained=False, num_classes=2).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    assert unwrap(Wrapper(m)) is m
    assert output_shapes(Wrapper(m), [2], 64) == [(feature_info(m)[2]["channels"], 8, 8)]
    with pytest.raises(FeatureError):
        feature_maps(m, torch.randn(1, 3, 32, 32), [99])
    with pytest.raises(FeatureError):
        feature_info(torch.nn.Linear(2, 2))
