"""Smoke-test a built bundle:  python packaging/smoke_test.py dist/tlstudio

Starts the frozen executable several times, offscreen, with a throw-away TLSTUDIO_HOME:
  --version      the interpreter, torch and the bundled resources load
  --mp-check     multiprocessing ("spawn" workers) works in the frozen app
  scan SAMPLE    the CLI runs on the bundled sample data set
  train, export  one tiny training epoch on the sample, then ONNX/TorchScript/int8 exports
  --smoke-test   the main window opens, loads the bundled sample, prints "SMOKE OK <classes> <images>"
Prints one line per check and the bundle size; exit code 0 only if every check passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


PROCESS_SCAN_FILES = 10_000  # tlstudio.core.data.probing.PROCESS_SCAN_MIN: from here scans use processes


def _tiny_pngs(root: Path, n: int) -> Path:
    """n distinct 8x8 PNGs in 2 class folders (a few seconds)."""
    from PIL import Image

    for i in range(n):
        d = root / f"class_{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, 7)).save(d / f"{i:05d}.png")
    return root


def run_checks(dist: Path, timeout: float = 600) -> list[tuple[str, bool, str]]:
    dist = Path(dist).resolve()
    exe = dist / ("tlstudio.exe" if os.name == "nt" else "tlstudio")
    if not exe.exists():
        return [("bundle exists", False, f"{exe} not found")]
    sample = next((p for p in (dist / "_internal" / "resources" / "sample", dist / "resources" / "sample")
                   if p.is_dir()), None)
    checks: list[tuple[str, list[str], str]] = [
        ("version", ["--version"], "TL Studio"),
        ("multiprocessing", ["--mp-check"], "MP OK"),
    ]
    results = []
    with tempfile.TemporaryDirectory() as home:
        if sample is not None:
            run = str(Path(home) / "run")
            checks += [
                ("cli scan of the bundled sample", ["scan", str(sample)], ""),
                # torch + timm + the data pipeline inside the bundle: one tiny epoch, then the exports
                ("cli train (1 epoch, test_resnet, 48 px)",
                 ["train", str(sample), "--backbone", "test_resnet", "--scratch", "--epochs", "1",
                  "--image-size", "48", "--out", run], "finished"),
                ("cli export (onnx, torchscript, int8, card)",
                 ["export", run, "--format", "onnx", "--format", "torchscript", "--format", "int8"],
                 "max abs diff"),
            ]
        # big folders are scanned in spawned worker processes: they must start inside the bundle
        many = _tiny_pngs(Path(home) / "many", PROCESS_SCAN_FILES)
        checks.append((f"cli scan of {PROCESS_SCAN_FILES:,} images (worker processes)", ["scan", str(many)],
                       f"{PROCESS_SCAN_FILES} images"))
        checks.append(("GUI smoke test (offscreen)", ["--smoke-test"], "SMOKE OK"))
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen", TLSTUDIO_HOME=home, HF_HUB_OFFLINE="1")
        env.pop("PYTHONPATH", None)
        for name, args, expect in checks:
            if name.startswith("GUI"):
                env["TLSTUDIO_SMOKE"] = "1"
            t0 = time.time()
            try:
                p = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                                   env=env, cwd=home)
                out = (p.stdout or "") + (p.stderr or "")
                ok = p.returncode == 0 and (expect in out)
                line = next((ln for ln in out.splitlines() if expect and expect in ln), "")
                detail = f"exit {p.returncode}, {time.time() - t0:.1f} s" + (f": {line.strip()}" if line else "")
                if not ok:
                    detail += "\n    " + "\n    ".join(out.strip().splitlines()[-15:])
            except subprocess.TimeoutExpired:
                ok, detail = False, f"timed out after {timeout:.0f} s"
            results.append((name, ok, detail))
    return results


def main(argv: list[str]) -> int:
    dist = Path(argv[0] if argv else "dist/tlstudio").resolve()
    results = run_checks(dist)
    for name, ok, detail in results:
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if dist.exists():
        print(f"bundle size: {_size(dist) / 1e6:.0f} MB ({dist})")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
