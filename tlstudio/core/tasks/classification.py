"""Single-label classification: the first kind of learning, and the default of every hook.

Training is the shared engine with the ClassificationObjective; evaluation, prediction and
export are the first wave's (evaluation/evaluate.py, export/formats.py) returned as dictionaries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlstudio.core.config import TrainConfig
from tlstudio.core.tasks.registry import TaskKind, register


def run(config, stop=None, pause=None):
    from tlstudio.core.training.engine import fit

    return fit(config, stop, pause)


def resume(run_dir, stop=None, pause=None):
    from tlstudio.core.training.engine import resume as resume_run

    return resume_run(run_dir, stop, pause)


def evaluate(run_dir: str | Path, data: str | Path | None = None, progress=None) -> dict[str, Any]:
    from tlstudio.core.evaluation.evaluate import evaluate as evaluate_run

    report = evaluate_run(run_dir, data, progress=progress)
    out = report.to_json()
    out["metrics"] = {"accuracy": report.accuracy, "macro_f1": report.macro_f1,
                      **{f"top{k}_accuracy": v for k, v in sorted(report.top_k.items())}}
    return out


def predict(run_dir: str | Path, paths, top_k: int = 3, **_: Any) -> list[dict[str, Any]]:
    from tlstudio.core.evaluation.evaluate import predict as predict_run

    return [{"path": p.path, "top": [{"class": c, "prob": pr} for c, pr in p.top], "error": p.error}
            for p in predict_run(run_dir, paths, top_k=top_k)]


def export(run_dir: str | Path, formats, out_dir: str | Path | None = None, progress=None, **kw: Any):
    from tlstudio.core.export.formats import export_run

    return export_run(run_dir, out_dir, formats=formats, progress=progress, **kw)


def eval_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"{r['n']} images: accuracy {r['accuracy']:.1%}, macro-F1 {r['macro_f1']:.3f}"]
    lines += [f"  top-{k} accuracy {v:.1%}" for k, v in sorted(r.get("top_k", {}).items(), key=lambda kv: int(kv[0]))]
    lines.append(f"{'class':<20} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>7}")
    for row in r["per_class"]:
        lines.append(f"{row['name']:<20} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f} "
                     f"{row['support']:>7}")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines += [f"  {name:<20} " + " ".join(f"{v:>5}" for v in row) for name, row in zip(r["classes"], r["confusion"])]
    wrong = r.get("misclassified") or []
    if wrong:
        lines.append(f"{len(wrong)} misclassified:")
        lines += [f"  {m['path']}: {m['true']} -> {m['pred']} ({m['confidence']:.1%})" for m in wrong[:20]]
    return lines


def predict_line(row: dict[str, Any]) -> str:
    return f"{row['path']}: " + ", ".join(f"{t['class']} {t['prob']:.1%}" for t in row["top"])


KIND = register(TaskKind(
    kind="classification", title="Classification",
    summary="one label per image, from a folder per class or a CSV: fine-tune a pretrained backbone",
    config_cls=TrainConfig, run=run, resume=resume, evaluate=evaluate, predict=predict, export=export,
    best_metric=("val_acc", "max"),
    gui_steps=(),  # the default kind: every step not made for another kind
    eval_lines=eval_lines, predict_line=predict_line,
))
