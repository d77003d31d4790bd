"""Feature cache: cached path == uncached path (logits and a short head-only training run),
views per epoch, reuse from disk, failures reported, budget decides RAM vs disk."""

from __future__ import annotations


import pytest
import torch

timm = pytest.importorskip("timm")

from tests.splits import split_of  # noqa: E402
from tlstudio.core.events import Log, Progress  # noqa: E402
from tlstudio.core.pipeline.feature_cache import FeatureCache, head_module  # noqa: E402
from tlstudio.core.pipeline.loaders import build_loaders  # noqa: E402
from tlstudio.core.runtime.precision import PrecisionPlan  # noqa: E402

FP32 = PrecisionPlan(torch.device("cpu"), None, "fp32", False, False)


def _model(name="test_resnet", drop_rate=0.0):
    torch.manual_seed(0)
    extra = {"img_size": 32} if "vit" in name else {}
    m = timm.create_model(name, pretrained=False, num_classes=3, drop_rate=drop_rate, **extra)
    cfg = timm.data.resolve_model_data_config(m)
    cfg["input_size"] = (3, 32, 32)
    return m, cfg


def _run(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as e:
            return e.value, events


def _cache(model, cfg, sp, **kw):
    args = dict(batch_size=8, augment="none", seed=0, budget_mb=64, device="cpu", precision=FP32, model_key="t")
    args.update(kw)
    return FeatureCache(model, sp, cfg, **args)


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "test_efficientnet"])
def test_cached_logits_equal_full_forward(shapes3, name):
    m, cfg = _model(name)
    sp = split_of(shapes3)
    fc = _cache(m, cfg, sp)
    loaders, events = _run(fc.prepare())
    assert any(isinstance(e, Progress) and e.task == "cache" for e in events)
    assert any(isinstance(e, Log) and "Feature cache" in e.message for e in events)
    plain = build_loaders(sp, cfg, batch_size=8, augment="none", seed=0, device="cpu")
    head = head_module(m)
    m.eval()
    with torch.inference_mode():
        for (f, yf, i_f), (x, y, i_x) in zip(loaders.train_batches(2), plain.train_batches(2)):
            assert torch.equal(i_f, i_x) and torch.equal(yf, y)
            torch.testing.assert_close(head(f), m(x), rtol=1e-4, atol=1e-4)
        for (f, _, _), (x, _, _) in zip(loaders.val, plain.val):
            torch.testing.assert_close(head(f), m(x), rtol=1e-4, atol=1e-4)


def test_head_module_includes_head_dropout():
    m, _ = _model("test_resnet", drop_rate=0.3)
    h = head_module(m)
    assert isinstance(h, torch.nn.Sequential) and h[0].p == 0.3 and h[1] is m.get_classifier()


def _train_head(module_fn, batches_fn, epochs=2):
    opt = torch.optim.SGD(module_fn().parameters(), lr=0.1)
    for epoch in range(epochs):
        for x, y, _ in batches_fn(epoch):
            loss = torch.nn.functional.cross_entropy(module_fn()(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()


def test_cached_training_equals_uncached_training(shapes3):
    sp = split_of(shapes3)
    # uncached: full model, body frozen and in eval mode, head trains
    m1, cfg = _model()
    for n_, p in m1.named_parameters():
        p.requires_grad_(n_.startswith("fc."))
    m1.eval()
    plain = build_loaders(sp, cfg, batch_size=8, augment="none", seed=5, device="cpu")
    _train_head(lambda: m1, plain.train_batches)
    # cached: features once, then only the head
    m2, _ = _model()
    loaders, _ = _run(_cache(m2, cfg, sp, seed=5).prepare())
    head = head_module(m2)
    _train_head(lambda: head, loaders.train_batches)
    torch.testing.assert_close(m1.fc.weight, m2.fc.weight, rtol=1e-4, atol=1e-5)
    assert not torch.equal(m2.fc.weight, _model()[0].fc.weight)  # it did train


def test_augmented_views_match_pipeline_epochs_and_cycle(shapes3):
    m, cfg = _model()
    sp = split_of(shapes3)
    loaders, events = _run(_cache(m, cfg, sp, augment="light", views=2, seed=1).prepare())
    assert loaders.views == 2
    assert any(isinstance(e, Log) and "2 cached views" in e.message for e in events)
    plain = build_loaders(sp, cfg, batch_size=8, augment="light", seed=1, device="cpu")
    head = head_module(m)
    m.eval()
    with torch.inference_mode():
        for epoch in (0, 1):  # view e == the pipeline's epoch e, exactly
            for (f, _, i_f), (x, _, i_x) in zip(loaders.train_batches(epoch), plain.train_batches(epoch)):
                assert torch.equal(i_f, i_x)
                torch.testing.assert_close(head(f), m(x), rtol=1e-4, atol=1e-4)
        # epoch 2 reuses view 0 (in epoch 2's order)
        for f, _, i in loaders.train_batches(2):
            assert torch.equal(f, loaders.feats[0][i])
        v0 = loaders.feats[0]
        v1 = loaders.feats[1]
        assert not torch.allclose(v0, v1)


def test_reused_from_disk_and_invalidated_by_weights(shapes3):
    m, cfg = _model()
    sp = split_of(shapes3)
    first, _ = _run(_cache(m, cfg, sp).prepare())
    fc2 = _cache(m, cfg, sp)
    second, events = _run(fc2.prepare())
    assert fc2.reused and any("reused" in e.message for e in events if isinstance(e, Log))
    assert torch.equal(first.feats, second.feats)
    with torch.no_grad():
        next(m.parameters()).add_(0.5)  # other body weights: another key
    fc3 = _cache(m, cfg, sp)
    third, _ = _run(fc3.prepare())
    assert not fc3.reused and not torch.equal(first.feats, third.feats)


def test_over_budget_goes_to_disk_memmap(shapes3):
    m, cfg = _model()
    sp = split_of(shapes3)
    loaders, events = _run(_cache(m, cfg, sp, budget_mb=0).prepare())
    assert not loaders.in_ram and not isinstance(loaders.feats, torch.Tensor)
    assert any("on disk" in e.message for e in events if isinstance(e, Log))
    x, y, idx = next(iter(loaders.train))
    assert x.dtype == torch.float32 and x.shape == (8, m.num_features)


def test_failed_image_reported_and_excluded(shapes3):
    m, cfg = _model()
    sp = split_of(shapes3)
    with open(sp.train[3].path, "wb") as f:
        f.write(b"garbage")
    loaders, _ = _run(_cache(m, cfg, sp).prepare())
    assert [f.path if hasattr(f, "path") else f[0] for f in loaders.failures] == [sp.train[3].path]
    seen = torch.cat([i for _, _, i in loaders.train_batches(0)]).tolist()
    assert 3 not in seen and len(seen) == len(sp.train) - 1


def test_feature_epoch_runs_single_threaded_and_restores(shapes3):
    m, cfg = _model()
    sp = split_of(shapes3)
    loaders, _ = _run(_cache(m, cfg, sp).prepare())
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        it = iter(loaders.train)
        next(it)
        assert torch.get_num_threads() == 1
        it.close()  # e.g. the engine stops mid-epoch
        assert torch.get_num_threads() == 2
        list(loaders.val)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
