"""Training steps as micro-batches with gradient accumulation: same gradients as whole batches
(no BatchNorm), objectives get their rows and idx, fp32 fallback, DDP syncs once, the choice is
measured with a margin, logged, overridable and kept on resume."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from tlstudio.core import events as E
from tlstudio.core.runtime import step_timing as T
from tlstudio.core.runtime.precision import PrecisionPlan
from tlstudio.core.training import loop
from tlstudio.core.training.objectives import ClassificationObjective, Objective, ObjectiveContext

FP32 = PrecisionPlan(torch.device("cpu"), None, "fp32", False, False)


class _NoBN(torch.nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(6, 8, 3, stride=2), torch.nn.GELU(),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(8, n)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv(T.MICRO_ENV, raising=False)
    T._micro_measured.clear()
    yield
    T._micro_measured.clear()


def _ctx(model, objective, micro, plan=FP32):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return SimpleNamespace(micro_batch=micro, objective=objective, train_module=model, scaler=None, opt=opt, plan=plan)


def _classifier(counts):
    obj = ClassificationObjective(label_smoothing=0.1, class_weights=True)
    obj.setup(ObjectiveContext(model=None, device=torch.device("cpu"), classes=["a", "b", "c"], precision=FP32,
                               config=None, train_samples=[], class_counts=counts))
    return obj


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def test_accumulated_gradients_equal_whole_batch_gradients():
    """No BatchNorm: micro-batches of 4 and 5 give the whole batch's loss and gradients, with class
    weights, label smoothing and unlabelled rows (y = -1) in the batch."""
    torch.manual_seed(0)
    model = _NoBN()
    obj = _classifier([10, 3, 7])
    x = torch.randn(13, 3, 12, 12)
    y = torch.tensor([0, 1, 2, -1, 2, 2, 1, -1, 0, 0, 1, 2, -1])
    idx = torch.arange(13)
    whole = _ctx(model, obj, 0)
    assert len(loop.micro_batches(whole, x, y, idx)) == 1
    loss_w, _ = loop._forward_backward(whole, loop.micro_batches(whole, x, y, idx))
    g_w = _grads(model)
    for k in (4, 5):
        ctx = _ctx(model, obj, k)
        pieces = loop.micro_batches(ctx, x, y, idx)
        assert [p[0].shape[0] for p in pieces] == ([4, 4, 4, 1] if k == 4 else [5, 5, 3])
        assert abs(sum(p[3] for p in pieces) - 1.0) < 1e-9
        loss_m, _ = loop._forward_backward(ctx, pieces)
        assert loss_m == pytest.approx(loss_w, rel=1e-5, abs=1e-6)
        for a, b in zip(g_w, _grads(model)):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # a micro-batch of unlabelled rows only carries no weight (its loss is 0 * logits)
    ctx = _ctx(model, obj, 1)
    shares = [p[3] for p in loop.micro_batches(ctx, x, y, idx)]
    assert shares[3] == shares[7] == shares[12] == 0.0 and shares[0] > 0


class _Recorder(Objective):
    """Row-wise mean loss that records what it was given (like distillation's cached teacher lookup)."""

    micro_batches = True

    def __init__(self):
        self.calls = []

    def loss(self, model, x, y, idx):
        self.calls.append((x.shape[0], idx.tolist(), y.tolist()))
        out = model(x)
        return torch.nn.functional.cross_entropy(out, y), {"rows": float(x.shape[0]), "first": float(idx[0])}


def test_objective_gets_each_micro_batch_with_its_idx_and_parts_are_averaged():
    model, obj = _NoBN(), _Recorder()
    x, y, idx = torch.randn(10, 3, 8, 8), torch.randint(0, 3, (10,)), torch.tensor([7, 3, 9, 0, 1, 2, 8, 6, 5, 4])
    ctx = _ctx(model, obj, 4)
    loss, parts = loop._forward_backward(ctx, loop.micro_batches(ctx, x, y, idx))
    assert [c[1] for c in obj.calls] == [[7, 3, 9, 0], [1, 2, 8, 6], [5, 4]]
    assert [c[2] for c in obj.calls] == [y[:4].tolist(), y[4:8].tolist(), y[8:].tolist()]
    assert parts["rows"] == pytest.approx(0.4 * 4 + 0.4 * 4 + 0.2 * 2)  # weighted by share
    assert parts["first"] == pytest.approx(0.4 * 7 + 0.4 * 1 + 0.2 * 5)
    # cached features (2-D) are never split
    assert len(loop.micro_batches(ctx, torch.randn(10, 8), y, idx)) == 1


class _DDPLike(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.synced = inner, []
        self._sync = True

    def forward(self, x):
        self.synced.append(self._sync)
        return self.inner(x)

    def no_sync(self):
        import contextlib

        @contextlib.contextmanager
        def cm():
            self._sync = False
            try:
                yield
            finally:
                self._sync = True

        return cm()


def test_ddp_all_reduces_only_with_the_last_micro_batch():
    module = _DDPLike(_NoBN())
    ctx = _ctx(module, _Recorder(), 3)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    loop._forward_backward(ctx, loop.micro_batches(ctx, x, y, torch.arange(8)))
    assert module.synced == [False, False, True]


class _NanUnderAutocast(Objective):
    micro_batches = True

    def loss(self, model, x, y, idx):
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        if torch.is_autocast_enabled("cpu") and int(idx[0]) >= 4:  # the second micro-batch fails in bf16
            loss = loss * float("nan")
        return loss, {}


def _step_ctx(model, objective, micro, plan):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    octx = SimpleNamespace(precision=plan)
    return SimpleNamespace(stop=threading.Event(), pause=threading.Event(), loaders=SimpleNamespace(failures=[]),
                           device=torch.device("cpu"), plan=plan, octx=octx, objective=objective,
                           train_module=model, scaler=None, opt=opt, sched=sched, micro_batch=micro,
                           steps_per_epoch=1, phase="main")


def test_non_finite_micro_batch_in_reduced_precision_falls_back_to_fp32_for_the_whole_step():
    torch.manual_seed(0)
    model = _NoBN()
    before = [p.detach().clone() for p in model.parameters()]
    bf16 = PrecisionPlan(torch.device("cpu"), torch.bfloat16, "bf16", False, False)
    ctx = _step_ctx(model, _NanUnderAutocast(), 4, bf16)
    st = loop.LoopState(trackers=loop.Trackers(history=[]))
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    gen = loop._step(ctx, st, None, 0, 0, x, y, torch.arange(8))
    evs = []
    with pytest.raises(StopIteration) as done:
        while True:
            evs.append(next(gen))
    assert done.value.value is None  # the step went on
    assert any(isinstance(e, E.Warn) and "continuing in fp32" in e.message for e in evs)
    assert ctx.plan.name == "fp32" and ctx.octx.precision.name == "fp32"
    batch_end = [e for e in evs if isinstance(e, E.BatchEnd)]
    assert len(batch_end) == 1 and torch.isfinite(torch.tensor(batch_end[0].loss)) and st.step == 1
    assert st.partial["count"] == 8 and st.partial["loss_sum"] == pytest.approx(batch_end[0].loss * 8)
    # the fp32 retry started from zero gradients: the update equals one clean fp32 step
    ref = _NoBN()
    for p, b in zip(ref.parameters(), before):
        p.data.copy_(b)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_pick_micro_batch_keeps_whole_batches_unless_clearly_faster():
    assert T.pick_micro_batch({0: 10.0, 8: 16.8, 16: 14.8}) == (8, pytest.approx(1.68))
    assert T.pick_micro_batch({0: 10.0, 8: 11.0, 16: 11.4})[0] == 0  # 14%: under the 15% margin
    assert T.pick_micro_batch({0: 10.0, 8: 11.6})[0] == 8
    assert T.pick_micro_batch({8: 11.6}) == (0, 1.0) and T.pick_micro_batch({}) == (0, 1.0)


def test_candidates_scale_with_the_image_size():
    assert T.micro_candidates(32, 224) == [8, 16]
    assert T.micro_candidates(32, 160) == [16]
    assert T.micro_candidates(32, 112) == [] and T.micro_candidates(32, 32) == []
    assert T.micro_candidates(32, 384) == [4, 8]
    assert T.micro_candidates(8, 224) == []  # the batch is already that small


def test_measure_micro_batches_times_a_copy():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    speeds = T.measure_micro_batches(model, 8, 16, [2, 4], rounds=1)
    assert set(speeds) == {0, 2, 4} and all(v > 0 for v in speeds.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN running stats too
    assert all(p.grad is None for p in model.parameters())
    assert T.measure_micro_batches(model, 8, 16, [2, 4], rounds=1, budget_s=0.0) == {}
    # a run of a few images (its whole training shorter than the timing) is not timed at all, even
    # with a generous fixed budget; a long run is
    assert T.measure_micro_batches(model, 8, 16, [2, 4], rounds=1, budget_s=60.0, train_images=8) == {}
    assert set(T.measure_micro_batches(model, 8, 16, [2, 4], rounds=1, budget_s=60.0,
                                       train_images=10**7)) == {0, 2, 4}


def test_choose_micro_batch_order_of_decisions(monkeypatch):
    calls = []

    def fake(model, batch, size, cands, **kw):
        calls.append((batch, size, tuple(cands), kw["precision"]))
        return {0: 10.0, 8: 16.0, 16: 13.0}

    monkeypatch.setattr(T, "measure_micro_batches", fake)
    bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    c = T.choose_micro_batch(bn, 32, 224, FP32)
    assert c.size == 8 and c.phrase == "micro-batches of 8 (1.6x faster per image here; BatchNorm sees 8 images)"
    assert calls == [(32, 224, (8, 16), "fp32")]
    T.choose_micro_batch(bn, 32, 224, FP32)
    assert len(calls) == 1  # same model, batch, size, threads and mode: measured once
    assert T.choose_micro_batch(_NoBN(), 32, 224, FP32).phrase == "micro-batches of 8 (1.6x faster per image here)"
    # no candidate at this size, no measurement asked for, or not a CPU: whole batches, said nothing
    assert T.choose_micro_batch(bn, 32, 112, FP32) == T.MicroChoice(0)
    assert T.choose_micro_batch(bn, 32, 224, FP32, measure=False) == T.MicroChoice(0)
    # explicit settings win over everything but an objective that needs whole batches
    assert T.choose_micro_batch(bn, 32, 224, FP32, requested=4).phrase == \
        "micro-batches of 4 (set in the settings; BatchNorm sees 4 images)"
    assert T.choose_micro_batch(bn, 32, 224, FP32, requested=0).size == 0
    assert T.choose_micro_batch(bn, 32, 224, FP32, requested=64).size == 0  # >= the batch: whole
    monkeypatch.setenv(T.MICRO_ENV, "0")
    c = T.choose_micro_batch(bn, 32, 224, FP32)
    assert c.size == 0 and T.MICRO_ENV in c.phrase
    assert T.choose_micro_batch(bn, 32, 224, FP32, requested=16).size == 16  # the config beats the env
    monkeypatch.delenv(T.MICRO_ENV)
    assert T.choose_micro_batch(bn, 32, 224, FP32, saved=16).phrase.endswith("(as this run trained before; "
                                                                             "BatchNorm sees 16 images)")
    assert T.choose_micro_batch(bn, 32, 224, FP32, saved=0).size == 0
    c = T.choose_micro_batch(bn, 32, 224, FP32, requested=8, allowed=False)
    assert c.size == 0 and "whole batches" in c.phrase
    assert T.choose_micro_batch(bn, 32, 224, FP32, allowed=False) == T.MicroChoice(0)
    # measured, not clearly faster: whole batches, and the log says why
    monkeypatch.setattr(T, "measure_micro_batches", lambda *a, **k: {0: 10.0, 8: 11.0})
    T._micro_measured.clear()
    c = T.choose_micro_batch(bn, 32, 224, FP32)
    assert c.size == 0 and "not clearly faster" in c.phrase


def test_engine_trains_in_micro_batches_logs_it_and_resume_keeps_it(tmp_path, monkeypatch):
    from tlstudio.core.config import TrainConfig
    from tlstudio.core.data.synthetic import make_synthetic_folder
    from tlstudio.core.events import drive
    from tlstudio.core.training import checkpoint
    from tlstudio.core.training.engine import fit, resume

    data = make_synthetic_folder(tmp_path / "d", per_class=8, size=32, easy=True)
    measured = []

    def fake(model, batch, size, cands, **kw):  # the timing says micro-batches of 4 are 2x faster
        measured.append((batch, size, tuple(cands)))
        return {0: 10.0, 4: 20.0}

    monkeypatch.setattr(T, "measure_micro_batches", fake)
    monkeypatch.setattr(T, "micro_candidates", lambda batch, size: [4])
    rows = []
    real = ClassificationObjective.loss

    def spy(self, model, x, y, idx):
        rows.append(int(x.shape[0]))
        return real(self, model, x, y, idx)

    monkeypatch.setattr(ClassificationObjective, "loss", spy)
    cfg = TrainConfig(data_dir=str(data), out_dir=str(tmp_path / "run"), backbone="test_resnet", init="scratch",
                      image_size=32, epochs=2, batch_size=8, freeze="none", lr=3e-3, augment="none",
                      warmup_epochs=0.0, early_stop_patience=None, precision="fp32", workers=0, cache="off")
    stop = threading.Event()
    evs = []

    def seen(ev):
        evs.append(ev)
        if isinstance(ev, E.EpochEnd):
            stop.set()

    info = drive(fit(cfg, stop=stop), seen)
    assert info.status == "stopped"
    assert measured == [(8, 32, (4,))]
    logs = [e.message for e in evs if isinstance(e, E.Log)]
    assert any("micro-batches of 4 (2.0x faster per image here; BatchNorm sees 4 images)" in m for m in logs), logs
    assert rows and max(rows) == 4  # batches of 8 as 2 micro-batches of 4 (a last short batch may be whole)
    losses = [e.loss for e in evs if isinstance(e, E.BatchEnd)]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
    ckpt = checkpoint.load(tmp_path / "run")
    assert ckpt["plan"]["micro_batch"] == 4
    # resume: the saved choice, no new timing (which would now say whole batches)
    monkeypatch.setattr(T, "measure_micro_batches", lambda *a, **k: {0: 30.0, 4: 20.0})
    T._micro_measured.clear()
    rows.clear()
    evs.clear()
    info = drive(resume(tmp_path / "run"), evs.append)
    assert info.status == "finished"
    assert any("micro-batches of 4 (as this run trained before" in e.message for e in evs if isinstance(e, E.Log))
    assert rows and max(rows) == 4 and len(measured) == 1
