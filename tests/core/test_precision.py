"""Precision plans: the right mode per device, fp32 fallback, threads, bf16 learns like fp32."""

from __future__ import annotations

import pytest
import torch

from tlstudio.core.runtime import precision as P
from tlstudio.core.runtime import step_timing as T
from tlstudio.core.errors import UserError


class _Conv(torch.nn.Module):
    def __init__(self, n_classes=3):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(16, n_classes)

    def forward(self, x):
        return self.head(self.body(x))


def test_resolve_device(monkeypatch):
    assert P.resolve_device("cpu").type == "cpu"
    # "auto" = cuda, then mps, then cpu: drive each branch (this machine has neither GPU)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(P, "_mps_available", lambda: False)
    assert P.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(P, "_mps_available", lambda: True)
    assert P.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert P.resolve_device("auto") == torch.device("cuda")
    monkeypatch.undo()
    with pytest.raises(UserError):
        P.resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            P.resolve_device("cuda:0")


def test_choose_precision_cpu(monkeypatch):
    model = _Conv()
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: True)
    plan = P.choose_precision("cpu", model)
    assert plan.name == "bf16" and plan.dtype == torch.bfloat16 and plan.channels_last and not plan.use_scaler
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: False)
    plan = P.choose_precision("cpu", model)
    assert plan.name == "fp32" and plan.dtype is None and not plan.use_scaler
    # explicit requests win; channels_last can be forced either way
    plan = P.choose_precision("cpu", model, "fp16", channels_last=False)
    assert plan.name == "fp16" and plan.use_scaler and not plan.channels_last
    with pytest.raises(UserError):
        P.choose_precision("cpu", model, "int3")


def test_channels_last_only_for_conv_nets(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: True)
    mlp = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 16, 16), torch.nn.Flatten(), torch.nn.Linear(4, 2))  # ViT-like
    assert not P.choose_precision("cpu", mlp).channels_last
    assert P.choose_precision("cpu", _Conv()).channels_last


def test_autocast_and_fallback():
    plan = P.PrecisionPlan(torch.device("cpu"), torch.bfloat16, "bf16", True, False)
    model = plan.prepare_model(_Conv())
    x = plan.prepare_input(torch.randn(2, 3, 16, 16))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with plan.autocast():
        assert model(x).dtype == torch.bfloat16
    fb = plan.fallback_fp32()
    assert fb.name == "fp32" and fb.dtype is None and fb.grad_scaler() is None and fb.device == plan.device
    with fb.autocast():
        assert model(x).dtype == torch.float32
    assert P.PrecisionPlan(torch.device("cpu"), torch.float16, "fp16", False, True).grad_scaler() is not None


def test_set_threads(monkeypatch):
    from tlstudio.core.runtime import contention

    old = torch.get_num_threads()
    monkeypatch.setattr(contention, "RECHECK_S", 3600)
    quiet = contention.CpuLoad(cores=P.available_cores(), other_busy=0.0, other_runnable=0.0)
    monkeypatch.setattr(contention, "sample_load", lambda **kw: quiet)
    try:
        n_all = P.set_threads(False)
        assert n_all == P.available_cores() == torch.get_num_threads()
        assert P.thread_choice().threads == n_all and not P.thread_choice().passive
        n = P.set_threads(True)
        assert n == max(1, n_all - 1) == torch.get_num_threads()
        assert P.set_threads(False, requested=1) == 1 == torch.get_num_threads()
        assert "set in the settings" in P.thread_choice().reason
    finally:
        contention.stop_monitor()
        torch.set_num_threads(old)
    assert P.thread_choice() is None


def test_pick_mode_from_measurements():
    # small images: fp32 contiguous is fastest -> fp32
    name, cl, why = T.pick_mode({("fp32", False): 41.0, ("fp32", True): 30.0, ("bf16", True): 23.0})
    assert (name, cl) == ("fp32", False) and why.startswith("measured img/s: fp32 41.0")
    # large images: bf16 + channels_last clearly faster -> it wins
    assert T.pick_mode({("fp32", False): 12.0, ("fp32", True): 13.0, ("bf16", True): 33.0})[:2] == ("bf16", True)
    # a gain under MIN_GAIN is not worth reduced precision or a layout change: fp32 contiguous
    assert T.pick_mode({("fp32", False): 20.0, ("fp32", True): 21.0, ("bf16", True): 21.5})[:2] == ("fp32", False)
    # fp32 channels_last clearly faster and bf16 not: fp32 + channels_last
    assert T.pick_mode({("fp32", False): 10.0, ("fp32", True): 13.0, ("bf16", True): 11.0})[:2] == ("fp32", True)
    with pytest.raises(ValueError):
        T.pick_mode({})


def test_candidate_modes():
    assert T.candidate_modes(conv=True, fast_bf16=False) == [("fp32", False), ("fp32", True)]
    assert T.candidate_modes(conv=True, fast_bf16=True) == [("fp32", False), ("fp32", True), ("bf16", True)]
    assert T.candidate_modes(conv=False, fast_bf16=True) == [("fp32", False), ("bf16", False)]
    assert T.candidate_modes(conv=False, fast_bf16=False) == [("fp32", False)]
    assert T.candidate_modes(conv=True, fast_bf16=True, layout=False) == [("fp32", False), ("bf16", False)]


def test_measure_modes_leaves_the_model_alone():
    model = _Conv()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    speeds = T.measure_modes(model, 4, 16, [("fp32", False), ("fp32", True)], rounds=1)
    assert set(speeds) == {("fp32", False), ("fp32", True)} and all(v > 0 for v in speeds.values())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats too
    assert all(p.grad is None for p in model.parameters())
    assert next(model.parameters()).is_contiguous()
    # a budget the first step shows cannot be kept: nothing more is run, nothing timed
    assert T.measure_modes(model, 2, 16, [("fp32", False), ("fp32", True)], rounds=1, budget_s=0.0) == {}


def test_measure_batch_same_pixels_per_step():
    assert T.measure_batch(32, 32) == T.MEASURE_BATCH == T.measure_batch(32, 64)
    assert T.measure_batch(32, 112) == 5 and T.measure_batch(32, 224) == 4 and T.measure_batch(32, 512) == 4
    assert T.measure_batch(8, 32) == 8 and T.measure_batch(2, 224) == 2  # never more than the run's batch


def test_choose_precision_measured_per_size(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: True)
    T._measured.clear()
    table = {32: {("fp32", False): 40.0, ("fp32", True): 30.0, ("bf16", True): 20.0},
             224: {("fp32", False): 12.0, ("fp32", True): 13.0, ("bf16", True): 33.0}}
    calls = []

    def fake(model, batch, size, modes, **kw):
        calls.append((batch, size, tuple(modes)))
        return {m: table[size][m] for m in modes}

    monkeypatch.setattr(T, "measure_modes", fake)
    small = P.choose_precision("cpu", _Conv(), measure=(32, 32))
    assert (small.name, small.channels_last, small.dtype) == ("fp32", False, None)
    assert "measured" in small.reason and "at 32 px" in small.reason
    big = P.choose_precision("cpu", _Conv(), measure=(32, 224))
    assert (big.name, big.channels_last, big.dtype) == ("bf16", True, torch.bfloat16)
    assert calls[0] == (T.MEASURE_BATCH, 32, (("fp32", False), ("fp32", True), ("bf16", True)))
    assert calls[1][:2] == (4, 224)
    P.choose_precision("cpu", _Conv(), measure=(32, 32))
    assert len(calls) == 2  # the same model, batch, size and threads: measured once
    # explicit choices are never overridden; a fixed layout is kept while precision is measured
    assert P.choose_precision("cpu", _Conv(), "bf16", measure=(32, 32)).name == "bf16"
    fixed = P.choose_precision("cpu", _Conv(), channels_last=True, measure=(32, 32))
    assert fixed.channels_last and calls[-1][2] == (("fp32", True), ("bf16", True))
    # cut short by the budget (fewer results than modes): the rule's plan stays
    monkeypatch.setattr(T, "measure_modes", lambda model, batch, size, modes, **kw: {modes[0]: 1.0})
    T._measured.clear()
    rule = P.choose_precision("cpu", _Conv(), measure=(32, 112))
    assert rule.name == "bf16" and rule.channels_last and "too slow here to time" in rule.reason
    T._measured.clear()


def test_shared_cpu_times_whole_batches_and_keeps_the_rule_when_too_slow(monkeypatch):
    """With OpenMP threads sleeping while they wait (a shared CPU), few-image steps under-rate
    bf16: whole training batches (up to 32) are timed, a separate measurement from a quiet CPU's."""
    from types import SimpleNamespace

    from tlstudio.core.runtime import contention

    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: True)
    T._measured.clear()
    calls = []

    def fake(model, batch, size, modes, **kw):
        calls.append(batch)
        return {m: 10.0 + i for i, m in enumerate(modes)}

    monkeypatch.setattr(T, "measure_modes", fake)
    monkeypatch.setattr(T, "_one_thread_if_faster", lambda *a: (0, a[-1]))  # (tested below)
    preferred = []

    def monitor(passive):
        return SimpleNamespace(passive=passive, requested=None,
                               prefer_when_shared=lambda n, why="": preferred.append((n, why)))

    monkeypatch.setattr(contention, "current_monitor", lambda: monitor(True))
    assert P.choose_precision("cpu", _Conv(), measure=(64, 224)).name == "bf16"
    assert P.choose_precision("cpu", _Conv(), measure=(8, 224)).name == "bf16"
    # a bf16 plan asks its monitor for one thread while the cores are shared (oneDNN spin-waits)
    assert preferred == [(1, T.BF16_SHARED_WHY)] * 2
    monkeypatch.setattr(contention, "current_monitor", lambda: monitor(False))
    P.choose_precision("cpu", _Conv(), measure=(64, 224))
    assert calls == [32, 8, 4]  # shared: the run's batch up to 32; quiet: the same pixels as 16 at 64 px
    # fp32 asks for nothing
    P.choose_precision("cpu", _Conv(), "fp32")
    assert len(preferred) == 3
    T._measured.clear()


def test_shared_cpu_times_bf16_on_one_thread(monkeypatch):
    """On shared cores with 2 threads, bf16 modes are timed on one thread (the others on the run's
    threads), and the listing says so."""
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            seen.setdefault(torch.is_autocast_enabled('cpu'), set()).add(torch.get_num_threads())
            return self.c(x).mean((2, 3))

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        speeds = T.measure_modes(Spy(), 2, 8, [("fp32", False), ("bf16", True)], rounds=1,
                                 single=frozenset({("bf16", True)}))
        assert set(speeds) == {("fp32", False), ("bf16", True)}
        assert seen == {False: {2}, True: {1}} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
    why = T.pick_mode({("fp32", False): 10.0, ("bf16", True): 30.0}, single=frozenset({("bf16", True)}))[2]
    assert why == "measured img/s: bf16 + channels_last on 1 thread 30.0, fp32 10.0"


def test_shared_cpu_takes_one_thread_when_timed_clearly_faster(monkeypatch):
    """On shared cores the chosen mode is timed again on one thread; clearly faster -> the run's
    monitor keeps one thread while the cores stay shared (and says so), else nothing changes."""
    from types import SimpleNamespace

    from tlstudio.core.runtime import contention

    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: False)
    preferred = []
    mon = SimpleNamespace(passive=True, requested=None, prefer_when_shared=preferred.append)
    monkeypatch.setattr(contention, "current_monitor", lambda: mon)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for one_thread_speed, expect in ((30.0, [1]), (21.0, [])):
            T._measured.clear()
            preferred.clear()

            def fake(model, batch, size, modes, **kw):
                if torch.get_num_threads() == 1:
                    return {m: one_thread_speed for m in modes}
                return {("fp32", False): 20.0, ("fp32", True): 15.0}

            monkeypatch.setattr(T, "measure_modes", fake)
            plan = P.choose_precision("cpu", _Conv(), measure=(32, 32))
            assert plan.name == "fp32" and not plan.channels_last
            assert preferred == expect and f"on 1 thread {one_thread_speed:.1f}" in plan.reason
            assert torch.get_num_threads() == 2  # the timing's one thread is not left behind
    finally:
        torch.set_num_threads(old)
        T._measured.clear()


def test_describe_choice(monkeypatch):
    from tlstudio.core.runtime import contention

    monkeypatch.setattr(contention, "RECHECK_S", 3600)
    monkeypatch.setattr(contention, "passive_waits_available", lambda: True)
    busy = contention.CpuLoad(cores=2, other_busy=2.0, other_runnable=4.0)
    old = torch.get_num_threads()
    try:
        contention.start_monitor(False, load=busy)
        plan = P.PrecisionPlan(torch.device("cpu"), None, "fp32", False, False, reason="")
        assert P.describe_choice(plan, 32) == ("2 of 2 cores busy with other programs: training with 2 threads "
                                              "that sleep while they wait; fp32 at 32 px")
    finally:
        contention.stop_monitor()
        torch.set_num_threads(old)
    plan = P.PrecisionPlan(torch.device("cpu"), torch.bfloat16, "bf16", True, False, reason="measured img/s: x at 224 px")
    assert P.describe_choice(plan, 224) == "bf16, channels_last (measured img/s: x at 224 px)"


def _train(dtype, seed=0, steps=60):
    """Tiny conv net on an easy synthetic task (class = dominant colour channel + noise)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = 96
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 3, 16, 16, generator=g) * 0.8
    x[torch.arange(n), y] += 1.0
    xtr, ytr, xte, yte = x[:64], y[:64], x[64:], y[64:]
    model = _Conv()
    plan = P.PrecisionPlan(torch.device("cpu"), dtype, "bf16" if dtype else "fp32", dtype is not None, False)
    plan.prepare_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for s in range(steps):
        i = torch.randint(0, 64, (16,), generator=g)
        with plan.autocast():
            loss = torch.nn.functional.cross_entropy(model(plan.prepare_input(xtr[i])), ytr[i])
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.inference_mode(), plan.autocast():
        return float((model(plan.prepare_input(xte)).float().argmax(1) == yte).float().mean())


def test_bf16_reaches_same_accuracy_class_as_fp32():
    acc32 = _train(None)
    acc16 = _train(torch.bfloat16)
    assert acc32 >= 0.9, acc32
    assert acc16 >= 0.9, acc16


def test_compile_model_off_and_fallback(monkeypatch):
    model = _Conv()
    same, msg = P.compile_model(model, False)
    assert same is model and "off" in msg

    def broken(*a, **k):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    same, msg = P.compile_model(model, True, torch.randn(2, 3, 16, 16))
    assert same is model and "failed" in msg and "no C++ compiler" in msg


def test_cpu_bf16_plan_trains_vits_with_plain_attention_and_same_outputs():
    """On the CPU in bf16, timm's fused (flash) attention trains slower than matmul + softmax:
    the plan switches it off; in fp32 the two give the same outputs, so only speed changes."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=3)
    attn = [m for m in vit.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    assert attn
    x = torch.randn(2, 3, *vit.default_cfg["input_size"][1:])
    vit.eval()
    for m in attn:
        m.fused_attn = True
    with torch.no_grad():
        fused = vit(x)
    P.choose_precision("cpu", vit, requested="fp32").prepare_model(vit)
    assert all(m.fused_attn for m in attn)  # fp32 plans leave the model as timm built it
    P.choose_precision("cpu", vit, requested="bf16").prepare_model(vit)
    assert not any(m.fused_attn for m in attn)
    with torch.no_grad():
        plain = vit(x)
    assert torch.allclose(fused, plain, atol=1e-5)


def test_short_run_keeps_the_rule_without_timing(monkeypatch):
    # a run that trains on fewer images than MODES_SHORT_RUN_SHARE allows the timing to push
    # through is not timed: the rule decides and the log says why
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: True)
    T._measured.clear()
    calls = []

    def fake(model, batch, size, modes, **kw):
        calls.append(size)
        return {m: 10.0 for m in modes}

    monkeypatch.setattr(T, "measure_modes", fake)
    step = T.measure_batch(32, 64)
    need = T.timing_images(3, step, shared=False)  # 3 modes: fp32, fp32 + channels_last, bf16 + channels_last
    short = P.choose_precision("cpu", _Conv(), measure=(32, 64, int(need / T.MODES_SHORT_RUN_SHARE) - 1))
    assert calls == [] and (short.name, short.channels_last) == ("bf16", True)
    assert "short run" in short.reason and "64 px" in short.reason
    long = P.choose_precision("cpu", _Conv(), measure=(32, 64, int(need / T.MODES_SHORT_RUN_SHARE) + 1))
    assert calls == [64] and "measured" in long.reason
    # shared cores time one more step per round (one thread): the bar rises with it
    assert T.timing_images(3, 32, shared=True) == 4 * 3 * 32
    T._measured.clear()
