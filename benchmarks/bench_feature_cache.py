"""Benchmark 2: head-only training, epochs 2..N on cached features vs a full forward every epoch.

Body frozen, only the classifier trains (the "head" freeze preset). Per-epoch wall time of
- bare:      fp32 hand-written loop, DataLoader (workers=2) decoding JPEGs, full forward
             (body under no_grad), backward through the head only;
- uncached:  tlstudio pipeline (decoded cache) + bf16/channels_last full forward under
             inference_mode for the body, every epoch;
- cached:    tlstudio FeatureCache: features computed once (reported as its build time), then
             every epoch trains the head on [B, D] feature batches.
The headline ratio compares a cached epoch (2..N) with a full-forward epoch.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from common import Timer, folder_split, make_jpeg_folder, median, print_machine, report, timm_data_cfg


def _model(name, size):
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=4)


def bare_epoch_times(name, root, size, batch, epochs, workers):
    import timm
    import torch
    from torchvision.datasets import ImageFolder

    model = _model(name, size)
    cfg = timm_data_cfg(model, size)
    tf = timm.data.create_transform(**{k: cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")},
                                    is_training=True, scale=(0.6, 1.0), hflip=0.5, color_jitter=None)
    dl = torch.utils.data.DataLoader(ImageFolder(str(root), transform=tf), batch_size=batch, shuffle=True,
                                     num_workers=workers)
    head = model.get_classifier()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    model.eval()
    out = []
    for _ in range(epochs):
        with Timer() as t:
            for x, y in dl:
                with torch.no_grad():
                    f = model.forward_head(model.forward_features(x), pre_logits=True)
                loss = torch.nn.functional.cross_entropy(head(f), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        out.append(t.s)
    return out


def uncached_epoch_times(name, root, size, batch, epochs):
    import torch

    from tlstudio.core.pipeline.feature_cache import extract_features, head_module
    from tlstudio.core.pipeline.loaders import build_loaders
    from tlstudio.core.runtime.precision import choose_precision, set_threads

    set_threads(False)
    model = _model(name, size)
    cfg = timm_data_cfg(model, size)
    plan = choose_precision(torch.device("cpu"), model)
    plan.prepare_model(model)
    model.eval()
    head = head_module(model)
    loaders = build_loaders(folder_split(root), cfg, batch_size=batch, augment="light", seed=0, device="cpu")
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    out = []
    for e in range(epochs):
        with Timer() as t:
            for x, y, _ in loaders.train_batches(e):
                with torch.inference_mode(), plan.autocast():
                    f = extract_features(model, plan.prepare_input(x))
                loss = torch.nn.functional.cross_entropy(head(f.float().clone()), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        out.append(t.s)
    return out, plan.describe()


def cached_epoch_times(name, root, size, batch, epochs):
    import torch

    from tlstudio.core.pipeline.feature_cache import FeatureCache, head_module
    from tlstudio.core.runtime.precision import choose_precision, set_threads

    set_threads(False)
    model = _model(name, size)
    cfg = timm_data_cfg(model, size)
    plan = choose_precision(torch.device("cpu"), model)
    plan.prepare_model(model)
    from tlstudio.core.pipeline.feature_cache import DEFAULT_VIEWS

    # as engine.fit does: one augmented view per epoch, at most DEFAULT_VIEWS
    fc = FeatureCache(model, folder_split(root), cfg, batch_size=batch, augment="light", seed=0,
                      views=min(DEFAULT_VIEWS, epochs), budget_mb=512, device="cpu", precision=plan,
                      model_key=f"bench|{name}")
    with Timer() as tb:
        gen = fc.prepare()
        try:
            while True:
                next(gen)
        except StopIteration as e:
            loaders = e.value
    head = head_module(model)
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    out = []
    for e in range(epochs):
        with Timer() as t:
            for f, y, _ in loaders.train_batches(e):
                loss = torch.nn.functional.cross_entropy(head(f), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        out.append(t.s)
    return tb.s, out, fc.views


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    per_class = (a.images or (64 if a.quick else 256)) // 4
    epochs = 3 if a.quick else a.epochs
    root = make_jpeg_folder("train", 4, per_class)
    os.environ.setdefault("TLSTUDIO_HOME", tempfile.mkdtemp(prefix="tls_bench_home_"))  # fresh feature cache
    print_machine()
    n = 4 * per_class
    print(f"# head-only {a.model}, {n} JPEGs, batch {a.batch}, {a.size}px, {epochs} epochs")
    bare = bare_epoch_times(a.model, root, a.size, a.batch, epochs, a.workers)
    unc, how = uncached_epoch_times(a.model, root, a.size, a.batch, epochs)
    build, cached, views = cached_epoch_times(a.model, root, a.size, a.batch, epochs)
    print("| path | epoch 1 s | epochs 2..N s/epoch (median) |")
    print("|---|---|---|")
    print(f"| bare fp32, full forward every epoch | {bare[0]:.2f} | {median(bare[1:]):.3f} |")
    print(f"| tlstudio uncached ({how}) | {unc[0]:.2f} | {median(unc[1:]):.3f} |")
    print(f"| tlstudio feature cache ({views} views; build, then head only) | {build:.2f} (build) + {cached[0]:.4f} "
          f"| {median(cached[1:]):.4f} |")
    c = median(cached[1:])
    ratios = {"vs_bare_per_epoch": round(median(bare[1:]) / c, 1),
              "vs_uncached_tlstudio_per_epoch": round(median(unc[1:]) / c, 1),
              "build_vs_bare_epoch1": round(bare[0] / build, 2)}
    for k, v in ratios.items():
        print(f"ratio {k}: {v}x")
    report("feature_cache", ratios)


if __name__ == "__main__":
    main()
