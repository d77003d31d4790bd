"""Device, numeric precision and memory layout: the fastest safe mode per machine.

Measured on a 2-core Zen 4 (AVX-512 BF16) with resnet18 at 224 px (benchmarks/RESULTS.md):
fp32 -> bf16 autocast roughly doubles training speed, channels_last on top adds another ~1.4x
for conv nets. bf16 keeps fp32's exponent range, so no loss scaling is needed; fp16 (CUDA
without bf16) needs a GradScaler. The engine checks that the first losses are finite and
calls `PrecisionPlan.fallback_fp32()` if not.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from tlstudio.core.errors import UserError

if TYPE_CHECKING:  # heavy import only for type checkers
    import torch


class DeviceError(UserError):
    """The requested device does not exist on this machine."""


@dataclass(frozen=True)
class PrecisionPlan:
    device: "torch.device"
    dtype: "torch.dtype | None"  # autocast dtype; None = plain fp32
    name: str  # "fp32", "bf16", "fp16"
    channels_last: bool
    use_scaler: bool  # fp16 needs loss scaling; bf16/fp32 do not
    reason: str = ""  # one sentence for the log: why this mode was picked

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for forward passes and the loss (not for backward or the optimiser step)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def fallback_fp32(self) -> "PrecisionPlan":
        """Plain fp32 on the same device (after a non-finite loss under reduced precision)."""
        return replace(self, dtype=None, name="fp32", use_scaler=False,
                       reason="fell back to fp32 after a non-finite loss under " + self.name)

    def grad_scaler(self) -> Any:
        """A GradScaler when loss scaling is needed (fp16), else None."""
        if not self.use_scaler:
            return None
        import torch

        return torch.amp.GradScaler(self.device.type)

    def prepare_model(self, model: Any) -> Any:
        """Move the model to the device and memory format of this plan (in place; returns it)."""
        import torch

        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.device.type == "cpu" and self.name == "bf16":
            # timm's fused attention (torch's CPU flash-attention kernel) trains slower in bf16
            # than plain matmul + softmax: vit_tiny 26 -> 33 img/s, deit_tiny 18.6 -> 24.8,
            # vit_small 7.4-8.1 -> 9.5-9.9 (batch 32, 224 px, this 2-core Zen 4); same maths
            for m in model.modules():
                if isinstance(getattr(m, "fused_attn", None), bool):
                    m.fused_attn = False
        return model

    def prepare_input(self, x: "torch.Tensor") -> "torch.Tensor":
        """Move an NCHW batch to the device in the plan's layout."""
        import torch

        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def describe(self) -> str:
        layout = ", channels_last" if self.channels_last else ""
        return f"{self.name} on {self.device}{layout}" + (f" ({self.reason})" if self.reason else "")


def resolve_device(spec: str = "auto") -> "torch.device":
    """`auto` = cuda, then mps, then cpu. Raises DeviceError for a device that is not there."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError) as e:
        raise DeviceError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r} requested but no CUDA GPU is available (use auto or cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    elif dev.type == "mps" and not _mps_available():
        raise DeviceError(f"device {spec!r} requested but Apple MPS is not available (use auto or cpu)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unsupported device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    return dev


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX); emulated bf16 is slower than fp32."""
    import torch

    flags = cpu_flags()
    if flags:
        native = bool({"avx512_bf16", "amx_bf16"} & flags)
    else:  # not Linux: trust oneDNN's own check (covers Apple/ARM bf16 too)
        native = False
        try:
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            native = False
    return native and torch.backends.mkldnn.is_available()


def is_conv_net(model: Any) -> bool:
    """Conv nets gain from channels_last; a ViT (one conv patch embedding) does not."""
    import torch

    n = sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return n >= 3


def choose_precision(device: Any, model: Any = None, requested: str = "auto",
                     channels_last: bool | None = None, measure: tuple[int, int] | None = None) -> PrecisionPlan:
    """Pick precision and layout. `requested`: auto | fp32 | bf16 | fp16; `channels_last`: None = auto.

    `measure=(batch_size, image_size)`: on a CPU with native bf16, time a few training steps of
    `model` (a copy) in each candidate mode at that size and take the fastest (see
    `measure_modes`); the fixed rule below is the fallback. An explicit precision or layout is
    never overridden."""
    import torch

    device = torch.device(device) if not isinstance(device, torch.device) else device
    requested = (requested or "auto").lower()
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"unknown precision {requested!r}: use auto, fp32, bf16 or fp16")
    conv = is_conv_net(model) if model is not None else False

    name, reason = "fp32", ""
    if requested != "auto":
        name, reason = requested, "requested"
    elif device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            name, reason = "bf16", "GPU supports bf16"
        else:
            name, reason = "fp16", "GPU without bf16: fp16 with loss scaling"
    elif device.type == "cpu":
        if cpu_has_fast_bf16():
            name, reason = "bf16", "CPU computes bf16 natively"
        else:
            reason = "CPU has no native bf16"
    else:  # mps: autocast support varies by macOS/torch version; fp32 is the safe default
        reason = f"{device.type}: fp32 is the safe default"

    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    layout_fixed = channels_last is not None
    if channels_last is None:
        # Pays off for conv nets on CPU (oneDNN) and on CUDA tensor cores; not for ViTs.
        channels_last = conv and device.type in ("cpu", "cuda") and (name != "fp32" or device.type == "cuda")
    use_scaler = name == "fp16"
    plan = PrecisionPlan(device=device, dtype=dtype, name=name, channels_last=bool(channels_last),
                         use_scaler=use_scaler, reason=reason)
    if measure is not None and model is not None and device.type == "cpu" and requested == "auto":
        plan = _measured_plan(plan, model, int(measure[0]), int(measure[1]), conv, layout_fixed)
    return plan


# --- choosing the mode from a quick measurement ----------------------------------------------

MEASURE_BUDGET_S = 15.0  # stop measuring further modes after this (big models at big sizes)
MEASURE_BATCH = 16  # images per measured step (per-image cost is close to batch 32's; half the time)
MIN_GAIN = 1.10  # reduced precision / another layout must be this much faster than fp32 to win
_measured: dict[tuple, tuple[str, bool, str]] = {}  # (model, batch, size, threads) -> choice


def mode_label(name: str, channels_last: bool) -> str:
    return name + (" + channels_last" if channels_last else "")


def pick_mode(speeds: dict[tuple[str, bool], float], min_gain: float = MIN_GAIN) -> tuple[str, bool, str]:
    """The mode to train in from measured images/s per (precision, channels_last).

    fp32 contiguous is the reference (exact, no conversions): another mode must be at least
    `min_gain` times faster to be chosen. Returns (precision, channels_last, reason)."""
    if not speeds:
        raise ValueError("no measurements")
    ref = ("fp32", False)
    base = speeds.get(ref)
    best = max(speeds, key=lambda k: speeds[k])
    listing = ", ".join(f"{mode_label(*k)} {v:.1f}" for k, v in sorted(speeds.items(), key=lambda kv: -kv[1]))
    if base is None:
        return best[0], best[1], f"measured img/s: {listing}"
    if best != ref and speeds[best] >= base * min_gain:
        return best[0], best[1], f"measured img/s: {listing}"
    # fp32 wins, or nothing is clearly faster: prefer fp32, and its faster layout if that clearly wins
    fp32 = {k: v for k, v in speeds.items() if k[0] == "fp32"}
    b32 = max(fp32, key=lambda k: fp32[k])
    if b32 != ref and fp32[b32] < base * min_gain:
        b32 = ref
    return b32[0], b32[1], f"measured img/s: {listing}"


def measure_modes(model: Any, batch: int, size: int, modes: list[tuple[str, bool]], *, rounds: int = 2,
                  budget_s: float = MEASURE_BUDGET_S) -> dict[tuple[str, bool], float]:
    """Images/s of a training step (forward, loss, backward) of a copy of `model` in each mode.

    Modes are interleaved (one warm-up step each, then `rounds` timed rounds) and the best step
    per mode counts: on a shared CPU another program's burst then hits every mode alike and the
    minimum is the mode's own cost. When `budget_s` is spent, modes not yet timed are left out
    of the result. The model itself is untouched (weights, buffers, grads): one copy is measured."""
    import copy
    import time

    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    m = copy.deepcopy(model).cpu().train()
    for p in m.parameters():
        p.requires_grad_(True)
    layout = None
    warmed: set[tuple[str, bool]] = set()
    best: dict[tuple[str, bool], float] = {}
    t_start = time.perf_counter()
    try:
        for r in range(rounds + 1):
            for mode in modes:
                over = time.perf_counter() - t_start > budget_s
                if (over and (r == 0 or mode in best)) or (r > 0 and mode not in warmed):
                    continue
                name, cl = mode
                if layout != cl:
                    m = m.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                    layout = cl
                xi = x.contiguous(memory_format=torch.channels_last) if cl else x
                ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if name == "bf16"
                       else contextlib.nullcontext())
                t = time.perf_counter()
                with ctx:
                    out = m(xi)
                    if isinstance(out, dict):
                        out = next(iter(out.values()))
                    loss = out.float().logsumexp(1).mean()
                loss.backward()
                dt = time.perf_counter() - t
                for p in m.parameters():
                    p.grad = None
                if r == 0:
                    warmed.add(mode)
                    if len(warmed) == 1 and dt * len(modes) * (rounds + 1) > budget_s:
                        return {}  # cannot finish within the budget: spend no more time on it
                else:
                    best[mode] = max(best.get(mode, 0.0), batch / max(dt, 1e-9))
    finally:
        del m
    return best


def measure_batch(batch: int, size: int) -> int:
    """Images per measured step: MEASURE_BATCH at up to 64 px, fewer at larger sizes (the same
    pixels per step, at least 4), so timing the modes costs about the same at every size."""
    pixels = MEASURE_BATCH * 64 * 64
    return max(1, min(int(batch), MEASURE_BATCH, max(4, pixels // max(1, int(size) ** 2))))


def candidate_modes(conv: bool, fast_bf16: bool, layout: bool | None = None) -> list[tuple[str, bool]]:
    """Modes worth timing on this CPU: bf16 only where the CPU computes it natively (emulated bf16
    is slower than fp32), channels_last only for conv nets; `layout` fixed by the user."""
    precisions = ["fp32", "bf16"] if fast_bf16 else ["fp32"]
    if layout is not None:
        layouts = [layout]
    else:
        layouts = [False, True] if conv else [False]
    modes = [(p, cl) for p in precisions for cl in layouts]
    if fast_bf16 and conv and layout is None:
        modes.remove(("bf16", False))  # bf16 in NCHW was never the fastest for a conv net (session 2)
    return modes


def _measured_plan(plan: PrecisionPlan, model: Any, batch: int, size: int, conv: bool,
                   layout_fixed: bool) -> PrecisionPlan:
    import torch

    key = (type(model).__name__, sum(p.numel() for p in model.parameters()), batch, size, torch.get_num_threads(),
           plan.channels_last if layout_fixed else None)
    if key not in _measured:
        modes = candidate_modes(conv, cpu_has_fast_bf16(), plan.channels_last if layout_fixed else None)
        if len(modes) < 2:
            return plan
        try:
            speeds = measure_modes(model, measure_batch(batch, size), size, modes)
        except Exception as e:  # a model that cannot run a bare step here: keep the rule's choice
            return replace(plan, reason=f"{plan.reason}; not measured ({e.__class__.__name__})")
        if len(speeds) < len(modes):  # cut short by the time budget (a big model, a busy CPU): the rule
            return replace(plan, reason=f"{plan.reason}; too slow here to time the modes at {size} px")
        _measured[key] = pick_mode(speeds)
    name, cl, why = _measured[key]
    dtype = {"fp32": None, "bf16": torch.bfloat16}[name]
    return replace(plan, name=name, dtype=dtype, channels_last=cl, use_scaler=False, reason=f"{why} at {size} px")


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_threads(leave_one_core: bool, requested: int | None = None) -> int:
    """Set torch's intra-op threads for a run starting in this thread, from the CPU load now.

    All cores (all but one with `leave_one_core`, so the window stays responsive) unless the
    user set `requested`. When other programs use the CPU, OpenMP threads are made to sleep
    instead of spinning while they wait (or, where that is not possible, fewer threads are
    used); the load is re-checked every few seconds until the run ends (runtime/contention.py).
    `thread_choice()` has the decision and the sentence for the log."""
    from tlstudio.core.runtime import contention

    return contention.start_monitor(leave_one_core, requested).threads


def thread_choice() -> Any:
    """The current run's ThreadChoice (threads, passive, reason), or None."""
    from tlstudio.core.runtime import contention

    mon = contention.current_monitor()
    return None if mon is None else mon.choice


def describe_choice(plan: PrecisionPlan, image_size: int | None = None) -> str:
    """One log line: "2 of 2 cores busy with other programs: training with 2 threads that sleep
    while they wait; fp32 at 32 px (measured img/s: ...)"."""
    choice = thread_choice()
    head = choice.reason if choice is not None else ""
    at = f" at {image_size} px" if image_size and " px" not in plan.reason else ""
    layout = ", channels_last" if plan.channels_last else ""
    mode = f"{plan.name}{layout}{at}" + (f" ({plan.reason})" if plan.reason else "")
    if plan.device.type != "cpu":
        mode = f"{mode} on {plan.device}"
    return f"{head}; {mode}" if head else mode


def compile_model(model: Any, enabled: bool, example: "torch.Tensor | None" = None,
                  plan: PrecisionPlan | None = None) -> tuple[Any, str]:
    """Optional torch.compile. Returns (module to train, one-line message for the log).

    Compilation is lazy, so with `example` a forward pass is run here (under the plan's autocast)
    to surface failures now - e.g. no C++ compiler inside a packaged app - and fall back to the
    eager model instead of failing mid-run. The compiled module shares parameters with `model`.
    """
    if not enabled:
        return model, "torch.compile off"
    import torch

    if not hasattr(torch, "compile"):
        return model, "torch.compile unavailable in this torch; running eagerly"
    try:
        compiled = torch.compile(model)
        if example is not None:
            ctx = plan.autocast() if plan is not None else contextlib.nullcontext()
            with torch.no_grad(), ctx:
                compiled(example)
    except Exception as e:  # any backend/toolchain failure: eager mode still trains correctly
        return model, f"torch.compile failed ({e.__class__.__name__}: {str(e)[:120]}); running eagerly"
    return compiled, "torch.compile on"
