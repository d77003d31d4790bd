"""Grad-CAM & co: the map peaks on the region that decides the label; geometry; timm bodies; PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tlstudio.core.evaluation.explain import (
    METHODS,
    ExplainError,
    cam_maps,
    crop_box,
    place_on_picture,
    write_overlay,
)
from tlstudio.core.runs.folder import ModelSpec


class TinyCNN(nn.Module):
    """A stand-in with timm's forward_features/forward_head API (fast to train in a test)."""

    def __init__(self, n_classes=2):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(16, n_classes)

    def forward_features(self, x):
        return self.body(x)

    def forward_head(self, f):
        return self.fc(f.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def patch_images(n, rng, size=32, patch=8):
    """Grey noise; the label is the colour of one patch (red=0, blue=1) at a random place."""
    x = torch.from_numpy(rng.uniform(0.3, 0.6, size=(n, 3, size, size)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 2, n))
    pos = rng.integers(0, size - patch, size=(n, 2))
    for i in range(n):
        r, c = pos[i]
        x[i, :, r:r + patch, c:c + patch] = 0.0
        x[i, 0 if y[i] == 0 else 2, r:r + patch, c:c + patch] = 1.0
    return x, y, pos


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only spin on a busy machine
    yield _train()
    torch.set_num_threads(threads)


def _train():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        x, y, _ = patch_images(32, rng)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("method", METHODS)
def test_map_peaks_on_the_deciding_patch(trained, method):
    rng = np.random.default_rng(1)
    x, y, pos = patch_images(24, rng)
    maps, logits = cam_maps(trained, x, None, method)
    assert (logits.argmax(1) == y.numpy()).mean() > 0.9  # the model learned the rule
    assert maps.shape == (24, 8, 8) and maps.min() >= 0 and maps.max() <= 1
    hits = 0
    for m, (r, c) in zip(maps, pos):
        pr, pc = np.unravel_index(np.argmax(m), m.shape)  # feature cell (stride 4)
        hits += (r // 4 - 1 <= pr <= (r + 8) // 4) and (c // 4 - 1 <= pc <= (c + 8) // 4)
    assert hits / len(pos) >= 0.85, hits


def test_explicit_class_and_errors(trained):
    x, y, _ = patch_images(4, np.random.default_rng(2))
    m0, _ = cam_maps(trained, x, 0)
    m1, _ = cam_maps(trained, x, [1, 1, 1, 1])
    assert not np.allclose(m0, m1)  # the map depends on the class asked for
    with pytest.raises(ExplainError):
        cam_maps(trained, x, 5)
    with pytest.raises(ExplainError):
        cam_maps(trained, x, None, "magic")


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "test_efficientnet"])
def test_timm_bodies(name):
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=3).eval()
    maps, logits = cam_maps(model, torch.randn(2, 3, 64, 64), None, "gradcam")
    assert logits.shape == (2, 3) and maps.ndim == 3 and maps.shape[0] == 2
    assert maps.shape[1] >= 2 and 0 <= maps.min() and maps.max() <= 1
    assert all(p.grad is None for p in model.parameters())  # nothing flowed into the weights


def test_crop_box_and_placement():
    spec = ModelSpec(backbone="x", num_classes=2, classes=["a", "b"], image_size=224, crop_pct=0.875)
    # short side -> 256 (= 224 / 0.875), then the centre 224 x 224 is kept
    left, top, right, bottom = crop_box(512, 256, spec)
    assert (left, top, right, bottom) == pytest.approx((144, 16, 368, 240), abs=1.5)
    canvas = place_on_picture(np.ones((7, 7), np.float32), 512, 256, spec)
    assert canvas.shape == (192, 384)  # longest side scaled to 384, aspect kept
    assert np.isnan(canvas[:, :105]).all() and np.isnan(canvas[:, 280:]).all() and np.isnan(canvas[:10]).all()
    assert canvas[15:178, 110:274].min() > 0.99  # the model saw this: a value


def test_write_overlay(tmp_path):
    from PIL import Image

    src = tmp_path / "a.png"
    Image.new("RGB", (40, 20), (128, 128, 128)).save(src)
    heat = np.zeros((10, 20), np.float32)
    heat[:, 10:] = 1.0
    out = write_overlay(src, heat, tmp_path / "out" / "a_cam.png", opacity=1.0)
    img = np.asarray(Image.open(out))
    assert img.shape == (20, 40, 3)
    assert img[10, 35, 0] > 100 and img[10, 35, 2] < 40  # hot side: dark red
    assert img[10, 3, 2] > 50 and img[10, 3, 0] < 80  # cold side: dark blue
    heat[:, :5] = np.nan  # no value: the picture shows through
    img = np.asarray(Image.open(write_overlay(src, heat, tmp_path / "b.png", opacity=1.0)))
    assert tuple(img[10, 2]) == (128, 128, 128)
