"""Validation during training (reduced precision, confusion matrix -> accuracy and macro-F1) and
the final evaluation of the best weights in fp32, as exported (eval.json)."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

from tlstudio.core.runs import folder as runs
from tlstudio.core.models.run_model import load_run_model
from tlstudio.core.atomic import atomic_write_json
from tlstudio.core.events import Event, Log, Progress
from tlstudio.core.runtime.inference import forward_chunked


def confusion_metrics(conf) -> tuple[float, float]:
    """(accuracy, macro-F1) from a confusion matrix tensor (rows: true, cols: predicted)."""
    import torch

    conf = conf.double()
    total = conf.sum()
    acc = float(conf.diag().sum() / total) if total > 0 else 0.0
    tp = conf.diag()
    prec = tp / conf.sum(0).clamp(min=1)
    rec = tp / conf.sum(1).clamp(min=1)
    f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec), torch.zeros_like(tp))
    present = conf.sum(1) > 0
    macro = float(f1[present].mean()) if bool(present.any()) else 0.0
    return acc, macro


def validate(module, val_loader, n_classes: int, device, plan) -> tuple[float, float, float]:
    import torch

    module.eval()
    conf = torch.zeros(n_classes, n_classes, dtype=torch.long)
    loss_sum, n = 0.0, 0
    with torch.inference_mode(), plan.autocast():
        for x, y, _idx in val_loader:
            if x.shape[0] == 0:
                continue
            x = x.to(device)
            if plan.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device)
            logits = forward_chunked(module, x).float()
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            n += x.shape[0]
            pred = logits.argmax(1)
            conf += torch.bincount((y * n_classes + pred).cpu(), minlength=n_classes * n_classes).view(n_classes, n_classes)
    acc, f1 = confusion_metrics(conf)
    return loss_sum / max(1, n), acc, f1


def final_eval(run_dir: Path, info: runs.RunInfo, split, device) -> Generator[Event, None, None]:
    """Evaluate the best weights on the validation split and write eval.json."""
    from tlstudio.core.evaluation.evaluate import evaluate_model

    yield Progress(task="eval", done=0, total=len(split.val), message="Evaluating the best weights")
    model, _ = load_run_model(run_dir)
    report = evaluate_model(model, info.model, list(split.val), device=str(device))
    atomic_write_json(run_dir / runs.EVAL_JSON, report.to_json())
    yield Progress(task="eval", done=len(split.val), total=len(split.val))
    mixed = " (fp32, as exported; training validated in " + info.precision + ")" if info.precision != "fp32" else ""
    yield Log(f"Best epoch {info.best_epoch + 1}: validation accuracy {report.accuracy:.1%}, "
              f"macro-F1 {report.macro_f1:.3f}{mixed}")
