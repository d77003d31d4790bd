"""Device, numeric precision and memory layout: the fastest safe mode per machine.

Measured on a 2-core Zen 4 (AVX-512 BF16) with resnet18 at 224 px (benchmarks/RESULTS.md):
fp32 -> bf16 autocast roughly doubles training speed, channels_last on top adds another ~1.4x
for conv nets. bf16 keeps fp32's exponent range, so no loss scaling is needed; fp16 (CUDA
without bf16) needs a GradScaler. The engine checks that the first losses are finite and
calls `PrecisionPlan.fallback_fp32()` if not. Choosing the mode (and micro-batches) from a
quick measurement at the run's image size lives in runtime/step_timing.py.
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
                     channels_last: bool | None = None, measure: tuple[int, ...] | None = None) -> PrecisionPlan:
    """Pick precision and layout. `requested`: auto | fp32 | bf16 | fp16; `channels_last`: None = auto.

    `measure=(batch_size, image_size[, train_images])`: on a CPU, time a few training steps of
    `model` (a copy) in each candidate mode at that size and take the fastest (runtime/step_timing.py
    `measure_modes`); the fixed rule below is the fallback, and decides a run too short to win the
    timing back (train_images = images x epochs). An explicit precision or layout is
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
        from tlstudio.core.runtime.step_timing import measured_plan

        plan = measured_plan(plan, model, int(measure[0]), int(measure[1]), conv, layout_fixed,
                             int(measure[2]) if len(measure) > 2 else 0)
    from tlstudio.core.runtime.step_timing import one_thread_for_bf16_when_shared

    one_thread_for_bf16_when_shared(plan)  # a CPU bf16 plan only; it checks
    return plan


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_threads(leave_one_core: bool, requested: int | None = None, load: Any = None) -> int:
    """Set torch's intra-op threads for a run starting in this thread, from the CPU load now.

    All cores (all but one with `leave_one_core`, so the window stays responsive) unless the
    user set `requested`. When other programs use the CPU, OpenMP threads are made to sleep
    instead of spinning while they wait (or, where that is not possible, fewer threads are
    used); the load is re-checked every few seconds until the run ends (runtime/contention.py).
    `thread_choice()` has the decision and the sentence for the log. `load`: a CpuLoad sampled
    already (cpu_load.LoadSample), else one is sampled now."""
    from tlstudio.core.runtime import contention

    return contention.start_monitor(leave_one_core, requested, load).threads


def thread_choice() -> Any:
    """The current run's ThreadChoice (threads, passive, reason), or None."""
    from tlstudio.core.runtime import contention

    mon = contention.current_monitor()
    return None if mon is None else mon.choice


def describe_choice(plan: PrecisionPlan, image_size: int | None = None, micro: str = "") -> str:
    """One log line: "2 of 2 cores busy with other programs: training with 2 threads that sleep
    while they wait; fp32 at 32 px (measured img/s: ...)"; `micro` (step_timing.MicroChoice.phrase,
    e.g. "micro-batches of 8 (1.6x faster per image here; BatchNorm sees 8 images)") is appended."""
    choice = thread_choice()
    head = choice.reason if choice is not None else ""
    at = f" at {image_size} px" if image_size and " px" not in plan.reason else ""
    layout = ", channels_last" if plan.channels_last else ""
    mode = f"{plan.name}{layout}{at}" + (f" ({plan.reason})" if plan.reason else "")
    if plan.device.type != "cpu":
        mode = f"{mode} on {plan.device}"
    if micro:
        mode = f"{mode}, {micro}"
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
