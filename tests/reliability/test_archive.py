"""Issue 6, "Archives": a dropped .zip is extracted safely or refused with a clear message."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tlstudio.core.data.archive import ArchiveError, extract_to_cache, safe_extract_zip
from tlstudio.core.data.dataset import scan
from tlstudio.core.errors import UserError


def _png_bytes(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in entries:
            z.writestr(name, data)
    return path


def _dataset_entries(prefix: str = "pets/") -> list[tuple[str, bytes]]:
    out = []
    for cls, color in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        for i in range(3):
            out.append((f"{prefix}{cls}/{i}.png", _png_bytes((color[0] + i, color[1], color[2]))))
    return out


def _assert_nothing_left(dest: Path) -> None:
    assert not dest.exists()
    assert not dest.parent.exists() or not any(p.name.startswith(f".{dest.name}.partial") for p in dest.parent.iterdir())


def test_good_archive_extracts_and_scans(tmp_path):
    z = _zip(tmp_path / "pets.zip", _dataset_entries() + [("__MACOSX/pets/cat/._0.png", b"junk"), ("pets/.DS_Store", b"x")])
    dest = safe_extract_zip(z, tmp_path / "out")
    assert dest == tmp_path / "out"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png")) == [
        "pets/cat/0.png", "pets/cat/1.png", "pets/cat/2.png", "pets/dog/0.png", "pets/dog/1.png", "pets/dog/2.png",
    ]
    assert not (dest / "__MACOSX").exists() and not (dest / "pets" / ".DS_Store").exists()
    r = scan(dest)  # the single wrapper folder "pets" is entered automatically
    assert r.classes == ["cat", "dog"] and r.counts == {"cat": 3, "dog": 3}


def test_scan_accepts_a_zip_directly(tmp_path):
    z = _zip(tmp_path / "pets.zip", _dataset_entries())
    r = scan(z)
    assert r.classes == ["cat", "dog"]
    assert r.root.startswith(os.environ["TLSTUDIO_HOME"])  # extracted into the user cache
    assert extract_to_cache(z) == extract_to_cache(z)  # extracted once, reused


@pytest.mark.parametrize("evil", ["../evil.png", "pets/../../evil.png", "..\\evil.png", "a/b/../../../evil.png"])
def test_path_traversal_refused(tmp_path, evil):
    z = _zip(tmp_path / "bad.zip", _dataset_entries() + [(evil, b"x")])
    dest = tmp_path / "sub" / "out"
    with pytest.raises(ArchiveError) as ei:
        safe_extract_zip(z, dest)
    assert "bad.zip" in str(ei.value) and evil in str(ei.value)
    assert isinstance(ei.value, UserError)
    _assert_nothing_left(dest)
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "sub" / "evil.png").exists()


@pytest.mark.parametrize("evil", ["/etc/evil.png", "C:/Windows/evil.png", "C:evil.png", "\\\\server\\share\\evil.png"])
def test_absolute_paths_and_drive_letters_refused(tmp_path, evil):
    z = _zip(tmp_path / "abs.zip", [(evil, b"x")])
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="outside the archive folder") as ei:
        safe_extract_zip(z, dest)
    assert evil in str(ei.value)
    _assert_nothing_left(dest)


def test_zip_bomb_ratio_refused(tmp_path):
    z = _zip(tmp_path / "bomb.zip", [("pets/cat/0.png", _png_bytes((1, 2, 3))), ("pets/zeros.bmp", b"\0" * (8 << 20))])
    info = zipfile.ZipFile(z).getinfo("pets/zeros.bmp")
    assert info.file_size / info.compress_size > 500
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="zip bomb") as ei:
        safe_extract_zip(z, dest, max_ratio=100)
    assert "bomb.zip" in str(ei.value) and "pets/zeros.bmp" in str(ei.value)
    _assert_nothing_left(dest)


def test_total_size_capped(tmp_path):
    entries = [(f"d/c{i % 2}/{i}.bin", bytes([i]) * 300_000) for i in range(10)]  # 3 MB total
    z = _zip(tmp_path / "big.zip", entries, compression=zipfile.ZIP_STORED)
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="exceeds the limit") as ei:
        safe_extract_zip(z, dest, max_total_bytes=1_000_000)
    assert "big.zip" in str(ei.value)
    _assert_nothing_left(dest)
    assert safe_extract_zip(z, dest, max_total_bytes=10_000_000) == dest  # under the cap: fine


def test_lying_header_caught_while_extracting(tmp_path):
    """A member whose real data is bigger than its declared size is stopped on the real bytes."""
    z = _zip(tmp_path / "liar.zip", [("d/a.bin", b"A" * 50_000)], compression=zipfile.ZIP_STORED)
    raw = bytearray(z.read_bytes())
    # shrink the declared uncompressed size in the central directory only
    cd = raw.rindex(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = (1000).to_bytes(4, "little")
    z.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError):
        safe_extract_zip(z, tmp_path / "out")
    _assert_nothing_left(tmp_path / "out")


def test_symlink_entries_not_created(tmp_path):
    link = zipfile.ZipInfo("pets/cat/passwd.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = _zip(tmp_path / "links.zip", _dataset_entries() + [(link, b"/etc/passwd")])
    skipped: list = []
    dest = safe_extract_zip(z, tmp_path / "out", skipped=skipped)
    target = dest / "pets" / "cat" / "passwd.png"
    assert not target.exists() and not target.is_symlink()
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert len(skipped) == 1 and "passwd.png" in skipped[0].path and "symbolic link" in skipped[0].reason
    assert len(list(dest.rglob("*.png"))) == 6


def test_not_a_zip_and_nonempty_destination(tmp_path):
    fake = tmp_path / "fake.zip"
    fake.write_text("not a zip")
    with pytest.raises(ArchiveError, match="fake.zip is not a readable zip"):
        safe_extract_zip(fake, tmp_path / "out")
    z = _zip(tmp_path / "ok.zip", _dataset_entries())
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ArchiveError, match="not empty"):
        safe_extract_zip(z, busy)
    assert (busy / "keep.txt").read_text() == "mine"


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile warns when the test writes the clash
@pytest.mark.parametrize("second", ["d/x.png", "d/x.png/inner.png", "d/x.png/"])
def test_clashing_entries_refused_cleanly(tmp_path, second):
    z = _zip(tmp_path / "clash.zip", [("d/x.png", _png_bytes((1, 1, 1))), (second, b"y")])
    with pytest.raises(ArchiveError, match="clash.zip"):
        safe_extract_zip(z, tmp_path / "out")
    _assert_nothing_left(tmp_path / "out")


def test_corrupt_member_data(tmp_path):
    z = _zip(tmp_path / "crc.zip", [("d/a.bin", b"hello world" * 1000)])
    raw = bytearray(z.read_bytes())
    i = raw.index(b"d/a.bin") + len("d/a.bin") + 5  # inside the compressed data of the first member
    raw[i] ^= 0xFF
    z.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="corrupt"):
        safe_extract_zip(z, tmp_path / "out")
    _assert_nothing_left(tmp_path / "out")
