"""End-of-epoch writes in a background thread: order kept, snapshots isolated from later
training steps, failures raised in the training thread, the glibc allocator switch observable."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import threading

import pytest
import torch

from tlstudio.core.runtime.allocator import available, training_allocator
from tlstudio.core.runtime.background_writer import BackgroundWriter, snapshot


def test_writes_run_in_submission_order_off_the_calling_thread():
    done, threads = [], set()
    gate = threading.Event()
    w = BackgroundWriter()

    def job(i):
        if i == 0:
            gate.wait(5)  # the caller carries on while the first write is still running
        threads.add(threading.get_ident())
        done.append(i)

    for i in range(5):
        w.submit(job, i)
    assert done == []
    gate.set()
    w.drain()
    assert done == [0, 1, 2, 3, 4]
    assert threads and threading.get_ident() not in threads
    w.close()


def test_snapshot_is_not_changed_by_later_in_place_updates(tmp_path):
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": (3, (1, 2), None)}
    snap = snapshot(state)
    before = model.weight.detach().clone()
    gate = threading.Event()
    w = BackgroundWriter()
    w.submit(gate.wait, 5)  # hold the writer while the next step changes the live tensors
    w.submit(torch.save, snap, tmp_path / "last.pt")
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    assert not torch.equal(model.weight, before)
    gate.set()
    w.drain()
    w.close()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert torch.equal(saved["model"]["weight"], before)
    assert saved["rng"] == (3, (1, 2), None)
    assert not torch.equal(saved["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_a_failed_write_is_raised_at_the_next_call_and_later_writes_are_skipped():
    w = BackgroundWriter()
    ran = []

    def full():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    w.submit(full)
    w.submit(ran.append, "after the failure")
    with pytest.raises(OSError) as err:
        w.drain()
    assert err.value.errno == errno.ENOSPC
    assert ran == []  # the run is ending: nothing else is written after a failure
    w.drain()  # raised once
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.submit(ran.append, 1)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]


def _mmapped_blocks() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().hblks)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not available(), reason="glibc only")
def test_training_allocator_keeps_big_buffers_in_the_heap_and_restores_defaults():
    try:
        _mmapped_blocks()
    except (OSError, AttributeError):
        pytest.skip("mallinfo2 needs glibc >= 2.33")
    big = 48 << 20  # above glibc's largest mmap threshold (32 MB): normally always mmap'd
    base = _mmapped_blocks()
    a = torch.empty(big, dtype=torch.uint8)
    assert _mmapped_blocks() == base + 1
    del a
    with training_allocator():
        with training_allocator():  # nested (e.g. distillation inside a GUI run): counted
            b = torch.empty(big, dtype=torch.uint8)
            assert _mmapped_blocks() == base  # from the heap: reused by the next step, no page faults
            del b
        c = torch.empty(big, dtype=torch.uint8)
        assert _mmapped_blocks() == base  # still on: the outer user has not left
        del c
    # defaults back after the last user: a block bigger than any free heap chunk is mmap'd again
    # (a same-size one may reuse the freed heap chunk, whose pages malloc_trim gave back)
    d = torch.empty(3 * big, dtype=torch.uint8)
    assert _mmapped_blocks() == base + 1
    del d
