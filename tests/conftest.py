"""Shared fixtures: user dirs in tmp, offscreen Qt, synthetic image folders, no network."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the tests reaches the network
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), ".torch_home_unused"))

import pytest  # noqa: E402

from tlstudio.core.data.synthetic import make_synthetic_folder  # noqa: E402


@pytest.fixture(autouse=True)
def _tlstudio_home(tmp_path_factory, monkeypatch):
    """User config, caches, logs and runs go to a temp dir, never the real home."""
    home = tmp_path_factory.mktemp("tlstudio_home")
    monkeypatch.setenv("TLSTUDIO_HOME", str(home))
    return home


@pytest.fixture
def shapes3(tmp_path):
    """3 classes x 12 images of 48 px, easy (colour tied to class)."""
    return make_synthetic_folder(tmp_path / "shapes3", per_class=12, size=48, easy=True)


@pytest.fixture
def shapes3_hard(tmp_path):
    return make_synthetic_folder(tmp_path / "shapes3_hard", per_class=12, size=48, easy=False)


@pytest.fixture
def one_torch_thread():
    """Tiny models on a shared, busy CPU: one torch thread (two spin-waiting threads crawl under load)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
