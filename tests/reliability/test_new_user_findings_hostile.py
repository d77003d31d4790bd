"""Issue 17: a messy folder and hostile inputs of our own (not the issue's): every problem is one
clear line naming the file, nothing usable is lost, nothing ends in a traceback, and every image
the scan accepts really loads."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tlstudio.cli.main import main as cli
from tlstudio.core.data.dataset import scan
from tlstudio.core.data.images import load_rgb


def _photo(seed: int, size=(48, 40), mode="RGB") -> Image.Image:
    im = Image.effect_noise(size, 30 + seed).convert("RGB")
    im.paste((seed * 37 % 255, seed * 91 % 255, 120), (4 + seed % 10, 4, 20 + seed % 10, 20))
    return im.convert(mode) if mode != "RGB" else im


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def build_messy(root: Path) -> tuple[set[str], dict[str, str]]:
    """(relative paths that must be usable, {relative path: word its skip reason must contain})."""
    good: set[str] = set()
    bad: dict[str, str] = {}
    for c in ("apple", "pear"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            _photo(i + (0 if c == "apple" else 50)).save(root / c / f"{c}_{i}.png")
            good.add(f"{c}/{c}_{i}.png")

    a = root / "apple"
    (a / "empty.jpg").write_bytes(b"")
    bad["apple/empty.jpg"] = "empty"
    whole = _jpeg(_photo(7, (96, 96)))
    (a / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    bad["apple/cut.jpg"] = "truncated"
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: a 60 KB EXIF block
    exif[0x0112] = 6  # rotated 90 degrees
    (a / "huge_exif.jpg").write_bytes(_jpeg(_photo(8), exif=exif.tobytes()))
    good.add("apple/huge_exif.jpg")
    broken_exif = bytearray(_jpeg(_photo(9)))
    broken_exif[2:2] = b"\xff\xe1\x00\x10Exif\x00\x00II*\x00\xff\xff\xff\xff"  # EXIF pointing nowhere
    (a / "broken_exif.jpg").write_bytes(bytes(broken_exif))
    good.add("apple/broken_exif.jpg")
    (a / "really_png.jpg").write_bytes(_png_bytes(_photo(10)))  # wrong extension, fine content
    good.add("apple/really_png.jpg")
    (a / "LOUD.JPEG").write_bytes(_jpeg(_photo(11)))
    good.add("apple/LOUD.JPEG")
    (a / "notes.png").write_text("these are my notes, not a picture\n")
    bad["apple/notes.png"] = "not an image"
    _photo(12).convert("CMYK").save(a / "print.jpg")
    good.add("apple/print.jpg")
    Image.new("I;16", (40, 40), 40_000).save(a / "depth16.png")
    good.add("apple/depth16.png")
    frames = [_photo(13 + k) for k in range(3)]
    frames[0].save(a / "anim.gif", save_all=True, append_images=frames[1:])
    good.add("apple/anim.gif")
    (a / "line\nbreak.png").write_bytes(_png_bytes(_photo(16)))  # a newline in the name: usable
    good.add("apple/line\nbreak.png")
    (a / "tab\tand\x1bescape.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # broken + control chars
    bad["apple/tab\tand\x1bescape.png"] = "image"
    os.mkfifo(a / "pipe.png")
    bad["apple/pipe.png"] = "not a regular file"
    (a / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # system clutter: ignored silently
    (a / "._apple_0.png").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble
    (a / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")

    p = root / "pear"
    deep = p
    for k in range(70):
        deep = deep / f"d{k}"
    deep.mkdir(parents=True)
    _photo(17).save(deep / "lost.png")
    bad["pear/" + "/".join(f"d{k}" for k in range(65))] = "nested"
    os.symlink(p, p / "self")  # a loop
    bad["pear/self"] = "loop"
    os.symlink(p / "gone.png", p / "dangling.png")
    bad["pear/dangling.png"] = "broken link"
    (p / "huge_header.png").write_bytes(_png_header(70_000, 70_000))
    bad["pear/huge_header.png"] = "too many pixels"
    (p / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    bad["pear/photo.heic"] = "HEIC"
    (p / "readme.txt").write_text("hello")
    bad["pear/readme.txt"] = "not an image"
    Image.new("RGB", (4000, 20), "red").save(p / "banner.png")  # 200:1
    bad["pear/banner.png"] = "extreme shape"
    (root / "loose.png").write_bytes(_png_bytes(_photo(18)))  # beside the class folders
    bad["loose.png"] = "not inside a class folder"
    return good, bad


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _png_header(w: int, h: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def test_messy_folder_every_problem_one_line_nothing_lost(tmp_path, capsys):
    root = tmp_path / "messy"
    good, bad = build_messy(root)
    r = scan(root)
    used = {os.path.relpath(s.path, root) for s in r.samples}
    assert used == good, (used ^ good)
    for s in r.skipped:
        assert "\n" not in s.reason and "\n" not in s.path and "\x1b" not in s.path, s
    reasons = {os.path.relpath(s.path, root): s.reason for s in r.skipped}
    printable = {k.replace("\t", "\\t").replace("\x1b", "\\x1b"): v for k, v in bad.items()}
    for rel, word in printable.items():
        assert rel in reasons, (rel, sorted(reasons))
        assert word.lower() in reasons[rel].lower(), (rel, reasons[rel])
    assert len(r.skipped) == len(bad)  # nothing else, and the clutter is silent
    for s in r.samples:  # what the scan accepts, training can load
        assert load_rgb(s.path).mode == "RGB"
    rotated = load_rgb(root / "apple" / "huge_exif.jpg")
    assert rotated.size == (40, 48)  # EXIF orientation applied

    assert cli(["scan", str(root)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and err == ""
    lines = out.splitlines()
    for rel in printable:  # each problem on exactly one line, with the file and the reason
        hits = [ln for ln in lines if rel.split("/")[-1] in ln and ":" in ln]
        assert len(hits) >= 1, rel
    assert not any(ln.strip() == "break.png" for ln in lines)  # the newline did not split a line


def test_csv_labels_with_bom_crlf_quotes_and_other_encodings(tmp_path):
    root = tmp_path / "csvset"
    root.mkdir()
    names = []
    for i in range(8):
        n = f"café, n°{i}.png" if i % 2 else f"img {i}.png"
        _photo(i).save(root / n)
        names.append(n)
    rows = [f'"{n}",{"fruit" if i < 4 else "leaf"}' for i, n in enumerate(names)]
    text = "path,label\r\n" + "\r\n".join(rows) + "\r\n"
    (root / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # Excel: BOM + CRLF
    r = scan(root)
    assert r.layout == "csv" and r.counts == {"fruit": 4, "leaf": 4} and not r.skipped

    (root / "labels.csv").write_bytes(text.encode("utf-16"))  # Excel's "Unicode text"
    assert scan(root).counts == {"fruit": 4, "leaf": 4}

    (root / "labels.csv").write_bytes(text.encode("cp1252"))  # an older Windows export
    r = scan(root)
    assert r.counts == {"fruit": 4, "leaf": 4}
    assert any("Windows-1252" in w for w in r.warnings)


def _without_read_override(code: str, arg: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """Run python `code` with `arg` as root minus the right to read what permissions forbid."""
    return subprocess.run(["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c",
                           'exec "$0" -c "$TLS_CODE" "$1"', sys.executable, arg],
                          capture_output=True, text=True, env={**env, "TLS_CODE": code}, cwd=str(cwd), timeout=300)


def test_folder_and_files_this_user_cannot_read(tmp_path):
    """Permissions, checked without root's power to read everything (capsh drops it)."""
    if os.geteuid() != 0 or shutil.which("capsh") is None:
        pytest.skip("needs root and capsh to take away the permission override")
    root = tmp_path / "ds"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            _photo(i + (0 if c == "a" else 40)).save(root / c / f"{i}.png")
    (root / "a" / "secret.png").write_bytes(_png_bytes(_photo(30)))
    os.chmod(root / "a" / "secret.png", 0o000)
    (root / "b" / "locked").mkdir()
    _photo(31).save(root / "b" / "locked" / "x.png")
    os.chmod(root / "b" / "locked", 0o000)
    code = "import sys; from tlstudio.cli.main import main; sys.exit(main(['scan', sys.argv[1], '--json']))"
    env = dict(os.environ)
    try:
        p = _without_read_override(code, str(root), env, tmp_path)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        import json

        rep = json.loads(p.stdout)
        skipped = {os.path.relpath(s["path"], root): s["reason"] for s in rep["skipped"]}
        assert "permission denied" in skipped["a/secret.png"]
        assert "permission denied" in skipped["b/locked"]
        assert rep["counts"] == {"a": 5, "b": 5}
        p = _without_read_override(code, str(root / "b" / "locked"), env, tmp_path)
        assert p.returncode == 2 and "Traceback" not in p.stderr and "permission denied" in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    finally:
        os.chmod(root / "b" / "locked", 0o755)
        os.chmod(root / "a" / "secret.png", 0o644)
