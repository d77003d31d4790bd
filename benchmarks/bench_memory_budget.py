"""Benchmark 6: peak memory for a data set 4x larger than the cache budget.

Each measurement runs in a fresh process: import torch/timm, create resnet18 (the "model"
part), record RSS, then run 2 training-data epochs through tlstudio's pipeline (decoded
cache with the given budget; overflow spills to the disk cache) and record peak RSS.
The budget bounds the pipeline as a whole: the batches in flight are reserved from it
(pipeline.working_set_bytes) and the RAM cache gets the rest, so peak RSS should stay under
"RSS before data + budget". For contrast, the same data with a budget large enough to hold
everything shows what an unbounded cache would take.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from common import current_rss_mb, folder_split, make_jpeg_folder, peak_rss_mb, print_machine, report


def child(budget_mb: int, root: str, batch: int) -> None:
    import timm
    import torch

    from tlstudio.core.pipeline.loaders import build_loaders

    model = timm.create_model("resnet18", pretrained=False, num_classes=4)
    cfg = dict(timm.data.resolve_model_data_config(model))
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    x = torch.zeros(1)  # touch torch's allocator
    del x
    base = current_rss_mb()
    split = folder_split(root)
    L = build_loaders(split, cfg, batch_size=batch, augment="light", seed=0, device="cpu", cache_budget_mb=budget_mb)
    n = 0
    for e in range(2):
        for xb, _, _ in L.train_batches(e):
            n += xb.shape[0]
    st = L.cache.stats
    print(json.dumps({"base_mb": base, "peak_mb": peak_rss_mb(), "model_mb": model_mb, "images": len(split.train),
                      "seen": n, "ram_mb": st.ram_bytes / 2**20, "ram_entries": st.ram_entries,
                      "disk_entries": st.disk_entries, "uncached": st.uncached, "decodes": st.decodes,
                      "batch_mb": batch * 3 * 224 * 224 * 4 / 2**20, "reserve_mb": L.reserve_bytes / 2**20}))


def run_child(budget_mb: int, root, batch: int) -> dict:
    env = dict(os.environ)
    env["TLSTUDIO_HOME"] = tempfile.mkdtemp(prefix="tls_mem_")
    out = subprocess.run([sys.executable, __file__, "--child", "--budget", str(budget_mb), "--root", str(root),
                          "--batch", str(batch)], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--root", default=None)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    if a.child:
        return child(a.budget, a.root, a.batch)
    # the budget must exceed the batches in flight (~80 MB at batch 32, 224 px) to cache anything
    budget = a.budget or (96 if a.quick else 256)
    import timm

    from tlstudio.core.pipeline.augment import scale_size

    short = scale_size(dict(timm.data.resolve_model_data_config(timm.create_model("resnet18", pretrained=False))))
    entry_mb = 3 * short * int(short * 500 / 375) / 2**20  # one 500x375 image as cached for resnet18
    n = int(4 * budget / entry_mb) + 4
    per_class = (n + 3) // 4
    root = make_jpeg_folder("mem", 4, per_class)
    print_machine()
    data_mb = 4 * per_class * entry_mb
    print(f"# {4 * per_class} JPEGs 500x375, decoded size {data_mb:.0f} MB = {data_mb / budget:.1f}x the "
          f"{budget} MB cache budget; 2 epochs, batch {a.batch}")
    bounded = run_child(budget, root, a.batch)
    unbounded = run_child(int(data_mb * 2) + 64, root, a.batch)
    print("| cache budget | RSS before data (torch + model) | peak RSS | peak - before | cache in RAM | on disk | decodes |")
    print("|---|---|---|---|---|---|---|")
    for label, r in ((f"{budget} MB", bounded), (f"{int(data_mb * 2) + 64} MB (holds all)", unbounded)):
        print(f"| {label} | {r['base_mb']:.0f} MB | {r['peak_mb']:.0f} MB | {r['peak_mb'] - r['base_mb']:.0f} MB | "
              f"{r['ram_mb']:.0f} MB ({r['ram_entries']} img) | {r['disk_entries']} img | {r['decodes']} |")
    growth = bounded["peak_mb"] - bounded["base_mb"]
    working = growth - bounded["ram_mb"]
    print(f"# bounded run: data growth {growth:.0f} MB = cache {bounded['ram_mb']:.0f} MB + {working:.0f} MB working "
          f"memory (reserved from the budget: {bounded['reserve_mb']:.0f} MB; one float batch is "
          f"{bounded['batch_mb']:.0f} MB)")
    ok = growth <= budget
    print(f"# peak {bounded['peak_mb']:.0f} MB vs model process + budget ({bounded['base_mb']:.0f} + {budget} MB = "
          f"{bounded['base_mb'] + budget:.0f} MB): {'under' if ok else 'OVER'} by {abs(budget - growth):.0f} MB")
    report("memory_budget", {"peak_growth_over_budget": round(growth / budget, 2),
                             "unbounded_growth_over_budget": round((unbounded["peak_mb"] - unbounded["base_mb"]) / budget, 2)},
           {"budget_mb": budget, "bounded": bounded, "unbounded": unbounded, "peak_within_budget": ok})

if __name__ == "__main__":
    main()
