"""Batches: seeded and resumable, cache on == cache off, bad files dropped and reported,
decoded cache within its byte budget."""

from __future__ import annotations

import os

import pytest
import torch

from tests.splits import split_of
from tlstudio.core.pipeline.augment import scale_size
from tlstudio.core.data.dataset import Sample
from tlstudio.core.pipeline.decoded_cache import DecodedCache
from tlstudio.core.pipeline.loaders import build_loaders, eval_loader

CFG = {"input_size": (3, 40, 40), "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
       "std": (0.229, 0.224, 0.225), "crop_pct": 0.875}


def _all(it):
    return [(x.clone(), y.clone(), i.clone()) for x, y, i in it]


@pytest.mark.parametrize("augment", ["none", "light", "strong"])
def test_same_seed_same_batches_and_mid_epoch_resume(shapes3, augment):
    sp = split_of(shapes3)
    a = build_loaders(sp, CFG, batch_size=7, augment=augment, seed=3, device="cpu")
    b = build_loaders(sp, CFG, batch_size=7, augment=augment, seed=3, device="cpu")
    ea, eb = _all(a.train_batches(1)), _all(b.train_batches(1))
    assert len(ea) == a.batches_per_epoch == len(a.train)
    for (xa, ya, ia), (xb, yb, ib) in zip(ea, eb):
        assert xa.shape[1:] == (3, 40, 40) and xa.dtype == torch.float32
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
        assert [sp.train[i].label for i in ia.tolist()] == ya.tolist()
    # every train sample exactly once per epoch
    assert sorted(torch.cat([i for _, _, i in ea]).tolist()) == list(range(len(sp.train)))
    # resume in the middle of the epoch: same remaining batches (second loader is cold)
    c = build_loaders(sp, CFG, batch_size=7, augment=augment, seed=3, device="cpu")
    tail = _all(c.train_batches(1, start_batch=2))
    for (xa, _, ia), (xc, _, ic) in zip(ea[2:], tail):
        assert torch.equal(ia, ic) and torch.equal(xa, xc)
    # the `train` iterable follows set_epoch
    a.set_epoch(1)
    assert torch.equal(next(iter(a.train))[0], ea[0][0])
    # another epoch or seed changes order (and, with augmentation, pixels)
    other = _all(a.train_batches(2))
    assert not torch.equal(torch.cat([i for _, _, i in other]), torch.cat([i for _, _, i in ea]))
    d = build_loaders(sp, CFG, batch_size=7, augment=augment, seed=4, device="cpu")
    assert not torch.equal(next(iter(d.train_batches(1)))[2], ea[0][2])


def test_augmentation_is_random_but_eval_is_not(shapes3):
    sp = split_of(shapes3)
    L = build_loaders(sp, CFG, batch_size=64, augment="light", seed=0, device="cpu")
    x0, _, i0 = next(iter(L.train_batches(0)))
    x1, _, i1 = next(iter(L.train_batches(1)))
    x0 = x0[i0.argsort()]
    x1 = x1[i1.argsort()]
    assert not torch.allclose(x0, x1)  # different crops/flips per epoch
    v1 = _all(L.val)
    v2 = _all(L.val)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(v1, v2))
    assert torch.cat([i for _, _, i in v1]).tolist() == list(range(len(sp.val)))


def test_normalisation_matches_timm_eval_transform(shapes3):
    timm_data = pytest.importorskip("timm.data")
    from PIL import Image

    sp = split_of(shapes3)
    x, y, idx = next(iter(eval_loader(sp.val, CFG, batch_size=4)))
    tf = timm_data.create_transform(input_size=CFG["input_size"], interpolation="bilinear", mean=CFG["mean"],
                                    std=CFG["std"], crop_pct=CFG["crop_pct"], is_training=False)
    for n, i in enumerate(idx.tolist()):
        ref = tf(Image.open(sp.val[i].path).convert("RGB"))
        # uint8 rounding of the resized image is the only difference
        assert torch.allclose(x[n], ref, atol=0.03), float((x[n] - ref).abs().max())


def test_cache_on_equals_cache_off(shapes3):
    sp = split_of(shapes3)
    on = build_loaders(sp, CFG, batch_size=8, augment="strong", seed=1, cache="auto", device="cpu")
    off = build_loaders(sp, CFG, batch_size=8, augment="strong", seed=1, cache="off", device="cpu")
    assert off.cache is None
    for epoch in (0, 1):
        for (xa, ya, ia), (xb, yb, ib) in zip(on.train_batches(epoch), off.train_batches(epoch)):
            assert torch.equal(ia, ib) and torch.equal(xa, xb)
    # epoch 2 came from the cache: no file decoded again
    assert on.cache.stats.decodes == len(sp.train)
    assert on.cache.stats.ram_hits == len(sp.train)


def test_failed_image_dropped_and_reported(shapes3):
    sp = split_of(shapes3)
    bad = sp.train[0].path
    with open(sp.train[1].path, "wb") as f:
        f.write(b"not a png at all")
    broken = sp.train[1].path
    os.remove(bad)  # deleted after the scan
    L = build_loaders(sp, CFG, batch_size=5, augment="light", seed=0, device="cpu")
    seen = torch.cat([i for _, _, i in L.train_batches(0)]).tolist()
    assert sorted(seen) == list(range(2, len(sp.train)))
    paths = sorted(f.path if hasattr(f, "path") else f[0] for f in L.failures)
    assert paths == sorted([bad, broken])
    reasons = [f.reason if hasattr(f, "reason") else f[1] for f in L.failures]
    assert all(r for r in reasons)
    # reported once, not every epoch
    list(L.train_batches(1))
    assert len(L.failures) == 2


def test_batch_left_empty_is_skipped(shapes3):
    sp = split_of(shapes3)
    sp.train = sp.train[:6]
    for s in sp.train[:3]:
        os.remove(s.path)
    L = build_loaders(sp, CFG, batch_size=3, augment="none", seed=0, device="cpu")
    batches = _all(L.train_batches(0))
    assert L.batches_per_epoch == 2
    # one batch may be all-bad (skipped), the survivors still arrive
    assert sorted(torch.cat([i for _, _, i in batches]).tolist()) == [3, 4, 5]
    assert all(x.shape[0] > 0 for x, _, _ in batches)
    ev = eval_loader([sp.train[0]], CFG, batch_size=4)
    assert list(ev) == [] and len(ev.failures) == 1


def test_trailing_singleton_batch_is_merged(shapes3):
    sp = split_of(shapes3)
    sp.train = sp.train[:9]
    L = build_loaders(sp, CFG, batch_size=4, augment="none", seed=0, device="cpu")
    sizes = [x.shape[0] for x, _, _ in L.train_batches(0)]
    assert sizes == [4, 5] and L.batches_per_epoch == 2


def test_unlabelled_samples_keep_minus_one(shapes3):
    sp = split_of(shapes3)
    sp.train = [Sample(s.path, -1) for s in sp.train]
    L = build_loaders(sp, CFG, batch_size=8, augment="light", seed=0, device="cpu")
    assert set(torch.cat([y for _, y, _ in L.train_batches(0)]).tolist()) == {-1}


def test_decoded_cache_respects_ram_budget_and_spills_to_disk(shapes3, tmp_path):
    sp = split_of(shapes3, n_val=0)
    short = scale_size(CFG)
    one = 3 * short * short + 256  # bytes per entry (square images)
    budget = 5 * one + 10
    dc = DecodedCache(short, "bilinear", budget_bytes=budget, disk_dir=tmp_path / "dc")
    first = {s.path: dc.get(s.path).clone() for s in sp.train}
    assert dc.stats.ram_entries == 5
    assert dc.stats.ram_bytes <= budget
    counted = sum(t.numel() * t.element_size() + 256 for t in dc._ram.values())
    assert counted == dc.stats.ram_bytes
    assert dc.stats.disk_entries == len(sp.train) - 5
    for s in sp.train:  # second pass: nothing decoded, disk entries read back identically
        assert torch.equal(dc.get(s.path), first[s.path])
    assert dc.stats.decodes == len(sp.train)
    assert dc.stats.disk_hits == len(sp.train) - 5
    assert dc.stats.ram_bytes <= budget
    # both budgets full: images are still served, just not kept
    tiny = DecodedCache(short, "bilinear", budget_bytes=one, disk=True, disk_budget_bytes=one, disk_dir=tmp_path / "t")
    for s in sp.train[:4]:
        assert torch.equal(tiny.get(s.path), first[s.path])
    assert tiny.stats.ram_entries == 1 and tiny.stats.disk_entries == 1 and tiny.stats.uncached == 2


def test_decoded_cache_disk_entry_invalidated_when_file_changes(shapes3, tmp_path):
    sp = split_of(shapes3, n_val=0)
    short = scale_size(CFG)
    p = sp.train[0].path
    dc = DecodedCache(short, "bilinear", budget_bytes=0, disk_dir=tmp_path / "dc", disk_budget_bytes=1 << 30)
    a = dc.get(p).clone()
    assert dc.stats.disk_entries == 1
    # a new cache (a later run) finds it on disk without decoding
    dc2 = DecodedCache(short, "bilinear", budget_bytes=0, disk_dir=tmp_path / "dc", disk_budget_bytes=1 << 30)
    assert torch.equal(dc2.get(p), a) and dc2.stats.decodes == 0
    # the file is replaced by another image: key changes, image is decoded afresh
    import shutil

    shutil.copy(sp.train[5].path, p)
    os.utime(p, ns=(1, 1))
    dc3 = DecodedCache(short, "bilinear", budget_bytes=0, disk_dir=tmp_path / "dc", disk_budget_bytes=1 << 30)
    b = dc3.get(p)
    assert dc3.stats.decodes == 1 and not torch.equal(a, b)


def test_prune_dir_removes_oldest_first(tmp_path):
    from tlstudio.core.pipeline.decoded_cache import prune_dir

    for i in range(5):
        f = tmp_path / "d" / f"{i}.npy"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"x" * 100)
        os.utime(f, (1000 + i, 1000 + i))
    removed = prune_dir(tmp_path / "d", 250)
    assert removed == 300
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["3.npy", "4.npy"]


def test_warm_cache_decodes_everything_once_with_progress(shapes3):
    from tlstudio.core.events import Progress

    sp = split_of(shapes3)
    os.remove(sp.train[2].path)
    L = build_loaders(sp, CFG, batch_size=8, augment="light", seed=0, device="cpu")
    events = list(L.warm_cache(chunk=10))
    assert all(isinstance(e, Progress) and e.task == "cache" for e in events)
    total = len(sp.train) + len(sp.val)
    assert events[-1].done == events[-1].total == total
    assert L.cache.stats.decodes == total - 1 and len(L.failures) == 1
    list(L.train_batches(0))
    list(L.val)
    assert L.cache.stats.decodes == total - 1  # nothing decoded during the epoch


def test_channels_last_batches_hold_the_same_values_in_nhwc_memory(shapes3):
    sp = split_of(shapes3)
    nchw = build_loaders(sp, CFG, batch_size=8, augment="strong", seed=2, device="cpu")
    nhwc = build_loaders(sp, CFG, batch_size=8, augment="strong", seed=2, device="cpu", channels_last=True)
    for (a, ya, ia), (b, yb, ib) in zip(nchw.train_batches(1), nhwc.train_batches(1)):
        assert a.is_contiguous() and not a.is_contiguous(memory_format=torch.channels_last)
        assert b.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, b) and torch.equal(ya, yb) and torch.equal(ia, ib)
    for (a, _, _), (b, _, _) in zip(nchw.val_batches(), nhwc.val_batches()):
        assert b.is_contiguous(memory_format=torch.channels_last) and torch.equal(a, b)


def test_cache_budget_covers_the_batches_in_flight(shapes3):
    """The budget bounds the pipeline as a whole: batches in flight first, the cache gets the rest."""
    from tlstudio.core.pipeline.loaders import working_set_bytes

    sp = split_of(shapes3)
    # by hand: a float batch is 16 x 3 x 40 x 40 x 4 = 307,200 bytes, a uint8 one 76,800; in flight
    # are three float batches (trained on, being finished, a layout copy), at least one uint8
    # batch and one decoded 45 x 45 RGB image (short side 40 / 0.875) per decode thread
    in_flight = 3 * 307_200 + 76_800 + 2 * 45 * 45 * 3
    reserve = working_set_bytes(16, CFG, 2)
    assert reserve >= in_flight
    # each extra image in a batch costs three float copies and one uint8 copy; each thread a decode buffer
    assert working_set_bytes(32, CFG, 2) - reserve >= 16 * (3 * 19_200 + 4_800)
    assert working_set_bytes(16, CFG, 4) - reserve >= 2 * 45 * 45 * 3
    budget_mb = (reserve >> 20) + 1  # room for a few images in RAM
    L = build_loaders(sp, CFG, batch_size=16, augment="light", seed=0, device="cpu", workers=2,
                      cache_budget_mb=budget_mb)
    assert L.reserve_bytes >= in_flight and L.cache.budget_bytes > 0
    assert L.cache.budget_bytes + L.reserve_bytes == budget_mb << 20  # one budget, shared
    sizes = [x.element_size() * x.nelement() for x, _, _ in L.train_batches(0)]
    assert max(sizes) == 307_200  # the hand-computed float batch is what really flows
    assert L.cache.stats.ram_bytes + L.reserve_bytes <= budget_mb << 20
    # a budget smaller than the batches in flight keeps nothing in RAM, spills to disk, still trains
    tiny = build_loaders(sp, CFG, batch_size=256, augment="light", seed=0, device="cpu", cache_budget_mb=1)
    assert tiny.cache.budget_bytes == 0
    n = sum(x.shape[0] for x, _, _ in tiny.train_batches(0))
    assert n == len(sp.train) and tiny.cache.stats.ram_entries == 0
    st = tiny.cache.stats  # the first loader's spill files are found on disk, the rest written now
    assert st.disk_hits + st.disk_entries == len(sp.train) and st.disk_entries > 0
