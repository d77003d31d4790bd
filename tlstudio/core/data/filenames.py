"""File names: which extensions are images (and which common photo formats are not supported
here), which names are system clutter to ignore silently, which names cannot be used, and how a
path is shown in a message (one line, whatever the name holds)."""

from __future__ import annotations

import os
import re

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


def _avif_supported() -> bool:
    try:
        from PIL import features

        return bool(features.check("avif"))
    except Exception:  # older Pillow: no AVIF plugin at all
        return False


if _avif_supported():
    IMAGE_EXTENSIONS = IMAGE_EXTENSIONS | {".avif"}

# Formats users commonly have that PIL cannot read here: say so instead of "not an image".
UNSUPPORTED_IMAGE_EXTENSIONS: dict[str, str] = {
    ".heic": "HEIC photo (not supported: convert to JPEG)",
    ".heif": "HEIF photo (not supported: convert to JPEG)",
    ".svg": "vector SVG (not supported: export to PNG)",
    ".cr2": "camera RAW (not supported: convert to JPEG)",
    ".nef": "camera RAW (not supported: convert to JPEG)",
    ".arw": "camera RAW (not supported: convert to JPEG)",
    ".dng": "camera RAW (not supported: convert to JPEG)",
    ".raw": "camera RAW (not supported: convert to JPEG)",
}
if ".avif" not in IMAGE_EXTENSIONS:
    UNSUPPORTED_IMAGE_EXTENSIONS[".avif"] = "AVIF image (not supported by this Pillow: convert to JPEG or PNG)"

# Files and folders that operating systems and tools scatter around: ignored silently.
SYSTEM_NAMES: frozenset[str] = frozenset(
    {
        "thumbs.db",
        "ehthumbs.db",
        "desktop.ini",
        "__macosx",
        "$recycle.bin",
        "system volume information",
        "icon\r",
        "__pycache__",
    }
)


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def is_hidden_name(name: str) -> bool:
    """Dot-files, macOS/Windows clutter and notebook checkpoints: never data, never reported."""
    return name.startswith(".") or name.startswith("~$") or name.lower() in SYSTEM_NAMES


def bad_name_reason(name: str) -> str | None:
    """File names that are not valid UTF-8 break JSON, logs and the GUI: skip them with a reason."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8 (rename it)"
    return None


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def display_path(path: str) -> str:
    """`path` made printable for messages: undecodable bytes replaced, control characters (a
    newline, a tab, an escape in a file name) written as \\n, \\t, \\x1b so that every
    problem stays on one line of a report or log."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        path = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if _CONTROL_CHARS.search(path):
        path = _CONTROL_CHARS.sub(lambda m: repr(m.group())[1:-1], path)
    return path


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
