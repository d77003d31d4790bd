"""The distillation trade-off: what accuracy the small student pays for its size and speed.

Teacher(s), the distilled student and the same student trained without a teacher are
evaluated on the same validation images (the distill run's split.json) and timed on this
machine. The reference teacher is the most accurate one; speed-up and accuracy retained are
relative to it. Saved as tradeoff.json + tradeoff.md in the run folder.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

from tlstudio.core.atomic import atomic_write_json, atomic_write_text
from tlstudio.core.events import Event, Progress, Warn

TRADEOFF_JSON = "tradeoff.json"
TRADEOFF_MD = "tradeoff.md"
ROLE_TITLES = {"teacher": "teacher", "student": "distilled student", "student_baseline": "student without teacher"}


def _val_samples(run_dir: Path) -> list:
    from tlstudio.core.errors import UserError
    from tlstudio.core.runs.folder import SPLIT_JSON, read_split

    if not (run_dir / SPLIT_JSON).is_file():
        raise UserError(f"{run_dir}: no {SPLIT_JSON}: cannot compare on the same validation images")
    split = read_split(run_dir)
    return [s for s in split.val if s.label >= 0]


def _trained_on(run_dir: Path) -> set[str]:
    """Resolved paths of the images a run trained on (empty when its split is unknown)."""
    from tlstudio.core.runs.folder import RunError, read_split

    try:
        split = read_split(run_dir)
    except (OSError, RunError):
        return set()
    return {str(Path(s.path).resolve()) for s in split.train}


def _remap(samples: list, data_classes: list[str], model_classes: list[str]) -> list:
    """Labels in the model's class order (a teacher may list the same classes differently)."""
    if list(data_classes) == list(model_classes):
        return samples
    from tlstudio.core.data.dataset import Sample

    pos = {c: i for i, c in enumerate(model_classes)}
    return [Sample(s.path, pos[data_classes[s.label]]) for s in samples]


def _resolve_device(device: str) -> str:
    if device in ("auto", "", None):
        try:
            from tlstudio.core.runtime.precision import resolve_device

            return str(resolve_device("auto"))
        except Exception:  # noqa: BLE001 - precision module unavailable: CPU is always there
            return "cpu"
    return str(device)


def measure_row(role: str, run_dir: str | Path, val: list, data_classes: list[str], *, device: str = "cpu",
                repeats: int = 5, batch_size: int = 32) -> dict[str, Any]:
    """Accuracy, macro-F1, size and latency of one run's best weights."""
    row, model = evaluate_row(role, run_dir, val, data_classes, device=device, batch_size=batch_size)
    lat1, lat32 = measure_latencies(model, row["image_size"], device=device, repeats=repeats)
    row.update(latency_ms_b1=lat1, latency_ms_b32=lat32)
    return row


def evaluate_row(role: str, run_dir: str | Path, val: list, data_classes: list[str], *, device: str = "cpu",
                 batch_size: int = 32) -> tuple[dict[str, Any], Any]:
    """Accuracy, macro-F1, parameters and file size of one run's best weights; also returns the model."""
    from tlstudio.core.evaluation.evaluate import evaluate_model
    from tlstudio.core.runs.folder import BEST_WEIGHTS
    from tlstudio.core.models.run_model import load_run_model

    run_dir = Path(run_dir)
    model, info = load_run_model(run_dir)
    spec = info.model
    samples = _remap(val, data_classes, spec.classes)
    rep = evaluate_model(model, spec, samples, batch_size=min(64, max(1, batch_size)), device=device)
    weights = run_dir / BEST_WEIGHTS
    row = {
        "role": role,
        "name": run_dir.name,
        "run_dir": str(run_dir),
        "backbone": spec.backbone,
        "image_size": spec.image_size,
        "accuracy": rep.accuracy,
        "macro_f1": rep.macro_f1,
        "n_val": rep.n,
        "params": int(sum(p.numel() for p in model.parameters())),
        "file_bytes": weights.stat().st_size if weights.is_file() else None,
    }
    return row, model


def measure_latencies(model, image_size: int, *, device: str = "cpu", repeats: int = 5) -> tuple[float, float]:
    """(ms per image at batch 1, at batch 32): median of ``repeats`` timed passes (evaluate.measure_latency)."""
    import torch

    from tlstudio.core.evaluation.evaluate import measure_latency

    with torch.no_grad():
        lat1 = measure_latency(model, image_size, 1, device=device, repeats=max(3, repeats * 2))
        lat32 = measure_latency(model, image_size, 32, device=device, repeats=repeats)
    return lat1 * 1000.0, lat32 * 1000.0


def compare(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Add speed-up, size ratio and accuracy retained (vs the most accurate teacher) and a summary."""
    teachers = [r for r in rows if r["role"] == "teacher"]
    ref = max(teachers, key=lambda r: r["accuracy"]) if teachers else None
    for r in rows:
        if ref is None:
            break
        r["speedup_b1"] = ref["latency_ms_b1"] / r["latency_ms_b1"] if r["latency_ms_b1"] > 0 else None
        r["speedup_b32"] = ref["latency_ms_b32"] / r["latency_ms_b32"] if r["latency_ms_b32"] > 0 else None
        r["params_ratio"] = ref["params"] / r["params"] if r["params"] else None
        r["retained_pct"] = 100.0 * r["accuracy"] / ref["accuracy"] if ref["accuracy"] > 0 else None
    student = next((r for r in rows if r["role"] == "student"), None)
    baseline = next((r for r in rows if r["role"] == "student_baseline"), None)
    report: dict[str, Any] = {
        "reference_teacher": ref["name"] if ref else None,
        "rows": rows,
        "gain_over_baseline_points": (
            100.0 * (student["accuracy"] - baseline["accuracy"]) if student and baseline else None),
    }
    report["summary"] = summary_sentence(report)
    return report


def summary_sentence(report: dict[str, Any]) -> str:
    rows = report["rows"]
    ref = next((r for r in rows if r["name"] == report.get("reference_teacher") and r["role"] == "teacher"), None)
    st = next((r for r in rows if r["role"] == "student"), None)
    if ref is None or st is None:
        return ""
    size_ratio = (ref["file_bytes"] / st["file_bytes"]) if ref.get("file_bytes") and st.get("file_bytes") else None
    s = (f"The distilled {st['backbone']} keeps {st['retained_pct']:.1f}% of the teacher's accuracy "
         f"({st['accuracy']:.1%} vs {ref['accuracy']:.1%} for {ref['backbone']}, "
         f"{100 * (st['accuracy'] - ref['accuracy']):+.1f} points)")
    pr = st.get("params_ratio") or 1.0
    if pr >= 1.05:
        s += f" with {pr:.1f}x fewer parameters" + (f", a {size_ratio:.1f}x smaller file" if size_ratio else "")
    elif pr <= 0.95:
        s += f" with {1 / pr:.1f}x more parameters"
    else:
        s += " with as many parameters (self-distillation)"
    s += f", and {_speed_words(st['speedup_b1'])} per image at batch 1 ({_speed_words(st['speedup_b32'], False)} " \
         "at batch 32) on this machine."
    gain = report.get("gain_over_baseline_points")
    if gain is not None:
        s += (f" The teacher {'helped' if gain > 0 else 'did not help'}: {gain:+.1f} points over the same "
              "student trained without it.")
    return s


def _speed_words(x: float | None, verb: bool = True) -> str:
    v = "runs " if verb else ""
    if x is None:
        return f"{v}at an unknown speed"
    if x >= 1.1:
        return f"{v}{x:.1f}x faster"
    if x <= 0.9:
        return f"{v}{1 / x:.1f}x slower"
    return f"{v}about as fast"


def _fmt_bytes(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.0f} k"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


TABLE_COLUMNS = ["Model", "Backbone", "Accuracy", "Macro-F1", "Params", "File", "ms/img b1", "ms/img b32",
                 "Speed-up b1", "Speed-up b32", "Acc. retained"]


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """The table as strings (shared by the markdown, the CLI and the GUI)."""
    out = []
    for r in report["rows"]:
        out.append([
            f"{ROLE_TITLES.get(r['role'], r['role'])} ({r['name']})",
            r["backbone"],
            f"{r['accuracy']:.1%}",
            f"{r['macro_f1']:.3f}",
            _fmt_params(r["params"]),
            _fmt_bytes(r.get("file_bytes")),
            f"{r['latency_ms_b1']:.2f}",
            f"{r['latency_ms_b32']:.2f}",
            _x(r.get("speedup_b1")),
            _x(r.get("speedup_b32")),
            "-" if r.get("retained_pct") is None else f"{r['retained_pct']:.1f}%",
        ])
    return out


def tradeoff_markdown(report: dict[str, Any]) -> str:
    head = "| " + " | ".join(TABLE_COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"
    body = ["| " + " | ".join(r) + " |" for r in table_rows(report)]
    meta = (f"Validation images: {report.get('n_val', '?')}; latency measured on {report.get('device', '?')} "
            f"({report.get('threads', '?')} threads), {report.get('latency_method', 'median per image')}; "
            "reference teacher: "
            f"{report.get('reference_teacher')}.")
    notes = [f"Note: {n}" for n in report.get("notes", [])]
    return "\n".join(["# Distillation trade-off", "", head, sep, *body, "", report.get("summary", ""), "", *notes,
                      meta, ""])


def tradeoff_table(report: dict[str, Any]) -> str:
    """Fixed-width text table for logs and the terminal."""
    rows = [TABLE_COLUMNS, *table_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_tradeoff(run_dir: str | Path, teachers: list[str], baseline_dir: str | Path | None, *,
                   device: str = "cpu", repeats: int = 5, batch_size: int = 32,
                   rounds: int = 3) -> Generator[Event, None, dict]:
    """Measure every model on the distill run's validation split; yield Progress; return the report."""
    import torch

    from tlstudio.core.runs.folder import read_run

    run_dir = Path(run_dir)
    dev = _resolve_device(device)
    data_classes = list(read_run(run_dir).model.classes)
    val = _val_samples(run_dir)
    todo = [("teacher", t) for t in teachers] + [("student", run_dir)]
    if baseline_dir is not None and (Path(baseline_dir) / "model.safetensors").is_file():
        todo.append(("student_baseline", baseline_dir))
    notes = []
    for t in teachers:
        seen = _trained_on(Path(t)) & {str(Path(v.path).resolve()) for v in val}
        if seen:
            notes.append(f"Teacher {Path(t).name} was trained on {len(seen)} of these {len(val)} validation "
                         "images, so its accuracy here is optimistic (distil on the data set the teacher "
                         "was trained on, with the same split, to avoid this).")
    for n in notes:
        yield Warn(n)
    rows, models = [], []
    for k, (role, d) in enumerate(todo):
        yield Progress("tradeoff", k, None, f"evaluating {ROLE_TITLES[role]} {Path(d).name}")
        row, model = evaluate_row(role, d, val, data_classes, device=dev, batch_size=batch_size)
        rows.append(row)
        models.append(model)
    # Latency rounds interleave the models and keep each one's best round: a burst of load
    # from other programs then slows one round, not one model. Rows with the same architecture
    # and input size (student and student-without-teacher, self-distillation) share one timing:
    # the same network runs at the same speed, and a second measurement would only add noise.
    arch: dict[tuple[str, int], int] = {}
    for k, row in enumerate(rows):
        arch.setdefault((row["backbone"], row["image_size"]), k)
    steps = len(todo) + rounds * len(arch)
    done = len(todo)
    best: dict[int, tuple[float, float]] = {}
    for r in range(rounds):
        for k in arch.values():
            row = rows[k]
            yield Progress("tradeoff", done, steps, f"timing {row['backbone']} (round {r + 1}/{rounds})")
            lat1, lat32 = measure_latencies(models[k], row["image_size"], device=dev, repeats=repeats)
            old = best.get(k, (lat1, lat32))
            best[k] = (min(old[0], lat1), min(old[1], lat32))
            done += 1
    for row in rows:
        row["latency_ms_b1"], row["latency_ms_b32"] = best[arch[(row["backbone"], row["image_size"])]]
    yield Progress("tradeoff", steps, steps, "trade-off measured")
    report = compare(rows)
    report.update(device=dev, threads=torch.get_num_threads(), n_val=len(val), run_dir=str(run_dir), notes=notes,
                  latency_method=f"best of {rounds} interleaved rounds, each the median of {repeats} (batch 32) "
                  f"or {max(3, repeats * 2)} (batch 1) timed passes")
    return report


def save_tradeoff(run_dir: str | Path, report: dict[str, Any]) -> None:
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / TRADEOFF_JSON, report)
    atomic_write_text(run_dir / TRADEOFF_MD, tradeoff_markdown(report))


def read_tradeoff(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / TRADEOFF_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
