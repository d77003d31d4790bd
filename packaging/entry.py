"""Entry point of the frozen (PyInstaller) app: GUI by default, the CLI with subcommands.

Extra flags only the bundle needs:
  --smoke-test   open the main window on the bundled sample, print "SMOKE OK <classes> <images>"
                 and exit 0 (sets TLSTUDIO_SMOKE=1, which tlstudio.gui.app honours)
  --mp-check     start worker processes with the "spawn" method and print "MP OK <n>": proves
                 multiprocessing works inside the frozen app (freeze_support below)
  --version      print versions and the bundled resources folder
"""

from __future__ import annotations

import multiprocessing
import os
import sys


def _square(x: int) -> int:
    return x * x


def _mp_check() -> int:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        out = pool.map(_square, range(8))
    ok = out == [i * i for i in range(8)]
    print(f"MP {'OK' if ok else 'FAILED'} {len(out)}", flush=True)
    return 0 if ok else 1


def _version() -> int:
    import tlstudio
    from tlstudio.core.paths import resources_dir

    try:
        import torch

        torch_v = torch.__version__
    except Exception as exc:  # a broken bundle: say so instead of a traceback
        torch_v = f"unavailable ({exc})"
    print(f"TL Studio {tlstudio.__version__} torch {torch_v} resources {resources_dir()}", flush=True)
    return 0


def main() -> int:
    multiprocessing.freeze_support()  # children of a frozen app re-enter here; must come first
    argv = sys.argv[1:]
    if "--mp-check" in argv:
        return _mp_check()
    if "--version" in argv:
        return _version()
    if "--smoke-test" in argv:
        os.environ["TLSTUDIO_SMOKE"] = "1"
        argv = [a for a in argv if a != "--smoke-test"]
        if not argv:
            argv = ["gui", "--sample"]
    from tlstudio.__main__ import main as tl_main

    return tl_main(argv)


if __name__ == "__main__":
    sys.exit(main())
