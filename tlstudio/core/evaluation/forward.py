"""A model as a numpy forward (NCHW float32 batch -> logits), and how fast it runs.

Evaluation, prediction and the export checks call any model through a `Forward`: a torch model
(`torch_forward`, chunked on the CPU), an onnxruntime session or TorchScript alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from tlstudio.core.runtime.inference import forward_chunked

Forward = Callable[[np.ndarray], np.ndarray]  # NCHW float32 batch -> logits (N, C)


def _device(device):
    """torch.device from "cpu", "cuda:0", a torch.device, or "auto" (cuda, then mps, then cpu)."""
    import torch

    if isinstance(device, torch.device):
        return device
    if str(device or "auto").strip().lower() == "auto":
        from tlstudio.core.runtime.precision import resolve_device

        return resolve_device("auto")
    return torch.device(device)


def torch_forward(model, device="cpu") -> Forward:
    """Wrap a torch model as numpy batch -> logits."""
    import torch

    dev = _device(device)
    model = model.to(dev).eval()

    def fwd(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return forward_chunked(model, torch.from_numpy(x).to(dev)).float().cpu().numpy()

    return fwd


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def measure_latency(
    model, image_size: int, batch_size: int = 1, device: str = "cpu", repeats: int = 10, warmup: int = 2
) -> float:
    """Seconds per image: median of `repeats` timed forward passes after `warmup` untimed ones."""
    import torch

    dev = _device(device)
    model = model.to(dev).eval()
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return float(np.median(times)) / batch_size


def measure_forward_latency(forward: Forward, image_size: int, batch_size: int = 1, repeats: int = 10,
                            warmup: int = 2) -> float:
    """The same for any numpy forward (onnxruntime sessions)."""
    x = np.random.default_rng(0).standard_normal((batch_size, 3, image_size, image_size)).astype(np.float32)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        forward(x)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times)) / batch_size
