"""Precision plans: the right mode per device, fp32 fallback, threads, bf16 learns like fp32."""

from __future__ import annotations

import pytest
import torch

from tlstudio.core.runtime import precision as P
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


def test_set_threads():
    old = torch.get_num_threads()
    try:
        n_all = P.set_threads(False)
        assert n_all == P.available_cores() == torch.get_num_threads()
        n = P.set_threads(True)
        assert n == max(1, n_all - 1) == torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


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
