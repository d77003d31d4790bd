"""The review queue: unlabelled images with a proposed label, for a person to accept, reject or relabel.

Images are sorted by the model's confidence (most confident first: those are quick to accept).
Accepted and relabelled images become labelled data of the project as a CSV of ``path,label``
(paths relative to the CSV's folder, as the data scan reads them), together with the labelled
images the project already had. The user's image files are never moved, copied or overwritten:
only the CSV (and the queue's own state file) is written.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tlstudio.core.errors import UserError

Decision = Literal["pending", "accepted", "rejected", "relabelled"]
CSV_NAME = "tlstudio-reviewed-labels.csv"
STATE_NAME = "review.json"


class ReviewError(UserError):
    pass


@dataclass
class ReviewItem:
    path: str
    proposed: int  # class index the model proposes
    confidence: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (class index, probability), best first
    decision: Decision = "pending"
    label: int | None = None  # the final label (accepted: proposed; relabelled: the user's)


class ReviewQueue:
    """Decisions on proposed labels; a plain model the GUI panel observes through ``version``."""

    def __init__(self, classes: Sequence[str], items: Iterable[ReviewItem]) -> None:
        self.classes = list(classes)
        self.items = sorted(items, key=lambda it: (-it.confidence, it.path))
        self.version = 0  # bumped on every change

    # --------------------------------------------------------------------------- building
    @classmethod
    def from_probs(cls, classes: Sequence[str], paths: Sequence[str], probs, top_k: int = 3) -> ReviewQueue:
        import torch

        p = torch.as_tensor(probs, dtype=torch.float32)
        items = []
        for path, row in zip(paths, p):
            vals, idx = row.topk(min(top_k, len(row)))
            # 6 decimals: float32 0.9 is 0.89999998, which would miss an "at or above 0.9"
            items.append(ReviewItem(str(path), int(idx[0]), round(float(vals[0]), 6),
                                    [(int(i), round(float(v), 6)) for i, v in zip(idx, vals)]))
        return cls(classes, items)

    @classmethod
    def from_predictions(cls, classes: Sequence[str], predictions: Iterable[dict[str, Any]]) -> ReviewQueue:
        """From registry predict() rows ({"path", "top": [{"class", "prob"}], "error"}); errors left out."""
        index = {c: i for i, c in enumerate(classes)}
        items = []
        for row in predictions:
            if row.get("error") or not row.get("top"):
                continue
            top = [(index[t["class"]], float(t["prob"])) for t in row["top"] if t["class"] in index]
            if top:
                items.append(ReviewItem(str(row["path"]), top[0][0], top[0][1], top))
        return cls(classes, items)

    # --------------------------------------------------------------------------- decisions
    def _item(self, i: int) -> ReviewItem:
        if not 0 <= i < len(self.items):
            raise IndexError(f"no review item {i}")
        return self.items[i]

    def accept(self, i: int) -> None:
        it = self._item(i)
        it.decision, it.label = "accepted", it.proposed
        self.version += 1

    def reject(self, i: int) -> None:
        it = self._item(i)
        it.decision, it.label = "rejected", None
        self.version += 1

    def relabel(self, i: int, label: int | str) -> None:
        it = self._item(i)
        if isinstance(label, str):
            if label not in self.classes:
                raise ReviewError(f"unknown class {label!r}; classes: {', '.join(self.classes)}")
            label = self.classes.index(label)
        if not 0 <= int(label) < len(self.classes):
            raise ReviewError(f"class number {int(label) + 1} does not exist (there are {len(self.classes)})")
        it.label = int(label)
        it.decision = "accepted" if it.label == it.proposed else "relabelled"
        self.version += 1

    def undo(self, i: int) -> None:
        it = self._item(i)
        it.decision, it.label = "pending", None
        self.version += 1

    def accept_above(self, threshold: float) -> int:
        """Accept every pending item at or above ``threshold`` confidence; returns how many."""
        n = 0
        for it in self.items:
            if it.decision == "pending" and it.confidence >= threshold:
                it.decision, it.label = "accepted", it.proposed
                n += 1
        self.version += 1
        return n

    def next_pending(self, start: int = 0) -> int | None:
        for j in list(range(start, len(self.items))) + list(range(0, start)):
            if self.items[j].decision == "pending":
                return j
        return None

    def counts(self) -> dict[str, Any]:
        c = {"pending": 0, "accepted": 0, "rejected": 0, "relabelled": 0}
        per = [0] * len(self.classes)
        for it in self.items:
            c[it.decision] += 1
            if it.label is not None and it.decision in ("accepted", "relabelled"):
                per[it.label] += 1
        c["total"] = len(self.items)
        c["labelled_per_class"] = dict(zip(self.classes, per))
        return c

    def labelled(self) -> list[tuple[str, str]]:
        """(path, class name) of every accepted or relabelled image."""
        return [(it.path, self.classes[it.label]) for it in self.items
                if it.decision in ("accepted", "relabelled") and it.label is not None]

    # --------------------------------------------------------------------------- files
    def write_csv(self, csv_path: str | Path, existing: Iterable[tuple[str, str]] = ()) -> Path:
        """Write ``path,label`` rows (the project's existing labelled images, then the reviewed ones)
        with paths relative to the CSV's folder. Every image must be inside that folder (the data
        scan refuses paths outside it), so choose a folder that holds both image folders."""
        from tlstudio.core.atomic import atomic_write_text

        csv_path = Path(csv_path).expanduser().resolve()
        root = csv_path.parent
        rows: list[tuple[str, str]] = []
        seen: set[str] = set()
        for path, label in list(existing) + self.labelled():
            full = Path(path).expanduser().resolve()
            try:
                rel = full.relative_to(root)
            except ValueError:
                raise ReviewError(f"{full} is not inside {root}: save the CSV in a folder that contains both the "
                                  "labelled and the unlabelled images") from None
            key = rel.as_posix()
            if key in seen:  # an image both in the project and reviewed: the review wins
                rows = [r for r in rows if r[0] != key]
            seen.add(key)
            rows.append((key, label))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "label"])
        w.writerows(rows)
        atomic_write_text(csv_path, buf.getvalue())
        return csv_path

    def to_json(self) -> dict[str, Any]:
        return {"classes": self.classes, "items": [asdict(it) for it in self.items]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReviewQueue:
        items = [ReviewItem(path=r["path"], proposed=int(r["proposed"]), confidence=float(r["confidence"]),
                            top=[(int(a), float(b)) for a, b in r.get("top", [])], decision=r.get("decision", "pending"),
                            label=r.get("label")) for r in d.get("items", [])]
        return cls(d["classes"], items)

    def save(self, path: str | Path) -> None:
        from tlstudio.core.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> ReviewQueue:
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as exc:
            raise ReviewError(f"{path}: cannot read the review queue: {exc}") from exc


def default_csv_path(*folders: str | Path) -> Path:
    """The CSV beside the images: in the deepest folder that contains all of ``folders``."""
    paths = [str(Path(f).expanduser().resolve()) for f in folders if f]
    if not paths:
        raise ReviewError("no image folders given")
    try:
        common = Path(os.path.commonpath(paths))
    except ValueError:  # different drives
        raise ReviewError("the labelled and unlabelled folders are on different drives: put them in one folder") from None
    if all(Path(p) == common for p in paths) or common.is_file():
        common = common if common.is_dir() else common.parent
    return common / CSV_NAME


def existing_labels(data_dir: str | Path) -> list[tuple[str, str]]:
    """(path, class) of the labelled images a project already has (its data folder or CSV)."""
    from tlstudio.core.data.dataset import scan

    rep = scan(data_dir)
    return [(s.path, rep.classes[s.label]) for s in rep.samples]
