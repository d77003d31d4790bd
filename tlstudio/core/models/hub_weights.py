"""Pretrained weights from the Hugging Face hub: the cache, offline mode, downloads with progress.

A download reports its bytes to a progress callback (which cancels it by raising) and, with no
network, fails at once with the user's choices instead of huggingface_hub's ~23 s of retries.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from tlstudio.core.models.weights import WeightsError, first_line


def hf_cache_dir() -> str:
    """Read at call time (tests and users may set HF_HUB_CACHE / HF_HOME after import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_files(pretrained_cfg: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(repo_id, candidate filenames in preference order) of a timm pretrained config."""
    repo = pretrained_cfg.get("hf_hub_id")
    if not repo:
        return "", []
    fn = pretrained_cfg.get("hf_hub_filename")
    if fn:
        return repo, [fn]
    return repo, ["model.safetensors", "pytorch_model.bin"]


def cached_hub_file(pretrained_cfg: Mapping[str, Any]) -> str | None:
    """The weights file if it is already in the HF cache (no network)."""
    repo, files = hub_files(pretrained_cfg)
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for fn in files:
        try:
            p = try_to_load_from_cache(repo, fn, cache_dir=hf_cache_dir())
        except Exception:
            p = None
        if isinstance(p, str) and os.path.isfile(p):
            return p
    return None


def _progress_tqdm(progress: Callable[[int, int | None], None] | None):
    """A tqdm class that forwards byte counts to ``progress(done, total)`` and prints nothing."""
    from tqdm.auto import tqdm as base

    class _Tqdm(base):
        cancelled: BaseException | None = None

        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            out = super().update(n)
            if progress is not None:
                try:
                    progress(int(self.n), int(self.total) if self.total else None)
                except BaseException as exc:  # the caller cancels by raising: pass it through
                    _Tqdm.cancelled = exc
                    raise
            return out

        def close(self):
            fh = getattr(self, "fp", None)
            super().close()
            try:
                if fh is not None and hasattr(fh, "close"):
                    fh.close()
            except Exception:
                pass

    return _Tqdm


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached, or None to go ahead. Offline, huggingface_hub retries five
    times with backoff (~23 s here) before failing; a name lookup answers at once. Skipped
    behind a proxy (the proxy resolves names); a lookup still pending after `timeout` lets the
    download try."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    import socket
    import threading
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname
    if not host:
        return None
    failed: list[OSError] = []

    def look() -> None:
        try:
            socket.getaddrinfo(host, 443)
        except OSError as e:
            failed.append(e)

    t = threading.Thread(target=look, name="tlstudio-hub-lookup", daemon=True)
    t.start()
    t.join(timeout)
    if failed:
        return f"no network connection ({host} cannot be resolved: {failed[0]})"
    return None


def download_hub_weights(
    name: str,
    pretrained_cfg: Mapping[str, Any],
    progress: Callable[[int, int | None], None] | None = None,
) -> str:
    """Return a local path to the model's hub weights, downloading into the HF cache if needed."""
    cached = cached_hub_file(pretrained_cfg)
    if cached:
        return cached
    repo, files = hub_files(pretrained_cfg)
    if not repo:
        raise WeightsError(no_weights_message(name, "timm has no downloadable weights for it"))
    if hf_offline():
        raise WeightsError(no_weights_message(name, "the weights are not downloaded yet and the app is offline (HF_HUB_OFFLINE)"))
    offline = hub_unreachable()
    if offline:
        raise WeightsError(no_weights_message(name, f"the weights are not downloaded yet and there is {offline}"))
    from huggingface_hub import hf_hub_download

    last: Exception | None = None
    tq = _progress_tqdm(progress)
    for fn in files:
        try:
            return hf_hub_download(repo, fn, cache_dir=hf_cache_dir(), tqdm_class=tq)
        except Exception as exc:  # EntryNotFound -> try next name; network errors -> report
            if tq.cancelled is not None:  # raised by the progress callback: a cancel, not a failure
                raise tq.cancelled from None
            last = exc
            if type(exc).__name__ in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
                continue
            break
    raise WeightsError(no_weights_message(name, f"the download from Hugging Face ({repo}) failed: {first_line(last)}"))


def no_weights_message(name: str, why: str) -> str:
    return (
        f"Pretrained weights for {name} are not available: {why}. Choices: pick a local weights "
        "file (.safetensors/.pth), start from an earlier TL Studio run, train from scratch, or use "
        "the offline starter backbone tf_efficientnet_lite0 (its ImageNet weights ship with TL Studio)."
    )
