"""Opening user images safely: one place that knows every way an image file can be bad.

`probe_image` is the cheap check used by the scan (header, size cap, light integrity check,
no full decode). `load_rgb` is the full load used for training and prediction: it returns a
plain 8-bit RGB image whatever the file holds (EXIF rotation, palette, CMYK, 16-bit, grey,
alpha, animation) or raises `ImageError` whose message names the file and the reason.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from tlstudio.core.data.filenames import (  # noqa: F401 - part of this module's API
    IMAGE_EXTENSIONS,
    SYSTEM_NAMES,
    UNSUPPORTED_IMAGE_EXTENSIONS,
    bad_name_reason,
    display_path,
    is_hidden_name,
    is_image_name,
)
from tlstudio.core.errors import UserError

# PIL's own default (about 89 megapixels, e.g. 9459x9459). Anything larger is refused as a
# possible decompression bomb. Kept <= Image.MAX_IMAGE_PIXELS so PIL's warning range is covered
# by our explicit check too.
DEFAULT_MAX_PIXELS: int = 89_478_485

# Training resizes the short side to the input size: a 1x400000 PNG (1.6 KB, under the pixel cap)
# would become 224 x 89,600,000 pixels (tens of GB). Panoramas are ~4:1, line scans and
# spectrograms rarely beyond 20:1; anything longer than this is refused with its shape.
MAX_ASPECT_RATIO: float = 50.0


def _bomb_warnings_are_errors() -> None:
    """PIL only *warns* between 1x and 2x its pixel limit: make that warning an error, app-wide.

    Re-asserted before each open (cheap) because tests and libraries reset warning filters;
    catch_warnings() is not used since it is not thread-safe and scans run in threads. The
    explicit pixel check in `_open_checked` refuses those images in any case.
    """
    f = warnings.filters
    if not f or f[0][0] != "error" or f[0][2] is not Image.DecompressionBombWarning:
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


# A photo with damaged EXIF loads unrotated (load_rgb); PIL's warning about it would only print
# noise under the one line the user gets about the file (if any).
warnings.filterwarnings("ignore", message="(Possibly )?[Cc]orrupt EXIF", category=UserWarning)
_bomb_warnings_are_errors()


class ImageError(UserError):
    """An image file that cannot be used. `reason` is short and human readable."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied (cannot read the file)"
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if isinstance(e, FileNotFoundError):
        return "file not found (deleted, or a broken link)"
    if isinstance(e, IsADirectoryError):
        return "is a folder, not a file"
    return f"cannot read the file ({e.strerror or e})"


def _pixels_reason(size: tuple[int, int], max_pixels: int) -> str | None:
    w, h = size
    if w <= 0 or h <= 0:
        return f"invalid image size {w}x{h}"
    if w * h > max_pixels:
        return f"too many pixels ({w}x{h} = {w * h:,}; limit {max_pixels:,}): possible decompression bomb"
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        return (f"extreme shape {w}x{h} (one side more than {MAX_ASPECT_RATIO:g}x the other): resized for "
                "training it would need far too much memory; crop it into normal-shaped pieces")
    return None


def _bomb_reason(e: Exception, max_pixels: int) -> str:
    m = re.search(r"\((\d+) pixels\)", str(e))  # PIL states the size, not the dimensions
    size = f"{int(m.group(1)):,} pixels; " if m else ""
    return f"too many pixels ({size}limit {min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels):,}): possible decompression bomb"


def _stat_reason(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError as e:
        return _os_reason(e)
    if not stat.S_ISREG(st.st_mode):  # folders, FIFOs (open would block), devices
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


def _open_checked(f, path: str, max_pixels: int) -> Image.Image:
    """Image.open with every bomb path turned into ImageError (error, warning, our own cap)."""
    _bomb_warnings_are_errors()
    try:
        im = Image.open(f)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(path, _bomb_reason(e, max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image (content is not a known image format)") from None
    except OSError as e:  # e.g. PermissionError surfaced late, or a broken header
        raise ImageError(path, f"unreadable image header ({e})") from None
    except (ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError) as e:  # plugin parse errors
        raise ImageError(path, f"corrupt image header ({type(e).__name__}: {e})") from None
    reason = _pixels_reason(im.size, max_pixels)
    if reason:
        im.close()
        raise ImageError(path, reason)
    return im


def _jpeg_looks_truncated(f, size: int) -> bool:
    """A complete JPEG ends with the EOI marker FFD9 (maybe followed by a little padding)."""
    n = min(size, 4096)
    f.seek(size - n)
    return b"\xff\xd9" not in f.read(n)


_RAW_BITS = {
    "1": 1, "L": 8, "P": 8, "LA": 16, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "RGB": 24, "BGR": 24,
    "RGBA": 32, "BGRA": 32, "RGBX": 32, "BGRX": 32, "CMYK": 32, "I": 32, "F": 32, "I;32": 32, "F;32F": 32,
}


def _raw_tiles_truncated(im: Image.Image, size: int) -> bool:
    """Uncompressed data (BMP, TIFF, PPM): the file must be long enough for every row."""
    for t in getattr(im, "tile", None) or []:
        if t[0] != "raw":
            continue
        x0, y0, x1, y1 = t[1]
        args = t[3] if isinstance(t[3], tuple) else (t[3],)
        stride = args[1] if len(args) > 1 and args[1] else 0
        if not stride:
            bits = _RAW_BITS.get(args[0])
            if bits is None:
                continue
            stride = ((x1 - x0) * bits + 7) // 8
        if t[2] + stride * (y1 - y0) > size:
            return True
    return False


QUICK_HASH_SPAN = 64 * 1024


def quick_hash(f) -> str:
    """Content hash of an open binary file: exact for files up to 128 KB, else of the first and
    last 64 KB plus the size (equal quick hashes of big files are confirmed with `full_hash`)."""
    h = hashlib.blake2b(digest_size=16)
    size = os.fstat(f.fileno()).st_size
    if size <= 2 * QUICK_HASH_SPAN:
        h.update(f.read())
    else:
        h.update(f.read(QUICK_HASH_SPAN))
        f.seek(size - QUICK_HASH_SPAN)
        h.update(f.read(QUICK_HASH_SPAN))
        h.update(str(size).encode())
    return h.hexdigest()


def full_hash(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def probe_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, full: bool = False) -> str | None:
    """Return None when the file looks like a usable image, else a short reason.

    Cheap by default: header, pixel cap, PNG chunk CRCs (verify reads no pixel data), and for
    JPEG the end marker (a full decode only if the marker is missing, to confirm truncation).
    `full=True` decodes the image completely (slow, catches corruption inside pixel data).
    """
    return probe_file(path, max_pixels, full)[0]


def probe_file(
    path: str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    full: bool = False,
    *,
    want_hash: bool = False,
    stat_checked: bool = False,
) -> tuple[str | None, str | None]:
    """`probe_image` plus, for usable files and `want_hash`, a content hash read through the same
    open file (the scan's duplicate check). `stat_checked`: the caller already knows the path is
    a non-empty regular file."""
    p = os.fspath(path)
    if not stat_checked:
        reason = _stat_reason(p)
        if reason:
            return reason, None
    digest = None
    try:
        with open(p, "rb") as f:
            if want_hash:  # before PIL, which closes the file when done
                digest = quick_hash(f)
                f.seek(0)
            try:
                im = _open_checked(f, p, max_pixels)
            except ImageError as e:
                return e.reason, None
            fmt = im.format
            try:
                if full:
                    _decode_first_frame(im, p)
                elif fmt == "JPEG":
                    if _jpeg_looks_truncated(f, os.fstat(f.fileno()).st_size):
                        f.seek(0)
                        _decode_first_frame(_open_checked(f, p, max_pixels), p)
                elif fmt == "PNG":
                    im.verify()
                elif _raw_tiles_truncated(im, os.fstat(f.fileno()).st_size):
                    return "truncated image (the file ends before the image data does)", None
            except ImageError as e:
                return e.reason, None
            except Exception as e:  # verify() raises many types on corrupt data
                return f"corrupt image data ({type(e).__name__}: {e})", None
            finally:
                im.close()
    except OSError as e:
        return _os_reason(e), None
    return None, digest


def _decode_first_frame(im: Image.Image, path: str) -> Image.Image:
    try:
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(path, _bomb_reason(e, DEFAULT_MAX_PIXELS)) from None
    except OSError as e:
        msg = str(e)
        if "truncated" in msg.lower():
            raise ImageError(path, "truncated image (the file ends before the image data does)") from None
        raise ImageError(path, f"corrupt image data ({msg})") from None
    except Exception as e:  # decoders raise ValueError/SyntaxError/etc. on garbage
        raise ImageError(path, f"corrupt image data ({type(e).__name__}: {e})") from None
    return im


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float single-channel images into 0..255 (not clip)."""
    import numpy as np

    a = np.asarray(im)
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0:
            a = a * 255.0
        elif lo < 0.0 or hi > 255.0:
            a = (a - lo) * (255.0 / (hi - lo if hi > lo else 1.0))
    else:
        a = a.astype(np.int64)
        hi = int(a.max()) if a.size else 0
        lo = int(a.min()) if a.size else 0
        if lo < 0:
            a = (a - lo) * 255.0 / max(1, hi - lo)
        elif hi > 65535:
            a = a * (255.0 / hi)
        elif hi > 255:
            a = a / 257.0  # 16-bit data: 65535 -> 255
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def _on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(bg, rgba).convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Alpha is composited on white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I", "F") or mode.startswith("I;"):
        return _to_8bit(im).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _on_white(im)
    if mode == "P":
        if "transparency" in im.info:
            return _on_white(im.convert("RGBA"))
        return im.convert("RGB")
    return im.convert("RGB")  # 1, L, CMYK, YCbCr, HSV


def load_rgb(
    path: str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    min_size: int | None = None,
    draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Load the first frame of an image as 8-bit RGB with EXIF orientation applied.

    `min_size`: the caller will shrink the image so its shorter side is about this many pixels;
    JPEGs are then decoded at a reduced scale (1/2..1/8, never below `min_size` on either side),
    which makes loading large photos several times faster. Other formats load at full size.
    `draft=(w, h)` is the same with PIL's own request form (min_size=s is draft=(s, s)).
    Raises ImageError (a UserError) naming the file and the reason for every failure.
    """
    p = os.fspath(path)
    reason = _stat_reason(p)
    if reason:
        raise ImageError(p, reason)
    try:
        with open(p, "rb") as f:
            src = _open_checked(f, p, max_pixels)
            try:
                want = draft or ((min_size, min_size) if min_size else None)
                if want and src.format == "JPEG" and src.size[0] >= 2 * want[0] and src.size[1] >= 2 * want[1]:
                    src.draft(src.mode if src.mode in ("RGB", "L") else None, (int(want[0]), int(want[1])))
                _decode_first_frame(src, p)
                im = src
                try:
                    im = ImageOps.exif_transpose(src) or src
                except Exception:  # broken EXIF: keep the pixels unrotated rather than refuse the photo
                    pass
                try:
                    rgb = to_rgb(im)
                except Exception as e:
                    raise ImageError(p, f"unsupported colour mode {im.mode} ({e})") from None
                if rgb is src:
                    rgb = src.copy()  # detach from the file, which closes below
                rgb.load()
                return rgb
            finally:
                src.close()
    except OSError as e:
        raise ImageError(p, _os_reason(e)) from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header, EXIF rotation not applied."""
    with Image.open(path) as im:
        return im.size
