"""PyInstaller runtime hook: let `import torchvision` (needed by timm) work in a CPU bundle whose
torchvision wheel was built against CUDA torch.

The PyPI torchvision wheel for Linux links its compiled ops (torchvision/_C) against CUDA
torch. Next to a CPU torch those ops cannot load; torchvision then still registers fake kernels
for `torchvision::nms`/`qnms` at import and crashes ("operator torchvision::nms does not exist").
When (and only when) the ops library cannot load, we declare those two op schemas so the import
succeeds; TL Studio never calls them (classification only). Runs lazily, on the first import of
torchvision, so the GUI still starts without importing torch. build.sh also installs it into the
build venv (as a .pth) so PyInstaller's analysis can import timm there.
"""

import importlib.abc
import os
import sys

_KEEP = []


def _prepare_torchvision() -> None:
    import torch

    roots = [sys._MEIPASS] if getattr(sys, "_MEIPASS", None) else [p for p in sys.path if p]
    base = next((os.path.join(r, "torchvision") for r in roots if os.path.isdir(os.path.join(r, "torchvision"))), "")
    libs = [f for f in os.listdir(base) if f.startswith("_C") and f.endswith((".so", ".pyd"))] if os.path.isdir(base) else []
    for f in libs:
        try:
            torch.ops.load_library(os.path.join(base, f))
            return  # the real ops are there: nothing to do
        except Exception:
            pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(lib)


class _TorchvisionShim(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            try:
                _prepare_torchvision()
            except Exception as exc:  # never block the import itself
                print(f"tlstudio: torchvision shim: {exc}", file=sys.stderr)
        return None


sys.meta_path.insert(0, _TorchvisionShim())
