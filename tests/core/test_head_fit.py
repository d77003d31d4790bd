"""The head fitted on cached features before the epochs (training/head_fit.py): it reaches the
penalised minimum, leaves unlabelled rows out, picks its penalty from held-out data, and the
engine runs it only when the head alone trains on a fresh run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tlstudio.core.config import TrainConfig
from tlstudio.core.data.synthetic import make_synthetic_folder
from tlstudio.core.events import drive
from tlstudio.core.runs import folder as runs
from tlstudio.core.training.engine import fit
from tlstudio.core.training.head_fit import L2_GRID, ONE_SHOT_L2, choose_l2, fit_linear_head


def _blobs(n_per, dim, classes, sep, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * sep
    x = np.concatenate([centres[c] + rng.normal(size=(n_per, dim)) for c in range(classes)]).astype(np.float32)
    y = np.repeat(np.arange(classes), n_per)
    return x, y


def test_fit_reaches_the_penalised_minimum_and_ignores_unlabelled_rows():
    x, y = _blobs(20, 16, 3, sep=1.0)
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 3)
    start = F.cross_entropy(head(torch.from_numpy(x)), torch.from_numpy(y)).item()
    # unlabelled rows (label -1) with wild features must not move the fit
    junk = np.full((10, 16), 50.0, np.float32)
    got = fit_linear_head(head, np.concatenate([x, junk]), np.concatenate([y, -np.ones(10, int)]))
    assert got is not None and got["l2"] in L2_GRID and got["rows"] == len(y)
    assert got["after"] < got["before"] and got["after"] < start
    # at the returned weights the gradient of the penalised loss is (close to) zero: a minimum
    w = head.weight.detach().clone().requires_grad_(True)
    b = head.bias.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(torch.from_numpy(x) @ w.T + b, torch.from_numpy(y)) + got["l2"] * (w ** 2).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-3 and b.grad.abs().max() < 1e-3
    assert loss.item() == pytest.approx(got["after"], rel=1e-4)


def test_penalty_is_strong_on_noise_and_weak_on_clean_classes():
    rng = np.random.default_rng(1)
    noise = torch.from_numpy(rng.normal(size=(80, 32)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 4, 80))
    assert choose_l2(noise, labels, label_smoothing=0.0, class_weight=None) == (max(L2_GRID), True)
    x, y = _blobs(40, 8, 3, sep=3.0, seed=2)
    l2, cross_validated = choose_l2(torch.from_numpy(x), torch.from_numpy(y), label_smoothing=0.0, class_weight=None)
    assert l2 <= 1e-2 and cross_validated


def test_one_image_a_class_still_fits_with_the_default_penalty():
    x, y = _blobs(1, 16, 4, sep=3.0, seed=3)
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 4)
    got = fit_linear_head(head, x, y)
    assert got is not None and got["l2"] == ONE_SHOT_L2 and not got["cross_validated"]
    assert (head(torch.from_numpy(x)).argmax(1).numpy() == y).all()


def test_nothing_to_fit_returns_none():
    head = torch.nn.Linear(4, 2)
    before = head.weight.detach().clone()
    assert fit_linear_head(head, np.ones((6, 4), np.float32), np.zeros(6, int)) is None  # one class
    assert torch.equal(head.weight, before)


def _train(data, out, **kw):
    base = dict(data_dir=str(data), out_dir=str(out), backbone="test_resnet", init="scratch", image_size=48,
                epochs=1, batch_size=8, freeze="head", lr=1e-9, augment="none", seed=0, warmup_epochs=0.0,
                early_stop_patience=None, precision="fp32", workers=0)
    base.update(kw)
    info = drive(fit(TrainConfig(**base)))
    return info, (out / runs.LOG_TXT).read_text(encoding="utf-8"), runs.read_history(out)


def test_engine_fits_the_head_when_only_the_head_trains(tmp_path):
    data = make_synthetic_folder(tmp_path / "d", per_class=10, size=48, easy=True)
    # a learning rate of 1e-9: the one epoch changes nothing, so its training loss shows the start
    _, log_on, hist_on = _train(data, tmp_path / "on")
    _, log_off, hist_off = _train(data, tmp_path / "off", fit_head=False)
    assert "Head fitted to the cached features" in log_on and "Head fitted" not in log_off
    assert hist_on[0]["train_loss"] < hist_off[0]["train_loss"] - 0.05
    # when the body trains too (no feature cache) nothing is fitted beforehand
    _, log_body, _ = _train(data, tmp_path / "body", freeze="none")
    assert "Head fitted" not in log_body


def test_a_body_from_an_earlier_run_keeps_the_epochs_alone(tmp_path):
    """Chained transfer (init from an earlier run) is not pre-fitted: on the ranking benchmark a
    converged head lost there (head_fit.py)."""
    data = make_synthetic_folder(tmp_path / "d", per_class=10, size=48, easy=True)
    _train(data, tmp_path / "src", freeze="none", lr=1e-3)
    _, log, _ = _train(data, tmp_path / "chained", init="run", init_run=str(tmp_path / "src"))
    assert "Feature cache" in log and "Head fitted" not in log


def test_a_run_that_trained_only_its_head_is_fitted_like_its_backbone(tmp_path):
    """A head-only run keeps its backbone's body, so training from it fits the head as training
    from the backbone does; a run from such a run too; a body trained anywhere in the chain not."""
    from tlstudio.core.models.backbones import run_body_trained

    data = make_synthetic_folder(tmp_path / "d", per_class=10, size=48, easy=True)
    _train(data, tmp_path / "head_only")
    _train(data, tmp_path / "whole", freeze="none")
    _train(data, tmp_path / "head_on_head", init="run", init_run=str(tmp_path / "head_only"))
    _train(data, tmp_path / "head_on_whole", init="run", init_run=str(tmp_path / "whole"))
    assert run_body_trained(tmp_path / "head_only") is False
    assert run_body_trained(tmp_path / "head_on_head") is False
    assert run_body_trained(tmp_path / "whole") is True and run_body_trained(tmp_path / "head_on_whole") is True
    assert run_body_trained(tmp_path / "no_such_run") is True
    _, log, _ = _train(data, tmp_path / "chained", init="run", init_run=str(tmp_path / "head_only"))
    assert "Head fitted to the cached features" in log


def test_cli_flag_turns_the_fit_off_and_leaves_the_default_alone(tmp_path):
    from tlstudio.cli.main import _train_values, build_parser

    on = _train_values(build_parser().parse_args(["train", str(tmp_path)]))
    off = _train_values(build_parser().parse_args(["train", str(tmp_path), "--no-head-fit"]))
    assert "fit_head" not in on and TrainConfig(**on).fit_head is True
    assert off["fit_head"] is False and TrainConfig(**off).fit_head is False


def test_a_large_set_is_fitted_on_a_random_share_and_the_log_says_so():
    from types import SimpleNamespace

    from tlstudio.core.events import Log
    from tlstudio.core.training.head_fit import fit_head_on_cache

    x, y = _blobs(400, 5000, 3, sep=0.2, seed=4)  # 1,200 images x 5,000 dims: above the row cap
    head = torch.nn.Linear(5000, 3)
    model = SimpleNamespace(get_classifier=lambda: head)
    loaders = SimpleNamespace(feats=torch.from_numpy(x)[None], labels=torch.from_numpy(y),
                              valid=np.ones(len(y), bool))
    events = list(fit_head_on_cache(model, loaders, label_smoothing=0.1, class_weight=None))
    assert len(events) == 1 and isinstance(events[0], Log)
    assert "a random 1000 of the 1200 images" in events[0].message
    acc = (head(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert acc > 0.9
