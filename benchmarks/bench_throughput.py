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


def tlstudio_epochs(name: str, root, size: int, batch: int, epochs: int, prewarm: bool = False):
    """Yields the plan description, then img/s per epoch (with prewarm, the cache warm-up time
    counts towards epoch 1)."""
    import torch

    from tlstudio.core.runtime.allocator import training_allocator
    from tlstudio.core.pipeline.loaders import build_loaders
    from tlstudio.core.runtime.precision import choose_precision

    model = _model(name, size)
    cfg = timm_data_cfg(model, size)
    plan = choose_precision(torch.device("cpu"), model)
    plan.prepare_model(model)
    split = folder_split(root)
    loaders = build_loaders(split, cfg, batch_size=batch, augment="light", seed=0, device="cpu", cache_budget_mb=1024,
                            channels_last=plan.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    yield plan.describe() + (", cache warmed first" if prewarm else "")
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
                with plan.autocast():
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n += x.shape[0]
        yield n / t.s, t.cpu / n


def engine_epochs(name: str, root, size: int, batch: int, epochs: int) -> list[float] | str:
    """engine.fit end to end; img/s per epoch from its own EpochEnd.seconds (train + val)."""
    import tempfile

    try:
        from tlstudio.core.config import TrainConfig
        from tlstudio.core.training.engine import fit
        from tlstudio.core.events import EpochEnd, RunStarted
    except ImportError as e:
        return f"engine not importable: {e}"
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(data_dir=str(root), backbone=name, init="scratch", freeze="none", epochs=epochs,
                          batch_size=batch, image_size=size, augment="light", out_dir=out + "/run",
                          val_fraction=0.125, early_stop_patience=None, lr=1e-3)
        res, n_train = [], 0
        try:
            gen = fit(cfg)
            for ev in gen:
                if isinstance(ev, RunStarted):
                    n_train = ev.n_train
                if isinstance(ev, EpochEnd):
                    res.append(n_train / ev.seconds)
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
    for name in models:
        # epochs interleaved (bare 1, ours 1, bare 2, ours 2): load drift on a shared box hits both
        gb = bare_epochs(name, root, a.size, a.batch, a.epochs, a.workers)
        go = tlstudio_epochs(name, root, a.size, a.batch, a.epochs, a.prewarm)
        how = next(go)
        bare, ours, bare_cpu, ours_cpu = [], [], [], []
        for _ in range(a.epochs):
            r, c = next(gb)
            bare.append(r)
            bare_cpu.append(c)
            r, c = next(go)
            ours.append(r)
            ours_cpu.append(c)
        gb.close()
        go.close()

        def overall(v):
            return len(v) / sum(1 / x for x in v)

        for label, v, c in ((f"bare fp32 (DataLoader workers={a.workers})", bare, bare_cpu),
                            (f"tlstudio ({how})", ours, ours_cpu)):
            print(f"| {name} | {label} | {v[0]:.1f} | {v[-1]:.1f} | {overall(v):.1f} | {sum(c) / len(c):.3f} |",
                  flush=True)
        ratios[f"{name}_overall"] = round(overall(ours) / overall(bare), 2)
        ratios[f"{name}_warm"] = round(ours[-1] / bare[-1], 2)
        ratios[f"{name}_cpu_time"] = round(sum(bare_cpu) / sum(ours_cpu), 2)
        if name == models[0] and not a.no_engine:
            eng = engine_epochs(name, root, a.size, a.batch, a.epochs)
            if isinstance(eng, str):
                print(f"| {name} | engine.fit | {eng} | | |")
            else:
                print(f"| {name} | engine.fit (train+val per epoch) | {eng[0]:.1f} | {eng[-1]:.1f} | {overall(eng):.1f} | |")
                ratios[f"{name}_engine_fit_overall"] = round(overall(eng) / overall(bare), 2)
    for k, v in ratios.items():
        print(f"ratio {k}: {v}x")
    report("throughput", ratios, extra)


if __name__ == "__main__":
    main()
