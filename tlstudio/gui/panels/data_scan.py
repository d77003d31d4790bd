"""The Data step's background work, without Qt: the scan job run in a worker thread (scan, then
the train/validation split), the split helpers it shares with the split settings, and the
bundled sample data set. ``tlstudio.core.data.dataset`` is imported only inside the functions."""

from __future__ import annotations

import threading
from typing import Any


def trainable_problem(report: Any) -> str:
    """Why the scanned data set cannot be trained as it is ("" when it can)."""
    try:
        report.require_trainable()
    except Exception as exc:  # noqa: BLE001 - DatasetError: shown as the step's problem
        return str(exc)
    return ""


def make_split_or_none(report: Any, val_fraction: float, seed: int) -> Any:
    """The stratified train/validation split of ``report``; None when it cannot be trained or split."""
    from tlstudio.core.data.dataset import make_split

    if trainable_problem(report):
        return None
    try:
        return make_split(report, val_fraction=val_fraction, seed=seed)
    except Exception:  # noqa: BLE001 - e.g. a class too small to split: the summary shows the problem
        return None


def scan_job(path: str, progress: Any, stop: threading.Event, val_fraction: float, seed: int) -> tuple[Any, Any]:
    """Runs in a worker thread: scan, then the split (both Qt-free)."""
    from tlstudio.core.data.dataset import scan
    from tlstudio.core.runtime.precision import available_cores

    # one core stays with the UI: big folders scan in cores - 1 worker processes
    report = scan(path, progress=progress, stop=stop, workers=max(1, available_cores() - 1))
    return report, make_split_or_none(report, val_fraction, seed)


def sample_folder():  # -> Path
    """The bundled sample data set, or a synthetic one made once in the user cache."""
    from tlstudio.core import paths

    d = paths.sample_dir()
    if d.is_dir() and any(p.is_dir() for p in d.iterdir()):
        return d
    target = paths.user_cache_dir() / "sample"
    if not target.is_dir():
        from tlstudio.core.data.synthetic import make_synthetic_folder

        make_synthetic_folder(target, per_class=16, size=64, easy=True)
    return target
