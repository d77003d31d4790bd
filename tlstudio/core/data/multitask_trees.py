"""Task folder trees: root/<task>/<class>/**/image for several tasks over the same image
names, matched by the path below the class folder (task_a/cat/x.png and task_b/indoor/x.png are
one image with two labels). Scanned into the same MultiTaskReport as a label table."""

from __future__ import annotations

import os

from tlstudio.core.data.dataset import SPLIT_NAMES, DatasetError
from tlstudio.core.data.images import IMAGE_EXTENSIONS, is_hidden_name
from tlstudio.core.data.multitask_report import build_report


def _visible_dirs(folder: str) -> list[str]:
    try:
        return sorted(d for d in os.listdir(folder) if not is_hidden_name(d) and os.path.isdir(os.path.join(folder, d)))
    except OSError:
        return []


def _tree_images(task_dir: str) -> dict[str, tuple[str, str]]:
    """{path below the class folder: (class, absolute path)} of one task's tree."""
    out: dict[str, tuple[str, str]] = {}
    for cls in _visible_dirs(task_dir):
        top = os.path.join(task_dir, cls)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not is_hidden_name(d)]
            for fn in filenames:
                if not is_hidden_name(fn) and os.path.splitext(fn)[1].lower() in IMAGE_EXTENSIONS:
                    full = os.path.join(dirpath, fn)
                    out.setdefault(os.path.relpath(full, top).replace(os.sep, "/"), (cls, full))
    return out


def tree_tasks(root: str | os.PathLike) -> dict[str, dict[str, tuple[str, str]]] | None:
    """Task trees under root (>= 2 task folders of class folders sharing image names), else None."""
    root = str(root)
    trees = {t: _tree_images(os.path.join(root, t)) for t in _visible_dirs(root)
             if t.lower() not in SPLIT_NAMES and len(_visible_dirs(os.path.join(root, t))) >= 2}
    trees = {t: v for t, v in trees.items() if v}
    if len(trees) < 2:
        return None
    keys = [set(v) for v in trees.values()]
    shared = set.intersection(*keys) if keys else set()
    if len(shared) < max(2, 0.2 * min(len(k) for k in keys)):
        return None  # class folders of unrelated data sets, not one image set labelled twice
    return trees


def scan_trees(root: str, tasks, types, **kw):
    trees = tree_tasks(root)
    if trees is None:
        raise DatasetError(f"{root}: expected several task folders (task/<class>/image) over the same image names.")
    names = list(tasks) if tasks else list(trees)
    unknown = [t for t in names if t not in trees]
    if unknown:
        raise DatasetError(f"{root}: no task folder {', '.join(repr(u) for u in unknown)}; found {', '.join(trees)}")
    keys = sorted({k for t in names for k in trees[t]})
    rows = []
    for k in keys:
        full = next(trees[t][k][1] for t in names if k in trees[t])
        rows.append((full, None, [trees[t][k][0] if k in trees[t] else "" for t in names], k))
    return build_report(root, "trees", root, names, types, rows, [], [], list(trees), **kw)
