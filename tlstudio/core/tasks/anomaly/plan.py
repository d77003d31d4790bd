"""Planning an anomaly fit before it runs (expected bank size and memory, for the app and the
log) and the progress helpers of the fit (ETA text, a long step run in a thread with Progress)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from tlstudio.core.events import Event, Progress
from tlstudio.core.tasks.anomaly.config import AnomalyConfig

CHUNK_PATCHES = 16_384  # patches reduced together by the streaming coreset (bounds its cost)


def _eta(started: float, done: int, total: int) -> str:
    if done <= 0 or total <= 0:
        return ""
    left = (time.perf_counter() - started) / done * (total - done)
    m, s = divmod(int(left + 0.5), 60)
    return f"ETA {m}:{s:02d}"


def _fmt_mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def plan(config: AnomalyConfig, n_images: int, model=None) -> dict[str, Any]:
    """What the fit will hold, before fitting: patches per image, feature size, expected bank
    (PatchCore) or statistics (PaDiM) size and memory. Cheap: the model is built on the meta
    device when not given (no weights, no forward pass)."""
    import torch

    from tlstudio.core.models.features import feature_info, stage_indices_for_strides
    from tlstudio.core.tasks.anomaly.coreset import expected_bank

    if model is None:
        import timm

        with torch.device("meta"):
            model = timm.create_model(config.backbone, pretrained=False, num_classes=2)
    info = feature_info(model)
    idx = stage_indices_for_strides(model, config.strides)
    finest = min(info[i]["reduction"] for i in idx)
    side = -(-config.image_size // finest)
    ppi = side * side
    dim = sum(info[i]["channels"] for i in idx)
    out: dict[str, Any] = {"indices": idx, "patches_per_image": ppi, "grid": [side, side], "feature_dim": dim,
                           "images": n_images, "patches": ppi * n_images}
    if config.method == "patchcore":
        bank = expected_bank(ppi, n_images, config.coreset_ratio, config.max_bank)
        from tlstudio.core.tasks.anomaly.model import BANK_CHUNK

        # bank while merging (2 caps) + a chunk of patches + one batch's features, plus the
        # query x bank-block distance matrix of scoring (4 images at a time); not the model itself
        knn = 4 * ppi * min(BANK_CHUNK, bank) * 4
        out.update(bank_size=bank, bank_bytes=bank * dim * 4, capped=bank >= config.max_bank,
                   peak_bytes=(2 * config.max_bank + CHUNK_PATCHES + config.batch_size * ppi) * dim * 4 + knn)
    else:
        from tlstudio.core.tasks.anomaly.padim import PadimAccumulator

        d = min(config.padim_dims, dim)
        out.update(bank_size=0, bank_bytes=ppi * d * d * 4 + ppi * d * 4,
                   peak_bytes=PadimAccumulator.bytes_needed(dim, config.padim_dims, ppi), capped=False)
    return out


def plan_text(p: dict[str, Any], method: str) -> str:
    if method == "patchcore":
        cap = " (capped)" if p.get("capped") else ""
        return (f"{p['images']} images x {p['patches_per_image']} patches = {p['patches']:,} patches -> "
                f"memory bank of {p['bank_size']:,}{cap} x {p['feature_dim']} features = {_fmt_mb(p['bank_bytes'])}, "
                f"peak working memory about {_fmt_mb(p['peak_bytes'])} besides the model")
    return (f"{p['images']} images, {p['patches_per_image']} positions x {p['feature_dim']} features -> "
            f"Gaussian statistics {_fmt_mb(p['bank_bytes'])}, peak about {_fmt_mb(p['peak_bytes'])}")



def _threaded(fn: Callable[[Callable[[int, int], None]], Any], task: str, message: str) -> Generator[Event, None, Any]:
    """Run ``fn(progress)`` in a thread, relaying its progress as Progress events with an ETA."""
    q: queue.Queue = queue.Queue()
    result: dict[str, Any] = {}

    def target():
        try:
            result["value"] = fn(lambda d, t: q.put((d, t)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the generator's thread
            result["error"] = exc
        finally:
            q.put(None)

    started = time.perf_counter()
    th = threading.Thread(target=target, name=f"anomaly-{task}", daemon=True)
    th.start()
    while True:
        item = q.get()
        if item is None:
            break
        d, t = item
        yield Progress(task, d, t, f"{message} {d:,}/{t:,} {_eta(started, d, t)}".strip())
    th.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")
