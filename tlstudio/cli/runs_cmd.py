"""`tlstudio runs`: list run folders, show one, compare two (settings and metrics side by side).

    tlstudio runs [list] [DIR]        runs under DIR (default: the runs folder), newest first
    tlstudio runs show RUN            one run: task, status, data, model, metrics, settings
    tlstudio runs compare RUN_A RUN_B the settings that differ and every metric with its change
Every form takes --json. Metrics are whatever the run's kind of learning recorded (run.json
`metrics`, the best epoch's); old run folders (schema 1) show their accuracy and macro-F1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

_SKIP_SETTINGS = {"out_dir", "schema_version"}  # differ between any two runs, say nothing


def register(subparsers) -> None:
    p = subparsers.add_parser("runs", help="list runs, show one, or compare two (settings and metrics)",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="runs_command")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_runs, runs_command=None, dir=None)

    s = sub.add_parser("list", help="runs under a folder, newest first")
    s.add_argument("dir", nargs="?", help="folder holding run folders (default: the runs folder)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_runs)

    s = sub.add_parser("show", help="one run: task, status, data, model, metrics, settings")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_runs)

    s = sub.add_parser("compare", help="two runs side by side: settings that differ, every metric")
    s.add_argument("run_a")
    s.add_argument("run_b")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_runs)


# ---- reading ---------------------------------------------------------------------------------
def _metrics(info) -> dict[str, float]:
    m = dict(getattr(info, "metrics", None) or {})
    for k in ("val_acc", "val_macro_f1"):  # schema 1 runs, and runs written before metrics existed
        v = getattr(info, f"best_{k}", None)
        if v is not None:
            m.setdefault(k, v)
    return m


def summary(run_dir: str | Path) -> dict[str, Any]:
    """What `runs list/show` print about one run folder (JSON-able)."""
    from tlstudio.core.runs.folder import read_run

    info = read_run(run_dir)
    return {
        "run_dir": str(run_dir), "name": info.name or Path(run_dir).name,
        "task": getattr(info, "task", "classification"), "kind": info.kind, "status": info.status,
        "created": info.created, "backbone": info.model.backbone, "classes": list(info.model.classes),
        "epochs_done": info.epochs_done, "best_epoch": info.best_epoch,
        "best_metric": getattr(info, "best_metric", "val_acc"), "metrics": _metrics(info),
        "data": {k: info.data[k] for k in ("root", "n_train", "n_val", "counts") if k in info.data},
        "baseline": info.baseline, "settings": {k: v for k, v in info.config.items() if k not in _SKIP_SETTINGS},
    }


def compare(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """Settings that differ (a, b) and every metric of either run with the change b - a."""
    a, b = summary(run_a), summary(run_b)
    keys = sorted(set(a["settings"]) | set(b["settings"]))
    settings = {k: [a["settings"].get(k), b["settings"].get(k)] for k in keys
                if a["settings"].get(k) != b["settings"].get(k)}
    for field in ("task", "backbone", "status", "epochs_done"):
        if a[field] != b[field]:
            settings.setdefault(field, [a[field], b[field]])
    if a["classes"] != b["classes"]:
        settings["classes"] = [a["classes"], b["classes"]]
    names = list(dict.fromkeys([*a["metrics"], *b["metrics"]]))
    metrics = {}
    for n in names:
        va, vb = a["metrics"].get(n), b["metrics"].get(n)
        metrics[n] = {"a": va, "b": vb, "change": None if va is None or vb is None else vb - va}
    return {"a": a["run_dir"], "b": b["run_dir"], "settings": settings, "metrics": metrics}


# ---- printing --------------------------------------------------------------------------------
def _fmt(name: str, v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        base = name.split("/")[0]
        if "acc" in base or "f1" in base or base.endswith(("auroc", "auc", "recall", "precision")):
            return f"{v:.1%}"
        return f"{v:.4g}"
    return str(v)


def _change(name: str, d: float | None) -> str:
    if d is None:
        return ""
    base = name.split("/")[0]
    if "acc" in base or "f1" in base or base.endswith(("auroc", "auc", "recall", "precision")):
        return f"{100 * d:+.1f} points"
    return f"{d:+.4g}"


def _headline(s: dict[str, Any]) -> str:
    m = s["metrics"]
    key = s["best_metric"] if s["best_metric"] in m else next(iter(m), None)
    return f"{key} {_fmt(key, m[key])}" if key else "no metrics"


def _print_list(root: Path, rows: list[dict[str, Any]], bad: list[str]) -> None:
    if not rows:
        print(f"No runs in {root}.")
    else:
        print(f"{len(rows)} runs in {root} (newest first)")
        w = max(len(r["name"]) for r in rows)
        for r in rows:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"]))
            print(f"  {r['name']:<{w}}  {when}  {r['task']:<15} {r['status']:<13} {r['backbone']:<24} "
                  f"{r['epochs_done']:>3} ep  {_headline(r)}")
    for b in bad:
        print(f"  (skipped) {b}")


def _print_show(s: dict[str, Any]) -> None:
    print(f"{s['name']}  ({s['run_dir']})")
    print(f"  task {s['task']}, status {s['status']}, {s['epochs_done']} epochs, best epoch "
          f"{'-' if s['best_epoch'] is None else s['best_epoch'] + 1} (by {s['best_metric']})")
    print(f"  model {s['backbone']}, {len(s['classes'])} classes: {', '.join(s['classes'][:12])}"
          + (" ..." if len(s["classes"]) > 12 else ""))
    d = s["data"]
    if d:
        print(f"  data {d.get('root', '?')}: {d.get('n_train', '?')} train / {d.get('n_val', '?')} val images")
    print("  metrics (best epoch):" if s["metrics"] else "  no metrics recorded")
    for k, v in s["metrics"].items():
        print(f"    {k:<24} {_fmt(k, v)}")
    if s["baseline"] and s["baseline"].get("gain") is not None:
        print(f"  transfer vs from scratch: {100 * s['baseline']['gain']:+.1f} points")
    print("  settings:")
    for k, v in sorted(s["settings"].items()):
        if v is not None:
            print(f"    {k:<24} {v}")


def _print_compare(c: dict[str, Any]) -> None:
    print(f"A {c['a']}\nB {c['b']}")
    if c["settings"]:
        w = max(len(k) for k in c["settings"])
        print("settings that differ:")
        for k, (va, vb) in c["settings"].items():
            print(f"  {k:<{w}}  A {va}  B {vb}")
    else:
        print("same settings")
    if c["metrics"]:
        w = max(len(k) for k in c["metrics"])
        print("metrics (best epoch):")
        for k, r in c["metrics"].items():
            print(f"  {k:<{w}}  A {_fmt(k, r['a']):>8}  B {_fmt(k, r['b']):>8}  {_change(k, r['change'])}")
    else:
        print("no metrics recorded in either run")


def cmd_runs(args) -> int:
    from tlstudio.core.errors import UserError
    from tlstudio.core.runs.folder import RunError, is_run_dir, list_runs

    what = args.runs_command or "list"
    if what == "list":
        from tlstudio.core.paths import default_runs_dir

        root = Path(getattr(args, "dir", None) or default_runs_dir()).expanduser()
        if not root.is_dir():
            raise UserError(f"{root}: no such folder")
        if is_run_dir(root):
            raise UserError(f"{root} is a run folder: use `tlstudio runs show {root}`")
        rows, bad = [], []
        for run in list_runs(root):
            try:
                rows.append(summary(run))
            except (RunError, OSError, ValueError) as exc:  # a damaged run does not hide the others
                bad.append(f"{run}: {exc}")
        if args.json:
            print(json.dumps({"root": str(root), "runs": rows, "unreadable": bad}, indent=2, default=str))
        else:
            _print_list(root, rows, bad)
        return 0
    if what == "show":
        s = summary(args.run_dir)
        print(json.dumps(s, indent=2, default=str)) if args.json else _print_show(s)
        return 0
    c = compare(args.run_a, args.run_b)
    print(json.dumps(c, indent=2, default=str)) if args.json else _print_compare(c)
    return 0
