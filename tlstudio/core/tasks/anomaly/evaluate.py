"""Evaluating and applying an anomaly run: image AUROC, pixel AUROC (masks), F1 at the
threshold, per-defect detection, score histogram, per-image scores and maps."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlstudio.core.tasks.anomaly.data import AnomalyData, TestImage
from tlstudio.core.tasks.anomaly.threshold import (
    auroc,
    binary_report,
    f1_optimal_threshold,
    histogram,
)

PIXEL_BUDGET = 16_000_000  # pixels held for the pixel AUROC (maps shrink to stay under it)


def split_of(data: AnomalyData, holdout: Sequence[str]) -> list[TestImage]:
    """The labelled images a fit is evaluated on: the layout's test set; for good/ + defect
    folders the held-out good images stand in as the good test images."""
    if data.layout == "mvtec":
        return list(data.test)
    if data.layout == "good_defects":
        return [TestImage(p, 0, "good") for p in holdout] + list(data.test)
    return []


def _mask(path: str, size: int) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            m = im.convert("L").resize((size, size), Image.NEAREST)
            return np.asarray(m) > 127
    except (OSError, ValueError):
        return None


def evaluate_images(model, spec, meta: dict, test: Sequence[TestImage], *, progress: Callable | None = None,
                    stop: threading.Event | None = None, holdout_is_test: bool = False,
                    keep_maps: bool = False, map_size: int | None = None) -> dict[str, Any]:
    """The evaluation report (JSON-able unless ``keep_maps``: then per_image rows carry "map",
    a float16 array of normalised map values)."""
    from tlstudio.core.tasks.anomaly.threshold import normalise_np
    from tlstudio.core.tasks.anomaly.scoring import score_paths

    thr, scale = float(meta["threshold"]), float(meta["scale"])
    has_masks = any(t.mask for t in test)
    n = max(1, len(test))
    px = int(min(spec.image_size, max(32, (PIXEL_BUDGET / n) ** 0.5)))
    want_maps = has_masks or keep_maps
    size = map_size or px
    scores, maps, failures = score_paths(model, [t.path for t in test], spec, keep_maps=want_maps,
                                         map_size=size, stop=stop, progress=progress)
    ok = ~np.isnan(scores)
    labels = np.array([t.label for t in test], dtype=int)
    known = ok & (labels >= 0)
    s, y = scores[known], labels[known]
    norm = normalise_np(scores, thr, scale)
    metrics: dict[str, Any] = {"image_auroc": auroc(s, y), "pixel_auroc": None}
    if known.any():
        rep = binary_report(s, y, thr)
        metrics.update({k: rep[k] for k in ("f1", "precision", "recall", "false_alarm_rate", "accuracy")})
    report: dict[str, Any] = {"task": "anomaly", "n": int(ok.sum()), "threshold": thr,
                              "threshold_mode": meta.get("threshold_mode", "false_alarm"), "scale": scale,
                              "false_alarm_rate_target": meta.get("false_alarm_rate"), "failures": failures}
    if known.any():
        report["confusion"] = {k: rep[k] for k in ("tp", "fp", "fn", "tn")}
    if (y == 1).any():
        report["f1_optimal_threshold"], report["f1_optimal"] = f1_optimal_threshold(s, y)
    if has_masks:
        pix_s, pix_y = [], []
        for t, m, good in zip(test, maps, ok, strict=True):
            if not good or m is None or t.label < 0 or (t.label == 1 and not t.mask):
                continue
            gt = _mask(t.mask, m.shape[-1]) if t.mask else np.zeros(m.shape, bool)
            if gt is None:
                continue
            pix_s.append(m.ravel())
            pix_y.append(gt.ravel())
        if pix_s:
            metrics["pixel_auroc"] = auroc(np.concatenate(pix_s), np.concatenate(pix_y))
            report["pixel_auroc_map_size"] = size
    per_defect = {}
    for d in sorted({t.defect for t in test if t.label == 1}):
        sel = np.array([t.defect == d for t in test]) & known
        good = known & (labels == 0)
        per_defect[d] = {"n": int(sel.sum()), "detected": int((scores[sel] > thr).sum()),
                         "auroc_vs_good": auroc(np.r_[scores[sel], scores[good]],
                                                np.r_[np.ones(sel.sum()), np.zeros(good.sum())])}
    report["per_defect"] = per_defect
    report["metrics"] = metrics
    report.update({k: metrics.get(k) for k in ("image_auroc", "pixel_auroc", "f1")})
    report["histogram"] = histogram(norm[ok], labels[ok])
    rows = []
    for i, t in enumerate(test):
        row: dict[str, Any] = {"path": t.path, "label": int(t.label), "defect": t.defect, "mask": t.mask}
        if ok[i]:
            row.update(score=float(norm[i]), raw_score=float(scores[i]),
                       verdict="anomaly" if scores[i] > thr else "normal")
            if keep_maps and maps[i] is not None:
                row["map"] = normalise_np(maps[i].astype(np.float32), thr, scale).astype(np.float16)
        else:
            row.update(score=None, raw_score=None, verdict=None)
        rows.append(row)
    report["per_image"] = rows
    if holdout_is_test:
        report["notes"] = ["the good images here are the held-out ones that also set the threshold: "
                           "the false-alarm rate is optimistic; evaluate on new good images for a fair one"]
    return report


def evaluate(run_dir, data=None, progress: Callable | None = None, *, keep_maps: bool = False,
             map_size: int | None = None, maps_dir=None, stop: threading.Event | None = None) -> dict[str, Any]:
    """Registry ``evaluate``: ``data`` None = the run's own labelled test images; else a folder
    (MVTec category, good/ + defect folders, or plain images)."""
    from tlstudio.core.data.dataset import DatasetError
    from tlstudio.core.runs.folder import read_split
    from tlstudio.core.tasks.anomaly.data import scan_test
    from tlstudio.core.tasks.anomaly.store import load_model

    model, info, meta = load_model(run_dir)
    skipped: list = []
    if data is None:
        split = read_split(run_dir)
        test = [TestImage(s.path, s.label, (s.targets or {}).get("defect", ""), (s.targets or {}).get("mask"))
                for s in split.test]
        if not test:
            raise DatasetError(f"{run_dir}: the run has no labelled test images; give a folder to evaluate on "
                               "(good/ and defect sub-folders, or an MVTec category)")
        holdout_is_test = info.data.get("layout") == "good_defects"
    else:
        test, skipped = scan_test(data, stop=stop)
        if not test:
            raise DatasetError(f"{data}: no usable images to evaluate")
        holdout_is_test = False
    report = evaluate_images(model, info.model, meta, test, progress=progress, stop=stop,
                             holdout_is_test=holdout_is_test, keep_maps=keep_maps or bool(maps_dir),
                             map_size=map_size)
    report["skipped"] = [{"path": s.path, "reason": s.reason} for s in skipped]
    report["run_dir"] = str(run_dir)
    report["data"] = str(data) if data is not None else "run test split"
    if maps_dir:
        used: set = set()
        for row in report["per_image"]:
            m = row.pop("map", None) if not keep_maps else row.get("map")
            if m is not None:
                row["map_path"] = write_map(maps_dir, row["path"], m, info.model.image_size, used)
    if not any(r["label"] >= 0 for r in report["per_image"]):
        report.setdefault("notes", []).append("no labels (good/ and defect folders): scores only, no AUROC")
    return report


def predict(run_dir, paths: Sequence[str], *, maps_dir=None, threshold: float | None = None,
            keep_maps: bool = False, progress: Callable | None = None, **_ignored) -> list[dict[str, Any]]:
    """Registry ``predict``: one row per image {path, score (0.5 = threshold), raw_score,
    verdict "anomaly"/"normal", map_path (with maps_dir), error}. ``threshold`` (raw) overrides."""
    from tlstudio.core.evaluation.evaluate import expand_paths
    from tlstudio.core.tasks.anomaly.threshold import normalise_np
    from tlstudio.core.tasks.anomaly.scoring import score_paths
    from tlstudio.core.tasks.anomaly.store import load_model

    model, info, meta = load_model(run_dir)
    thr = float(meta["threshold"] if threshold is None else threshold)
    files = expand_paths(paths)
    spec = info.model
    scores, maps, failures = score_paths(model, files, spec, keep_maps=keep_maps or bool(maps_dir),
                                         progress=progress)
    why = {f["path"]: f["reason"] for f in failures}
    used: set = set()
    rows = []
    for i, p in enumerate(files):
        if np.isnan(scores[i]):
            rows.append({"path": p, "score": None, "raw_score": None, "verdict": None,
                         "error": why.get(p, "could not be scored")})
            continue
        row: dict[str, Any] = {"path": p, "score": float(normalise_np(scores[i], thr, meta["scale"])),
                               "raw_score": float(scores[i]),
                               "verdict": "anomaly" if scores[i] > thr else "normal", "error": None}
        if maps[i] is not None:
            m = normalise_np(maps[i].astype(np.float32), thr, meta["scale"]).astype(np.float16)
            if maps_dir:
                row["map_path"] = write_map(maps_dir, p, m, spec.image_size, used)
            if keep_maps:
                row["map"] = m
        rows.append(row)
    return rows


def turbo(x: np.ndarray) -> np.ndarray:
    """Google's Turbo colour map (polynomial fit): values 0..1 -> uint8 RGB."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0, 1)
    r = 0.13572138 + x * (4.61539260 + x * (-42.66032258 + x * (132.13108234 + x * (-152.94239396 + x * 59.28637943))))
    g = 0.09140261 + x * (2.19418839 + x * (4.84296658 + x * (-14.18503333 + x * (4.27729857 + x * 2.82956604))))
    b = 0.10667330 + x * (12.64194608 + x * (-60.58204836 + x * (110.36276771 + x * (-89.90310912 + x * 27.34824973))))
    return (np.clip(np.stack([r, g, b], -1), 0, 1) * 255).astype(np.uint8)


def write_map(maps_dir, image_path: str, norm_map: np.ndarray, size: int, used: set | None = None) -> str:
    """<stem>_anomaly.png: the image with its heat map blended over it (0.5 = threshold).
    Names already written in this call (``used``) get the folder name, then a number."""
    from PIL import Image

    from tlstudio.core.data.images import load_rgb

    out = Path(maps_dir)
    out.mkdir(parents=True, exist_ok=True)
    img = load_rgb(image_path).resize((size, size), Image.BILINEAR)
    heat = Image.fromarray(turbo(norm_map.astype(np.float32))).resize((size, size), Image.BILINEAR)
    blend = Image.blend(img, heat, 0.45)
    src = Path(image_path)
    used = set() if used is None else used
    target = out / f"{src.stem}_anomaly.png"
    if target in used:  # same name in another folder (good/000.png, scratch/000.png)
        target = out / f"{src.parent.name}_{src.stem}_anomaly.png"
    i = 1
    while target in used:
        i += 1
        target = out / f"{src.parent.name}_{src.stem}_{i}_anomaly.png"
    used.add(target)
    blend.save(target)
    return str(target)


def eval_lines(report: dict) -> list[str]:
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    m = report.get("metrics", {})
    lines = [f"image AUROC {f(m.get('image_auroc'))}   pixel AUROC {f(m.get('pixel_auroc'))}   "
             f"F1 {f(m.get('f1'))} at the threshold ({report.get('threshold_mode', '').replace('_', '-')})",
             f"precision {f(m.get('precision'))}  recall {f(m.get('recall'))}  "
             f"false alarms {f(m.get('false_alarm_rate'))}   images {report.get('n')}"]
    if report.get("f1_optimal") is not None:
        lines.append(f"F1-optimal threshold {report['f1_optimal_threshold']:.4g} would give F1 {report['f1_optimal']:.3f}")
    for d, r in report.get("per_defect", {}).items():
        lines.append(f"  {d:20s} {r['detected']}/{r['n']} flagged   AUROC vs good {f(r['auroc_vs_good'])}")
    lines += [f"note: {n}" for n in report.get("notes", [])]
    return lines


def predict_line(row: dict) -> str:
    extra = f"  map {row['map_path']}" if row.get("map_path") else ""
    return f"{row['path']}: {row['verdict']} (score {row['score']:.3f}, 0.5 = threshold){extra}"
