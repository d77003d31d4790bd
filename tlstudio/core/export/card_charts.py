"""The model card's pictures, drawn with PIL alone: the confusion matrix and the training curves."""

from __future__ import annotations

import math
from pathlib import Path


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def draw_confusion(confusion: list[list[int]], classes: list[str], path: str | Path) -> Path:
    """Rows: true class; columns: predicted. Cells shaded by the row's share; counts written."""
    from PIL import Image, ImageDraw

    n = len(classes)
    cell = max(18, min(64, 640 // max(n, 1)))
    font, small = _font(max(9, min(16, cell // 3))), _font(12)
    names = [c if len(c) <= 18 else c[:17] + "…" for c in classes]
    left = 16 + max(int(small.getlength(c)) for c in names) if names else 40
    top = 48
    header = "predicted class →"
    w = max(left + n * cell + 24, left + int(small.getlength(header)) + 12, 380)
    h = top + n * cell + 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 6), header, fill="black", font=small)
    for i in range(n):
        total = sum(confusion[i]) or 1
        d.text((8, top + i * cell + cell // 2 - 6), names[i], fill="black", font=small)
        d.text((left + i * cell + cell // 2 - 4, top - 18), str(i), fill="black", font=small)
        for j in range(n):
            v = confusion[i][j]
            share = v / total
            if i == j:
                col = (int(255 - 200 * share), int(255 - 90 * share), int(255 - 200 * share))  # green
            else:
                col = (255, int(255 - 190 * share), int(255 - 190 * share))  # red
            x0, y0 = left + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=col, outline=(200, 200, 200))
            if cell >= 18:
                t = str(v)
                d.text((x0 + (cell - font.getlength(t)) / 2, y0 + cell / 2 - cell // 6), t, fill="black",
                       font=font)
    d.text((8, h - 22), "rows: true class; column i: predicted as the class of row i", fill=(80, 80, 80),
           font=small)
    img.save(path)
    return Path(path)


def draw_curves(history: list[dict[str, float]], path: str | Path) -> Path | None:
    """Loss (train, val) and validation accuracy / macro-F1 per epoch, side by side."""
    from PIL import Image, ImageDraw

    if not history:
        return None
    epochs = [int(r.get("epoch", i)) + 1 for i, r in enumerate(history)]
    panels = [
        ("loss", [("train_loss", (31, 119, 180)), ("val_loss", (255, 127, 14))]),
        ("validation", [("val_acc", (44, 160, 44)), ("val_macro_f1", (148, 103, 189))]),
    ]
    pw, ph, m = 420, 280, 48
    img = Image.new("RGB", (pw * 2, ph), "white")
    d = ImageDraw.Draw(img)
    font = _font(12)
    for k, (title, series) in enumerate(panels):
        ox = k * pw
        vals = [r[key] for key, _ in series for r in history if key in r and math.isfinite(r[key])]
        if not vals:
            continue
        lo, hi = min(vals), max(vals)
        if title == "validation":
            lo, hi = min(lo, 0.0), max(hi, 1.0)
        if hi - lo < 1e-9:
            hi = lo + 1.0
        x0, y0, x1, y1 = ox + m, 24, ox + pw - 16, ph - 36
        d.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))
        d.text((x0, 4), title, fill="black", font=font)
        for frac in (0.0, 0.5, 1.0):
            y = y1 - frac * (y1 - y0)
            d.line([x0 - 4, y, x0, y], fill=(120, 120, 120))
            d.text((ox + 4, y - 7), f"{lo + frac * (hi - lo):.3g}", fill=(60, 60, 60), font=font)
        e0, e1 = epochs[0], max(epochs[-1], epochs[0] + 1)
        d.text((x0, y1 + 6), f"epoch {e0}", fill=(60, 60, 60), font=font)
        d.text((x1 - 50, y1 + 6), f"epoch {epochs[-1]}", fill=(60, 60, 60), font=font)

        def xy(e, v, lo=lo, hi=hi, e0=e0, e1=e1, x0=x0, x1=x1, y0=y0, y1=y1):
            return (x0 + (e - e0) / (e1 - e0) * (x1 - x0), y1 - (v - lo) / (hi - lo) * (y1 - y0))

        ly = y0 + 6
        for key, col in series:
            pts = [xy(e, r[key]) for e, r in zip(epochs, history) if key in r and math.isfinite(r[key])]
            if not pts:
                continue
            if len(pts) > 1:
                d.line(pts, fill=col, width=2)
            for p in pts:
                d.ellipse([p[0] - 2.5, p[1] - 2.5, p[0] + 2.5, p[1] + 2.5], fill=col)
            d.line([x1 - 110, ly + 7, x1 - 92, ly + 7], fill=col, width=3)
            d.text((x1 - 88, ly), key, fill="black", font=font)
            ly += 16
    img.save(path)
    return Path(path)
