"""Exports of a trained run that work without TL Studio, each verified after writing.

OUT_DIR/
  model.safetensors      timm state dict (+ preprocessing in the safetensors metadata)
  config.json            timm/Hugging Face model config: `timm.create_model("local-dir:OUT_DIR",
                         pretrained=True)` or `timm.create_model(arch, num_classes=N, pretrained=True,
                         pretrained_cfg_overlay=dict(file=".../model.safetensors", num_classes=N))`
  model.onnx             fp32, dynamic batch, input "input" NCHW, output "logits";
                         preprocessing in metadata_props["tlstudio"] (JSON)
  model.int8.onnx        int8: onnxruntime static QDQ (per-channel weights) calibrated on training
                         images; of several configurations the first within INT8_TOLERANCE of fp32
                         validation accuracy is kept (export_report.json lists them); else dynamic
  model.torchscript.pt   torch.jit.trace; preprocessing in the extra file "tlstudio.json"
  preprocessing.json     classes, input size, mean/std, interpolation, crop: what every export needs
  export_report.json     ExportReport: sizes, max abs differences to PyTorch, int8 vs fp32
  MODEL_CARD.md (+ PNGs) written by model_card.write_model_card

The formats live in onnx_export.py and int8.py (shared helpers in common.py); this module writes
safetensors and TorchScript and runs the whole export (`export_run`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlstudio.core.errors import UserError
from tlstudio.core.export.common import (  # noqa: F401 - part of this module's API
    FP32_TOLERANCE,
    INT8_FILE,
    ONNX_FILE,
    ONNX_OPSET,
    PREPROCESSING_JSON,
    REPORT_JSON,
    ST_FILE,
    TS_FILE,
    ExportError,
    _max_diff,
    _ort_forward,
    _ort_session,
    quiet_exporters,
    _size,
    _torch_logits,
    fixed_size_model,
    preprocessing_meta,
)
from tlstudio.core.export.int8 import INT8_SELECT_BYTES, INT8_SELECT_IMAGES, INT8_TOLERANCE, compare_int8, export_int8  # noqa: F401
from tlstudio.core.export.onnx_export import _set_onnx_metadata, export_onnx  # noqa: F401
from tlstudio.core.runs.folder import ModelSpec, RunInfo

FORMATS = ("safetensors", "onnx", "torchscript", "int8")
Progress = Callable[[str, int, int], None]  # (message, step, steps)


@dataclass
class ExportReport:
    run_dir: str
    out_dir: str
    formats: dict[str, dict[str, Any]] = field(default_factory=dict)  # per format: path, bytes, checks
    int8: dict[str, Any] | None = None  # {"fp32": {...}, "int8": {...}}: size_bytes, latency_ms, accuracy
    preprocessing: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # format -> why it failed
    model_card: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- helpers


def _check_inputs(spec: ModelSpec, samples: Sequence, n: int = 8, seed: int = 0) -> np.ndarray:
    """Real preprocessed images when the run has some, plus random ones (covers any input)."""
    from tlstudio.core.evaluation.evaluate import load_batch

    s = spec.image_size
    real = np.zeros((0, 3, s, s), np.float32)
    if samples:
        real, _, _ = load_batch([x.path for x in list(samples)[:n]], spec)
    rnd = np.random.default_rng(seed).standard_normal((max(2, n - len(real)), 3, s, s)).astype(np.float32)
    return np.concatenate([real, rnd]).astype(np.float32)


def _run_samples(run_dir: Path) -> tuple[list, list]:
    """(train, val) samples of the run's split; empty lists when there is no usable split."""
    from tlstudio.core.runs.folder import RunError, read_split

    try:
        split = read_split(run_dir)
    except (OSError, RunError):  # exports still work without the split (no accuracy then)
        return [], []
    exists = lambda ss: [s for s in ss if Path(s.path).is_file()]  # noqa: E731 - data may have moved
    return exists(split.train), exists(split.val) or exists(split.test)


# --------------------------------------------------------------------------- formats


def export_safetensors(model, spec: ModelSpec, out: Path, info: RunInfo | None = None) -> dict[str, Any]:
    """model.safetensors + timm's config.json (loads with timm alone, head included)."""
    from tlstudio.core.atomic import atomic_save_safetensors, atomic_write_json

    meta = preprocessing_meta(spec)
    atomic_save_safetensors(out / ST_FILE, model.state_dict(),
                            metadata={"format": "pt", "tlstudio": json.dumps(meta)})
    cfg = timm_config(model, spec)
    if info is not None:
        cfg["tlstudio"] = {"run": info.name, "versions": info.versions}
    atomic_write_json(out / "config.json", cfg)
    return {"path": str(out / ST_FILE), "config": str(out / "config.json"), "bytes": _size(out / ST_FILE),
            "load_with": f'timm.create_model("local-dir:{out}", pretrained=True)'}


def timm_config(model, spec: ModelSpec) -> dict[str, Any]:
    """The config.json format of timm's Hugging Face exports, with our preprocessing and labels."""
    data_cfg = {
        "input_size": (3, spec.image_size, spec.image_size),
        "mean": tuple(spec.mean), "std": tuple(spec.std),
        "interpolation": spec.interpolation, "crop_pct": spec.crop_pct, "crop_mode": spec.crop_mode,
    }
    try:  # timm's own writer records the model's reconstruction arguments too
        import tempfile

        from timm.models._hub import save_config_for_hf

        with tempfile.TemporaryDirectory() as td, quiet_exporters():
            p = Path(td) / "config.json"
            save_config_for_hf(model, str(p), model_config={"label_names": list(spec.classes)},
                               data_config=data_cfg)
            cfg = json.loads(p.read_text())
    except Exception:  # noqa: BLE001 - older timm: write the same format by hand
        pc = {k: v for k, v in getattr(model, "pretrained_cfg", {}).items()
              if isinstance(v, (str, int, float, bool, list, tuple, type(None)))}
        pc.pop("hf_hub_id", None)
        pc.pop("url", None)
        pc.pop("file", None)
        pc.pop("label_names", None)
        cfg = {"architecture": spec.backbone, "num_classes": spec.num_classes,
               "num_features": getattr(model, "num_features", None), "label_names": list(spec.classes),
               "pretrained_cfg": pc}
    pc = cfg.setdefault("pretrained_cfg", {})
    pc.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in data_cfg.items()})
    pc["num_classes"] = spec.num_classes
    pc.pop("test_input_size", None)
    pc.pop("test_crop_pct", None)
    cfg["architecture"] = cfg.get("architecture") or spec.backbone
    cfg["num_classes"] = spec.num_classes
    cfg["label_names"] = list(spec.classes)
    return cfg


def export_torchscript(model, spec: ModelSpec, out: Path, check_x: np.ndarray) -> dict[str, Any]:
    import torch

    from tlstudio.core.atomic import atomic_write

    path = out / TS_FILE
    with quiet_exporters(), torch.no_grad():
        traced = torch.jit.trace(fixed_size_model(model, spec.image_size), torch.from_numpy(check_x[:2].copy()),
                                 check_trace=False)
        extra = {"tlstudio.json": json.dumps(preprocessing_meta(spec))}
        atomic_write(path, lambda tmp: torch.jit.save(traced, tmp, _extra_files=extra))
        loaded = torch.jit.load(str(path), map_location="cpu")

    def fwd(x):
        with torch.no_grad():
            return loaded(torch.from_numpy(x)).float().numpy()

    diff = _max_diff(fwd, model, check_x)
    if not diff < FP32_TOLERANCE:
        raise ExportError(f"{path}: TorchScript differs from PyTorch by {diff:.2e} (> {FP32_TOLERANCE:g})")
    return {"path": str(path), "bytes": _size(path), "max_abs_diff": diff, "method": "trace"}


def _shareable(out: Path) -> None:
    """Atomic writes go through private temp files (mode 0600); exports are meant to be handed
    on, so give them the usual 0644 like any other file the user saves."""
    import os
    import stat

    for f in out.iterdir():
        try:
            if f.is_file() and stat.S_IMODE(f.stat().st_mode) == 0o600:
                os.chmod(f, 0o644)
        except OSError:  # not ours to change (another owner, read-only share): leave it
            pass


# --------------------------------------------------------------------------- the whole export


def export_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    formats: Sequence[str] = FORMATS,
    progress: Progress | None = None,
    *,
    model_card: bool = True,
    calibration_images: int = 64,
    latency_repeats: int = 10,
    max_compare_images: int = 1000,
) -> ExportReport:
    """Write and verify the chosen formats of a run's best weights. One failing format does not
    stop the others; its reason is in ExportReport.errors. Raises ExportError only when nothing
    can be done (no run, unknown format)."""
    from tlstudio.core.atomic import atomic_write_json
    from tlstudio.core.runs.folder import RunError
    from tlstudio.core.models.run_model import load_run_model

    t0 = time.time()
    run_dir = Path(run_dir)
    formats = list(dict.fromkeys(FORMATS if "all" in formats else formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ExportError(f"unknown export format {', '.join(bad) or '(none)'}: choose from {', '.join(FORMATS)}, all")
    if "int8" in formats and "onnx" not in formats:
        formats.insert(formats.index("int8"), "onnx")  # int8 is quantized from the fp32 ONNX
    from tlstudio.core.atomic import ensure_writable_folder
    from tlstudio.core.runs.guard import check_weights_match

    out = Path(out_dir) if out_dir else run_dir / "export"
    try:
        check_weights_match(run_dir)  # before loading: a head of another size would be a traceback
        model, info = load_run_model(run_dir)
    except RunError as exc:
        raise ExportError(str(exc)) from exc
    spec = info.model
    ensure_writable_folder(out)  # a read-only or full destination: one line, before any work
    meta = preprocessing_meta(spec)
    atomic_write_json(out / PREPROCESSING_JSON, meta)
    report = ExportReport(run_dir=str(run_dir), out_dir=str(out), preprocessing=meta)
    train, val = _run_samples(run_dir)
    if len(val) > max_compare_images:  # int8 vs fp32 accuracy on an even subsample: 3 passes over it
        val = val[:: -(-len(val) // max_compare_images)]
    check_x = _check_inputs(spec, val or train)
    steps = len(formats) + (1 if model_card else 0)

    def step(i: int, msg: str) -> None:
        if progress:
            progress(msg, i, steps)

    for i, fmt in enumerate(formats):
        step(i, f"exporting {fmt}")
        try:
            if fmt == "safetensors":
                report.formats[fmt] = export_safetensors(model, spec, out, info)
            elif fmt == "onnx":
                report.formats[fmt] = export_onnx(model, spec, out, check_x)
            elif fmt == "torchscript":
                report.formats[fmt] = export_torchscript(model, spec, out, check_x)
            elif fmt == "int8":
                if "onnx" not in report.formats:
                    raise ExportError(f"{out / INT8_FILE}: needs the fp32 ONNX export, which failed")
                from tlstudio.core.evaluation.evaluate import load_batch

                calib = None
                if train:  # real training images only (eval transform): noise would widen the ranges
                    n = min(calibration_images, len(train))
                    picks = [train[int(i * len(train) / n)] for i in range(n)]  # evenly over the split
                    calib, _, _ = load_batch([s.path for s in picks], spec)
                select = None
                if val:  # the candidates are scored on (a subsample of) the validation images
                    fit = int(INT8_SELECT_BYTES // (3 * 4 * spec.image_size**2))  # held in memory at once
                    n = min(INT8_SELECT_IMAGES, max(32, fit), len(val))
                    chosen = [val[int(i * len(val) / n)] for i in range(n)]
                    x, ok, _ = load_batch([s.path for s in chosen], spec)
                    if ok:
                        select = (x, np.array([chosen[i].label for i in ok]))
                report.formats[fmt] = export_int8(out / ONNX_FILE, spec, out, calib, select,
                                                  progress=lambda message, i=i: step(i, message))
                step(i, "int8: measuring size, latency and accuracy against fp32")
                report.int8 = compare_int8(model, spec, out, val, repeats=latency_repeats)
                report.int8["method"] = report.formats[fmt]["method"]
                report.int8["note"] = report.formats[fmt]["note"]
        except Exception as exc:  # noqa: BLE001 - report it, go on with the other formats
            report.errors[fmt] = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    if model_card:
        step(len(formats), "writing the model card")
        try:
            from tlstudio.core.export.model_card import write_model_card

            report.model_card = str(write_model_card(run_dir, out, report))
        except Exception as exc:  # noqa: BLE001
            report.errors["model_card"] = f"{type(exc).__name__}: {exc}"
    report.seconds = time.time() - t0
    atomic_write_json(out / REPORT_JSON, report.to_json())
    _shareable(out)
    step(steps, "done")
    return report
