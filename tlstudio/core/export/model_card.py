"""MODEL_CARD.md beside an export: data, metrics, confusion matrix and curves (PNGs drawn by
`card_charts`), the full config, and a short example that runs the ONNX export with onnxruntime alone.

The example sits between the markers EXAMPLE_BEGIN / EXAMPLE_END so a test can run it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tlstudio.core.export.card_charts import draw_confusion, draw_curves
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


# --------------------------------------------------------------------------- the card


def _fmt_bytes(n: int | None) -> str:
    if not n:
        return "–"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _metrics(run_dir: Path):
    from tlstudio.core.evaluation.evaluate import evaluate
    from tlstudio.core.evaluation.metrics import EvalReport

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


def _how_trained(info) -> str:
    """How the weights were obtained, as the card's first sentence says it."""
    if info.kind == "distill":
        return "distilled from a teacher model"
    how = {"scratch": "trained from random initialisation (no transfer)",
           "file": f"fine-tuned from the weights file `{info.config.get('weights_file')}`",
           "run": f"fine-tuned from the earlier run `{info.config.get('init_run')}` (chained transfer)"}
    return how.get(str(info.config.get("init", "pretrained")), "fine-tuned from pretrained weights (transfer learning)")


def _intro(info, run_dir: Path) -> list[str]:
    """Title and one sentence: what the model classifies, from which backbone, how trained."""
    spec = info.model
    md: list[str] = []
    add = md.append
    title = info.name or run_dir.name
    add(f"# Model card: {title}\n")
    add(f"An image classifier for **{spec.num_classes} classes**: the timm backbone `{spec.backbone}` "
        f"{_how_trained(info)} by TL Studio. Input: RGB images, {spec.image_size}×{spec.image_size} px.\n")
    return md


def _data_section(info) -> list[str]:
    """Where the images came from, how many, and the classes with their counts."""
    spec = info.model
    md: list[str] = []
    add = md.append
    add("## Data set\n")
    data = info.data or {}
    counts = data.get("counts") or {}
    add(f"- source folder: `{data.get('root', info.config.get('data_dir', '?'))}`")
    if data.get("n_train") is not None:
        add(f"- images: {data.get('n_train')} for training, {data.get('n_val')} for validation")
    if data.get("fingerprint"):
        add(f"- fingerprint: `{data['fingerprint']}`")
    add("")
    add("| class | index | images |")
    add("|---|---:|---:|")
    for i, c in enumerate(spec.classes):
        add(f"| {c} | {i} | {counts.get(c, '–')} |")
    add("")
    return md


def _metrics_section(info, ev, ev_source: str, out: Path) -> list[str]:
    """Accuracy, top-k, per-class table, the confusion matrix PNG and the most confident mistakes."""
    md: list[str] = []
    add = md.append
    add("## Metrics\n")
    if ev is None:
        add(f"Metrics {ev_source}.\n")
    else:
        add(f"On the {ev.source or 'validation split'} ({ev.n} images; {ev_source}):\n")
        add(f"- accuracy **{_pct(ev.accuracy)}**, macro-F1 **{ev.macro_f1:.3f}**")
        if ev.top_k:
            add("- " + ", ".join(f"top-{k} {_pct(v)}" for k, v in sorted(ev.top_k.items())))
        if info.baseline:
            gain = info.baseline.get("gain")
            if gain is not None:
                add(f"- gain of transfer over training from scratch: {gain:+.3f}")
        add("")
        add("| class | precision | recall | F1 | support |")
        add("|---|---:|---:|---:|---:|")
        for r in ev.per_class:
            add(f"| {r['name']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |")
        add("")
        draw_confusion(ev.confusion, ev.classes, out / CONFUSION_PNG)
        add(f"Confusion matrix (rows: true class, columns: predicted):\n\n![confusion matrix]({CONFUSION_PNG})\n")
        if ev.misclassified:
            add("Most confident mistakes (worth checking for label errors):\n")
            for mm in ev.misclassified[:5]:
                add(f"- `{Path(mm['path']).name}`: labelled {mm['true']}, predicted {mm['pred']} "
                    f"({mm['confidence']:.2f})")
            add("")
    return md


def _curves_section(history: list[dict[str, float]], out: Path) -> list[str]:
    """The training curves PNG, when there is a history."""
    md: list[str] = []
    add = md.append
    if draw_curves(history, out / CURVES_PNG):
        add(f"Training curves ({len(history)} epochs):\n\n![training curves]({CURVES_PNG})\n")
    return md


def _exports_section(rep, spec: ModelSpec) -> list[str]:
    """The exported files with their checks, int8 next to fp32, and what inference needs."""
    md: list[str] = []
    add = md.append
    add("## Exported files\n")
    if rep is not None:
        add("| format | file | size | check |")
        add("|---|---|---:|---|")
        for fmt, d in rep.formats.items():
            check = f"max abs diff to PyTorch {d['max_abs_diff']:.1e}" if "max_abs_diff" in d else d.get("method", "")
            if fmt == "safetensors":
                check = "loads with timm (config.json)"
            add(f"| {fmt} | `{Path(d['path']).name}` | {_fmt_bytes(d.get('bytes'))} | {check} |")
        for fmt, err in rep.errors.items():
            add(f"| {fmt} | – | – | failed: {err} |")
        add("")
        if rep.int8:
            q = rep.int8
            add(f"int8 next to fp32 (latency: batch 1, CPU, median; accuracy on {q.get('n_val', 0)} validation images):\n")
            add("| model | size | latency | accuracy |")
            add("|---|---:|---:|---:|")
            for name, label in (("fp32_pytorch", "fp32 PyTorch"), ("fp32_onnx", "fp32 ONNX"), ("int8_onnx", "int8 ONNX")):
                r = q.get(name, {})
                add(f"| {label} | {_fmt_bytes(r.get('size_bytes'))} | {r.get('latency_ms', float('nan')):.2f} ms | "
                    f"{_pct(r.get('accuracy'))} |")
            add("")
    add("Every export carries what inference needs (`preprocessing.json`, ONNX `metadata_props`, "
        "TorchScript extra file `tlstudio.json`, safetensors metadata):\n")
    add(f"- classes, in output order: {', '.join(spec.classes)}")
    add(f"- input {spec.image_size}×{spec.image_size} RGB; resize the short side to "
        f"floor({spec.image_size} / {spec.crop_pct}) = {math.floor(spec.image_size / spec.crop_pct)} px "
        f"({spec.interpolation}), center crop ({spec.crop_mode}), scale to [0, 1], "
        f"normalise with mean {list(spec.mean)} and std {list(spec.std)}; output: logits\n")
    return md


def _usage_section(spec: ModelSpec) -> list[str]:
    """How to run the exports without TL Studio (the onnxruntime example is run by a test)."""
    md: list[str] = []
    add = md.append
    add("## Use it without TL Studio\n")
    add("With **onnxruntime** only (numpy + Pillow + onnxruntime), `python predict.py image.jpg` "
        "in this folder:\n")
    add(EXAMPLE_BEGIN)
    add("```python")
    add(onnx_example(spec).rstrip())
    add("```")
    add(EXAMPLE_END)
    add("")
    add("With **timm** (the same preprocessing: `timm.data.resolve_data_config({}, model=model)` + "
        "`timm.data.create_transform(**cfg)`):\n")
    add("```python")
    add("import timm")
    add('model = timm.create_model("local-dir:/path/to/this/folder", pretrained=True).eval()  # config.json + model.safetensors')
    add(f'# or: timm.create_model("{spec.backbone}", num_classes={spec.num_classes}, pretrained=True,')
    add(f'#         pretrained_cfg_overlay=dict(file="model.safetensors", num_classes={spec.num_classes}))')
    add("```\n")
    add(f"Keep `num_classes={spec.num_classes}` inside `pretrained_cfg_overlay` too: without it timm compares "
        "the class count with the architecture's default (1000) and silently drops the trained head.\n")
    add("With **TorchScript** (PyTorch only): `model = torch.jit.load(\"model.torchscript.pt\")`.\n")
    return md


def _config_section(run_dir: Path, info) -> list[str]:
    """The run's status, versions and full config."""
    md: list[str] = []
    add = md.append
    add("## Training configuration\n")
    add(f"Run `{run_dir}`, status {info.status}, {info.epochs_done} epochs, best validation accuracy "
        f"{_pct(info.best_val_acc)}, seed {info.seed}, device {info.device}, precision {info.precision}.\n")
    if info.versions:
        add("Versions: " + ", ".join(f"{k} {v}" for k, v in info.versions.items()) + "\n")
    add("```json")
    add(json.dumps(info.config, indent=2, ensure_ascii=False, default=str))
    add("```\n")
    return md


def write_model_card(run_dir: str | Path, out_dir: str | Path, export_report=None) -> Path:
    """Write MODEL_CARD.md (+ PNGs) into out_dir and return its path."""
    from tlstudio.core.atomic import atomic_write_text

    run_dir, out = Path(run_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = read_run(run_dir)
    ev, ev_source = _metrics(run_dir)
    history = read_history(run_dir)
    md = [
        *_intro(info, run_dir),
        *_data_section(info),
        *_metrics_section(info, ev, ev_source, out),
        *_curves_section(history, out),
        *_exports_section(export_report, info.model),
        *_usage_section(info.model),
        *_config_section(run_dir, info),
    ]
    path = out / CARD
    atomic_write_text(path, "\n".join(md))
    return path
