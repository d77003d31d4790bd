"""Single-task baselines: is one shared model as good as separate models?

For each task, the same configuration (backbone, starting weights, freezing, epochs, batch
size, learning rate, split) trains a model with only that task's head (heads on cached
features when the body is frozen: seconds). Per task: MTL score vs single-task score, the
delta in points, and a task that got worse by more than the noise margin is flagged as
negative transfer between tasks. Overall delta-m % (Maninis et al. 2019):
    delta_m = 100 / T * sum_i (M_mtl,i - M_single,i) / M_single,i
with the per-task score (accuracy, macro-F1, clipped R^2), higher is better.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from pathlib import Path
from typing import Any

from tlstudio.core.events import Event, Log, Warn
from tlstudio.core.runs import folder as runs

BASELINES_DIR = "single_task"
NEGATIVE_MARGIN = 0.005  # a task is "worse" when it lost more than half a point


UNRELATED_COSINE = 0.1  # mean gradient cosine with every other task below this: unrelated
RELATIVE = 0.25  # ... or below a quarter of how aligned the most related other pair is


def unrelated_tasks(names: list[str], matrix: list[list[float]] | None,
                    threshold: float = UNRELATED_COSINE) -> list[str]:
    """Tasks whose gradients on the shared layers are, on average over training, about as
    aligned with every other task's as chance: cosine below max(threshold, RELATIVE x the
    strongest cosine between two other tasks) with each of them."""
    if not matrix or len(names) < 2:
        return []
    k = len(names)
    out = []
    for i, t in enumerate(names):
        others = [matrix[a][b] for a in range(k) for b in range(a + 1, k) if i not in (a, b)]
        limit = max(threshold, RELATIVE * max(others)) if others else threshold
        if all(matrix[i][j] < limit for j in range(k) if j != i):
            out.append(t)
    return out


def noise_tolerance(m: float, s: float, n: int | None, margin: float = NEGATIVE_MARGIN) -> float:
    """How far apart two scores on ``n`` validation images can be by chance: one standard error of
    the difference of two proportions, sqrt(2 p (1 - p) / n) with p their mean, and never less
    than one image (1/n) or ``margin``."""
    if not n:
        return margin
    p = min(1.0, max(0.0, (m + s) / 2))
    return max(margin, 1.0 / n, math.sqrt(2 * p * (1 - p) / n))


def compare(mtl: dict[str, float], single: dict[str, float], margin: float = NEGATIVE_MARGIN,
            relatedness: list[list[float]] | None = None, n_val: dict[str, int] | None = None,
            heads_only: bool = False) -> dict[str, Any]:
    """Per-task scores (0..1, higher is better) -> rows, delta-m % and a one-line verdict.
    A task is better or worse only beyond the noise of its ``n_val`` validation images
    (noise_tolerance); ``relatedness`` (gradient cosines, task order of ``single``) adds the
    unrelated tasks; ``heads_only``: the body was frozen, so nothing learnable was shared."""
    rows = []
    rel = []
    for t, s in single.items():
        m = mtl.get(t, 0.0)
        d = m - s
        tol = noise_tolerance(m, s, (n_val or {}).get(t), margin)
        rows.append({"task": t, "mtl": m, "single": s, "delta_points": 100.0 * d, "noise_points": 100.0 * tol,
                     "negative": d < -tol - 1e-9, "better": d > tol + 1e-9})
        rel.append(d / s if s > 0 else 0.0)
    delta_m = 100.0 * sum(rel) / len(rel) if rel else 0.0
    worse = [r["task"] for r in rows if r["negative"]]
    better = [r["task"] for r in rows if r["better"]]
    # ASCII (the CLI prints this); callers put delta-m in front of the verdict, so it is not repeated here
    noise = ", ".join(f"{r['noise_points']:.1f} for {r['task']}" for r in rows)
    if worse:
        verdict = (f"Negative transfer between tasks: {', '.join(worse)} did worse in the shared model than alone, "
                   f"beyond the noise of the validation set. Train "
                   f"{'it' if len(worse) == 1 else 'them'} separately, or try another weighting / soft sharing.")
    elif better:
        verdict = (f"Multi-task learning helps: {', '.join(better)} did better than alone beyond the noise of the "
                   f"validation set and no task got worse, with one backbone instead "
                   f"of {len(rows)}.")
    else:
        verdict = (f"Multi-task matches the separate models: every difference is within the noise of the "
                   f"validation set (up to {noise} points either way), with one backbone instead of "
                   f"{len(rows)}.")
    if heads_only:
        verdict += (" The body was frozen, so the tasks shared no trainable layer: the differences come from "
                    "chance (initialisation, dropout), not from sharing. Fine-tune some layers to let the tasks "
                    "help (or hurt) each other.")
    unrelated = unrelated_tasks(list(single), relatedness)
    if len(unrelated) >= 2 and len(unrelated) == len(rows):
        verdict += (f" The tasks look unrelated to each other (their gradients on the shared layers are not "
                    "aligned): sharing gives them nothing but a smaller model.")
    elif unrelated:
        verdict += (f" {', '.join(unrelated)} looks unrelated to the other tasks (its gradients on the shared "
                    "layers are not aligned with theirs): it gains nothing from sharing and may hurt the others.")
    return {"rows": rows, "delta_m": delta_m, "negative_tasks": worse, "unrelated_tasks": unrelated,
            "verdict": verdict}


def run_baselines(config, run_dir: Path, info, stop, pause) -> Generator[Event, None, Any]:
    from tlstudio.core.tasks.multitask.distributed import from_main
    from tlstudio.core.tasks.multitask.trainer import run

    names = [t["name"] for t in info.label_schema["tasks"]]
    per = (info.extra.get("multitask") or {}).get("per_task") or {}
    mtl = {t: float(per.get(t, {}).get("score", 0.0)) for t in names}
    single: dict[str, float] = {}
    dirs: dict[str, str] = {}
    split_src = run_dir / runs.SPLIT_JSON
    for t in names:
        out = run_dir / BASELINES_DIR / _safe(t)
        yield Log(f"Single-task baseline for '{t}' (same backbone, freezing, epochs and split)")
        # rank 0's folder decides (under torchrun the others' scratch folders never hold one)
        done = from_main(runs.is_run_dir(out) and runs.read_run(out).status in ("finished", "early_stopped"))
        if done and not runs.is_run_dir(out):  # a non-main process: rank 0 has this one already
            continue
        if done:
            sub = runs.read_run(out)
        else:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
            cfg = config.model_copy(update={
                "tasks": [t], "baseline": False, "out_dir": str(out), "weighting": "equal", "task_weights": None,
                "pcgrad": False, "sharing": "hard"})
            out.mkdir(parents=True, exist_ok=True)
            _copy_split(split_src, out, t)
            task = next(x for x in info.label_schema["tasks"] if x["name"] == t)
            sub = yield from run(cfg, stop, pause, phase=f"baseline:{t}", _same_split=True, _schema={"tasks": [task]})
        if sub.status not in ("finished", "early_stopped"):
            yield Warn(f"The single-task baseline of '{t}' did not finish; the comparison is incomplete")
            return info
        single[t] = float(((sub.extra.get("multitask") or {}).get("per_task") or {}).get(t, {}).get("score", 0.0))
        dirs[t] = str(out)
    n_val = {t: int(per.get(t, {}).get("n", 0)) for t in names}
    head_only = bool((info.extra.get("multitask") or {}).get("heads_independent"))
    result = compare(mtl, single, relatedness=(info.extra.get("multitask") or {}).get("relatedness"), n_val=n_val,
                     heads_only=head_only)
    result["run_dirs"] = dirs
    result["metric"] = "per-task score: accuracy (categorical), macro-F1 (multi-label), R^2 clipped to 0..1 (numeric)"
    info.extra.setdefault("multitask", {})["baseline"] = result
    runs.write_run(run_dir, info)
    for r in result["rows"]:
        yield Log(f"  {r['task']}: multi-task {r['mtl']:.1%} vs separate {r['single']:.1%} "
                  f"({r['delta_points']:+.1f} points){'  NEGATIVE TRANSFER' if r['negative'] else ''}")
    yield (Warn if result["negative_tasks"] or result["unrelated_tasks"] else Log)(
        f"delta-m {result['delta_m']:+.2f} %: {result['verdict']}")
    return info


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^0-9A-Za-z_.-]", "_", name) or "task"


def _copy_split(src: Path, out: Path, task: str) -> None:
    """The baseline trains on the MTL run's own split (rows without this task's label dropped)."""
    from tlstudio.core.data.dataset import Split

    split = runs.read_split(src.parent)
    keep = lambda rows: [s for s in rows if (s.targets or {}).get(task) is not None]  # noqa: E731
    runs.write_split(out, Split(train=keep(split.train), val=keep(split.val), test=keep(split.test),
                                seed=split.seed, val_fraction=split.val_fraction))
