"""Benchmark 4: achieved training FLOP/s as a fraction of the measured matmul peak.

Peak: a large square matmul (fp32, and bf16) timed on this machine, median of several runs.
Model FLOPs: torch.utils.flop_counter.FlopCounterMode over one training step (forward +
backward) of the model at the given batch size. Achieved: FLOPs / median step time, for fp32
(default layout) and for the plan TL Studio picks (bf16 autocast + channels_last here).
The fraction is the distance to the physical limit of the precision in use.
"""

from __future__ import annotations

import argparse
import time

from common import median, print_machine, report


def matmul_peak(dtype, n: int, reps: int) -> tuple[float, float]:
    """(wall, cpu) FLOP/s of an n x n matmul: best wall time, and FLOPs per CPU second x threads
    (CPU time excludes the time other processes held our cores: robust on a shared machine)."""
    import torch

    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    ts, cs = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        a @ b
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
    thr = torch.get_num_threads()
    return 2 * n**3 / min(ts), 2 * n**3 / (median(cs) / thr)


def step_flops(model, x, y) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(fc.get_total_flops())


def time_steps(model, x, y, plan, steps: int) -> float:
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = plan.prepare_input(x)
    ts, cs = [], []
    for i in range(steps + 1):
        t, c = time.perf_counter(), time.process_time()
        with plan.autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # first step warms oneDNN kernels up
            ts.append(time.perf_counter() - t)
            cs.append(time.process_time() - c)
    return median(ts), median(cs) / torch.get_num_threads()


def main():
    import timm
    import torch

    from tlstudio.core.runtime.precision import PrecisionPlan, choose_precision, set_threads

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="resnet18,efficientnet_b0,vit_tiny_patch16_224")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: all cores); 1 is robust on an overloaded machine")
    a = ap.parse_args()
    set_threads(False)
    if a.threads:
        torch.set_num_threads(a.threads)
    models = ["resnet18"] if a.quick else a.models.split(",")
    batch = 16 if a.quick else a.batch
    steps = 3 if a.quick else 5
    print_machine()
    n = 1024 if a.quick else 2048
    peak32, peak32c = matmul_peak(torch.float32, n, 20)
    peak16, peak16c = matmul_peak(torch.bfloat16, n, 20)
    print(f"# matmul peak ({n}x{n}): fp32 {peak32 / 1e9:.0f} GFLOP/s wall ({peak32c / 1e9:.0f} per CPU-second "
          f"x threads), bf16 {peak16 / 1e9:.0f} ({peak16c / 1e9:.0f})")
    print(f"# training step (forward+backward+SGD), batch {batch}, {a.size}px, {torch.get_num_threads()} torch threads")
    print("| model | precision | GFLOP/step | step s (wall) | achieved GFLOP/s (wall) | fraction of peak (wall) "
          "| fraction of peak (CPU time) |")
    print("|---|---|---|---|---|---|---|")
    ratios = {}
    for name in models:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=10)
        model.train()
        x = torch.randn(batch, 3, a.size, a.size)
        y = torch.randint(0, 10, (batch,))
        flops = step_flops(model, x, y)
        fp32 = PrecisionPlan(torch.device("cpu"), None, "fp32", False, False)
        auto = choose_precision(torch.device("cpu"), model)
        for plan in (fp32, auto) if auto.name != "fp32" else (fp32,):
            plan.prepare_model(model)
            s, c = time_steps(model, x, y, plan, steps)
            ach = flops / s
            peak, peakc = (peak16, peak16c) if plan.name == "bf16" else (peak32, peak32c)
            frac, fracc = ach / peak, (flops / c) / peakc
            print(f"| {name} | {plan.name}{' + channels_last' if plan.channels_last else ''} | {flops / 1e9:.1f} | "
                  f"{s:.2f} | {ach / 1e9:.0f} | {frac:.1%} | {fracc:.1%} |", flush=True)
            ratios[f"{name}_{plan.name}_fraction_of_peak"] = round(frac, 3)
            ratios[f"{name}_{plan.name}_fraction_of_peak_cpu"] = round(fracc, 3)
            model.to(memory_format=torch.contiguous_format)
    report("flops", ratios, {"peak_fp32_gflops": round(peak32 / 1e9), "peak_bf16_gflops": round(peak16 / 1e9),
                             "peak_fp32_gflops_cpu": round(peak32c / 1e9), "peak_bf16_gflops_cpu": round(peak16c / 1e9)})


if __name__ == "__main__":
    main()
