"""runtime.inference: gradient-free forwards in CPU chunks, and one thread while the CPU is shared."""

from __future__ import annotations

import pytest
import torch

from tlstudio.core.runtime import contention, inference
from tlstudio.core.runtime.inference import cpu_chunk, forward_chunked


@pytest.fixture(autouse=True)
def _fresh_load_cache(monkeypatch):
    monkeypatch.setattr(inference, "_load_cache", [])
    monkeypatch.delenv("TLSTUDIO_INFER_CHUNK", raising=False)
    monkeypatch.delenv("TLSTUDIO_CPU_SHARING", raising=False)


def _quiet(monkeypatch, shared: bool) -> list[int]:
    """Make the load sampler report a shared (or quiet) CPU; returns the list of sample calls."""
    calls = []

    def fake(*a, **k):
        calls.append(1)
        return contention.CpuLoad(cores=2, other_busy=1.5 if shared else 0.0, other_runnable=2.0 if shared else 0.0)

    monkeypatch.setattr("tlstudio.core.runtime.cpu_load.sample_load", fake)
    return calls


def test_chunk_sizes_follow_the_pixels_and_the_override(monkeypatch):
    assert cpu_chunk(224, 224, 32) == 6
    assert cpu_chunk(112, 112, 64) == 24  # a quarter of the pixels: four times the images
    assert cpu_chunk(512, 512, 32) == 4  # never below 4
    assert cpu_chunk(32, 32, 10) == 10  # never above the batch
    monkeypatch.setenv("TLSTUDIO_INFER_CHUNK", "0")
    assert cpu_chunk(224, 224, 32) == 32
    monkeypatch.setenv("TLSTUDIO_INFER_CHUNK", "3")
    assert cpu_chunk(224, 224, 32) == 3


def test_chunked_outputs_equal_the_whole_batch(monkeypatch):
    _quiet(monkeypatch, shared=False)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).eval()
    x = torch.randn(15, 3, 224, 224)
    sizes = []

    def fn(c):
        sizes.append(c.shape[0])
        y = conv(c)
        return {"map": y, "pair": (y.mean((1, 2, 3)), y.amax((2, 3)))}

    with torch.inference_mode():
        whole = fn(x)
        sizes.clear()
        parts = forward_chunked(fn, x)
    assert sizes == [6, 6, 3]
    assert torch.allclose(parts["map"], whole["map"], atol=1e-6)
    for a, b in zip(parts["pair"], whole["pair"]):
        assert torch.allclose(a, b, atol=1e-6)


def test_one_thread_while_the_cpu_is_shared_then_restored(monkeypatch):
    calls = _quiet(monkeypatch, shared=True)
    before = max(2, torch.get_num_threads())
    torch.set_num_threads(before)
    seen = []
    try:
        forward_chunked(lambda c: seen.append(torch.get_num_threads()) or c, torch.zeros(2, 3, 8, 8))
        assert seen == [1] and torch.get_num_threads() == before
        # the sample is remembered for a few seconds: a stream of batches does not pay for it each time
        forward_chunked(lambda c: c, torch.zeros(2, 3, 8, 8))
        assert len(calls) == 1
    finally:
        torch.set_num_threads(before)


def test_threads_kept_when_quiet_when_a_training_run_adapts_them_or_when_switched_off(monkeypatch):
    before = max(2, torch.get_num_threads())
    torch.set_num_threads(before)
    seen = []
    probe = lambda c: seen.append(torch.get_num_threads()) or c  # noqa: E731
    try:
        _quiet(monkeypatch, shared=False)
        forward_chunked(probe, torch.zeros(2, 3, 8, 8))
        monkeypatch.setattr(inference, "_load_cache", [])
        _quiet(monkeypatch, shared=True)
        monkeypatch.setattr(contention, "current_monitor", lambda: object())  # a run of this process
        forward_chunked(probe, torch.zeros(2, 3, 8, 8))
        monkeypatch.setattr(contention, "current_monitor", lambda: None)
        monkeypatch.setenv("TLSTUDIO_CPU_SHARING", "off")
        forward_chunked(probe, torch.zeros(2, 3, 8, 8))
        monkeypatch.delenv("TLSTUDIO_CPU_SHARING")
        forward_chunked(probe, torch.zeros(2, 3, 8, 8))  # shared, nothing else adapts: one thread
    finally:
        torch.set_num_threads(before)
    assert seen == [before, before, before, 1]


def test_compute_scope_leaves_no_monitor_behind(monkeypatch):
    """A ranking or explanation job adapts threads while it runs; afterwards the process has no
    monitor, so later forwards adapt on their own again."""
    from tlstudio.core.runtime import contention as C

    monkeypatch.setattr(C, "RECHECK_S", 3600)
    before = torch.get_num_threads()
    try:
        with inference.compute_scope() as n:
            assert n >= 1 and C.current_monitor() is not None
        assert C.current_monitor() is None
    finally:
        C.stop_monitor()
        torch.set_num_threads(before)
