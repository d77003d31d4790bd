"""tlstudio.core.data.images: the contract beyond the bad-input cases in tests/reliability."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tlstudio.core.errors import UserError
from tlstudio.core.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageError,
    is_hidden_name,
    load_rgb,
    probe_image,
    to_rgb,
)


def test_constants():
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"} <= IMAGE_EXTENSIONS
    assert 50_000_000 < DEFAULT_MAX_PIXELS < 12000 * 12000


def test_image_error_is_user_error_naming_file():
    e = ImageError("/x/y.jpg", "truncated image")
    assert isinstance(e, UserError) and e.path == "/x/y.jpg" and e.reason == "truncated image"
    assert str(e) == "/x/y.jpg: truncated image"


def test_load_rgb_is_detached_from_file(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (10, 6), (9, 8, 7)).save(p)
    im = load_rgb(p)
    os.remove(p)  # the returned image must not need the file any more
    assert im.mode == "RGB" and im.size == (10, 6)
    assert tuple(np.asarray(im)[0, 0]) == (9, 8, 7)


def test_load_rgb_accepts_str_and_uppercase_extension(tmp_path):
    p = tmp_path / "UPPER.JPG"
    Image.new("RGB", (8, 8), (0, 0, 0)).save(p, format="JPEG")
    assert load_rgb(str(p)).size == (8, 8)
    assert probe_image(str(p)) is None


def test_wrong_extension_but_real_image_is_used(tmp_path):
    p = tmp_path / "really_png.jpg"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(p, format="PNG")
    assert probe_image(p) is None
    assert tuple(np.asarray(load_rgb(p))[0, 0]) == (1, 2, 3)


@pytest.mark.parametrize("fmt,mode", [("bmp", "RGB"), ("bmp", "L"), ("bmp", "1"), ("tiff", "RGB"), ("ppm", "RGB"), ("tiff", "I;16")])
def test_truncated_uncompressed_found_without_decoding(tmp_path, fmt, mode):
    p = tmp_path / f"cut.{fmt}"
    Image.new(mode, (33, 17)).save(p)
    assert probe_image(p) is None
    data = p.read_bytes()
    p.write_bytes(data[:-40])
    assert "truncated" in probe_image(p)
    with pytest.raises(ImageError):
        load_rgb(p)


def test_full_probe_finds_corruption_header_probe_misses(tmp_path):
    p = tmp_path / "cut.gif"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    assert probe_image(p) is None  # GIF header is fine: the cheap check cannot know
    reason = probe_image(p, full=True)
    assert reason is not None and ("truncated" in reason or "corrupt" in reason)
    with pytest.raises(ImageError):
        load_rgb(p)


def test_missing_file_and_folder(tmp_path):
    assert "not found" in probe_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="not found"):
        load_rgb(tmp_path / "nope.png")
    assert probe_image(tmp_path) is not None


@pytest.mark.parametrize(
    "name,hidden",
    [(".DS_Store", True), ("Thumbs.db", True), ("thumbs.db", True), ("desktop.ini", True), ("__MACOSX", True),
     (".ipynb_checkpoints", True), ("._x.jpg", True), ("cat.jpg", False), ("__init__", False), ("Thumbs.png", False)],
)
def test_hidden_names(name, hidden):
    assert is_hidden_name(name) is hidden


def test_to_rgb_modes():
    assert to_rgb(Image.new("RGB", (2, 2))).mode == "RGB"
    for mode in ("1", "L", "P", "CMYK", "YCbCr", "HSV", "RGBA", "LA", "I", "F", "I;16"):
        out = to_rgb(Image.new(mode, (3, 2)))
        assert out.mode == "RGB" and out.size == (3, 2), mode


def _noise_jpeg(path, progressive=False, size=96):
    arr = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=90, progressive=progressive)
    return path


def test_truncated_progressive_jpeg(tmp_path):
    p = _noise_jpeg(tmp_path / "prog.jpg", progressive=True)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    assert "truncated" in probe_image(p)


def test_jpeg_with_trailing_padding_is_not_called_truncated(tmp_path):
    p = _noise_jpeg(tmp_path / "padded.jpg")
    p.write_bytes(p.read_bytes() + b"\0" * 10_000)  # some cameras/tools append data after EOI
    assert probe_image(p) is None
    assert load_rgb(p).size == (96, 96)


def test_file_deleted_after_scan_gives_image_error(tmp_path):
    p = _noise_jpeg(tmp_path / "gone.jpg")
    assert probe_image(p) is None
    p.unlink()
    with pytest.raises(ImageError, match="not found") as ei:
        load_rgb(p)
    assert ei.value.path == str(p)


def test_min_size_decodes_large_jpeg_reduced_but_never_below(tmp_path):
    p = tmp_path / "photo.jpg"
    a = np.zeros((1200, 1600, 3), np.uint8)
    a[:, :800] = (220, 30, 30)  # left half red, right half blue
    a[:, 800:] = (30, 30, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(p, quality=92, exif=exif.tobytes())
    full = load_rgb(p)
    small = load_rgb(p, min_size=224)
    assert load_rgb(p, draft=(224, 224)).size == small.size
    assert full.size == (1200, 1600)  # rotated to portrait
    assert small.size[0] < full.size[0] and min(small.size) >= 224
    assert small.size[0] / small.size[1] == pytest.approx(full.size[0] / full.size[1], rel=0.02)
    ref = np.asarray(full.resize(small.size, Image.BILINEAR)).astype(int)
    assert np.abs(np.asarray(small).astype(int) - ref).mean() < 8  # same picture, same orientation
    png = tmp_path / "photo.png"
    Image.fromarray(a).save(png)
    assert load_rgb(png, min_size=224).size == (1600, 1200)  # non-JPEG: full size
