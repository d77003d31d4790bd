"""Using a trained multi-task run: load, evaluate per task, predict every task, export.

Exports (export.py) have one named output per task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tlstudio.core.errors import UserError
from tlstudio.core.runs import folder as runs

BATCH = 32


def load_model(run_dir: str | Path):
    """(MultiTaskModel in eval mode with the best weights, RunInfo, MultiTaskConfig)."""
    from tlstudio.core.models.backbones import create_model
    from tlstudio.core.models.weights import load_state_dict_file
    from tlstudio.core.tasks.multitask.config import MultiTaskConfig
    from tlstudio.core.tasks.multitask.model import build_multitask_model

    run_dir = Path(run_dir)
    info = runs.read_run(run_dir)
    if not info.label_schema:
        raise runs.RunError(f"{run_dir}: not a multi-task run (run.json has no label schema)")
    config = MultiTaskConfig.model_validate(info.config)
    path = run_dir / runs.BEST_WEIGHTS
    if not path.is_file():
        raise runs.RunError(f"{run_dir}: the run has no trained weights yet ({runs.BEST_WEIGHTS} missing)")
    state = load_state_dict_file(path)
    sharing = "soft" if any(k.startswith("bodies.") for k in state) else "hard"
    model = build_multitask_model(lambda n: create_model(info.model.backbone, n, init="scratch"),
                                  info.label_schema["tasks"], sharing)
    model.load_state_dict(state)
    return model.eval(), info, config


class _Outputs:
    """Model outputs as numpy per task, in the task's own units (numeric tasks un-z-scored)."""

    def __init__(self, tasks: list[dict[str, Any]]):
        self.tasks = tasks

    def decode(self, outs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        n = len(next(iter(outs.values()))) if outs else 0
        rows: list[dict[str, Any]] = [{} for _ in range(n)]
        for t in self.tasks:
            o = outs[t["name"]]
            for i in range(n):
                if t["type"] == "categorical":
                    e = np.exp(o[i] - o[i].max())
                    p = e / e.sum()
                    order = np.argsort(-p)
                    rows[i][t["name"]] = {"class": t["classes"][int(order[0])], "prob": float(p[order[0]]),
                                          "top": [{"class": t["classes"][int(j)], "prob": float(p[j])} for j in order[:3]]}
                elif t["type"] == "multilabel":
                    p = 1.0 / (1.0 + np.exp(-o[i]))
                    rows[i][t["name"]] = {"classes": [c for c, q in zip(t["classes"], p) if q > 0.5],
                                          "probs": {c: float(q) for c, q in zip(t["classes"], p)}}
                else:
                    rows[i][t["name"]] = {"value": float(o[i].reshape(-1)[0])}
        return rows


class Unscaled:
    """Wraps the model for export: tuple of outputs in task order, numeric tasks in real units."""

    @staticmethod
    def make(model):
        import torch

        class _M(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m
                self.names = list(m.task_names)
                self.scale = [float(t.get("std") or 1.0) if t["type"] == "numeric" else 1.0 for t in m.tasks]
                self.shift = [float(t.get("mean") or 0.0) if t["type"] == "numeric" else 0.0 for t in m.tasks]

            def forward(self, x):
                out = self.m(x)
                return tuple(out[n] * s + b for n, s, b in zip(self.names, self.scale, self.shift))

        return _M(model).eval()


def _run_batches(model, paths: list[str], spec, progress=None) -> tuple[dict[str, np.ndarray], list[int], list[dict]]:
    import torch

    from tlstudio.core.evaluation.evaluate import load_batch
    from tlstudio.core.runtime.inference import forward_chunked

    wrapped = Unscaled.make(model)
    outs: dict[str, list[np.ndarray]] = {n: [] for n in model.task_names}
    ok_all, fails = [], []
    for s in range(0, len(paths), BATCH):
        x, ok, f = load_batch(paths[s:s + BATCH], spec)
        fails += f
        ok_all += [s + i for i in ok]
        if len(ok):
            with torch.inference_mode():  # in CPU-sized chunks (runtime/inference.py)
                res = forward_chunked(wrapped, torch.from_numpy(x))
            for n, r in zip(model.task_names, res):
                outs[n].append(r.float().numpy())
        if progress:
            progress(min(len(paths), s + BATCH), len(paths))
    return {n: np.concatenate(v) if v else np.zeros((0, 1), np.float32) for n, v in outs.items()}, ok_all, fails


def _eval_samples(run_dir: Path, info, data) -> list:
    if data is None:
        return list(runs.read_split(run_dir).val)
    from tlstudio.core.data.multitask import scan_multitask

    names = [t["name"] for t in info.label_schema["tasks"]]
    types = {t["name"]: t["type"] for t in info.label_schema["tasks"]}
    rep = scan_multitask(data, tasks=names, types=types)
    out = []
    for s in rep.samples:  # re-index the table's classes into the run's
        tg = {}
        for t in info.label_schema["tasks"]:
            v = (s.targets or {}).get(t["name"])
            if v is None:
                continue
            mine = rep.task(t["name"])
            if t["type"] == "numeric":
                tg[t["name"]] = v
                continue
            conv = [mine.classes[i] for i in (v if isinstance(v, list) else [v])]
            unknown = [c for c in conv if c not in t["classes"]]
            if unknown:
                raise UserError(f"{data}: task '{t['name']}' has class {unknown[0]!r}, not a class of this run "
                                f"({', '.join(t['classes'])})")
            idx = [t["classes"].index(c) for c in conv]
            tg[t["name"]] = idx if isinstance(v, list) else idx[0]
        out.append(type(s)(s.path, -1, tg))
    return out


def evaluate(run_dir: str | Path, data: str | Path | None = None, progress=None) -> dict[str, Any]:
    """{"tasks": {task: {accuracy, macro_f1, confusion, classes, n, ...}}, "metrics": {...}, "n"}."""
    import torch

    from tlstudio.core.tasks.multitask.metrics import Targets, flat_metrics, masked_losses, task_metrics

    run_dir = Path(run_dir)
    model, info, config = load_model(run_dir)
    tasks = info.label_schema["tasks"]
    samples = _eval_samples(run_dir, info, data)
    outs, ok, fails = _run_batches(model, [s.path for s in samples], info.model, progress)
    kept = [samples[i] for i in ok]
    tg = Targets(kept, tasks)
    ys = {k: v for k, v in tg.t.items()}
    # model space (numeric z-scored) for the metrics code
    zs = {t["name"]: torch.from_numpy((outs[t["name"]] - (t.get("mean") or 0.0)) / (t.get("std") or 1.0))
          if t["type"] == "numeric" else torch.from_numpy(outs[t["name"]]) for t in tasks}
    per: dict[str, Any] = {}
    losses, _ = masked_losses(zs, ys, tasks, 0.0, config.huber_delta)
    for t in tasks:
        d = task_metrics(t, zs[t["name"]], ys[t["name"]])
        d.update(type=t["type"], classes=list(t["classes"]), loss=float(losses[t["name"]]))
        per[t["name"]] = d
    flat = flat_metrics(per)
    return {"kind": "multitask", "run_dir": str(run_dir), "data": str(data) if data else "validation split",
            "n": len(kept), "failures": fails, "tasks": per,
            "metrics": {k.replace("val_", "", 1): v for k, v in flat.items()}}


def predict(run_dir: str | Path, paths, **_: Any) -> list[dict[str, Any]]:
    """One row per image: {"path", "tasks": {task: answer}, "error"}."""
    from tlstudio.core.evaluation.evaluate import expand_paths

    model, info, _ = load_model(run_dir)
    files = expand_paths(paths)
    outs, ok, fails = _run_batches(model, files, info.model)
    decoded = _Outputs(info.label_schema["tasks"]).decode(outs)
    by_path = {files[i]: decoded[k] for k, i in enumerate(ok)}
    reasons = {f["path"]: f["reason"] for f in fails}
    return [{"path": p, "tasks": by_path.get(p, {}), "error": reasons.get(p)} for p in files]


def eval_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"{r['n']} images, mean task score {r['metrics'].get('score', 0):.3f}"]
    for name, d in r["tasks"].items():
        if d["type"] == "numeric":
            lines.append(f"  {name:<16} MAE {d['mae']:.4g}  R^2 {d['r2']:.3f}  ({d['n']} labelled)")
        else:
            lines.append(f"  {name:<16} accuracy {d['accuracy']:.1%}  macro-F1 {d['macro_f1']:.3f}  ({d['n']} labelled)")
    return lines


def predict_line(row: dict[str, Any]) -> str:
    if row.get("error"):
        return f"{row['path']}: {row['error']}"
    parts = []
    for name, a in row["tasks"].items():
        if "class" in a:
            parts.append(f"{name}={a['class']} ({a['prob']:.0%})")
        elif "classes" in a:
            parts.append(f"{name}={';'.join(a['classes']) or '-'}")
        else:
            parts.append(f"{name}={a['value']:.4g}")
    return f"{row['path']}: " + ", ".join(parts)


def export(run_dir, formats=("safetensors", "onnx", "torchscript"), out_dir=None, progress=None, **kw):
    """See tlstudio.core.tasks.multitask.export.export."""
    from tlstudio.core.tasks.multitask.export import export as _export

    return _export(run_dir, formats, out_dir, progress, **kw)
