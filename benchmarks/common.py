"""Shared benchmark helpers: machine description, benchmark data, timing, peak memory.

Benchmarks print ratios measured in the same run (A and B interleaved, medians), never
absolute targets; the machine is shared, so absolute numbers drift but ratios hold.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a fresh clone without installing
    sys.path.insert(0, str(ROOT))

DATA_ROOT = Path(os.environ.get("TLSTUDIO_BENCH_DATA", "/tmp/tlstudio_bench"))


def machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from tlstudio.core.runtime.precision import available_cores, cpu_flags, cpu_has_fast_bf16

    flags = sorted(f for f in cpu_flags() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"))
    mem = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.1f} GB"
    except OSError:
        pass
    return {"cpu": cpu, "cores": available_cores(), "flags": flags, "fast_bf16": cpu_has_fast_bf16(), "ram": mem,
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def print_machine() -> None:
    m = machine()
    print(f"# machine: {m['cpu']}, {m['cores']} cores, flags {','.join(m['flags'])}, RAM {m['ram']}, "
          f"torch {m['torch']}, python {m['python']}" + (f", GPU {m['cuda']}" if m["cuda"] else "")
          + f"; load average {os.getloadavg()[0]:.1f} (shared machine)")


def make_jpeg_folder(name: str, n_classes: int = 4, per_class: int = 32, size: tuple[int, int] = (500, 375),
                     quality: int = 90, seed: int = 0) -> Path:
    """Class folders of JPEG photos-sized synthetic images (ImageNet-like 500x375), cached on disk."""
    from tlstudio.core.data.synthetic import SHAPES, make_image

    root = DATA_ROOT / f"{name}_{n_classes}x{per_class}_{size[0]}x{size[1]}_q{quality}"
    marker = root / ".complete"
    if marker.exists():
        return root
    rng = random.Random(seed)
    side = max(size)
    for c in range(n_classes):
        shape = SHAPES[c % len(SHAPES)]
        d = root / f"class_{c}_{shape}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = make_image(shape, side, rng)
            left, top = (side - size[0]) // 2, (side - size[1]) // 2
            img.crop((left, top, left + size[0], top + size[1])).save(d / f"{i:05d}.jpg", quality=quality)
    marker.write_text("ok")
    return root


@dataclass
class Sample:
    path: str
    label: int


@dataclass
class Split:
    train: list
    val: list
    test: list


def folder_split(root: Path, val_every: int = 0) -> Split:
    """Every image to train (val_every=0) or every k-th to val; uses tlstudio's scan if present."""
    files = sorted(str(p) for p in Path(root).rglob("*.jpg"))
    classes = sorted({Path(f).parent.name for f in files})
    samples = [Sample(f, classes.index(Path(f).parent.name)) for f in files]
    if not val_every:
        return Split(samples, [], [])
    return Split([s for i, s in enumerate(samples) if i % val_every], samples[::val_every], [])


def timm_data_cfg(model, size: int = 224) -> dict:
    import timm

    cfg = dict(timm.data.resolve_model_data_config(model))
    cfg["input_size"] = (3, size, size)
    return cfg


def median(xs) -> float:
    return float(statistics.median(xs))


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its finished children (DataLoader workers)."""
    import resource

    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class Timer:
    """Wall time `s` and CPU time `cpu` (process + finished children) of a block. On a shared,
    overloaded machine wall time measures the share we got; CPU time the work done."""

    def __enter__(self):
        self.t = time.perf_counter()
        self.c = cpu_seconds()
        return self

    def __exit__(self, *a):
        self.s = time.perf_counter() - self.t
        self.cpu = cpu_seconds() - self.c


def peak_rss_mb() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="utf-8") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def report(name: str, ratios: dict[str, float], extra: dict | None = None) -> None:
    """Last line of every benchmark: machine-readable, parsed by run_all.py."""
    print("RESULT " + json.dumps({"bench": name, "ratios": ratios, **(extra or {})}))
