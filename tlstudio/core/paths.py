"""Where things live: shipped resources, user config, caches, runs.

`TLSTUDIO_HOME` (used by tests) puts config, cache and runs under one folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "TLStudio"


def resources_dir() -> Path:
    frozen = getattr(sys, "_MEIPASS", None)  # inside a PyInstaller bundle
    if frozen:
        return Path(frozen) / "resources"
    return Path(__file__).resolve().parents[2] / "resources"


def sample_dir() -> Path:
    return resources_dir() / "sample"


def _home() -> Path | None:
    h = os.environ.get("TLSTUDIO_HOME")
    return Path(h) if h else None


def user_config_dir() -> Path:
    h = _home()
    if h:
        return h / "config"
    from platformdirs import user_config_path

    return user_config_path(APP_NAME)


def user_cache_dir() -> Path:
    h = _home()
    if h:
        return h / "cache"
    from platformdirs import user_cache_path

    return user_cache_path(APP_NAME)


def default_runs_dir() -> Path:
    h = _home()
    if h:
        return h / "runs"
    from platformdirs import user_documents_path

    return user_documents_path() / "TL Studio" / "runs"


def log_file() -> Path:
    h = _home()
    if h:
        return h / "logs" / "tlstudio.log"
    from platformdirs import user_log_path

    return user_log_path(APP_NAME) / "tlstudio.log"
