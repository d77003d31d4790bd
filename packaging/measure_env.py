"""How big is a Python environment, and how much of it is CUDA that a CPU-only machine never uses?

    python packaging/measure_env.py [VENV ...]      (default: the running interpreter's prefix)

Prints the total, the CUDA part (NVIDIA wheels, triton, torch's CUDA libraries) and the largest
packages. build.sh prints it for the build venv; the README quotes its numbers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# the folders and library names that only a CUDA (GPU) torch needs
CUDA_DIRS = ("nvidia", "triton", "cuda", "cusparselt")  # site-packages folders (and cuda_* packages)
CUDA_LIB_MARKERS = ("cuda", "cudnn", "cublas", "cufft", "curand", "cusolver", "cusparse", "nccl", "nvrtc",
                    "nvjitlink", "nvshmem", "cupti", "nvtx", "caffe2_nvrtc")


def _bytes(path: Path) -> int:
    if path.is_symlink():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.stat(p).st_size
    return total


def _site_packages(prefix: Path) -> list[Path]:
    # lib64 is often a link to lib: count each real folder once
    return sorted({p.resolve() for p in prefix.glob("lib*/python*/site-packages") if p.is_dir()}
                  | {p.resolve() for p in prefix.glob("Lib/site-packages") if p.is_dir()})


def _is_cuda_package(name: str) -> bool:
    low = name.lower()
    return low in CUDA_DIRS or low.startswith(("nvidia_", "cuda_", "triton-", "triton_"))


def measure(prefix: str | os.PathLike) -> dict:
    """{'total': bytes, 'cuda': bytes, 'packages': {name: bytes}} for a venv (or any install prefix)."""
    prefix = Path(prefix)
    packages: dict[str, int] = {}
    cuda = 0
    for sp in _site_packages(prefix):
        for entry in sp.iterdir():
            if entry.name.endswith((".dist-info", ".egg-info")) or entry.name == "__pycache__":
                continue
            size = _bytes(entry)
            packages[entry.name] = packages.get(entry.name, 0) + size
            if _is_cuda_package(entry.name):
                cuda += size
        lib = sp / "torch" / "lib"  # a CUDA torch keeps libtorch_cuda.so & co. inside torch itself
        if lib.is_dir():
            cuda += sum(_bytes(f) for f in lib.iterdir()
                        if f.is_file() and any(m in f.name.lower() for m in CUDA_LIB_MARKERS))
    return {"total": _bytes(prefix), "cuda": cuda, "packages": packages}


def report(prefix: str | os.PathLike, top: int = 6) -> str:
    m = measure(prefix)
    mb = 1024 * 1024
    big = sorted(m["packages"].items(), key=lambda kv: -kv[1])[:top]
    share = 100 * m["cuda"] / m["total"] if m["total"] else 0.0
    lines = [f"{prefix}: {m['total'] / mb:,.0f} MB, of which GPU-only (CUDA, triton) {m['cuda'] / mb:,.0f} MB ({share:.0f}%)",
             "  largest: " + ", ".join(f"{n} {b / mb:,.0f} MB" for n, b in big)]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    for prefix in argv or [sys.prefix]:
        print(report(prefix), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
