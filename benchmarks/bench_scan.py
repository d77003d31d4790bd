"""Benchmark: scanning a folder of N small images (issue 5, benchmark 5).

Writes N unique 16x16 PNGs (one base image; a tEXt chunk with the index makes every file's
bytes unique while keeping all sizes equal, the worst case for duplicate hashing) into 10
class folders, then times `tlstudio.core.data.dataset.scan` with the default worker count and with
1 worker in the same run, and measures peak memory (tracemalloc peak of Python allocations in
a separate pass, since tracing slows the scan; and the process's peak RSS).

    python benchmarks/bench_scan.py            # 50,000 images
    python benchmarks/bench_scan.py --n 5000 --workers 8 --full-check
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import struct
import sys
import tempfile
import time
import tracemalloc
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tlstudio.core.data.dataset import scan  # noqa: E402
from tlstudio.core import probing  # noqa: E402
from tlstudio.core.data.probing import default_workers  # noqa: E402

N_CLASSES = 10


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def generate(root: Path, n: int) -> float:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (40, 120, 200)).save(buf, format="PNG")
    base = buf.getvalue()
    head, tail = base[:33], base[33:]  # signature + IHDR | IDAT + IEND
    t0 = time.perf_counter()
    dirs = [root / f"class_{c:02d}" for c in range(N_CLASSES)]
    for d in dirs:
        d.mkdir(parents=True)
    for i in range(n):
        data = head + _chunk(b"tEXt", b"id\0%09d" % i) + tail
        with open(dirs[i % N_CLASSES] / f"img_{i:06d}.png", "wb") as f:
            f.write(data)
    return time.perf_counter() - t0


def rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 1024 / 1024


def timed_scan(root: Path, workers: int, full: bool) -> tuple[float, int]:
    # a scan remembers the usable files it probed (the next scan of the same folder in this
    # process skips them): forget them, so every timed scan probes every file
    probing._probe_memo.clear()
    t0 = time.perf_counter()
    r = scan(root, workers=workers, full_check=full)
    dt = time.perf_counter() - t0
    assert not r.skipped, r.skipped[:3]
    return dt, len(r.samples)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="number of images (default 50,000)")
    ap.add_argument("--workers", type=int, default=None, help="parallel workers (default: one process per core for header checks, two threads per core for --full-check)")
    ap.add_argument("--full-check", action="store_true", help="decode every image instead of header checks")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the images (default: a temp dir)")
    a = ap.parse_args(argv)
    workers = a.workers or default_workers(a.full_check)

    tmp = Path(tempfile.mkdtemp(prefix="tlstudio_bench_scan_", dir=a.dir))
    try:
        gen = generate(tmp / "ds", a.n)
        print(f"generated {a.n:,} images of 16x16 px in {gen:.1f} s ({tmp})")
        print(f"machine: {os.cpu_count()} logical CPUs, python {sys.version.split()[0]}; mode: "
              f"{'full decode' if a.full_check else 'header check'}")
        rss0 = rss_mb()
        # parallel, then serial, then parallel again; best parallel time counts (page cache warm for all)
        t_par1, n = timed_scan(tmp / "ds", workers, a.full_check)
        t_ser, _ = timed_scan(tmp / "ds", 1, a.full_check)
        t_par2, _ = timed_scan(tmp / "ds", workers, a.full_check)
        t_par = min(t_par1, t_par2)
        rss1 = rss_mb()
        tracemalloc.start()
        timed_scan(tmp / "ds", workers, a.full_check)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"scan, {workers} workers : {t_par:7.2f} s  {n / t_par:9,.0f} images/s")
        print(f"scan, 1 worker   : {t_ser:7.2f} s  {n / t_ser:9,.0f} images/s")
        print(f"parallel / serial speed-up: {t_ser / t_par:.2f}x")
        print(f"peak Python heap during scan (tracemalloc): {peak / 2**20:.1f} MB ({peak / n:.0f} B/image)")
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KB on Linux
        print(f"process peak RSS: {rss1:.0f} MB (before scans {rss0:.0f} MB); largest worker process: {child:.0f} MB")
        print("RESULT " + json.dumps({"bench": "scan", "ratios": {
            "images_per_s": round(n / t_par), "parallel_vs_serial": round(t_ser / t_par, 2)},
            "peak_rss_mb": round(rss1), "worker_peak_rss_mb": round(child), "workers": workers}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
