"""Benchmark 7 (issue 18): training speed while other programs keep the CPU busy.

TL Studio's training (``engine.fit``: resnet18 from scratch, every layer, batch 32, on generated
JPEGs) and a bare fp32 PyTorch loop run one after the other at each image size while N
competing busy-loop processes, started and bounded in time by this script, keep the cores
busy. Two numbers per loop: training img/s (the epochs: TL Studio from RunStarted to the last
epoch's end, its validation and checkpoints included) and end to end img/s (model creation and
everything else included, so TL Studio's set-up - scan, thread and precision choice, final
evaluation - counts against it). Imports are done before any timing.

- bare (default threads): torchvision ImageFolder + timm's training transform + DataLoader
  (workers=2), fp32, NCHW, torch's default thread count: the tutorial loop (benchmark 1's).
- bare (1 thread): the same loop with torch.set_num_threads(1) and workers=0: the hand-tuned
  loop the issue measured (21-28 img/s at 32 px under load, against TL Studio's 3-4).

    python benchmarks/bench_contention.py                       # 32,64,112,224 px, 2 busy loops
    python benchmarks/bench_contention.py --sizes 32,64 --compete 0   # quiet-machine control
    python benchmarks/bench_contention.py --quick               # 32 and 64 px, fewer images
    python benchmarks/bench_contention.py --images 32:2000,64:2000,112:2000,224:400
                                          # the issue's scale (2,000 images, 2 epochs): set-up amortised

Prints images/s per loop and the ratios TL Studio / bare at each size, with the load average
before and after each measurement (the machine may be shared by other work as well).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from contextlib import contextmanager

from common import cpu_seconds, make_jpeg_folder, print_machine, report


def _busy(deadline: float) -> None:
    x = 0
    while time.time() < deadline:
        for _ in range(20000):
            x += 1


@contextmanager
def competition(n: int, seconds: float):
    """n CPU-bound processes, each ending by itself after `seconds` at the latest."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_busy, args=(time.time() + seconds,), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        if n:
            time.sleep(1.0)  # let them spin up
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(5)


def load() -> str:
    return "%.1f" % os.getloadavg()[0]


def bare(root, size: int, batch: int, epochs: int, threads: int | None, workers: int,
         max_s: float = float("inf"), model_name: str = "resnet18") -> tuple[float, float, str]:
    """(end-to-end img/s with model creation, training img/s of the epochs, note) of the bare fp32 loop."""
    import timm
    import torch
    from torchvision.datasets import ImageFolder

    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        model = timm.create_model(model_name, pretrained=False, num_classes=4)
        cfg = dict(timm.data.resolve_model_data_config(model))
        cfg["input_size"] = (3, size, size)
        tf = timm.data.create_transform(**{k: cfg[k] for k in ("input_size", "interpolation", "mean", "std",
                                                              "crop_pct")},
                                        is_training=True, scale=(0.6, 1.0), hflip=0.5, color_jitter=None)
        dl = torch.utils.data.DataLoader(ImageFolder(str(root), transform=tf), batch_size=batch, shuffle=True,
                                         num_workers=workers)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()
        n = 0
        t1 = time.perf_counter()
        capped = False
        for _ in range(epochs):
            for x, y in dl:
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                n += x.shape[0]
                if time.perf_counter() - t1 > max_s:
                    capped = True
                    break
            if capped:
                break
        t2 = time.perf_counter()
        note = f"{torch.get_num_threads()} threads, DataLoader workers={workers}"
        if capped:
            note += f"; stopped after {n} images ({max_s:.0f} s cap)"
        return n / (t2 - t0), n / (t2 - t1), note
    finally:
        torch.set_num_threads(saved)


def tlstudio(root, size: int, batch: int, epochs: int, val_fraction: float, model_name: str = "resnet18",
             micro: int | None = None) -> tuple[float, float, str, list[str]]:
    """(end-to-end img/s: scan, model, thread/precision/micro-batch choice, epochs with validation,
    final evaluation; training img/s: RunStarted to the last epoch's end, validation included;
    note; log lines). `micro`: TrainConfig.micro_batch (None: measured by the engine)."""
    import torch

    from tlstudio.core.config import TrainConfig
    from tlstudio.core.events import EpochEnd, Log, RunStarted
    from tlstudio.core.training.engine import fit

    saved = torch.get_num_threads()
    logs: list[str] = []
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(data_dir=str(root), backbone=model_name, init="scratch", freeze="none", epochs=epochs,
                          batch_size=batch, image_size=size, augment="light", out_dir=out + "/run",
                          val_fraction=val_fraction, early_stop_patience=None, lr=1e-3, micro_batch=micro)
        t0 = time.perf_counter()
        t_run = t_last = t0
        n_train, done = 0, 0
        try:
            for ev in fit(cfg):
                if isinstance(ev, RunStarted):
                    n_train = ev.n_train
                    t_run = time.perf_counter()
                elif isinstance(ev, EpochEnd):
                    done += n_train
                    t_last = time.perf_counter()
                elif isinstance(ev, Log) and ("thread" in ev.message or " px" in ev.message):
                    logs.append(ev.message)
        finally:
            torch.set_num_threads(saved)
        dt = time.perf_counter() - t0
    return done / dt, done / max(1e-9, t_last - t_run), f"{n_train} train images", logs


def warm_imports() -> None:
    """Import everything both loops use before any timing: imports are not training speed."""
    import timm  # noqa: F401
    import torchvision.datasets  # noqa: F401

    import tlstudio.core.training.engine  # noqa: F401
    from tlstudio.core.models import backbones  # noqa: F401
    from tlstudio.core.pipeline import loaders  # noqa: F401


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="32,64,112,224")
    ap.add_argument("--compete", type=int, default=2, help="busy-loop processes (0 = quiet control)")
    ap.add_argument("--images", default="32:384,64:256,112:128,224:96",
                    help="images per size (size:count,...); 4 classes")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bare", default="default,1", help="bare loops to run: default (torch threads, workers=2), 1")
    ap.add_argument("--quick", action="store_true", help="32 and 64 px, half the images, 1 epoch")
    ap.add_argument("--model", default="resnet18", help="timm model of every loop (e.g. tf_efficientnet_lite0)")
    ap.add_argument("--micro-ab", action="store_true",
                    help="also run TL Studio with whole batches (micro_batch=0) first: before/after in one run")
    ap.add_argument("--micro-forced", type=int, default=8,
                    help="with --micro-ab, also a TL Studio run with micro-batches of this size set (0: none)")
    ap.add_argument("--max-s", type=float, default=3600, help="competition stops after this many seconds at most")
    ap.add_argument("--bare-max-s", type=float, default=240,
                    help="a bare loop stops after this many seconds of training (img/s from what it did)")
    a = ap.parse_args()
    sizes = [int(s) for s in ("32,64" if a.quick else a.sizes).split(",")]
    counts = {int(k): int(v) for k, v in (kv.split(":") for kv in a.images.split(","))}
    epochs = 1 if a.quick else a.epochs
    import torch

    warm_imports()
    print_machine()
    print(f"# {a.model} from scratch, every layer trains, batch {a.batch}, {epochs} epochs, "
          f"{a.compete} competing busy-loop processes; torch default threads {torch.get_num_threads()}")
    print("| size | loop | training img/s | end to end img/s | CPU s per image | load avg before/after | notes |")
    print("|---|---|---|---|---|---|---|")
    ratios: dict[str, float] = {}
    with competition(a.compete, a.max_s):
        for size in sizes:
            n = counts.get(size, 128) // (2 if a.quick else 1)
            side = max(48, int(size * 1.4))
            root = make_jpeg_folder(f"contention{size}", 4, max(2, n // 4), size=(side, side))
            rows = {}
            kinds = (["tlstudio-whole"] + ([f"tlstudio-micro{a.micro_forced}"] if a.micro_forced else [])
                     if a.micro_ab else []) + ["tlstudio"]
            for kind in kinds + [f"bare-{b}" for b in a.bare.split(",") if b]:
                before, c0 = load(), cpu_seconds()
                if kind.startswith("tlstudio"):
                    micro = None if kind == "tlstudio" else 0 if kind == "tlstudio-whole" else a.micro_forced
                    e2e, train, note, logs = tlstudio(root, size, a.batch, epochs, 0.125, a.model, micro)
                    note += "; log: " + " | ".join(logs)
                    done = int(note.split()[0]) * epochs
                else:
                    th = None if kind == "bare-default" else int(kind.split("-")[1])
                    e2e, train, note = bare(root, size, a.batch, epochs, th, 2 if th is None else 0, a.bare_max_s,
                                            a.model)
                    done = int(note.split("stopped after ")[1].split()[0]) if "stopped after" in note \
                        else len(list(root.rglob("*.jpg"))) * epochs
                cpu = (cpu_seconds() - c0) / max(1, done)
                rows[kind] = (train, e2e)
                print(f"| {size} | {kind} | {train:.2f} | {e2e:.2f} | {cpu:.3f} | {before}/{load()} | {note} |",
                      flush=True)
            ours = rows["tlstudio"]
            for kind, v in rows.items():
                if kind != "tlstudio" and v[0] > 0:
                    ratios[f"{size}px_train_vs_{kind}"] = round(ours[0] / v[0], 2)
                    ratios[f"{size}px_e2e_vs_{kind}"] = round(ours[1] / v[1], 2)
                    print(f"ratio {size} px TL Studio / {kind}: training {ours[0] / v[0]:.2f}x, "
                          f"end to end {ours[1] / v[1]:.2f}x", flush=True)
    report("contention", ratios, {"compete": a.compete, "load_end": load()})


if __name__ == "__main__":
    main()
