"""Anomaly data: a folder of normal images, or the MVTec AD layout.

Layouts recognised (by listing folders only, no decoding):
  normal       DIR/*.png (any tree without defect folders), or DIR/good/ alone
  good_defects DIR/good/ + DIR/<defect type>/ ... (labelled defects for the evaluation only)
  mvtec        DIR/train/good/, DIR/test/good/, DIR/test/<defect>/,
               optional DIR/ground_truth/<defect>/<name>_mask.png
Bad files are skipped with reasons by the data layer's own probing (dataset.scan_unlabelled).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from tlstudio.core.data.dataset import DatasetError, SkippedFile, scan_unlabelled
from tlstudio.core.data.images import IMAGE_EXTENSIONS, is_hidden_name

NORMAL_NAMES = ("good", "normal", "ok")
MASK_SUFFIXES = ("_mask", "")
MIN_NORMAL = 4
_LIST_CAP = 200_000  # detect() stops counting here (it must stay instant)

Layout = Literal["normal", "good_defects", "mvtec"]


@dataclass(frozen=True)
class TestImage:
    path: str
    label: int  # 0 good, 1 defect, -1 unknown (a plain folder of images to score)
    defect: str  # "good", the defect type, or "" when unknown
    mask: str | None = None  # ground-truth mask (white = defect)


@dataclass
class AnomalyData:
    root: str
    layout: Layout
    normal: list[str]  # normal images to learn from
    test: list[TestImage] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def defect_types(self) -> list[str]:
        return sorted({t.defect for t in self.test if t.label == 1})

    @property
    def n_masks(self) -> int:
        return sum(1 for t in self.test if t.mask)

    def counts(self) -> dict[str, int]:
        out = {"normal": len(self.normal), "test_good": sum(1 for t in self.test if t.label == 0)}
        for d in self.defect_types:
            out[d] = sum(1 for t in self.test if t.defect == d)
        return out

    def summary(self) -> str:
        parts = [f"{len(self.normal)} normal images"]
        if self.test:
            n_def = sum(1 for t in self.test if t.label == 1)
            parts.append(f"{n_def} defect images of {len(self.defect_types)} types"
                         f" ({', '.join(self.defect_types)})" if n_def else "no defect images")
            if self.n_masks:
                parts.append(f"{self.n_masks} masks")
        if self.skipped:
            parts.append(f"{len(self.skipped)} files skipped")
        return ", ".join(parts)

    def to_json(self) -> dict:
        return {
            "root": self.root, "layout": self.layout, "counts": self.counts(),
            "defect_types": self.defect_types, "n_masks": self.n_masks,
            "normal": self.normal, "test": [asdict(t) for t in self.test],
            "skipped": [asdict(s) for s in self.skipped], "warnings": self.warnings,
        }


def _dirs(p: Path) -> dict[str, Path]:
    try:
        return {e.name: Path(e.path) for e in os.scandir(p) if e.is_dir() and not is_hidden_name(e.name)
                and e.name != "__MACOSX"}
    except OSError:
        return {}


def _normal_dir(dirs: dict[str, Path]) -> str | None:
    for name in dirs:
        if name.lower() in NORMAL_NAMES:
            return name
    return None


def _count_images(p: Path, cap: int = _LIST_CAP) -> int:
    n = 0
    for root, dnames, files in os.walk(p):
        dnames[:] = [d for d in dnames if not is_hidden_name(d)]
        n += sum(1 for f in files if not is_hidden_name(f) and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
        if n >= cap:
            break
    return n


def _direct_images(p: Path) -> int:
    try:
        return sum(1 for e in os.scandir(p) if e.is_file() and not is_hidden_name(e.name)
                   and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
    except OSError:
        return 0


def layout_of(path: str | os.PathLike) -> Layout | None:
    """Which anomaly layout a folder has, from folder names only; None when it is not one
    (several class folders without a "good" one are a classification data set)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return None
    dirs = _dirs(p)
    if "train" in dirs and _normal_dir(_dirs(dirs["train"])):
        return "mvtec"
    good = _normal_dir(dirs)
    if good:
        others = [d for d in dirs if d != good and d.lower() not in ("ground_truth", "masks")]
        return "good_defects" if others else "normal"
    if not dirs:
        return "normal" if _direct_images(p) else None
    return "normal" if len(dirs) == 1 or _direct_images(p) and not any(_direct_images(d) for d in dirs.values()) else None


def detect(path: str) -> str | None:
    """One line saying why this folder suits anomaly detection, or None. No decoding."""
    try:
        layout = layout_of(path)
    except OSError:
        return None
    if layout is None:
        return None
    p = Path(path).expanduser()
    dirs = _dirs(p)
    if layout == "mvtec":
        train_good = _dirs(dirs["train"])[_normal_dir(_dirs(dirs["train"]))]
        n = _count_images(train_good)
        test = _dirs(dirs["test"]) if "test" in dirs else {}
        defects = [d for d in test if d.lower() not in NORMAL_NAMES]
        masks = " with masks" if "ground_truth" in dirs else ""
        return f"{n} normal training images, {len(defects)} defect types to test{masks} (MVTec layout): anomaly detection"
    if layout == "good_defects":
        good = _normal_dir(dirs)
        defects = [d for d in dirs if d != good and d.lower() not in ("ground_truth", "masks")]
        return (f"{_count_images(dirs[good])} good images and {len(defects)} defect folders: "
                "anomaly detection (learn from the good ones)")
    n = _count_images(p)
    if n < MIN_NORMAL:
        return None
    return f"{n} images of one kind, no defects: anomaly detection (learn what normal looks like)"


def find_mask(gt_root: Path | None, defect: str, image_path: str) -> str | None:
    if gt_root is None:
        return None
    stem = Path(image_path).stem
    folder = gt_root / defect
    for suffix in MASK_SUFFIXES:
        for ext in (".png", ".bmp", ".tif", ".jpg"):
            cand = folder / f"{stem}{suffix}{ext}"
            if cand.is_file():
                return str(cand)
    return None


def _scan(p: Path, progress, stop) -> tuple[list[str], list[SkippedFile]]:
    samples, skipped = scan_unlabelled(p, progress=progress, stop=stop)
    return [s.path for s in samples], skipped


def _labelled_test(test_root: Path, gt_root: Path | None, progress, stop) -> tuple[list[TestImage], list[SkippedFile]]:
    test, skipped = [], []
    for name, d in sorted(_dirs(test_root).items()):
        if name.lower() in ("ground_truth", "masks"):
            continue
        paths, skip = _scan(d, progress, stop)
        skipped += skip
        good = name.lower() in NORMAL_NAMES
        for path in paths:
            mask = None if good else find_mask(gt_root, name, path)
            test.append(TestImage(path, 0 if good else 1, "good" if good else name, mask))
    return test, skipped


def scan_anomaly(path: str | os.PathLike, *, progress: Callable[[int, int | None], None] | None = None,
                 stop: threading.Event | None = None) -> AnomalyData:
    """Normal training images and (when the layout has them) labelled test images.
    Raises DatasetError naming the folder when there is nothing to learn from."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"Not found: {p}")
    layout = layout_of(p)
    if layout is None:
        raise DatasetError(
            f"{p} looks like a labelled data set with several classes. For anomaly detection give a "
            "folder of normal images only, a folder with good/ (and optional defect folders), "
            "or the MVTec layout (train/good, test/good, test/<defect>)."
        )
    p = p.resolve()
    dirs = _dirs(p)
    warnings: list[str] = []
    test: list[TestImage] = []
    if layout == "mvtec":
        tdirs = _dirs(dirs["train"])
        normal, skipped = _scan(tdirs[_normal_dir(tdirs)], progress, stop)
        others = [d for d in tdirs if d.lower() not in NORMAL_NAMES]
        if others:
            warnings.append(f"train/ holds folders other than good/ ({', '.join(others)}): ignored, "
                            "anomaly detection learns from good images only")
        if "test" in dirs:
            gt = dirs.get("ground_truth")
            test, skip = _labelled_test(dirs["test"], gt, progress, stop)
            skipped += skip
    elif layout == "good_defects":
        good = _normal_dir(dirs)
        normal, skipped = _scan(dirs[good], progress, stop)
        gt = dirs.get("ground_truth") or dirs.get("masks")
        for name, d in sorted(dirs.items()):
            if name == good or name.lower() in ("ground_truth", "masks"):
                continue
            paths, skip = _scan(d, progress, stop)
            skipped += skip
            test += [TestImage(x, 1, name, find_mask(gt, name, x)) for x in paths]
    else:
        normal, skipped = _scan(p, progress, stop)
    if len(normal) < MIN_NORMAL:
        extra = f" ({len(skipped)} files skipped, e.g. {skipped[0].path}: {skipped[0].reason})" if skipped else ""
        raise DatasetError(f"{p}: {len(normal)} usable normal images{extra}; anomaly detection needs at least "
                           f"{MIN_NORMAL} (dozens to hundreds work best)")
    if len(normal) < 20:
        warnings.append(f"only {len(normal)} normal images: the threshold will be rough; 50 or more work best")
    missing = [t.path for t in test if t.label == 1 and not t.mask]
    if test and any(t.mask for t in test) and missing:
        warnings.append(f"{len(missing)} defect images have no mask in ground_truth/ (pixel AUROC uses the others)")
    return AnomalyData(str(p), layout, normal, test, skipped, warnings)


def scan_test(path: str | os.PathLike, *, progress=None, stop=None) -> tuple[list[TestImage], list[SkippedFile]]:
    """Images to evaluate on: an MVTec category (its test/), a folder with good/ and defect
    folders (masks in ground_truth/), or a plain folder (labels unknown: scores only)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"Not found: {p}")
    if p.is_file():
        return [TestImage(str(p), -1, "")], []
    p = p.resolve()
    dirs = _dirs(p)
    if "test" in dirs and _dirs(dirs["test"]):
        return _labelled_test(dirs["test"], dirs.get("ground_truth"), progress, stop)
    if _normal_dir(dirs) or (dirs and p.parent.joinpath("ground_truth").is_dir()):
        gt = dirs.get("ground_truth") or dirs.get("masks")
        if gt is None and (p.parent / "ground_truth").is_dir():
            gt = p.parent / "ground_truth"
        return _labelled_test(p, gt, progress, stop)
    paths, skipped = _scan(p, progress, stop)
    return [TestImage(x, -1, "") for x in paths], skipped


def count_normal(path: str | os.PathLike) -> int:
    """Normal training images in a folder, by listing only (the Fit step's estimate before a scan)."""
    p = Path(path).expanduser()
    layout = layout_of(p)
    if layout is None:
        return 0
    dirs = _dirs(p)
    if layout == "mvtec":
        tdirs = _dirs(dirs["train"])
        return _count_images(tdirs[_normal_dir(tdirs)])
    if layout == "good_defects":
        return _count_images(dirs[_normal_dir(dirs)])
    return _count_images(p)
