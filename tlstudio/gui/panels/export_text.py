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
