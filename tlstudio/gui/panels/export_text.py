"""The text of the Export step, without Qt: format names and tips, file sizes, the "Check"
cell of the results table, and the commands that re-run a run's training elsewhere."""

from __future__ import annotations

import shlex
from typing import Any

MASTER_PORT = 29500
FORMAT_TIPS = {
    "safetensors": "timm weights (model.safetensors + config.json): load with timm.create_model in any "
                   "Python, no TL Studio needed.",
    "onnx": "ONNX (fp32, any batch size): runs with onnxruntime in Python, C++, C#, JavaScript or on phones; "
            "checked against PyTorch.",
    "torchscript": "TorchScript (model.torchscript.pt): load with torch.jit.load, no model code needed; "
                   "checked against PyTorch.",
    "int8": "An 8-bit quantized ONNX model: about 4x smaller and often faster on CPU; its accuracy and "
            "speed are measured next to fp32.",
}
FORMAT_LABELS = {"safetensors": "safetensors (timm)", "onnx": "ONNX", "torchscript": "TorchScript",
                 "int8": "int8 (quantized ONNX)"}
COLUMNS = ("Format", "File", "Size", "Check")
ALL_FORMATS = ("safetensors", "onnx", "torchscript", "int8")


def kind_formats(kind: str) -> tuple[str, ...]:
    """The formats a kind's export writes (the Export step offers only these)."""
    if kind == "anomaly":
        from tlstudio.core.tasks.anomaly.export import SUPPORTED

        return tuple(f for f in ALL_FORMATS if f in SUPPORTED)
    if kind == "multitask":
        from tlstudio.core.tasks.multitask.export import FORMATS

        return tuple(f for f in ALL_FORMATS if f in FORMATS)
    return ALL_FORMATS


def outputs_text(kind: str, num_classes: int, label_schema: dict[str, Any] | None = None) -> str:
    """What the exported model outputs, for the line next to the run picker; a multi-task run:
    "3 tasks (object: 4 classes, tags: 5 labels, size: numeric)"."""
    if kind == "anomaly":
        return "outputs an anomaly score (0.5 = threshold) and a heat map"
    tasks = (label_schema or {}).get("tasks") or []
    if kind == "multitask" and tasks:
        def one(t: dict[str, Any]) -> str:
            n = len(t.get("classes") or [])
            what = ("numeric" if t.get("type") == "numeric" else f"{n} labels" if t.get("type") == "multilabel"
                    else f"{n} classes")
            return f"{t.get('name', '?')}: {what}"

        return f"{len(tasks)} task{'s' if len(tasks) != 1 else ''} ({', '.join(one(t) for t in tasks)})"
    return f"{num_classes} classes"


def run_line(kind: str, info: Any) -> str:
    """The line next to the run picker: backbone, outputs, input size and the best validation result
    (a multi-task run: its mean task score, which picked the best epoch, not an accuracy)."""
    m = info.model
    score = (info.metrics or {}).get("val_score") if kind == "multitask" else None
    best = (f", best mean task score {score:.3f}" if score is not None
            else f", best val acc {100 * info.best_val_acc:.1f}%" if info.best_val_acc is not None else "")
    return f"{m.backbone}, {outputs_text(kind, m.num_classes, info.label_schema)}, {m.image_size} px{best}"
INT8_DROP_WARN = 0.02  # accuracy drop of int8 vs fp32 ONNX shown as a warning above this


def human_size(n: int | None) -> str:
    if not n:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _ms(x: Any) -> str:
    return f"{x:.1f} ms" if isinstance(x, (int, float)) else "–"


def _acc(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "n/a"


def check_text(fmt: str, result: dict[str, Any], int8: dict[str, Any] | None) -> str:
    """The "Check" cell: what was verified for this file."""
    if fmt in ("onnx", "torchscript"):
        d = result.get("max_abs_diff")
        return f"max abs diff vs PyTorch {d:.1e}" if isinstance(d, (int, float)) else "loaded"
    if fmt == "safetensors":
        return "timm state dict + config.json"
    if fmt == "int8":
        if not int8:
            return result.get("method", "")
        a, b = int8.get("fp32_onnx", {}), int8.get("int8_onnx", {})
        return (f"accuracy {_acc(b.get('accuracy'))} vs fp32 {_acc(a.get('accuracy'))} · "
                f"latency {_ms(b.get('latency_ms'))} vs {_ms(a.get('latency_ms'))} "
                f"(n={int8.get('n_val', 0)} val images)")
    if fmt == "model_card":
        return "markdown with metrics, plots, config"
    return ""


def rerun_commands(config: str, data: str, new_run: str, nproc: int = 1, nnodes: int = 1,
                   master_addr: str = "localhost", master_port: int = MASTER_PORT) -> tuple[str, str]:
    """(headless command, torchrun command) that repeat the run's training with its config.json."""
    q = shlex.quote
    tail = f"train {q(data)} --config {q(config)} --out {q(new_run)}"
    headless = f"tlstudio {tail}"
    tr = f"torchrun --nproc_per_node={int(nproc)}"
    if nnodes > 1:
        tr += (f" --nnodes={int(nnodes)} --node_rank=$NODE_RANK --master_addr={q(master_addr or 'localhost')}"
               f" --master_port={int(master_port)}")
    return headless, f"{tr} -m tlstudio {tail}"
