"""tlstudio.core.data.dataset: layouts, warnings, fingerprint, progress/stop, split, class matching."""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tlstudio.core.data.dataset import (
    DatasetError,
    Sample,
    ScanCancelled,
    ScanReport,
    Split,
    make_split,
    match_classes,
    scan,
    scan_unlabelled,
)
from tlstudio.core.data.synthetic import SHAPES, make_image


def make_folder(root: Path, counts: dict[str, int], size=24, seed=0, fmt="png") -> Path:
    rng = random.Random(seed)
    for ci, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            make_image(SHAPES[ci % len(SHAPES)], size, rng).save(root / name / f"{name}_{i:03d}.{fmt}")
    return root


# ----------------------------------------------------------------------------- layouts


def test_class_folders_nested(tmp_path):
    root = make_folder(tmp_path / "ds", {"cat": 4, "dog": 5})
    (root / "cat" / "indoor" / "deeper").mkdir(parents=True)
    # a new picture (a copy of a dog would now be left out as the same image under two classes)
    Image.new("RGB", (16, 16), (10, 200, 30)).save(root / "cat" / "indoor" / "deeper" / "x.png")
    r = scan(root)
    assert r.layout == "folders" and r.presplit is None
    assert r.classes == ["cat", "dog"] and r.counts == {"cat": 5, "dog": 5}
    nested = [s for s in r.samples if s.path.endswith("x.png")]
    assert nested == [Sample(str(root / "cat" / "indoor" / "deeper" / "x.png"), 0)]
    assert all(r.classes[s.label] in Path(s.path).relative_to(root).parts[0] for s in r.samples)
    # an image dropped next to the class folders is named, a README is not data
    Image.new("RGB", (8, 8)).save(root / "stray.png")
    (root / "README.md").write_text("hi")
    r2 = scan(root)
    assert [(Path(s.path).name, s.reason) for s in r2.skipped] == [("stray.png", "not inside a class folder")]


def test_presplit_layout(tmp_path):
    root = tmp_path / "ds"
    make_folder(root / "train", {"a": 6, "b": 6})
    make_folder(root / "val", {"a": 2, "b": 2}, seed=1)
    make_folder(root / "test", {"a": 1, "b": 2}, seed=2)
    shutil.copy(root / "train" / "a" / "a_000.png", root / "val" / "a" / "leak.png")
    r = scan(root)
    assert r.layout == "split" and r.classes == ["a", "b"]
    assert set(r.presplit) == {"train", "val", "test"}
    assert r.split_counts == {"train": {"a": 6, "b": 6}, "val": {"a": 3, "b": 2}, "test": {"a": 1, "b": 2}}
    assert r.counts == {"a": 10, "b": 10} and len(r.samples) == 20
    leak = [w for w in r.warnings if "both train and val" in w]
    assert len(leak) == 1 and "train/a/a_000.png" in leak[0] and "val/a/leak.png" in leak[0]
    s = make_split(r, seed=3)
    assert s.train == r.presplit["train"] and s.val == r.presplit["val"] and s.test == r.presplit["test"]


def test_presplit_train_and_test_only_makes_val_from_train(tmp_path):
    root = tmp_path / "ds"
    make_folder(root / "Training", {"a": 10, "b": 10})
    make_folder(root / "Test", {"a": 2, "b": 2}, seed=1)
    r = scan(root)
    assert r.layout == "split" and set(r.presplit) == {"train", "test"}
    s = make_split(r)
    assert len(s.test) == 4 and len(s.val) == 4 and len(s.train) == 16
    assert not {x.path for x in s.val} & {x.path for x in s.train}


def test_single_wrapper_folder_is_entered(tmp_path):
    make_folder(tmp_path / "outer" / "flowers", {"daisy": 3, "rose": 3})
    r = scan(tmp_path / "outer")
    assert r.classes == ["daisy", "rose"] and r.root == str((tmp_path / "outer" / "flowers").resolve())
    assert any("flowers" in w for w in r.warnings)


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_layout(tmp_path):
    root = tmp_path / "ds"
    make_folder(root / "imgs", {"x": 4, "y": 4})
    outside = make_folder(tmp_path / "elsewhere", {"z": 1})
    lines = ["filename,label"]
    lines += [f"imgs/x/x_{i:03d}.png,cat" for i in range(4)]
    lines += [f"imgs/y/y_{i:03d}.png,dog" for i in range(4)]
    lines += [
        "../elsewhere/z/z_000.png,cat",  # escapes the CSV's folder: refused
        f"{outside / 'z' / 'z_000.png'},dog",  # absolute outside: refused
        f"{root / 'imgs' / 'x' / 'x_000.png'},cat",  # absolute inside, but listed twice
        "imgs/missing.png,dog",
        "imgs/x/x_001.png,",  # no label
        "",
    ]
    csv_file = _write_csv(root / "labels.csv", "\n".join(lines))
    for r in (scan(root, csv_path=csv_file), scan(csv_file), scan(root)):  # explicit, CSV as path, found
        assert r.layout == "csv"
        assert r.classes == ["cat", "dog"] and r.counts == {"cat": 4, "dog": 4}
        assert r.csv_path == str(csv_file.resolve())
        reasons = {Path(s.path).name: s.reason for s in r.skipped}
        assert "outside the CSV's folder" in reasons["z_000.png"]
        assert sum("outside" in s.reason for s in r.skipped) == 2
        assert "listed more than once" in reasons["x_000.png"]
        assert "not found" in reasons["missing.png"] and "line 13" in reasons["missing.png"]
        assert "no label" in reasons["x_001.png"]


def test_csv_without_header_and_split_column(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 5, "b": 5})
    rows = [f"{c}/{c}_{i:03d}.png,{c}" for c in "ab" for i in range(5)]
    _write_csv(tmp_path / "ds" / "plain.csv", "\n".join(rows))
    r = scan(root / "plain.csv")
    assert r.layout == "csv" and r.counts == {"a": 5, "b": 5} and r.presplit is None
    rows = ["path,label,split"] + [f"{c}/{c}_{i:03d}.png,{c},{'val' if i == 0 else 'train'}" for c in "ab" for i in range(5)]
    _write_csv(tmp_path / "ds" / "split.csv", "\n".join(rows))
    r = scan(root / "split.csv")
    assert r.presplit is not None and len(r.presplit["val"]) == 2 and len(r.presplit["train"]) == 8
    assert make_split(r).val == r.presplit["val"]


def test_csv_alone_in_folder_is_used(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    rng = random.Random(0)
    rows = ["image,class"]
    for i in range(6):
        make_image(SHAPES[i % 2], 16, rng).save(root / f"{i}.png")
        rows.append(f"{i}.png,{'even' if i % 2 == 0 else 'odd'}")
    _write_csv(root / "labels.csv", "\n".join(rows))
    r = scan(root)
    assert r.layout == "csv" and r.counts == {"even": 3, "odd": 3}


def test_bad_paths(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        scan(tmp_path / "nope")
    img = tmp_path / "one.png"
    Image.new("RGB", (4, 4)).save(img)
    with pytest.raises(DatasetError, match="is a file"):
        scan(img)


# ----------------------------------------------------------------------------- warnings


def test_small_class_and_imbalance_warnings(tmp_path):
    r = scan(make_folder(tmp_path / "ds", {"big": 44, "tiny": 3, "mid": 8}))
    small = [w for w in r.warnings if "only 3 images" in w]
    assert len(small) == 1 and "'tiny'" in small[0]
    imb = [w for w in r.warnings if "imbalanced" in w]
    assert len(imb) == 1 and "15:1" in imb[0] and "'big'" in imb[0] and "'tiny'" in imb[0]
    r2 = scan(make_folder(tmp_path / "ok", {"a": 10, "b": 6}))
    assert r2.warnings == []


def test_duplicates_within_class_reported(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 5, "b": 5})
    shutil.copy(root / "a" / "a_000.png", root / "a" / "copy.png")
    r = scan(root)
    assert any("duplicates within their class" in w and "a/copy.png" in w for w in r.warnings)
    assert not any("same image" in w.lower() for w in r.warnings)


# ----------------------------------------------------------------------------- speed plumbing


def test_fingerprint_stable_and_sensitive(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 6, "b": 6})
    f1 = scan(root, workers=4).fingerprint
    assert scan(root, workers=1).fingerprint == f1 == scan(root).fingerprint
    r_parallel, r_serial = scan(root, workers=4), scan(root, workers=1)
    assert r_parallel.samples == r_serial.samples and r_parallel.skipped == r_serial.skipped
    p = root / "a" / "a_000.png"
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    assert scan(root).fingerprint != f1
    f2 = scan(root).fingerprint
    shutil.copy(p, root / "b" / "new.png")
    assert scan(root).fingerprint != f2


def test_progress_reports_and_ends_at_total(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 20, "b": 20})
    calls: list[tuple[int, int | None]] = []
    scan(root, progress=lambda d, t: calls.append((d, t)), workers=3)
    known = [c for c in calls if c[1] is not None]
    assert known[0] == (0, 40) and known[-1] == (40, 40)
    assert [d for d, _ in known] == sorted(d for d, _ in known)


def test_stop_event(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 30, "b": 30})
    stop = threading.Event()
    stop.set()
    with pytest.raises(ScanCancelled):
        scan(root, stop=stop)
    stop2 = threading.Event()

    def progress(done, total):
        if total and done > 0:
            stop2.set()  # e.g. the user pressed Cancel mid-scan

    with pytest.raises(ScanCancelled, match="stopped"):
        scan(root, stop=stop2, progress=progress, workers=1)


def test_header_checks_in_worker_processes_match_one_process(tmp_path, monkeypatch):
    """Big header-only scans run in spawned processes (threads only fought over the GIL): same
    samples, same skipped files with the same reasons, same duplicate warnings, progress to the end."""
    from tlstudio.core.data import probing

    root = make_folder(tmp_path / "ds", {"a": 12, "b": 12})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "b" / "empty.jpg").write_bytes(b"")
    shutil.copy(root / "a" / "a_000.png", root / "a" / "copy.png")
    serial = scan(root, workers=1)
    monkeypatch.setattr(probing, "PROCESS_SCAN_MIN", 8)
    monkeypatch.setattr(probing, "_probe_memo", {})  # probe again, in the workers
    import concurrent.futures

    submitted = []

    class Recording(concurrent.futures.ProcessPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            submitted.append(fn.__name__)
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Recording)
    calls: list = []
    multi = scan(root, workers=2, progress=lambda d, t: calls.append((d, t)))
    assert len(submitted) >= 2 and set(submitted) == {"probe_chunk"}  # chunks went to the processes
    assert multi.samples == serial.samples and multi.skipped == serial.skipped
    assert {s.reason for s in multi.skipped} >= {"empty file (0 bytes)"} and len(multi.skipped) == 2
    assert multi.warnings == serial.warnings and any("copy.png" in w for w in multi.warnings)
    assert calls[-1] == (27, 27)


def test_rescanning_an_unchanged_folder_reuses_probes_and_sees_changed_files(tmp_path, monkeypatch):
    from tlstudio.core.data import probing

    root = make_folder(tmp_path / "ds", {"a": 6, "b": 6})
    first = scan(root, workers=1)
    probed: list[str] = []
    real = probing.probe_file
    monkeypatch.setattr(probing, "probe_file", lambda p, *a, **k: probed.append(p) or real(p, *a, **k))
    again = scan(root, workers=1)
    assert probed == [] and again.samples == first.samples  # e.g. training right after the Data step
    bad = root / "a" / "a_001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken now")
    os.utime(bad, ns=(bad.stat().st_atime_ns, bad.stat().st_mtime_ns + 10**9))
    third = scan(root, workers=1)
    assert probed == [str(bad)]  # only the changed file is probed again
    assert [s.path for s in third.skipped] == [str(bad)]
    # files with a problem are not remembered: fixed in place (e.g. permissions), they are seen
    scan(root, workers=1)
    assert probed == [str(bad)] * 2


def test_spawn_is_refused_for_an_unguarded_main_script(tmp_path, monkeypatch):
    import sys
    import types

    from tlstudio.core.data import probing

    fake = types.ModuleType("__main__")
    fake.__file__ = str(tmp_path / "script.py")
    (tmp_path / "script.py").write_text("from tlstudio.core.data.dataset import scan\nscan('x')\n")
    monkeypatch.setitem(sys.modules, "__main__", fake)
    assert probing.spawn_is_safe() is False  # a child would run the script again
    (tmp_path / "script.py").write_text("def main():\n    pass\n\nif __name__ == '__main__':\n    main()\n")
    assert probing.spawn_is_safe() is True


# ----------------------------------------------------------------------------- split


def test_make_split_stratified_seeded(tmp_path):
    r = scan(make_folder(tmp_path / "ds", {"a": 10, "b": 5, "c": 2, "d": 1}))
    s = make_split(r, seed=0)
    val = Counter(r.classes[x.label] for x in s.val)
    train = Counter(r.classes[x.label] for x in s.train)
    assert val == {"a": 2, "b": 1, "c": 1}  # every class with >= 2 images gets >= 1 val image
    assert train == {"a": 8, "b": 4, "c": 1, "d": 1}
    assert not {x.path for x in s.val} & {x.path for x in s.train}
    assert make_split(r, seed=0) == s
    shuffled = ScanReport.from_json(r.to_json())
    shuffled.samples = list(reversed(shuffled.samples))
    assert make_split(shuffled, seed=0) == s  # scan order never matters
    assert any(make_split(r, seed=k).val != s.val for k in range(1, 6))
    s5 = make_split(r, val_fraction=0.5, seed=0)
    assert Counter(r.classes[x.label] for x in s5.val) == {"a": 5, "b": 2, "c": 1}
    assert make_split(r, val_fraction=0.0).val == []
    with pytest.raises(DatasetError):
        make_split(r, val_fraction=1.0)


def test_split_json_round_trip(tmp_path):
    r = scan(make_folder(tmp_path / "ds", {"a": 5, "b": 5}))
    s = make_split(r, val_fraction=0.3, seed=7)
    d = json.loads(json.dumps(s.to_json()))
    assert all(isinstance(p, str) for p, _ in d["train"])
    assert Split.from_json(d) == s
    r2 = ScanReport.from_json(json.loads(json.dumps(r.to_json())))
    assert r2 == r


# ----------------------------------------------------------------------------- classes and unlabelled


def test_match_classes(tmp_path):
    r = scan(make_folder(tmp_path / "ds", {"cat": 3, "dog": 4}))
    m = match_classes(r, ["dog", "bird", "cat"])
    assert m.classes == ["dog", "bird", "cat"] and m.counts == {"dog": 4, "bird": 0, "cat": 3}
    by_name = {Path(s.path).name: m.classes[s.label] for s in m.samples}
    assert by_name["cat_000.png"] == "cat" and by_name["dog_003.png"] == "dog"
    assert m.fingerprint == r.fingerprint
    with pytest.raises(DatasetError, match="'cat'") as ei:
        match_classes(r, ["dog", "bird"])
    assert str(r.root) in str(ei.value)


def test_scan_unlabelled(tmp_path):
    root = make_folder(tmp_path / "u", {"x": 3, "y": 2})
    (root / "y" / "bad.jpg").write_text("nope")
    (root / ".DS_Store").write_text("x")
    samples, skipped = scan_unlabelled(root)
    assert len(samples) == 5 and all(s.label == -1 for s in samples)
    assert [Path(s.path).name for s in skipped] == ["bad.jpg"]
    one, sk = scan_unlabelled(root / "x" / "x_000.png")
    assert [s.path for s in one] == [str(root / "x" / "x_000.png")] and sk == []
    with pytest.raises(DatasetError):
        scan_unlabelled(tmp_path / "missing")


def test_sample_data_set_is_trainable():
    from tlstudio.core.paths import sample_dir

    r = scan(sample_dir())
    r.require_trainable()
    assert len(r.classes) >= 3 and min(r.counts.values()) >= 20
    assert r.skipped == [] and r.warnings == []
    total = sum(p.stat().st_size for p in sample_dir().rglob("*") if p.is_file())
    assert total <= 600 * 1024


def test_big_files_equal_at_both_ends_are_not_duplicates(tmp_path):
    """The quick hash reads only the ends of big files; a full hash must confirm a match."""
    import numpy as np

    root = make_folder(tmp_path / "ds", {"a": 5, "b": 5})
    arr = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)  # ~270 KB BMP
    Image.fromarray(arr).save(root / "a" / "big.bmp")
    arr[150, 150] ^= 0xFF  # differs only in the middle of the file
    Image.fromarray(arr).save(root / "b" / "big.bmp")
    assert (root / "a" / "big.bmp").stat().st_size > 2 * 64 * 1024
    r = scan(root)
    assert not any("same image" in w.lower() for w in r.warnings)
    shutil.copy(root / "a" / "big.bmp", root / "b" / "copy.bmp")
    r = scan(root)
    assert any("same image" in w.lower() and "a/big.bmp = b/copy.bmp" in w for w in r.warnings)
