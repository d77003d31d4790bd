"""Running an AnomalyModel over image files: batches decoded ahead in a thread, failures named,
memory bounded (maps kept only when asked, and then as float16)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tlstudio.core.evaluation.evaluate import load_batch


def anomaly_spec(model, backbone: str, image_size: int):
    """The preprocessing of anomaly runs: the model's mean/std, the whole image squashed to
    image_size (no centre crop: a defect at the border must stay in view)."""
    from tlstudio.core.models.backbones import model_spec

    spec = model_spec(model, backbone, ["normal", "anomaly"], image_size)
    return spec.model_copy(update={"crop_pct": 1.0, "crop_mode": "squash", "image_size": int(image_size)})


def batches(paths: Sequence[str], spec, batch_size: int) -> Iterator[tuple[np.ndarray, list[int], list[dict], int]]:
    """(x, indices into paths that loaded, failures, start) per batch; the next batch decodes
    in a thread while the current one runs through the model."""
    starts = list(range(0, len(paths), batch_size))
    if not starts:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="anomaly-decode") as pool:
        fut = pool.submit(load_batch, paths[0:batch_size], spec)
        for n, s in enumerate(starts):
            x, ok, failures = fut.result()
            if n + 1 < len(starts):
                nxt = starts[n + 1]
                fut = pool.submit(load_batch, paths[nxt:nxt + batch_size], spec)
            yield x, [s + i for i in ok], failures, s


def score_paths(
    model,
    paths: Sequence[str],
    spec,
    *,
    batch_size: int = 4,
    keep_maps: bool = False,
    map_size: int | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
    device=None,
) -> tuple[np.ndarray, list[np.ndarray | None], list[dict]]:
    """Raw image scores (NaN where the image failed), raw maps (float16, ``map_size`` square
    when given) if ``keep_maps``, and the failures [{path, reason}]."""
    import torch
    from torch.nn import functional as F

    from tlstudio.core.runtime.inference import forward_chunked

    dev = torch.device(device) if device else torch.device("cpu")
    scores = np.full(len(paths), np.nan)
    maps: list[np.ndarray | None] = [None] * len(paths)
    failures: list[dict] = []
    done = 0
    for x, ok, fails, _s in batches(paths, spec, batch_size):
        if stop is not None and stop.is_set():
            break
        failures += fails
        if ok:
            with torch.inference_mode():  # through forward_chunked: one thread on a shared CPU
                raw, m = forward_chunked(model.raw, torch.from_numpy(x).to(dev))
            scores[ok] = raw.float().cpu().numpy()
            if keep_maps:
                if map_size and m.shape[-1] != map_size:
                    m = F.interpolate(m, size=(map_size, map_size), mode="bilinear", align_corners=False)
                arr = m[:, 0].float().cpu().numpy().astype(np.float16)
                for j, i in enumerate(ok):
                    maps[i] = arr[j]
        done += len(ok) + len(fails)
        if progress is not None:
            progress(done, len(paths))
    return scores, maps, failures
