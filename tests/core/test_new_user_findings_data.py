"""Issue 17 (data): links into the data set, the same picture under two classes, duplicates kept
on one side of the automatic split, near duplicates found, extreme aspect ratios refused."""

from __future__ import annotations

import io
import os
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tlstudio.core.data.dataset import make_split, scan
from tlstudio.core.data.synthetic import SHAPES, make_image


def make_folder(root: Path, counts: dict[str, int], size=48, seed=0) -> Path:
    rng = random.Random(seed)
    for ci, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            make_image(SHAPES[ci % len(SHAPES)], size, rng).save(root / name / f"{name}_{i:03d}.png")
    return root


def _reason(report, path: Path) -> str:
    hits = [s.reason for s in report.skipped if Path(s.path) == path]
    assert hits, f"{path} not among skipped: {[s.path for s in report.skipped]}"
    return hits[0]


# ---- item 2: links ------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_link_to_ancestor_does_not_import_other_classes(tmp_path):
    root = make_folder(tmp_path / "ds", {"cat": 10, "dog": 10})
    os.symlink("..", root / "dog" / "loop")  # dog/loop -> ds: every cat would also be a dog
    r = scan(root)
    assert r.counts == {"cat": 10, "dog": 10}
    assert "not followed" in _reason(r, root / "dog" / "loop")
    assert all("/loop/" not in s.path for s in r.samples)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_links_inside_and_outside_the_data_set(tmp_path):
    root = make_folder(tmp_path / "ds", {"cat": 6, "dog": 6})
    outside = make_folder(tmp_path / "elsewhere", {"x": 3}, seed=5) / "x"
    os.symlink(root / "cat" / "cat_000.png", root / "dog" / "alias.png")  # into the data set: never
    os.symlink(outside, root / "dog" / "more")  # outside: only when allowed
    lonely = make_folder(tmp_path / "other", {"y": 1}, seed=9) / "y" / "y_000.png"
    os.symlink(lonely, root / "cat" / "ext.png")
    r = scan(root)
    assert "inside the data set" in _reason(r, root / "dog" / "alias.png")
    assert "outside the data set" in _reason(r, root / "dog" / "more")
    assert "--follow-links" in _reason(r, root / "cat" / "ext.png")
    assert r.counts == {"cat": 6, "dog": 6}
    allowed = scan(root, follow_links=True)
    assert allowed.counts == {"cat": 7, "dog": 9}
    assert "inside the data set" in _reason(allowed, root / "dog" / "alias.png")  # still never


# ---- item 2: the same picture in two classes ------------------------------------------------
def test_same_image_under_two_classes_is_left_out_of_training(tmp_path):
    root = make_folder(tmp_path / "ds", {"cat": 8, "dog": 8})
    shutil.copy(root / "cat" / "cat_002.png", root / "dog" / "who_am_i.png")
    r = scan(root)
    assert r.counts == {"cat": 7, "dog": 8}
    used = {Path(s.path).name for s in r.samples}
    assert "cat_002.png" not in used and "who_am_i.png" not in used
    assert "ambiguous" in _reason(r, root / "dog" / "who_am_i.png")
    assert "'dog'" in _reason(r, root / "cat" / "cat_002.png")
    split = make_split(r, 0.25, seed=1)
    assert not {Path(s.path).name for s in split.train + split.val} & {"cat_002.png", "who_am_i.png"}
    # the Data step still shows the pair (and the split has no group for images it does not use)
    assert [(Path(p.a).name, Path(p.b).name, p.kind) for p in r.duplicates] == [("cat_002.png", "who_am_i.png", "exact")]
    assert r.duplicate_groups == []


# ---- item 3: duplicates stay on one side of the split; near duplicates found ---------------
def _resized_jpeg_copy(src: Path, dst: Path, scale: float = 0.75, quality: int = 80) -> None:
    im = Image.open(src).convert("RGB")
    im = im.resize((int(im.width * scale), int(im.height * scale)), Image.Resampling.LANCZOS)
    im.save(dst, quality=quality)


def test_exact_and_near_duplicates_stay_on_one_side_for_every_seed(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 12, "b": 12}, size=64)
    shutil.copy(root / "a" / "a_000.png", root / "a" / "a_000_copy.png")
    shutil.copy(root / "a" / "a_000.png", root / "a" / "a_000_copy2.png")
    _resized_jpeg_copy(root / "b" / "b_003.png", root / "b" / "b_003_small.jpg")
    r = scan(root)
    kinds = {(Path(p.a).name, Path(p.b).name): p.kind for p in r.duplicates}
    assert kinds.get(("a_000.png", "a_000_copy.png")) == "exact"
    assert kinds.get(("b_003.png", "b_003_small.jpg")) == "near"
    groups = [{Path(p).name for p in g} for g in r.duplicate_groups]
    assert {"a_000.png", "a_000_copy.png", "a_000_copy2.png"} in groups
    assert {"b_003.png", "b_003_small.jpg"} in groups
    assert len(r.duplicate_groups) == 2  # nothing else in this set looks alike
    assert any("near duplicates" in w and "b_003_small.jpg" in w for w in r.warnings)
    for seed in range(12):
        s = make_split(r, 0.5, seed=seed)
        val = {Path(x.path).name for x in s.val}
        for g in groups:
            assert g <= val or not (g & val), (seed, g, val)
        assert len(s.train) + len(s.val) == len(r.samples)
        assert {x.label for x in s.val} == {0, 1}


def test_near_duplicate_check_has_no_false_alarm_on_similar_but_different_images(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 30, "b": 30}, size=32, seed=3)
    r = scan(root)
    assert r.duplicates == [] and r.duplicate_groups == []


def test_report_json_round_trip_keeps_duplicates(tmp_path):
    from tlstudio.core.data.dataset import ScanReport

    root = make_folder(tmp_path / "ds", {"a": 6, "b": 6})
    shutil.copy(root / "a" / "a_001.png", root / "a" / "again.png")
    r = scan(root)
    back = ScanReport.from_json(r.to_json())
    assert back.duplicates == r.duplicates and back.duplicate_groups == r.duplicate_groups != []


# ---- item 8: extreme aspect ratios ----------------------------------------------------------
def test_one_pixel_high_strip_is_refused_by_scan_and_loader(tmp_path):
    from tlstudio.core.data.images import ImageError, load_rgb

    root = make_folder(tmp_path / "ds", {"a": 6, "b": 6})
    strip = root / "a" / "strip.png"
    Image.new("L", (400_000, 1), 128).save(strip)  # 1.6 KB on disk, under the pixel cap
    assert strip.stat().st_size < 10_000
    r = scan(root)
    assert "extreme shape 400000x1" in _reason(r, strip)
    with pytest.raises(ImageError, match="extreme shape"):
        load_rgb(strip)
    buf = io.BytesIO()
    Image.new("RGB", (1200, 300)).save(buf, "PNG")  # a panorama (4:1) is fine
    (root / "a" / "pano.png").write_bytes(buf.getvalue())
    assert load_rgb(root / "a" / "pano.png").size == (1200, 300)


def test_bundled_sample_has_no_false_near_duplicates_and_finds_real_copies(tmp_path):
    """Shapes on noise look alike in grey at 16x16 (mean difference down to 3.4): correlation
    keeps them apart, while a half-size JPEG copy at quality 60 is still found."""
    from tlstudio.core.paths import sample_dir

    r = scan(sample_dir())
    assert r.duplicates == [] and not any("near" in w for w in r.warnings)
    root = tmp_path / "s"
    shutil.copytree(sample_dir(), root)
    src = sorted((root / r.classes[0]).iterdir())[3]
    _resized_jpeg_copy(src, src.with_name("copy_small.jpg"), scale=0.5, quality=60)
    r2 = scan(root)
    assert [(Path(p.a).name, Path(p.b).name, p.kind) for p in r2.duplicates] == \
        [(src.name, "copy_small.jpg", "near")] or \
        [(Path(p.b).name, Path(p.a).name, p.kind) for p in r2.duplicates] == [(src.name, "copy_small.jpg", "near")]


def test_a_crowd_of_near_identical_frames_is_one_group_with_few_pairs():
    """Video frames of a still scene: thousands of near-identical looks. One group, at most one
    pair fewer than images (not millions), found without comparing every pair."""
    import numpy as np

    from tlstudio.core.data.duplicates import find_duplicates
    from tlstudio.core.data.looks import LOOK_BYTES

    rng = np.random.default_rng(0)
    frames = {f"f{i:04d}.png": np.clip(120 + rng.integers(-2, 3, LOOK_BYTES), 0, 255).astype(np.uint8).tobytes()
              for i in range(1500)}
    other = np.clip(np.linspace(0, 255, LOOK_BYTES) + rng.integers(-2, 3, LOOK_BYTES), 0, 255).astype(np.uint8)
    frames["other.png"] = other.tobytes()  # a different picture: stays out
    d = find_duplicates([(p, 100) for p in frames], {}, frames)
    assert len(d.groups) == 1 and len(d.groups[0]) == 1500 and "other.png" not in d.groups[0]
    assert len(d.pairs) == 1499 and {p.kind for p in d.pairs} == {"near"}


def test_big_sets_say_only_exact_duplicates_were_looked_for(tmp_path, monkeypatch):
    from tlstudio.core.data import dataset

    root = make_folder(tmp_path / "ds", {"a": 6, "b": 6})
    _resized_jpeg_copy(root / "a" / "a_001.png", root / "a" / "copy.jpg")
    monkeypatch.setattr(dataset, "NEAR_DUP_MAX_IMAGES", 5)
    r = scan(root)
    assert r.duplicates == [] and any("Only exact duplicates" in w and "--near-duplicates" in w for w in r.warnings)
    assert [p.kind for p in scan(root, near_duplicates=True).duplicates] == ["near"]
