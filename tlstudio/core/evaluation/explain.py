"""What is the model looking at? Class activation maps for trained runs.

Methods (Selvaraju et al. 2017; Chattopadhay et al. 2018; Muhammad & Yeasin 2020):
  gradcam    ReLU(sum_c w_c A_c), w_c = mean over positions of d score / d A_c
  gradcam++  w_c = sum over positions of alpha * ReLU(grad), alpha from 2nd/3rd powers of the gradient
  eigencam   first principal component of the activations (no gradient, class-agnostic)
The target layer is the body's last stage: the output of timm's ``forward_features`` (for a CNN
the last block + final conv/norm, the layer group just before the head; for a ViT the last
block's tokens without the class token, reshaped to the patch grid, as pytorch-grad-cam does
for transformers). Works for any timm model whose body ends in a spatial map or a token grid.

The image goes through the run's own eval transform (the one Predict uses: short side resize,
centre crop), so the map explains the very prediction the user sees; the map is then placed
back on the crop's box in the full picture (pixels the model never saw are NaN: drawn
transparent). Maps are float32 in [0, 1]. ``write_overlay`` blends one over the picture into a PNG.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlstudio.core.errors import UserError

METHODS = ("gradcam", "gradcam++", "eigencam")
MAP_MAX_SIDE = 384  # resolution of returned maps (the viewer stretches them smoothly)

# "turbo"-like ramp: low = dark blue, high = dark red (the GUI overlay uses the same anchors)
_ANCHORS = np.array([
    [48, 18, 59], [65, 69, 171], [70, 117, 237], [57, 162, 252], [27, 207, 212],
    [36, 236, 166], [97, 252, 108], [164, 252, 59], [209, 232, 52], [243, 198, 58],
    [254, 155, 45], [243, 99, 21], [217, 56, 6], [177, 26, 1], [122, 4, 3],
], dtype=np.float32)


class ExplainError(UserError):
    """The model or image cannot be explained (unknown class, no spatial features...)."""


def colormap_lut(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 colour table from low (dark blue) to high (dark red)."""
    x = np.linspace(0, len(_ANCHORS) - 1, n)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, len(_ANCHORS) - 1)
    t = (x - lo)[:, None]
    return np.round(_ANCHORS[lo] * (1 - t) + _ANCHORS[hi] * t).astype(np.uint8)


@dataclass
class Explanation:
    path: str
    heatmap: np.ndarray | None  # HxW float32 in [0, 1] (NaN: outside the crop), the picture's aspect; None on error
    class_index: int = -1
    class_name: str = ""
    prob: float = 0.0  # the model's probability for that class
    predicted: str = ""  # the model's top class
    top: list[tuple[str, float]] = field(default_factory=list)
    method: str = "gradcam"
    layer: str = ""
    error: str = ""


# ---------------------------------------------------------------- maps from a model


def target_description(model: Any) -> str:
    """Human name of the layer the maps come from (the last body group of tlstudio's layer groups)."""
    try:
        from tlstudio.core.models.layers import layer_groups

        body = [g for g in layer_groups(model) if not g.is_head]
        if body:
            return f"{body[-1].name}: the last stage before the head"
    except Exception:  # a model layer_groups does not understand: the generic name is fine
        pass
    return "forward_features: the last stage before the head"


def _as_nchw(feats: Any, model: Any):
    """Body output -> (B, C, H, W); tokens reshaped to the patch grid, NHWC permuted."""
    from tlstudio.core.models.features import FeatureError, _tokens_to_map

    if feats.ndim == 3:
        try:
            return _tokens_to_map(feats, model)
        except FeatureError as exc:
            raise ExplainError(f"{type(model).__name__}: {exc}") from exc
    if feats.ndim != 4:
        raise ExplainError(f"{type(model).__name__}: the body gives no spatial map to explain (shape {tuple(feats.shape)})")
    n_feat = int(getattr(model, "num_features", 0) or 0)
    if n_feat and feats.shape[-1] == n_feat and feats.shape[1] != n_feat:  # NHWC (Swin, ConvNeXt-V2 some)
        return feats.permute(0, 3, 1, 2)
    return feats


def _normalise(cam: np.ndarray) -> np.ndarray:
    out = np.zeros_like(cam, dtype=np.float32)
    for i, c in enumerate(cam):
        lo, hi = float(c.min()), float(c.max())
        if hi - lo > 1e-12:
            out[i] = (c - lo) / (hi - lo)
    return out


def cam_maps(model: Any, x: Any, class_index: int | Sequence[int] | None = None, method: str = "gradcam"
             ) -> tuple[np.ndarray, np.ndarray]:
    """(maps [B, h, w] in [0, 1] at the feature resolution, logits [B, K]) for a batch x.

    class_index: one class for all, one per image, or None = each image's predicted class.
    """
    import torch

    if method not in METHODS:
        raise ExplainError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    model.eval()
    with torch.enable_grad():
        # the input asks for a graph (parameters may be frozen); gradients are then taken with
        # respect to the body's output only, so nothing flows back through the body
        x = x.detach().float().requires_grad_(method != "eigencam")
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        if isinstance(logits, dict):  # several heads: explain the first task
            logits = next(iter(logits.values()))
        b = logits.shape[0]
        if class_index is None:
            idx = logits.argmax(1)
        elif isinstance(class_index, int):
            idx = torch.full((b,), int(class_index), dtype=torch.long)
        else:
            idx = torch.as_tensor(list(class_index), dtype=torch.long)
        if idx.max() >= logits.shape[1] or idx.min() < 0:
            raise ExplainError(f"class index out of range (the model has {logits.shape[1]} classes)")
        acts = _as_nchw(feats, model)
        if method == "eigencam":
            a = acts.detach().float()
            flat = a.flatten(2).transpose(1, 2)  # B, HW, C
            flat = flat - flat.mean(1, keepdim=True)
            _, _, vh = torch.linalg.svd(flat, full_matrices=False)
            proj = (flat @ vh[:, 0, :, None]).squeeze(-1)  # B, HW
            mean_act = a.mean(1).flatten(1)
            sign = torch.sign((proj * (mean_act - mean_act.mean(1, keepdim=True))).sum(1, keepdim=True))
            cam = (proj * torch.where(sign == 0, torch.ones_like(sign), sign)).clamp_min(0)
            cam = cam.reshape(a.shape[0], a.shape[2], a.shape[3])
        else:
            score = logits.gather(1, idx[:, None]).sum()
            (grad,) = torch.autograd.grad(score, feats)
            grads = _as_nchw(grad, model).float()
            a = acts.detach().float()
            if method == "gradcam":
                w = grads.mean((2, 3), keepdim=True)
            else:  # gradcam++
                g2, g3 = grads**2, grads**3
                denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g3
                alpha = torch.where(grads != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                                    torch.zeros_like(grads))
                w = (alpha * grads.clamp_min(0)).sum((2, 3), keepdim=True)
            cam = (w * a).sum(1).clamp_min(0)
        maps = _normalise(cam.detach().cpu().numpy())
    return maps, logits.detach().float().cpu().numpy()


# ---------------------------------------------------------------- geometry: crop box -> picture


def crop_box(width: int, height: int, spec: Any) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in the original picture of what the eval transform keeps."""
    size = int(spec.image_size)
    scale = math.floor(size / float(spec.crop_pct))
    if getattr(spec, "crop_mode", "center") == "squash":
        sx, sy = width / scale, height / scale
        off = (scale - size) / 2.0
        return (off * sx, off * sy, (off + size) * sx, (off + size) * sy)
    if width <= height:
        nw, nh = scale, int(scale * height / width)
    else:
        nw, nh = int(scale * width / height), scale
    f = width / nw  # original pixels per resized pixel
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    box = (left * f, top * f, (left + size) * f, (top + size) * f)
    return (max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3]))


def place_on_picture(cam: np.ndarray, width: int, height: int, spec: Any, max_side: int = MAP_MAX_SIDE) -> np.ndarray:
    """A map at the crop's resolution placed on a (downscaled) canvas of the whole picture;
    NaN where the model saw nothing (outside the centre crop)."""
    from PIL import Image

    s = min(1.0, max_side / max(width, height))
    cw, ch = max(1, round(width * s)), max(1, round(height * s))
    l, t, r, b = (v * s for v in crop_box(width, height, spec))
    bw, bh = max(1, round(r - l)), max(1, round(b - t))
    up = np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize((bw, bh), Image.BILINEAR))
    canvas = np.full((ch, cw), np.nan, np.float32)
    x0, y0 = int(round(l)), int(round(t))
    hh, ww = min(bh, ch - y0), min(bw, cw - x0)
    canvas[y0:y0 + hh, x0:x0 + ww] = np.clip(up[:hh, :ww], 0.0, 1.0)
    return canvas


# ---------------------------------------------------------------- runs and files


class Explainer:
    """A loaded model + spec that explains images one batch at a time (reuse it for a gallery)."""

    def __init__(self, model: Any, spec: Any, method: str = "gradcam", device: str = "cpu") -> None:
        import torch

        if method not in METHODS:
            raise ExplainError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
        self.model = model.eval().float().to(torch.device(device))
        self.spec = spec
        self.method = method
        self.device = torch.device(device)
        self.layer = target_description(model)
        for p in self.model.parameters():  # gradients are needed for the activations only
            p.requires_grad_(False)

    @classmethod
    def from_run(cls, run_dir: str | Path, method: str = "gradcam", device: str = "cpu") -> Explainer:
        from tlstudio.core.models.run_model import load_run_model

        model, info = load_run_model(run_dir)
        return cls(model, info.model, method=method, device=device)

    def class_index(self, name: str | int | None) -> int | None:
        if name is None or name == "":
            return None
        if isinstance(name, int):
            return name
        classes = list(self.spec.classes)
        if name not in classes:
            raise ExplainError(f"unknown class {name!r}; the model's classes are: {', '.join(classes)}")
        return classes.index(name)

    def explain(self, paths: Sequence[str], class_name: str | int | None = None, top_k: int = 5,
                batch_size: int = 8, stop: threading.Event | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[Explanation]:
        import torch

        from tlstudio.core.evaluation.evaluate import _load_rgb, preprocess, softmax

        want = self.class_index(class_name)
        out: list[Explanation] = []
        paths = [str(p) for p in paths]
        for start in range(0, len(paths), batch_size):
            if stop is not None and stop.is_set():
                break
            chunk = paths[start:start + batch_size]
            xs, sizes, ok = [], [], []
            for p in chunk:
                try:
                    img = _load_rgb(p)
                    sizes.append(img.size)
                    xs.append(preprocess(img, self.spec))
                    ok.append(p)
                except Exception as exc:  # unreadable image: one entry with the reason
                    out.append(Explanation(path=p, heatmap=None, method=self.method, error=str(exc).splitlines()[0]))
            if not xs:
                continue
            x = torch.from_numpy(np.stack(xs)).to(self.device)
            maps, logits = cam_maps(self.model, x, want, self.method)
            probs = softmax(logits.astype(np.float64))
            for i, p in enumerate(ok):
                c = int(np.argmax(probs[i])) if want is None else want
                order = np.argsort(-probs[i], kind="stable")[:max(1, top_k)]
                names = list(self.spec.classes)
                out.append(Explanation(
                    path=p, heatmap=place_on_picture(maps[i], sizes[i][0], sizes[i][1], self.spec),
                    class_index=c, class_name=names[c], prob=float(probs[i][c]),
                    predicted=names[int(order[0])], top=[(names[int(k)], float(probs[i][k])) for k in order],
                    method=self.method, layer=self.layer))
            if progress is not None:
                progress(min(len(paths), start + len(chunk)), len(paths))
        order = {p: i for i, p in enumerate(paths)}
        out.sort(key=lambda e: order.get(e.path, 0))
        return out


def explain_images(run_dir: str | Path, paths: Iterable[str | Path], class_name: str | None = None,
                   method: str = "gradcam", device: str = "cpu", **kw) -> list[Explanation]:
    """Explain image files (folders are expanded) with a run's best weights."""
    from tlstudio.core.evaluation.evaluate import expand_paths

    files = expand_paths(paths)
    return Explainer.from_run(run_dir, method=method, device=device).explain(files, class_name, **kw)


def overlay_image(image_path: str | Path, heatmap: np.ndarray, opacity: float = 0.5):
    """The picture (PIL RGB) with the coloured map blended over it."""
    from PIL import Image

    from tlstudio.core.evaluation.evaluate import _load_rgb

    img = _load_rgb(str(image_path))
    h = np.asarray(heatmap, np.float32)
    seen = np.isfinite(h)
    idx = np.clip(np.round(np.nan_to_num(h) * 255), 0, 255).astype(np.uint8)
    colour = Image.fromarray(colormap_lut()[idx], "RGB").resize(img.size, Image.BILINEAR)
    alpha = Image.fromarray((seen * 255 * float(np.clip(opacity, 0.0, 1.0))).astype(np.uint8), "L")
    return Image.composite(colour, img, alpha.resize(img.size, Image.NEAREST))  # NaN: the picture only


def write_overlay(image_path: str | Path, heatmap: np.ndarray, out_path: str | Path, opacity: float = 0.5) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    overlay_image(image_path, heatmap, opacity).save(tmp, format="PNG")
    tmp.replace(out)
    return out
