"""What an image looks like, small: the near-duplicate check's fingerprint (a 16x16 grey and a
4x4 colour thumbnail, 304 bytes), equal enough for a resized or re-encoded copy of a picture."""

from __future__ import annotations

import os

from PIL import Image

from tlstudio.core.data.images import DEFAULT_MAX_PIXELS, ImageError, _decode_first_frame, _open_checked, to_rgb

LOOK_SIDE = 16  # a look: a LOOK_SIDE x LOOK_SIDE grey thumbnail (256 bytes) ...
LOOK_COLOR_SIDE = 4  # ... then a 4 x 4 RGB one (48 bytes): grey alone mistakes a red circle on green for a blue one on olive
LOOK_BYTES = LOOK_SIDE * LOOK_SIDE + 3 * LOOK_COLOR_SIDE * LOOK_COLOR_SIDE


def look_of(im: Image.Image, path: str = "") -> bytes:
    """What the image looks like at 16x16 grey and 4x4 colour: nearly equal for a resized or
    re-encoded copy (the near-duplicate check). JPEGs decode at 1/8 scale (draft): cheap."""
    if im.format == "JPEG" and min(im.size) >= 8 * LOOK_SIDE:
        im.draft("RGB", (4 * LOOK_SIDE, 4 * LOOK_SIDE))
    _decode_first_frame(im, path)
    rgb = to_rgb(im) if im.mode != "RGB" else im
    small = rgb.resize((LOOK_SIDE, LOOK_SIDE), Image.Resampling.BOX)
    color = small.resize((LOOK_COLOR_SIDE, LOOK_COLOR_SIDE), Image.Resampling.BOX)
    return small.convert("L").tobytes() + color.tobytes()


def look_file(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes | None:
    """`look_of` the image at `path`, or None when it cannot be decoded (the scan's probe has
    the say on whether the file is usable; a look is only for finding near duplicates)."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f, _open_checked(f, p, max_pixels) as im:
            return look_of(im, p)
    except (ImageError, OSError, ValueError):
        return None
