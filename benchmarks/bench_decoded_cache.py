"""Benchmark 3: a data-loading epoch from the decoded-image cache vs decoding JPEGs every epoch.

Loader only (no model): time to produce every normalised, augmented ('light') training batch.
- timm/torchvision: ImageFolder + timm training transform + DataLoader, workers 0 and 2;
- tlstudio, cache off: our pipeline decoding every epoch (decode threads);
- tlstudio, cache on: epoch 1 fills the cache, epochs 2.. read uint8 tensors from RAM.
Also: the decode-thread count (0 workers vs threads) with the cache warm.
"""

from __future__ import annotations

import argparse

from common import Timer, folder_split, make_jpeg_folder, median, print_machine, report, timm_data_cfg


def _cfg(size):
    import timm

    m = timm.create_model("resnet18", pretrained=False, num_classes=4)
    return timm_data_cfg(m, size)


def timm_epochs(root, cfg, batch, epochs, workers):
    import timm
    import torch
    from torchvision.datasets import ImageFolder

    tf = timm.data.create_transform(**{k: cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")},
                                    is_training=True, scale=(0.6, 1.0), hflip=0.5, color_jitter=None)
    dl = torch.utils.data.DataLoader(ImageFolder(str(root), transform=tf), batch_size=batch, shuffle=True,
                                     num_workers=workers)
    out = []
    for _ in range(epochs):
        with Timer() as t:
            n = sum(x.shape[0] for x, _ in dl)
        out.append(n / t.s)
    return out


def ours_epochs(root, cfg, batch, epochs, cache, workers=None):
    from tlstudio.core.pipeline.loaders import build_loaders

    L = build_loaders(folder_split(root), cfg, batch_size=batch, augment="light", seed=0, device="cpu",
                      cache=cache, cache_budget_mb=2048, workers=workers)
    out = []
    for e in range(epochs):
        with Timer() as t:
            n = sum(x.shape[0] for x, _, _ in L.train_batches(e))
        out.append(n / t.s)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()
    per_class = (a.images or (128 if a.quick else 512)) // 4
    root = make_jpeg_folder("train", 4, per_class)
    cfg = _cfg(a.size)
    print_machine()
    print(f"# {4 * per_class} JPEGs 500x375 -> {a.size}px 'light' augmentation, batch {a.batch}; images/s per epoch")
    rows = {
        "timm DataLoader workers=0": timm_epochs(root, cfg, a.batch, a.epochs, 0),
        "timm DataLoader workers=2": timm_epochs(root, cfg, a.batch, a.epochs, 2),
        "tlstudio cache off (decode every epoch)": ours_epochs(root, cfg, a.batch, a.epochs, "off"),
        "tlstudio decoded cache (1 thread)": ours_epochs(root, cfg, a.batch, a.epochs, "auto", workers=1),
        "tlstudio decoded cache (auto threads)": ours_epochs(root, cfg, a.batch, a.epochs, "auto"),
    }
    print("| loader | epoch 1 | epochs 2.. (median) |")
    print("|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v[0]:.0f} | {median(v[1:]):.0f} |")
    warm = median(rows["tlstudio decoded cache (auto threads)"][1:])
    best_timm = max(median(rows["timm DataLoader workers=0"][1:]), median(rows["timm DataLoader workers=2"][1:]))
    ratios = {
        "cached_vs_decode_every_epoch_same_pipeline": round(warm / median(rows["tlstudio cache off (decode every epoch)"][1:]), 2),
        "cached_vs_best_timm_dataloader": round(warm / best_timm, 2),
        "threads_vs_1_thread_warm": round(warm / median(rows["tlstudio decoded cache (1 thread)"][1:]), 2),
    }
    for k, v in ratios.items():
        print(f"ratio {k}: {v}x")
    report("decoded_cache", ratios)


if __name__ == "__main__":
    main()
