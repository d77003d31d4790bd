"""Issue 6, "Bad images and folders": one test per bad input.

Each bad file sits in an otherwise good 2-class folder; the scan must skip it with its reason,
keep every good image, and the data set must stay trainable.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tlstudio.core.data import images as images_mod
from tlstudio.core.data.dataset import DatasetError, make_split, scan
from tlstudio.core.data.images import DEFAULT_MAX_PIXELS, ImageError, load_rgb, probe_image
from tlstudio.core.data.synthetic import SHAPES, make_image

N_GOOD = 6  # per class


def make_folder(root: Path, classes=("a", "b"), per_class=N_GOOD, size=32, seed=0) -> Path:
    """root/<class>/<class>_NNN.png, one synthetic shape per class."""
    import random

    rng = random.Random(seed)
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(SHAPES[ci % len(SHAPES)], size, rng).save(root / name / f"{name}_{i:03d}.png")
    return root


@pytest.fixture
def ds(tmp_path) -> Path:
    return make_folder(tmp_path / "ds")


def _skip_reason(report, path: Path) -> str:
    hits = [s.reason for s in report.skipped if Path(s.path) == path]
    assert hits, f"{path} not reported as skipped; skipped={report.skipped}"
    return hits[0]


def _assert_rest_fine(report) -> None:
    """Every good image kept (exactly N_GOOD per class, nothing bad counted) and all of them trainable."""
    assert report.counts == {"a": N_GOOD, "b": N_GOOD}
    report.require_trainable()
    split = make_split(report)
    assert len(split.train) + len(split.val) == 2 * N_GOOD
    for s in split.train + split.val:
        assert load_rgb(s.path).mode == "RGB"


def _noise(size=(64, 48), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG that declares w x h pixels (1-bit) with a tiny IDAT: costs bytes, not memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- broken files


def test_zero_byte_file(ds):
    bad = ds / "a" / "zero.jpg"
    bad.write_bytes(b"")
    r = scan(ds)
    assert "0 bytes" in _skip_reason(r, bad)
    with pytest.raises(ImageError, match="0 bytes"):
        load_rgb(bad)
    _assert_rest_fine(r)


def test_text_file_with_image_extension(ds):
    bad = ds / "a" / "notes.jpg"
    bad.write_text("this is not a picture\n" * 20)
    r = scan(ds)
    assert "not an image" in _skip_reason(r, bad)
    with pytest.raises(ImageError, match="not an image") as ei:
        load_rgb(bad)
    assert str(bad) in str(ei.value)
    _assert_rest_fine(r)


def test_truncated_jpeg(ds):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never switched on globally
    full = ds / "a" / "full.jpg"
    _noise((96, 96)).save(full, quality=90)
    data = full.read_bytes()
    bad = ds / "a" / "cut.jpg"
    bad.write_bytes(data[: len(data) * 6 // 10])
    r = scan(ds)
    assert "truncated" in _skip_reason(r, bad)
    with pytest.raises(ImageError, match="truncated"):
        load_rgb(bad)
    assert str(full) in {s.path for s in r.samples}
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_png(ds):
    good = ds / "a" / "a_000.png"
    data = bytearray(good.read_bytes())
    idat = data.index(b"IDAT")
    for i in range(idat + 10, idat + 30):
        data[i] ^= 0x5A  # damage compressed pixels: CRC no longer matches
    bad = ds / "a" / "corrupt.png"
    bad.write_bytes(bytes(data))
    r = scan(ds)
    assert "corrupt" in _skip_reason(r, bad)
    with pytest.raises(ImageError):
        load_rgb(bad)
    _assert_rest_fine(r)


@pytest.mark.parametrize("side", [12000, 20000])  # PIL warning range and PIL error range
def test_decompression_bomb(ds, side):
    bad = ds / "a" / f"bomb{side}.png"
    _png_header_only(bad, side, side)
    assert bad.stat().st_size < 1000
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # even when PIL's warning would only be printed
        r = scan(ds)
        reason = _skip_reason(r, bad)
        with pytest.raises(ImageError, match="too many pixels"):
            load_rgb(bad)
    assert "too many pixels" in reason and "bomb" in reason
    _assert_rest_fine(r)


def test_bomb_warning_and_error_are_refusals_not_notes(tmp_path, monkeypatch):
    """With PIL's own limit lowered, its warning and its error both become ImageError."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warn_img, err_img = tmp_path / "w.png", tmp_path / "e.png"
    _png_header_only(warn_img, 40, 40)  # 1600 px: PIL warns (between 1x and 2x its limit)
    _png_header_only(err_img, 100, 100)  # 10000 px: PIL raises
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for p in (warn_img, err_img):
            assert "too many pixels" in probe_image(p, max_pixels=DEFAULT_MAX_PIXELS)
            with pytest.raises(ImageError, match="too many pixels"):
                load_rgb(p)


def test_custom_pixel_cap(tmp_path):
    p = tmp_path / "big.png"
    _noise((64, 64)).save(p)
    assert probe_image(p) is None
    assert "too many pixels" in probe_image(p, max_pixels=64 * 63)


# ----------------------------------------------------------------------------- unusual but valid images


def test_cmyk_jpeg(ds):
    p = ds / "a" / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(p)  # pure red in CMYK
    assert Image.open(p).mode == "CMYK"
    r = scan(ds)
    assert str(p) in {s.path for s in r.samples}
    rgb = np.asarray(load_rgb(p)).astype(int)
    assert rgb.shape == (32, 32, 3)
    red, green, blue = rgb[..., 0].mean(), rgb[..., 1].mean(), rgb[..., 2].mean()
    assert red > 200 and green < 60 and blue < 60


def test_16bit_png_is_scaled_not_clipped(ds):
    p = ds / "a" / "deep.png"
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    Image.fromarray(ramp).save(p)
    assert Image.open(p).mode.startswith("I")
    r = scan(ds)
    assert str(p) in {s.path for s in r.samples}
    out = np.asarray(load_rgb(p)).astype(int)
    assert out.shape == (16, 64, 3)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255
    assert 120 <= out[0, 32, 0] <= 136  # mid-grey, not saturated white (clip would give 255)
    assert (out[..., 0] == out[..., 1]).all()


def test_16bit_mode_I_and_float(tmp_path):
    # 32-bit integer image holding 16-bit data, and float images in 0..1 and arbitrary range
    i32 = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32))
    assert i32.mode == "I"
    f01 = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    fwide = Image.fromarray(np.array([[-10.0, 0.0, 10.0]], dtype=np.float32))
    for im, mid in ((i32, 128), (f01, 128), (fwide, 128)):
        p = tmp_path / f"{im.mode}{id(im)}.tiff"
        im.save(p)
        out = np.asarray(load_rgb(p))[0, :, 0].astype(int)
        assert out[0] == 0 and out[2] == 255 and abs(out[1] - mid) <= 1, (im.mode, out)


def test_palette_and_rgba(ds):
    pal = ds / "a" / "pal.png"
    _noise((32, 32)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(pal)
    pal_t = ds / "a" / "pal_transparent.gif"
    pt = Image.new("P", (8, 8), 0)
    pt.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pt.putpixel((0, 0), 1)
    pt.save(pal_t, transparency=0)
    rgba = ds / "a" / "alpha.png"
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., 2] = 255  # blue
    a[:4, :, 3] = 0  # top half fully transparent
    a[4:, :, 3] = 255
    Image.fromarray(a, "RGBA").save(rgba)
    r = scan(ds)
    paths = {s.path for s in r.samples}
    assert {str(pal), str(pal_t), str(rgba)} <= paths
    out = np.asarray(load_rgb(rgba))
    assert (out[:4] == 255).all()  # transparent -> white background
    assert (out[4:] == (0, 0, 255)).all()
    outp = np.asarray(load_rgb(pal_t))
    assert tuple(outp[1, 1]) == (255, 255, 255) and tuple(outp[0, 0]) == (0, 0, 255)
    assert load_rgb(pal).mode == "RGB"


def test_greyscale_and_la(ds):
    grey = ds / "a" / "grey.png"
    Image.new("L", (16, 16), 77).save(grey)
    la = ds / "a" / "grey_alpha.png"
    Image.new("LA", (16, 16), (0, 0)).save(la)
    bw = ds / "a" / "bw.bmp"
    Image.new("1", (16, 16), 1).save(bw)
    r = scan(ds)
    assert {str(grey), str(la), str(bw)} <= {s.path for s in r.samples}
    assert (np.asarray(load_rgb(grey)) == 77).all()
    assert (np.asarray(load_rgb(la)) == 255).all()
    assert (np.asarray(load_rgb(bw)) == 255).all()


def test_exif_rotated_photo(ds):
    p = ds / "a" / "rotated.jpg"
    a = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high: left half red, right half blue
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(a).save(p, exif=exif.tobytes(), quality=95)
    r = scan(ds)
    assert str(p) in {s.path for s in r.samples}
    out = np.asarray(load_rgb(p)).astype(int)
    assert out.shape == (40, 20, 3)  # really rotated: now tall
    top, bottom = out[:15].mean(axis=(0, 1)), out[25:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_animated_gif_and_multipage_tiff_first_frame(ds):
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    blue = Image.new("RGB", (16, 16), (0, 0, 255))
    gif = ds / "a" / "anim.gif"
    red.save(gif, save_all=True, append_images=[blue, Image.new("RGB", (16, 16), (0, 255, 0))], duration=100, loop=0)
    tif = ds / "a" / "pages.tiff"
    red.save(tif, save_all=True, append_images=[blue])
    assert Image.open(gif).n_frames == 3 and Image.open(tif).n_frames == 2
    r = scan(ds)
    assert {str(gif), str(tif)} <= {s.path for s in r.samples}
    for p in (gif, tif):
        c = np.asarray(load_rgb(p))[8, 8]
        assert c[0] > 200 and c[2] < 50, p


@pytest.mark.parametrize("fmt", ["webp", "bmp", "tif", "tiff"])
def test_webp_bmp_tiff_supported(ds, fmt):
    p = ds / "a" / f"img.{fmt}"
    kw = {"lossless": True} if fmt == "webp" else {}
    Image.new("RGB", (24, 24), (10, 200, 30)).save(p, **kw)
    r = scan(ds)
    assert str(p) in {s.path for s in r.samples}
    assert tuple(np.asarray(load_rgb(p))[5, 5]) == (10, 200, 30)


def test_unicode_and_very_long_names(ds):
    uni = ds / "a" / "猫_café_😀_Ünïcødé.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(uni)
    long_name = ds / "a" / ("x" * 240 + ".png")  # near the 255-byte file-name limit
    Image.new("RGB", (16, 16), (1, 2, 3)).save(long_name)
    deep = ds / "b"
    for i in range(12):
        deep = deep / ("sub" + "y" * 60 + str(i))
    deep.mkdir(parents=True)
    deep_img = deep / "deep.png"
    Image.new("RGB", (16, 16), (4, 5, 6)).save(deep_img)
    ucls = ds / "ünïcode-класс"
    make_folder(ds, classes=("ünïcode-класс",), seed=1)
    r = scan(ds)
    paths = {s.path for s in r.samples}
    assert {str(uni), str(long_name), str(deep_img)} <= paths
    assert "ünïcode-класс" in r.classes and r.counts["ünïcode-класс"] == 6 and ucls.is_dir()
    for p in (uni, long_name, deep_img):
        assert load_rgb(p).size == (16, 16)


@pytest.mark.skipif(os.name != "posix" or os.uname().sysname == "Darwin", reason="needs a byte-name file system")
def test_non_utf8_names_skipped_with_reason(ds):
    raw = os.fsencode(str(ds / "a")) + b"/\xff\xfe-latin1-\xe9.png"
    Image.new("RGB", (8, 8)).save(raw, format="PNG")
    raw_dir = os.fsencode(str(ds)) + b"/\xfeclass"
    os.mkdir(raw_dir)
    Image.new("RGB", (8, 8)).save(raw_dir + b"/x.png", format="PNG")
    r = scan(ds)
    assert r.classes == ["a", "b"] and r.counts == {"a": N_GOOD, "b": N_GOOD}
    bad = [s for s in r.skipped if "UTF-8" in s.reason]
    assert len(bad) == 2
    import json

    json.dumps(r.to_json(), ensure_ascii=False).encode("utf-8")  # printable and storable
    _assert_rest_fine(r)


# ----------------------------------------------------------------------------- folders


def test_hidden_and_system_files_ignored_silently(ds):
    junk = [
        ds / "a" / ".DS_Store",
        ds / "a" / "Thumbs.db",
        ds / "b" / "desktop.ini",
        ds / "a" / ".hidden.png",
        ds / "a" / "._a_000.png",  # macOS resource fork
        ds / "__MACOSX" / "a" / "._a_001.png",
        ds / "a" / ".ipynb_checkpoints" / "a_000-checkpoint.png",
        ds / ".git" / "HEAD",
    ]
    for j in junk:
        j.parent.mkdir(parents=True, exist_ok=True)
        if j.suffix == ".png":
            Image.new("RGB", (8, 8)).save(j, format="PNG")
        else:
            j.write_bytes(b"\0junk")
    r = scan(ds)
    assert r.classes == ["a", "b"]
    assert r.counts == {"a": N_GOOD, "b": N_GOOD}
    assert r.skipped == []
    listed = {s.path for s in r.samples} | {s.path for s in r.skipped}
    assert not any(str(j) in listed for j in junk)
    assert not any("skipped" in w for w in r.warnings)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this platform")
def test_symlink_loop_and_broken_link(ds):
    loop_dir = ds / "a" / "loop"
    os.symlink(ds / "a", loop_dir)  # a/loop -> a: walking it naively never ends
    self_link = ds / "a" / "self.jpg"
    os.symlink(self_link, self_link)  # ELOOP on open
    broken = ds / "b" / "gone.png"
    os.symlink(ds / "nowhere.png", broken)
    r = scan(ds)
    assert "symlink loop" in _skip_reason(r, loop_dir)
    assert "symlink loop" in _skip_reason(r, self_link)
    assert "broken link" in _skip_reason(r, broken)
    assert r.counts == {"a": N_GOOD, "b": N_GOOD}  # nothing counted twice through the loop
    with pytest.raises(ImageError, match="symlink loop"):
        load_rgb(self_link)
    _assert_rest_fine(r)


def test_unreadable_file(ds, monkeypatch):
    bad = ds / "a" / "secret.png"
    Image.new("RGB", (16, 16)).save(bad)
    bad.chmod(0)
    try:
        readable_anyway = os.access(bad, os.R_OK)  # root ignores permission bits
        if readable_anyway:
            real_open = open

            def guarded_open(file, *a, **k):
                if os.fspath(file) == str(bad):
                    raise PermissionError(13, "Permission denied", str(bad))
                return real_open(file, *a, **k)

            # simulate what a normal user gets (the test suite here runs as root)
            monkeypatch.setattr(images_mod, "open", guarded_open, raising=False)
        r = scan(ds)
        assert "permission denied" in _skip_reason(r, bad)
        with pytest.raises(ImageError, match="permission denied"):
            load_rgb(bad)
        _assert_rest_fine(r)
    finally:
        bad.chmod(0o644)


def test_empty_class_folder(ds):
    (ds / "empty").mkdir()
    (ds / "only_junk").mkdir()
    (ds / "only_junk" / "readme.txt").write_text("hi")
    r = scan(ds)
    assert r.classes == ["a", "b"]
    assert r.empty_classes == ["empty", "only_junk"]
    assert any("'empty'" in w and "not used as a class" in w for w in r.warnings)
    assert any("'only_junk'" in w for w in r.warnings)
    _assert_rest_fine(r)


def test_only_one_class(tmp_path):
    root = make_folder(tmp_path / "one", classes=("cats",))
    r = scan(root)
    assert r.classes == ["cats"]
    assert any("Only one class" in w and "cats" in w for w in r.warnings)
    with pytest.raises(DatasetError, match="at least two classes") as ei:
        r.require_trainable()
    assert str(root) in str(ei.value) and "cats" in str(ei.value)


def test_folder_with_no_images(tmp_path):
    root = tmp_path / "docs"
    (root / "x").mkdir(parents=True)
    (root / "x" / "a.txt").write_text("text")
    (root / "y").mkdir()
    r = scan(root)
    assert r.samples == [] and r.classes == []
    assert any(s.reason.startswith("not an image") for s in r.skipped)
    with pytest.raises(DatasetError, match="No usable images") as ei:
        r.require_trainable()
    assert str(root) in str(ei.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="No usable images"):
        scan(empty).require_trainable()


def test_same_image_in_two_classes(ds):
    src = ds / "a" / "a_003.png"
    dup = ds / "b" / "copied.png"
    dup.write_bytes(src.read_bytes())
    r = scan(ds)
    w = [x for x in r.warnings if "same image" in x.lower()]
    assert len(w) == 1
    assert "'a'" in w[0] and "'b'" in w[0] and "a/a_003.png" in w[0] and "b/copied.png" in w[0]
    # different bytes of the same size must not be called duplicates
    assert not any("a_004" in x for x in r.warnings)


def test_messy_folder_everything_at_once(ds):
    """All the bad files together: each named with its reason, every good image kept."""
    bad = {
        ds / "a" / "zero.png": "0 bytes",
        ds / "a" / "text.jpeg": "not an image",
        ds / "b" / "doc.pdf": "not an image",
        ds / "b" / "photo.heic": "HEIC",
    }
    for p in bad:
        p.write_bytes(b"" if "zero" in p.name else b"%PDF-1.4 nonsense " * 10)
    big = ds / "b" / "huge.png"
    _png_header_only(big, 12000, 12000)
    bad[big] = "too many pixels"
    r = scan(ds)
    for p, why in bad.items():
        assert why in _skip_reason(r, p)
    assert r.counts == {"a": N_GOOD, "b": N_GOOD}
    assert any(f"{len(bad)} files skipped" in w for w in r.warnings)
    _assert_rest_fine(r)
