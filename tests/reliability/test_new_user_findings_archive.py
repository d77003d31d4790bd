"""Issue 17 item 10: a zip bomb of many entries each under the per-entry check is refused before
anything is written; extracted archives do not pile up in the cache."""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tlstudio.core.data.archive import ArchiveError, extract_to_cache, safe_extract_zip


def test_many_small_entries_that_expand_enormously_are_refused(tmp_path):
    bomb = tmp_path / "photos.zip"
    zeros = bytes(900 * 1024)  # under the per-entry ratio check (1 MiB)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for i in range(300):
            z.writestr(f"cls{i % 2}/img_{i:03d}.bmp", zeros)
    assert bomb.stat().st_size < 1_000_000  # ~300 KB that would become ~270 MB
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="zip bomb") as err:
        safe_extract_zip(bomb, dest)
    assert "photos.zip" in str(err.value)
    assert not dest.exists() and [p.name for p in tmp_path.iterdir()] == ["photos.zip"]


def test_an_ordinary_image_archive_still_extracts(tmp_path):
    z = tmp_path / "pets.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):
            buf = io.BytesIO()
            Image.effect_noise((64, 64), 40 + i).save(buf, "PNG")
            zf.writestr(f"pets/{'cat' if i % 2 else 'dog'}/{i}.png", buf.getvalue())
            zf.writestr(f"pets/{'cat' if i % 2 else 'dog'}/{i}.bmp", bytes(20_000))  # BMP-like, compresses well
    out = safe_extract_zip(z, tmp_path / "x")
    assert len(list(out.rglob("*.png"))) == 40


def _tiny_zip(path: Path, seed: int) -> Path:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed, 0, 0)).save(buf, "PNG")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a/1.png", buf.getvalue())
        z.writestr("b/1.png", buf.getvalue())
    return path


def test_extracted_archives_are_pruned_newest_kept(tmp_path, monkeypatch):
    from tlstudio.core.data import archive

    monkeypatch.setattr(archive, "KEEP_ARCHIVES", 3)
    cache = None
    made = []
    for i in range(6):
        dest = extract_to_cache(_tiny_zip(tmp_path / f"set{i}.zip", i))
        cache = dest.parent
        made.append(dest)
        old = time.time() - (6 - i) * 86400 - 3600
        os.utime(dest, (old, old))  # used a day apart, oldest first
    extract_to_cache(_tiny_zip(tmp_path / "new.zip", 99))
    left = sorted(p.name for p in cache.iterdir())
    assert len(left) == 3 and any(n.startswith("new-") for n in left)
    assert any(n.startswith("set5-") for n in left) and not any(n.startswith("set0-") for n in left)
    # one used within the day stays even beyond the newest few (a training may be reading it)
    recent = extract_to_cache(_tiny_zip(tmp_path / "busy.zip", 50))
    for i, p in enumerate(sorted(cache.iterdir())):
        if p != recent:
            os.utime(p, (time.time() - 60 - i, time.time() - 60 - i))  # all used a minute ago
    extract_to_cache(_tiny_zip(tmp_path / "another.zip", 51))
    names = sorted(p.name.split("-")[0] for p in cache.iterdir())
    assert names == ["another", "busy", "new", "set5"]  # 4 > KEEP_ARCHIVES, none removed
    # an archive used again is fresh again: extract_to_cache touches it
    again = extract_to_cache(tmp_path / "set5.zip")
    assert again.is_dir() and time.time() - again.stat().st_mtime < 60


def test_old_extractions_and_leftover_partials_are_removed(tmp_path, monkeypatch):
    from tlstudio.core.data import archive

    first = extract_to_cache(_tiny_zip(tmp_path / "old.zip", 1))
    partial = first.parent / ".dead.partial-999999"
    partial.mkdir()
    ancient = time.time() - (archive.MAX_ARCHIVE_AGE_DAYS + 1) * 86400
    os.utime(first, (ancient, ancient))
    os.utime(partial, (ancient, ancient))
    fresh = extract_to_cache(_tiny_zip(tmp_path / "fresh.zip", 2))
    assert fresh.is_dir() and not first.exists() and not partial.exists()
