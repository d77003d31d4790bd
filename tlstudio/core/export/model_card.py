"""MODEL_CARD.md beside an export: data, metrics, confusion matrix and curves (PNG, drawn with
PIL), the full config, and a short example that runs the ONNX export with onnxruntime alone.

The example sits between the markers EXAMPLE_BEGIN / EXAMPLE_END so a test can run it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tlstudio.core.runs.folder import EVAL_JSON, ModelSpec, read_history, read_run

CARD = "MODEL_CARD.md"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curves.png"
EXAMPLE_BEGIN = "<!-- example:onnxruntime -->"
EXAMPLE_END = "<!-- /example:onnxruntime -->"

_INTERP = '{"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}'


def onnx_example(spec: ModelSpec, onnx_file: str = "model.onnx") -> str:
    """~10 lines: numpy + PIL + onnxruntime, the same preprocessing as TL Studio (evaluate.preprocess)."""
    if spec.crop_mode == "squash":
        resize = "img = img.resize((r, r), f)"
    else:
        resize = "img = img.resize((r, int(r * h / w)) if w <= h else (int(r * w / h), r), f)"
    return f"""import json, math, sys
import numpy as np, onnxruntime as ort
from PIL import Image, ImageOps
sess = ort.InferenceSession("{onnx_file}", providers=["CPUExecutionProvider"])
m = json.loads(sess.get_modelmeta().custom_metadata_map["tlstudio"])  # classes, size, mean/std...
s, r, f = m["image_size"], math.floor(m["image_size"] / m["crop_pct"]), {_INTERP}[m["interpolation"]]
img = ImageOps.exif_transpose(Image.open(sys.argv[1])).convert("RGB"); w, h = img.size
{resize}
x0, y0 = round((img.width - s) / 2), round((img.height - s) / 2)
x = (np.asarray(img.crop((x0, y0, x0 + s, y0 + s)), np.float32) / 255 - m["mean"]) / m["std"]
z = sess.run(None, {{"input": x.transpose(2, 0, 1)[None].astype(np.float32)}})[0][0]
p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
print(m["classes"][int(p.argmax())], f"{{p.max():.4f}}")
"""


def extract_example(card_text: str) -> str:
    """The python code of the onnxruntime example in a card."""
    body = card_text.split(EXAMPLE_BEGIN, 1)[1].split(EXAMPLE_END, 1)[0]
    return body.split("```python", 1)[1].split("```", 1)[0].strip() + "\n"


# --------------------------------------------------------------------------- drawing (PIL)


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


# --------------------------------------------------------------------------- the card


def _fmt_bytes(n: int | None) -> str:
    if not n:
        return "–"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _metrics(run_dir: Path):
    from tlstudio.core.evaluation.evaluate import EvalReport, evaluate

    p = run_dir / EVAL_JSON
    if p.is_file():
        try:
            return EvalReport.from_json(json.loads(p.read_text(encoding="utf-8"))), "eval.json"
        except Exception:  # noqa: BLE001 - recompute below
            pass
    try:
        return evaluate(run_dir), "computed for this card"
    except Exception as exc:  # noqa: BLE001 - no split / data moved: the card says so
        return None, f"not available ({exc})"


def write_model_card(run_dir: str | Path, out_dir: str | Path, export_report=None) -> Path:
    """Write MODEL_CARD.md (+ PNGs) into out_dir and return its path."""
    from tlstudio.core.atomic import atomic_write_text

    run_dir, out = Path(run_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = read_run(run_dir)
    spec = info.model
    ev, ev_source = _metrics(run_dir)
    history = read_history(run_dir)
    L: list[str] = []
    a = L.append
    title = info.name or run_dir.name
    a(f"# Model card: {title}\n")
    how = {"scratch": "trained from random initialisation (no transfer)",
           "file": f"fine-tuned from the weights file `{info.config.get('weights_file')}`",
           "run": f"fine-tuned from the earlier run `{info.config.get('init_run')}` (chained transfer)"}.get(
        str(info.config.get("init", "pretrained")), "fine-tuned from pretrained weights (transfer learning)")
    if info.kind == "distill":
        how = "distilled from a teacher model"
    a(f"An image classifier for **{spec.num_classes} classes**: the timm backbone `{spec.backbone}` {how} "
      f"by TL Studio. Input: RGB images, {spec.image_size}×{spec.image_size} px.\n")
    a("## Data set\n")
    data = info.data or {}
    counts = data.get("counts") or {}
    a(f"- source folder: `{data.get('root', info.config.get('data_dir', '?'))}`")
    if data.get("n_train") is not None:
        a(f"- images: {data.get('n_train')} for training, {data.get('n_val')} for validation")
    if data.get("fingerprint"):
        a(f"- fingerprint: `{data['fingerprint']}`")
    a("")
    a("| class | index | images |")
    a("|---|---:|---:|")
    for i, c in enumerate(spec.classes):
        a(f"| {c} | {i} | {counts.get(c, '–')} |")
    a("")
    a("## Metrics\n")
    if ev is None:
        a(f"Metrics {ev_source}.\n")
    else:
        a(f"On the {ev.source or 'validation split'} ({ev.n} images; {ev_source}):\n")
        a(f"- accuracy **{_pct(ev.accuracy)}**, macro-F1 **{ev.macro_f1:.3f}**")
        if ev.top_k:
            a("- " + ", ".join(f"top-{k} {_pct(v)}" for k, v in sorted(ev.top_k.items())))
        if info.baseline:
            gain = info.baseline.get("gain")
            if gain is not None:
                a(f"- gain of transfer over training from scratch: {gain:+.3f}")
        a("")
        a("| class | precision | recall | F1 | support |")
        a("|---|---:|---:|---:|---:|")
        for r in ev.per_class:
            a(f"| {r['name']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |")
        a("")
        draw_confusion(ev.confusion, ev.classes, out / CONFUSION_PNG)
        a(f"Confusion matrix (rows: true class, columns: predicted):\n\n![confusion matrix]({CONFUSION_PNG})\n")
        if ev.misclassified:
            a("Most confident mistakes (worth checking for label errors):\n")
            for mm in ev.misclassified[:5]:
                a(f"- `{Path(mm['path']).name}`: labelled {mm['true']}, predicted {mm['pred']} "
                  f"({mm['confidence']:.2f})")
            a("")
    if draw_curves(history, out / CURVES_PNG):
        a(f"Training curves ({len(history)} epochs):\n\n![training curves]({CURVES_PNG})\n")

    a("## Exported files\n")
    rep = export_report
    if rep is not None:
        a("| format | file | size | check |")
        a("|---|---|---:|---|")
        for fmt, d in rep.formats.items():
            check = f"max abs diff to PyTorch {d['max_abs_diff']:.1e}" if "max_abs_diff" in d else d.get("method", "")
            if fmt == "safetensors":
                check = "loads with timm (config.json)"
            a(f"| {fmt} | `{Path(d['path']).name}` | {_fmt_bytes(d.get('bytes'))} | {check} |")
        for fmt, err in rep.errors.items():
            a(f"| {fmt} | – | – | failed: {err} |")
        a("")
        if rep.int8:
            q = rep.int8
            a(f"int8 next to fp32 (latency: batch 1, CPU, median; accuracy on {q.get('n_val', 0)} validation images):\n")
            a("| model | size | latency | accuracy |")
            a("|---|---:|---:|---:|")
            for name, label in (("fp32_pytorch", "fp32 PyTorch"), ("fp32_onnx", "fp32 ONNX"), ("int8_onnx", "int8 ONNX")):
                r = q.get(name, {})
                a(f"| {label} | {_fmt_bytes(r.get('size_bytes'))} | {r.get('latency_ms', float('nan')):.2f} ms | "
                  f"{_pct(r.get('accuracy'))} |")
            a("")
    a("Every export carries what inference needs (`preprocessing.json`, ONNX `metadata_props`, "
      "TorchScript extra file `tlstudio.json`, safetensors metadata):\n")
    a(f"- classes, in output order: {', '.join(spec.classes)}")
    a(f"- input {spec.image_size}×{spec.image_size} RGB; resize the short side to "
      f"floor({spec.image_size} / {spec.crop_pct}) = {math.floor(spec.image_size / spec.crop_pct)} px "
      f"({spec.interpolation}), center crop ({spec.crop_mode}), scale to [0, 1], "
      f"normalise with mean {list(spec.mean)} and std {list(spec.std)}; output: logits\n")

    a("## Use it without TL Studio\n")
    a("With **onnxruntime** only (numpy + Pillow + onnxruntime), `python predict.py image.jpg` "
      "in this folder:\n")
    a(EXAMPLE_BEGIN)
    a("```python")
    a(onnx_example(spec).rstrip())
    a("```")
    a(EXAMPLE_END)
    a("")
    a("With **timm** (the same preprocessing: `timm.data.resolve_data_config({}, model=model)` + "
      "`timm.data.create_transform(**cfg)`):\n")
    a("```python")
    a("import timm")
    a('model = timm.create_model("local-dir:/path/to/this/folder", pretrained=True).eval()  # config.json + model.safetensors')
    a(f'# or: timm.create_model("{spec.backbone}", num_classes={spec.num_classes}, pretrained=True,')
    a(f'#         pretrained_cfg_overlay=dict(file="model.safetensors", num_classes={spec.num_classes}))')
    a("```\n")
    a(f"Keep `num_classes={spec.num_classes}` inside `pretrained_cfg_overlay` too: without it timm compares "
      "the class count with the architecture's default (1000) and silently drops the trained head.\n")
    a("With **TorchScript** (PyTorch only): `model = torch.jit.load(\"model.torchscript.pt\")`.\n")

    a("## Training configuration\n")
    a(f"Run `{run_dir}`, status {info.status}, {info.epochs_done} epochs, best validation accuracy "
      f"{_pct(info.best_val_acc)}, seed {info.seed}, device {info.device}, precision {info.precision}.\n")
    if info.versions:
        a("Versions: " + ", ".join(f"{k} {v}" for k, v in info.versions.items()) + "\n")
    a("```json")
    a(json.dumps(info.config, indent=2, ensure_ascii=False, default=str))
    a("```\n")
    path = out / CARD
    atomic_write_text(path, "\n".join(L))
    return path
