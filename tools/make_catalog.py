"""Generate resources/model_catalog.json: family, parameter count, input size, pretrained flag
for every timm architecture, so the app never has to build 1,300 models at startup.

Parameter counts are computed on the meta device (no memory, no weights). Run once per timm
upgrade:  python tools/make_catalog.py [--only-pretrained] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only-pretrained", action="store_true", help="skip architectures without weights")
    ap.add_argument("--limit", type=int, default=0, help="first N names only (for testing)")
    ap.add_argument("--out", default=str(ROOT / "resources" / "model_catalog.json"))
    args = ap.parse_args(argv)

    import timm
    import torch

    from tlstudio.core.models.backbones import _default_input_size, family_of

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    pre = {n.split(".", 1)[0] for n in timm.list_pretrained()}
    names = [n for n in timm.list_models() if not args.only_pretrained or n in pre]
    if args.limit:
        names = names[: args.limit]
    models: dict[str, list] = {}
    failed: list[str] = []
    t0 = time.time()
    for i, name in enumerate(names):
        try:
            with torch.device("meta"):
                m = timm.create_model(name, pretrained=False)
            params = int(sum(p.numel() for p in m.parameters()))
            del m
        except Exception as exc:  # a few exotic models cannot be built on meta
            failed.append(f"{name}: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}")
            params = 0
        models[name] = [family_of(name), params, _default_input_size(name), name in pre]
        if (i + 1) % 100 == 0:
            print(f"{i + 1}/{len(names)} {time.time() - t0:.0f}s", flush=True)
    data = {
        "timm_version": timm.__version__,
        "generated": time.strftime("%Y-%m-%d"),
        "fields": ["family", "params", "input_size", "pretrained"],
        "models": models,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, separators=(",", ":"), sort_keys=False)
    out.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(text) / 1024:.0f} KiB, {len(models)} models, {len(failed)} without a count) "
          f"in {time.time() - t0:.0f}s")
    for f in failed:
        print("  no count:", f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
