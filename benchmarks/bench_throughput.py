"""Benchmark 1: training throughput, TL Studio's pipeline + precision vs a bare fp32 PyTorch loop.

Same timm model (random init: weights do not change the cost), same JPEG folder, same batch
size, full fine-tuning (every layer trains), AdamW, cross-entropy.

- bare:   the loop a user writes from the PyTorch tutorial: torchvision ImageFolder + timm's
          training transform + DataLoader (workers=2, decoding JPEGs every epoch), fp32, NCHW.
- tlstudio: tlstudio.core.pipeline.loaders (decoded-image cache, threaded prefetch, channels_last
          batches) + the precision plan choose_precision() picks on this machine (bf16 autocast +
          channels_last here) + the glibc heap-reuse switch engine.fit uses (core/allocator.py).
- engine: tlstudio.core.training.engine.fit itself (when it runs), same data, its own reported epoch time.

Epoch 1 (cold: everything decodes) and epoch 2 (warm) are timed separately; the headline is the
images/s over both epochs (what a 2-epoch user run sees) and the warm-epoch ratio.
"""

from __future__ import annotations

import argparse

from common import (Timer, folder_split, make_jpeg_folder, print_machine, report, timm_data_cfg)


def _model(name: str, size: int):
    import timm
    import torch

    torch.manual_seed(0)
    kw = {"img_size": size} if "vit" in name else {}
    return timm.create_model(name, pretrained=False, num_classes=4, **kw)


def bare_epochs(name: str, root, size: int, batch: int, epochs: int, workers: int):
    """Yields img/s per epoch for the hand-written fp32 loop."""
    import timm
    import torch
    from torchvision.datasets import ImageFolder

    model = _model(name, size)
    cfg = timm_data_cfg(model, size)
    tf = timm.data.create_transform(**{k: cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")},
                                    is_training=True, scale=(0.6, 1.0), hflip=0.5, color_jitter=None)
    ds = ImageFolder(str(root), transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                     drop_last=False)  # platform default start method, as a user would
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        n = 0
        with Timer() as t:
            for x, y in dl:
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                n += x.shape[0]
        yield n / t.s, t.cpu / n


def tlstudio_epochs(name: str, root, size: int, batch: int, epochs: int, prewarm: bool = False,
                    micro: int | None = None):
    """Yields the plan description, then img/s per epoch (with prewarm, the cache warm-up time
    counts towards epoch 1). `micro`: images per micro-batch (0 = whole batches; None = the
    engine's choice, runtime/step_timing.choose_micro_batch, timed before epoch 1 and not counted)."""
    import torch

    from tlstudio.core.runtime.allocator import training_allocator
    from tlstudio.core.pipeline.loaders import build_loaders
    from tlstudio.core.runtime.precision import choose_precision
    from tlstudio.core.runtime.step_timing import choose_micro_batch

    model = _model(name, size)
    cfg = timm_data_cfg(model, size)
    plan = choose_precision(torch.device("cpu"), model, measure=(batch, size))
    split = folder_split(root)
    with training_allocator():
        mc = choose_micro_batch(model, batch, size, plan, requested=micro, train_images=len(split.train) * epochs)
    plan.prepare_model(model)
    loaders = build_loaders(split, cfg, batch_size=batch, augment="light", seed=0, device="cpu", cache_budget_mb=1024,
                            channels_last=plan.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    yield f"{plan.name}{', channels_last' if plan.channels_last else ''}, {mc.phrase or 'whole batches'}" + (
        ", cache warmed first" if prewarm else "")
    for e in range(epochs):
        n = 0
        # glibc heap reuse only around our epochs, as engine.fit does: the interleaved bare epochs
        # run with the default allocator
        with training_allocator(), Timer() as t:
            if prewarm and e == 0:
                for _ in loaders.warm_cache():
                    pass
            for x, y, _ in loaders.train_batches(e):
                x = plan.prepare_input(x)
                k = mc.size if 0 < mc.size < x.shape[0] else x.shape[0]
                opt.zero_grad(set_to_none=True)
                for i in range(0, x.shape[0], k):  # micro-batches: gradients accumulate, one step
                    xi, yi = x[i:i + k], y[i:i + k]
                    with plan.autocast():
                        loss = torch.nn.functional.cross_entropy(model(xi), yi)
                    (loss * (xi.shape[0] / x.shape[0])).backward()
                opt.step()
                n += x.shape[0]
        yield n / t.s, t.cpu / n


def engine_epochs(name: str, root, size: int, batch: int, epochs: int, micro: int | None = None) -> list[float] | str:
    """engine.fit end to end; img/s per epoch from its own EpochEnd.seconds (train + val).
    `micro`: TrainConfig.micro_batch (None: the engine measures)."""
    import tempfile

    try:
        from tlstudio.core.config import TrainConfig
        from tlstudio.core.training.engine import fit
        from tlstudio.core.events import EpochEnd, Log, RunStarted
    except ImportError as e:
        return f"engine not importable: {e}"
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(data_dir=str(root), backbone=name, init="scratch", freeze="none", epochs=epochs,
                          batch_size=batch, image_size=size, augment="light", out_dir=out + "/run",
                          val_fraction=0.125, early_stop_patience=None, lr=1e-3, micro_batch=micro)
        res, n_train = [], 0
        try:
            gen = fit(cfg)
            for ev in gen:
                if isinstance(ev, RunStarted):
                    n_train = ev.n_train
                if isinstance(ev, EpochEnd):
                    res.append(n_train / ev.seconds)
                if isinstance(ev, Log) and " px" in ev.message:
                    print(f"#   engine.fit log: {ev.message}", flush=True)
        except Exception as e:  # report, do not hide: the comparison row says why it is missing
            return f"engine.fit failed: {e.__class__.__name__}: {str(e)[:160]}"
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="resnet18 only, 64 images")
    ap.add_argument("--models", default=None)
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the bare loop")
    ap.add_argument("--no-engine", action="store_true")
    ap.add_argument("--prewarm", action="store_true", help="decode into the cache before epoch 1 (Loaders.warm_cache)")
    ap.add_argument("--photo", default="500x375",
                    help="JPEG size WxH (500x375 ImageNet-like; e.g. 2048x1536 for phone photos)")
    ap.add_argument("--micro-ab", action="store_true",
                    help="also run TL Studio with whole batches (micro-batches off), interleaved: before/after")
    ap.add_argument("--micro-forced", type=int, default=8,
                    help="with --micro-ab, also TL Studio with micro-batches of this size set (0: none)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for both loops (default: all cores); 1 is robust on an overloaded machine")
    a = ap.parse_args()
    import torch

    from tlstudio.core.runtime.precision import set_threads

    set_threads(False)
    if a.threads:
        torch.set_num_threads(a.threads)
    models = (a.models or ("resnet18" if a.quick else "resnet18,efficientnet_b0,vit_tiny_patch16_224")).split(",")
    per_class = (a.images or (64 if a.quick else 256)) // 4
    photo = tuple(int(v) for v in a.photo.lower().split("x"))
    root = make_jpeg_folder("train", 4, per_class, size=photo)
    print_machine()
    print(f"# {4 * per_class} JPEGs {photo[0]}x{photo[1]}, batch {a.batch}, {a.size}px, {a.epochs} epochs, full fine-tuning, "
          f"{torch.get_num_threads()} torch threads")
    print("| model | loop | epoch 1 img/s | epoch 2 img/s | overall img/s | CPU s/img (all epochs) |")
    print("|---|---|---|---|---|---|")
    ratios, extra = {}, {}
    import os

    for name in models:
        # epochs interleaved (bare 1, ours 1, bare 2, ours 2): load drift on a shared box hits both
        loops = {"bare": bare_epochs(name, root, a.size, a.batch, a.epochs, a.workers)}
        if a.micro_ab:
            loops["whole"] = tlstudio_epochs(name, root, a.size, a.batch, a.epochs, a.prewarm, micro=0)
            if a.micro_forced:
                loops["forced"] = tlstudio_epochs(name, root, a.size, a.batch, a.epochs, a.prewarm, micro=a.micro_forced)
        loops["ours"] = tlstudio_epochs(name, root, a.size, a.batch, a.epochs, a.prewarm)
        how = {k: next(g) for k, g in loops.items() if k != "bare"}
        rate = {k: [] for k in loops}
        cpu = {k: [] for k in loops}
        load0 = os.getloadavg()[0]
        for _ in range(a.epochs):
            for k, g in loops.items():
                r, c = next(g)
                rate[k].append(r)
                cpu[k].append(c)
        for g in loops.values():
            g.close()

        def overall(v):
            return len(v) / sum(1 / x for x in v)

        labels = {"bare": f"bare fp32 (DataLoader workers={a.workers})", "ours": f"tlstudio ({how['ours']})"}
        if a.micro_ab:
            labels["whole"] = f"tlstudio before: whole batches ({how['whole']})"
            if "forced" in how:
                labels["forced"] = f"tlstudio, micro-batches set ({how['forced']})"
        for k, label in labels.items():
            v, c = rate[k], cpu[k]
            print(f"| {name} | {label} | {v[0]:.1f} | {v[-1]:.1f} | {overall(v):.1f} | {sum(c) / len(c):.3f} |",
                  flush=True)
        print(f"# load average {load0:.1f} -> {os.getloadavg()[0]:.1f} during {name}", flush=True)
        bare, ours = rate["bare"], rate["ours"]
        ratios[f"{name}_overall"] = round(overall(ours) / overall(bare), 2)
        ratios[f"{name}_warm"] = round(ours[-1] / bare[-1], 2)
        ratios[f"{name}_cpu_time"] = round(sum(cpu["bare"]) / sum(cpu["ours"]), 2)
        if a.micro_ab:
            ratios[f"{name}_whole_overall"] = round(overall(rate["whole"]) / overall(bare), 2)
            ratios[f"{name}_micro_vs_whole"] = round(overall(ours) / overall(rate["whole"]), 2)
            ratios[f"{name}_micro_vs_whole_cpu"] = round(sum(cpu["whole"]) / sum(cpu["ours"]), 2)
            if "forced" in rate:
                ratios[f"{name}_forced_micro_vs_whole"] = round(overall(rate["forced"]) / overall(rate["whole"]), 2)
                ratios[f"{name}_forced_micro_vs_whole_cpu"] = round(sum(cpu["whole"]) / sum(cpu["forced"]), 2)
                ratios[f"{name}_forced_micro_vs_bare"] = round(overall(rate["forced"]) / overall(bare), 2)
        if name == models[0] and not a.no_engine:
            for micro in ((0, None) if a.micro_ab else (None,)):
                eng = engine_epochs(name, root, a.size, a.batch, a.epochs, micro)
                what = "engine.fit" + (" whole batches" if micro == 0 else "")
                if isinstance(eng, str):
                    print(f"| {name} | {what} | {eng} | | |")
                else:
                    print(f"| {name} | {what} (train+val per epoch) | {eng[0]:.1f} | {eng[-1]:.1f} | {overall(eng):.1f} | |",
                          flush=True)
                    key = "engine_fit_whole_overall" if micro == 0 else "engine_fit_overall"
                    ratios[f"{name}_{key}"] = round(overall(eng) / overall(bare), 2)
    for k, v in ratios.items():
        print(f"ratio {k}: {v}x")
    report("throughput", ratios, extra)


if __name__ == "__main__":
    main()
