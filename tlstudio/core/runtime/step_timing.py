"""How a CPU training step runs best here, from a quick measurement: precision, layout, micro-batches.

Both choices time a few training steps (forward, a loss, backward) of a copy of the model at the
run's image size, interleaved so that another program's burst hits every candidate alike, the
best step of each counting; a change from plain fp32 whole batches must win by a margin, so noise
does not flip it. `precision.choose_precision(measure=...)` uses the first half; the engine asks
`choose_micro_batch` for the second (training/prepare.py).

Micro-batches: one optimiser step over 32 images can run as 4 forward+backward passes of 8 images
with their gradients added up (training/loop.py). The activations of 8 images at 224 px stay in
the caches; those of 32 do not. Measured with 2 threads on the 2-core AVX2 box, fp32, ms per image
of one step of 32 in micro-batches of 4 / 8 / 16 / 32: tf_efficientnet_lite0 224 px 63.4 / 59.4 /
67.5 / 102.7 (1.7x), resnet18 224 px 84.0 / 80.0 / 77.9 / 85.1, resnet18 112 px 28.5 / 24.4 /
23.0 / 22.9. The gain depends on the model (depthwise convolutions gain most) and the size, hence
a measurement. BatchNorm layers in train mode then normalise with each micro-batch's statistics
("ghost batch norm"), which the log line says.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, replace
from typing import Any

from tlstudio.core.runtime import precision as _precision
from tlstudio.core.runtime.precision import PrecisionPlan

# --- precision and layout ------------------------------------------------------------------

MEASURE_BUDGET_S = 15.0  # stop measuring further modes after this (big models at big sizes)
MEASURE_BATCH = 16  # images per measured step (per-image cost is close to batch 32's; half the time)
MEASURE_SHARED_MAX = 32  # images per measured step on a shared CPU (see step_batch)
MIN_GAIN = 1.10  # reduced precision / another layout must be this much faster than fp32 to win
# A short run does not time the modes: the timing steps (each mode warm-up + rounds, and on shared
# cores the one-thread step) may push at most this share of the images the run trains on. resnet18
# at 64 px under 2 busy loops, 224 images x 2 epochs: 6.4 s of timing against 7.6 s of training.
MODES_SHORT_RUN_SHARE = 0.25
_measured: dict[tuple, tuple[str, bool, str, int]] = {}  # (model, batch, size, threads, ...) -> (mode, why, 1 thread?)


def mode_label(name: str, channels_last: bool) -> str:
    return name + (" + channels_last" if channels_last else "")


def pick_mode(speeds: dict[tuple[str, bool], float], min_gain: float = MIN_GAIN,
              single: frozenset = frozenset()) -> tuple[str, bool, str]:
    """The mode to train in from measured images/s per (precision, channels_last).

    fp32 contiguous is the reference (exact, no conversions): another mode must be at least
    `min_gain` times faster to be chosen. `single`: modes timed on one thread (said so in the
    listing). Returns (precision, channels_last, reason)."""
    if not speeds:
        raise ValueError("no measurements")
    ref = ("fp32", False)
    base = speeds.get(ref)
    best = max(speeds, key=lambda k: speeds[k])
    listing = ", ".join(f"{mode_label(*k)}{' on 1 thread' if k in single else ''} {v:.1f}"
                        for k, v in sorted(speeds.items(), key=lambda kv: -kv[1]))
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
                  budget_s: float = MEASURE_BUDGET_S,
                  single: frozenset = frozenset()) -> dict[tuple[str, bool], float]:
    """Images/s of a training step (forward, loss, backward) of a copy of `model` in each mode.

    Modes are interleaved (one warm-up step each, then `rounds` timed rounds) and the best step
    per mode counts: on a shared CPU another program's burst then hits every mode alike and the
    minimum is the mode's own cost. When `budget_s` is spent, modes not yet timed are left out
    of the result. Modes in `single` run on one thread. The model itself is untouched (weights,
    buffers, grads): one copy is measured."""
    import time

    import torch

    from tlstudio.core.runtime.inference import one_thread

    m, x = _timing_copy(model, batch, size)
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
                with one_thread() if mode in single else contextlib.nullcontext():
                    t = time.perf_counter()
                    _step_loss(m, xi, name == "bf16").backward()
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


def _threads_sleep_while_waiting() -> bool:
    """Whether this run's OpenMP threads sleep while they wait (the CPU is shared; contention.py)."""
    from tlstudio.core.runtime import contention

    mon = contention.current_monitor()
    return bool(mon is not None and mon.passive)


def step_batch(batch: int, size: int, shared: bool) -> int:
    """Images per timed step. On a shared CPU, where the threads sleep while they wait, a few-image
    step under-rates bf16 against whole-batch training: resnet18 at 224 px under 2 busy loops timed
    bf16 + channels_last at 7.7-8.0 img/s against fp32 + channels_last 8.5-9.4 with 4-8 images per
    step (9.5 each with 16), yet trained at 12.7 against 8.9 img/s. So there whole training batches
    (up to MEASURE_SHARED_MAX) are timed; when that would overrun the budget, the rule decides."""
    return max(1, min(int(batch), MEASURE_SHARED_MAX)) if shared else measure_batch(batch, size)


# oneDNN's bf16 convolution backward waits for its threads by spinning, whatever OpenMP's policy:
# under 2 busy loops a resnet18 step of 32 images on 2 threads took 2.8-3.4 s at every size from
# 32 to 224 px (96% in convolution_backward), on 1 thread 0.16 s at 32 px, 0.30 at 64, 0.8 at
# 112, 2.9 at 224; under 1 busy loop 1 thread still won (64 px 0.25 against 0.30 s, 224 px 1.9
# against 2.1); vit_tiny (one convolution) at 224 px: 1 thread 2.9-3.0 s, 2 threads the same.
# So bf16 on shared cores trains, and is timed, on one thread.
BF16_SHARED_WHY = "bf16 convolutions spin-wait between threads on shared cores"


def timing_images(n_modes: int, step: int, shared: bool, rounds: int = 2) -> int:
    """Images the mode timing pushes through: a warm-up and `rounds` steps of `step` images per
    mode, plus the same for the one-thread step on shared cores."""
    return (n_modes + (1 if shared else 0)) * (rounds + 1) * step


def measured_plan(plan: PrecisionPlan, model: Any, batch: int, size: int, conv: bool,
                   layout_fixed: bool, train_images: int = 0) -> PrecisionPlan:
    """`plan` with the mode timed fastest at this size; `train_images` (images x epochs the run
    trains, 0 = unknown) lets a short run skip the timing and keep the rule (MODES_SHORT_RUN_SHARE)."""
    import torch

    shared = _threads_sleep_while_waiting()
    key = (type(model).__name__, sum(p.numel() for p in model.parameters()), batch, size, torch.get_num_threads(),
           plan.channels_last if layout_fixed else None, shared)
    if key not in _measured:
        modes = candidate_modes(conv, _precision.cpu_has_fast_bf16(), plan.channels_last if layout_fixed else None)
        if len(modes) < 2:
            return plan
        step = step_batch(batch, size, shared)
        if train_images and timing_images(len(modes), step, shared) > MODES_SHORT_RUN_SHARE * train_images:
            return replace(plan, reason=f"{plan.reason}; a short run: not worth timing the modes at {size} px")
        multi = shared and torch.get_num_threads() > 1
        single = frozenset(m for m in modes if m[0] == "bf16") if multi else frozenset()
        try:
            speeds = measure_modes(model, step, size, modes, single=single)
        except Exception as e:  # a model that cannot run a bare step here: keep the rule's choice
            return replace(plan, reason=f"{plan.reason}; not measured ({e.__class__.__name__})")
        if len(speeds) < len(modes):  # cut short by the time budget (a big model, a busy CPU): the rule
            return replace(plan, reason=f"{plan.reason}; too slow here to time the modes at {size} px")
        name, cl, why = pick_mode(speeds, single=single)
        threads = 0
        if multi and (name, cl) not in single:
            threads, why = _one_thread_if_faster(model, step, size, (name, cl), speeds, why)
        _measured[key] = (name, cl, why, threads)
    name, cl, why, threads = _measured[key]
    if threads:  # the cores are shared and one thread was timed clearly faster: the monitor keeps it so
        from tlstudio.core.runtime import contention

        mon = contention.current_monitor()
        if mon is not None:
            mon.prefer_when_shared(threads)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[name]
    return replace(plan, name=name, dtype=dtype, channels_last=cl, use_scaler=False, reason=f"{why} at {size} px")


def one_thread_for_bf16_when_shared(plan: PrecisionPlan) -> None:
    """A bf16 CPU plan trains on one thread while the cores are shared (BF16_SHARED_WHY), however
    it was chosen (the rule, a timing, the user): the run's monitor re-applies it at every re-check."""
    if plan.device.type != "cpu" or plan.name != "bf16":
        return
    from tlstudio.core.runtime import contention

    mon = contention.current_monitor()
    if mon is not None and mon.requested is None:
        mon.prefer_when_shared(1, BF16_SHARED_WHY)


def _one_thread_if_faster(model: Any, batch: int, size: int, mode: tuple[str, bool],
                          speeds: dict[tuple[str, bool], float], why: str) -> tuple[int, str]:
    """On shared cores, the chosen mode timed again on one thread: (1, reason) when that is at
    least MIN_GAIN faster (resnet18 at 32 px under 2 busy loops: a 1-thread loop 116 img/s, TL
    Studio's 2 sleeping threads 68), else (0, reason)."""
    from tlstudio.core.runtime.inference import one_thread

    with one_thread():
        one = measure_modes(model, batch, size, [mode])
    v = one.get(mode)
    if not v:
        return 0, why
    why = f"{why}; on 1 thread {v:.1f}"
    return (1, why) if v >= speeds[mode] * MIN_GAIN else (0, why)



# --- micro-batches -------------------------------------------------------------------------

MICRO_AT_224 = 8  # images per micro-batch at 224 px; scaled to keep the activation volume at other sizes
MICRO_MIN_GAIN = 1.15  # micro-batches must be this much faster per image than whole batches
MICRO_BUDGET_S = 25.0  # measuring stops (whole batches stay) when a step shows it would take longer,
MICRO_BUDGET_SHARE = 0.1  # unless the run is long: up to this share of its estimated training time
# and never more than this share of it: a 1.7x gain saves at most ~40% of a run, so timing a short
# run for longer than a quarter of its training costs more than it can win (84 images x 2 epochs at
# 224 px under 2 busy loops: ~12 s of training, ~8 s of timing)
MICRO_SHORT_RUN_SHARE = 0.25
MICRO_ENV = "TLSTUDIO_MICRO_BATCH"  # images per micro-batch; 0 = whole batches (A/B, escape hatch)
_micro_measured: dict[tuple, tuple[int, float, dict[int, float]]] = {}


@dataclass(frozen=True)
class MicroChoice:
    """Images per micro-batch of a training step (0 = whole batches) and the phrase for the log."""

    size: int
    phrase: str = ""  # "" when nothing was decided worth saying (whole batches by default)


def micro_candidates(batch: int, size: int) -> list[int]:
    """Micro-batch sizes worth timing: MICRO_AT_224 images at 224 px and twice that, scaled by
    the pixels per image as `inference.forward_chunked` scales its chunks (powers of two, at
    least 4, smaller than the batch): 8 and 16 at 224 px, 16 at 160 px, none at 112 px and batch 32."""
    scaled = MICRO_AT_224 * 224 * 224 / max(1, int(size) ** 2)
    base = max(4, 2 ** round(math.log2(max(1.0, scaled))))
    return [k for k in (base, 2 * base) if k < int(batch)]


def _timing_copy(model: Any, batch: int, size: int) -> tuple[Any, Any]:
    """A trainable CPU copy of `model` (the model itself stays untouched) and the fixed random
    batch a timing runs it on."""
    import copy

    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    m = copy.deepcopy(model).cpu().train()
    for p in m.parameters():
        p.requires_grad_(True)
    return m, x


def _step_loss(m: Any, x: Any, bf16: bool) -> Any:
    """The timed step's loss (under bf16 autocast when asked); a dict of outputs times its first."""
    import torch

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        out = m(x)
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return out.float().logsumexp(1).mean()


def measure_micro_batches(model: Any, batch: int, size: int, candidates: list[int], *, precision: str = "fp32",
                          channels_last: bool = False, rounds: int = 2, budget_s: float = MICRO_BUDGET_S,
                          train_images: int = 0) -> dict[int, float]:
    """Images/s of a training step of `batch` images of a copy of `model`, whole (key 0) and in
    micro-batches of each candidate size (one micro-batch is timed: the per-image cost does not
    change with their number; it pays its gradient allocation alone, which only makes the
    comparison stricter for micro-batches). Interleaved, one warm-up each,
    the best of `rounds` counts. The budget is `budget_s`, or MICRO_BUDGET_SHARE of the training
    time of `train_images` (images x epochs of the run) estimated from the first whole step if
    that is longer; {} when that step shows the budget cannot be kept; candidates not reached
    within the budget are left out. The model itself is untouched."""
    import time

    import torch

    m, x = _timing_copy(model, batch, size)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    bf16 = precision == "bf16"
    kinds = [0] + [int(k) for k in candidates if 0 < int(k) < batch]
    best: dict[int, float] = {}
    warmed: set[int] = set()
    t_start = time.perf_counter()
    try:
        for r in range(rounds + 1):
            for k in kinds:
                over = time.perf_counter() - t_start > budget_s
                if (r == 0 and k and over) or (r > 0 and (k not in warmed or (over and k in best))):
                    continue
                n = batch if k == 0 else k
                t = time.perf_counter()
                _step_loss(m, x[:n], bf16).backward()
                dt = time.perf_counter() - t
                for p in m.parameters():
                    p.grad = None
                if r == 0 and k == 0 and train_images:
                    est = train_images * dt / batch  # the run's training time in whole batches
                    # a long run may spend longer; a short one no more than it could win back
                    budget_s = min(max(budget_s, MICRO_BUDGET_SHARE * est), MICRO_SHORT_RUN_SHARE * est)
                if r == 0 and k == 0 and dt * (rounds + 1) * (1 + sum(kinds) / batch) > budget_s:
                    return {}  # whole steps alone would overrun the budget: not worth the wait
                warmed.add(k)
                if r > 0:
                    best[k] = max(best.get(k, 0.0), n / max(dt, 1e-9))
    finally:
        del m
    return best


def pick_micro_batch(speeds: dict[int, float], min_gain: float = MICRO_MIN_GAIN) -> tuple[int, float]:
    """(images per micro-batch or 0 for whole batches, its speed-up per image over whole batches).
    A micro-batch size must be at least `min_gain` times faster than whole batches to be chosen."""
    whole = speeds.get(0)
    micro = {k: v for k, v in speeds.items() if k > 0}
    if not whole or not micro:
        return 0, 1.0
    k = max(micro, key=lambda c: micro[c])
    gain = micro[k] / whole
    return (k, gain) if gain >= min_gain else (0, gain)


def has_batchnorm(model: Any) -> bool:
    import torch

    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def micro_phrase(k: int, why: str, batchnorm: bool) -> str:
    if k <= 0:
        return f"whole batches ({why})" if why else ""
    bn = f"; BatchNorm sees {k} images" if batchnorm else ""
    return f"micro-batches of {k} ({why}{bn})"


def env_micro_batch() -> int | None:
    """TLSTUDIO_MICRO_BATCH as an int (0 = whole batches), or None when unset or not a number."""
    v = os.environ.get(MICRO_ENV, "").strip()
    try:
        return max(0, int(v)) if v else None
    except ValueError:
        return None


def choose_micro_batch(model: Any, batch: int, size: int, plan: PrecisionPlan, *, requested: int | None = None,
                       saved: int | None = None, allowed: bool = True, measure: bool = True,
                       train_images: int = 0) -> MicroChoice:
    """Images per micro-batch for a run's training steps, with the phrase for the log.

    In order: the objective cannot take micro-batches (`allowed` False: whole batches); the
    user's setting (`requested`, TrainConfig.micro_batch) or TLSTUDIO_MICRO_BATCH; the size a
    resumed run trained with (`saved`, from last.pt); else, on a CPU with `measure`, a timing of
    whole batches against micro-batches (`measure_micro_batches`) on a copy of the model, in the
    plan's precision and layout (`train_images`: images x epochs the run trains, which lets a
    long run spend longer on the timing); otherwise whole batches."""
    import torch

    bn = has_batchnorm(model)
    env = env_micro_batch()
    explicit, source = (requested, "set in the settings") if requested is not None else (env, MICRO_ENV)
    if not allowed:
        why = "this kind of learning trains on whole batches"
        return MicroChoice(0, f"whole batches ({why})" if explicit else "")
    if explicit is not None:
        k = 0 if explicit >= batch else int(explicit)
        return MicroChoice(k, micro_phrase(k, source, bn))
    if saved is not None:
        k = int(saved) if 0 < int(saved) < batch else 0
        return MicroChoice(k, micro_phrase(k, "as this run trained before", bn) if k else "")
    cands = micro_candidates(batch, size)
    if not measure or plan.device.type != "cpu" or not cands:
        return MicroChoice(0)
    key = (type(model).__name__, sum(p.numel() for p in model.parameters()), int(batch), int(size),
           torch.get_num_threads(), plan.name, bool(plan.channels_last))
    if key not in _micro_measured:
        try:
            speeds = measure_micro_batches(model, int(batch), int(size), cands, precision=plan.name,
                                           channels_last=plan.channels_last, train_images=train_images)
        except Exception as e:  # a model that cannot run a bare step: whole batches, as before
            return MicroChoice(0, f"whole batches (micro-batches not measured: {e.__class__.__name__})")
        if 0 not in speeds or len(speeds) < 2:
            return MicroChoice(0, f"whole batches (timing micro-batches at {size} px would take longer "
                                  "than this run can win back)")
        _micro_measured[key] = (*pick_micro_batch(speeds), speeds)
    k, gain, speeds = _micro_measured[key]
    if k:
        return MicroChoice(k, micro_phrase(k, f"{gain:.1f}x faster per image here", bn))
    listing = ", ".join(f"{c or 'whole'} {v:.1f}" for c, v in sorted(speeds.items()))
    return MicroChoice(0, f"whole batches (micro-batches not clearly faster, img/s: {listing})")
