"""Duplicate images in a data set: exact copies (same bytes) and near copies (the same picture
resized, re-encoded or lightly recompressed).

Why it matters: a copy on both sides of the train/validation split inflates the validation
score (the model is tested on an image it trained on), and the same picture under two classes
has no true label. The scan groups duplicates so `split.stratified` keeps each group on one side,
excludes exact copies that sit in different classes, and reports every pair it found.

Exact: the content hash the probe computes for files whose size collides (big files confirmed
on all bytes). Near: every image's 16x16 grey `images.look_of`; a pair is a near duplicate when
the thumbnails differ by at most NEAR_MAX_DIFF grey levels on average and correlate at least
NEAR_MIN_CORR (see `near_pairs` for how candidates are found without comparing every pair).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tlstudio.core.data.images import LOOK_SIDE, QUICK_HASH_SPAN, full_hash

NEAR_MAX_DIFF = 6.0  # mean absolute difference of the 16x16 grey thumbnails (0..255) ...
NEAR_MIN_CORR = 0.95  # ... and their correlation: measured on the bundled sample set (96 px shapes
# on noise), copies resized to 0.3-1.5x and re-encoded at JPEG quality 50-90 correlate >= 0.967,
# the closest different images (mean difference 3.4-5.5) at most 0.79
NEAR_DUP_MAX_IMAGES = 50_000  # beyond this, only exact duplicates are looked for (the scan says so)
_MAX_BUCKET = 1000  # a grid cell this crowded (plain backgrounds) is compared in windows only


@dataclass(frozen=True)
class DuplicatePair:
    """Two images that are the same picture. `kind` "exact" (same bytes) or "near"; `difference`
    is the mean grey-level difference of their thumbnails (0 for exact copies)."""

    a: str
    b: str
    kind: Literal["exact", "near"]
    difference: float = 0.0

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "kind": self.kind, "difference": round(self.difference, 2)}

    @classmethod
    def from_json(cls, d: dict) -> DuplicatePair:
        return cls(str(d["a"]), str(d["b"]), d.get("kind", "exact"), float(d.get("difference", 0.0)))


@dataclass
class Duplicates:
    pairs: list[DuplicatePair] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)  # connected images (>= 2 each), sorted


def exact_groups(items: Sequence[tuple[str, int]], hashes: dict[str, str]) -> list[list[str]]:
    """Groups (>= 2) of byte-identical files. `items`: (path, size) of usable files; `hashes`:
    quick content hashes (only files whose size collides have one)."""
    quick: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for path, size in items:
        h = hashes.get(path)
        if h is not None:
            quick[h].append((path, size))
    groups: dict[str, list[str]] = defaultdict(list)
    for h, members in quick.items():
        if len(members) < 2:
            continue
        for path, size in members:
            key = h
            if size > 2 * QUICK_HASH_SPAN:  # the quick hash saw only the ends: confirm on all bytes
                try:
                    key = "full:" + full_hash(path)
                except OSError:
                    continue
            groups[key].append(path)
    return sorted(sorted(g) for g in groups.values() if len(g) >= 2)


def _blocks(thumbs: np.ndarray, side: int) -> np.ndarray:
    """N x side*side block means of N x 16 x 16 thumbnails."""
    n, k = len(thumbs), LOOK_SIDE // side
    return thumbs.reshape(n, side, k, side, k).mean(axis=(2, 4)).reshape(n, side * side)


def _correlation(a: np.ndarray, b: np.ndarray, diff: float) -> float:
    """Pearson correlation of two thumbnails; two plain (flat) ones count as alike when their
    grey levels nearly match."""
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if den < (2.0 * 2.0) * a.size:  # both (nearly) flat: no pattern to correlate
        return 1.0 if diff <= 2.0 else 0.0
    return float((a * b).sum() / den)


def _close_pairs(members: np.ndarray, coarse: np.ndarray, flat: np.ndarray, max_diff: float,
                 found: dict[tuple[int, int], float]) -> None:
    """Pairs of `members` whose thumbnails differ by <= max_diff on average. The 4x4 block means
    filter first: their mean difference never exceeds the pixels' (triangle inequality)."""
    for lo in range(0, len(members), 32):
        rows = members[lo:lo + 32]
        rest = members[lo + 1:]
        if not len(rest):
            break
        d16 = np.abs(coarse[rows][:, None, :] - coarse[rest][None, :, :]).mean(axis=2)
        for r, c in zip(*np.nonzero(d16 <= max_diff)):
            i, j = int(rows[r]), int(rest[c])
            if j <= i or (min(i, j), max(i, j)) in found:
                continue
            d = float(np.abs(flat[i] - flat[j]).mean())
            if d <= max_diff and _correlation(flat[i], flat[j], d) >= NEAR_MIN_CORR:
                found[(min(i, j), max(i, j))] = d


def near_pairs(looks: dict[str, bytes], *, max_diff: float = NEAR_MAX_DIFF) -> list[tuple[str, str, float]]:
    """(a, b, difference) for every pair of near-identical thumbnails, a < b.

    Candidates share a cell of a grid over the four quadrant means (cells 16 grey levels wide,
    16 grids shifted by half a cell in each combination of axes: any two images whose quadrant
    means differ by less than 8 levels share a cell in one of them). A crowded cell (plain
    backgrounds) is compared in windows of similar brightness only."""
    paths = sorted(p for p, v in looks.items() if v is not None and len(v) == LOOK_SIDE * LOOK_SIDE)
    if len(paths) < 2:
        return []
    thumbs = np.frombuffer(b"".join(looks[p] for p in paths), np.uint8).reshape(-1, LOOK_SIDE, LOOK_SIDE)
    thumbs = thumbs.astype(np.float32)
    flat = thumbs.reshape(len(paths), -1)
    coarse = _blocks(thumbs, 4)
    quads = _blocks(thumbs, 2)
    width = 16.0
    found: dict[tuple[int, int], float] = {}
    for shift in range(16):
        offsets = np.array([(width / 2) * ((shift >> b) & 1) for b in range(4)], np.float32)
        cells = np.floor((quads + offsets) / width).astype(np.int64)
        keys = cells[:, 0] * 4096 + cells[:, 1] * 256 + cells[:, 2] * 16 + cells[:, 3]
        order = np.argsort(keys, kind="stable")
        bounds = np.flatnonzero(np.diff(keys[order])) + 1
        for members in np.split(order, bounds):
            if len(members) < 2:
                continue
            if len(members) <= _MAX_BUCKET:
                _close_pairs(members, coarse, flat, max_diff, found)
            else:  # sort by brightness; overlapping windows
                members = members[np.argsort(flat[members].mean(axis=1), kind="stable")]
                for lo in range(0, len(members), _MAX_BUCKET // 2):
                    _close_pairs(members[lo:lo + _MAX_BUCKET], coarse, flat, max_diff, found)
    return [(paths[i], paths[j], d) for (i, j), d in sorted(found.items())]


def group(paths: Sequence[str], pairs: Sequence[tuple[str, str]]) -> list[list[str]]:
    """Connected components (>= 2 images) of the pair graph, each sorted, sorted by first path."""
    parent = {p: p for p in paths}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        if a in parent and b in parent:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    comps: dict[str, list[str]] = defaultdict(list)
    for p in paths:
        comps[find(p)].append(p)
    return sorted(sorted(c) for c in comps.values() if len(c) >= 2)


def find_duplicates(items: Sequence[tuple[str, int]], hashes: dict[str, str],
                    looks: dict[str, bytes] | None) -> Duplicates:
    """Exact pairs (each group as a chain to its first member), then near pairs between images
    not already in the same exact group, and the groups they form together."""
    exact = exact_groups(items, hashes)
    pairs = [DuplicatePair(g[0], other, "exact") for g in exact for other in g[1:]]
    same = {p: g[0] for g in exact for p in g}
    if looks:
        for a, b, d in near_pairs(looks):
            if same.get(a, a) != same.get(b, b):
                pairs.append(DuplicatePair(a, b, "near", d))
    groups = group([p for p, _ in items], [(x.a, x.b) for x in pairs])
    return Duplicates(pairs=pairs, groups=groups)


def describe(pairs: Sequence[DuplicatePair], label_of: Callable[[str], str], split_of: Callable[[str], str],
             rel: Callable[[str], str], examples: Callable[[list[str]], str]) -> list[str]:
    """Warnings for the scan report: near copies across classes, copies within a class, and
    copies on both sides of the data set's own split."""
    cross: dict[tuple[str, str], list[str]] = defaultdict(list)
    within: dict[str, list[str]] = defaultdict(list)
    leaks: list[str] = []
    for p in pairs:
        text = f"{rel(p.a)} {'=' if p.kind == 'exact' else '~'} {rel(p.b)}"
        ca, cb = label_of(p.a), label_of(p.b)
        if ca != cb:
            cross[tuple(sorted((ca, cb)))].append(text)  # type: ignore[index]
        else:
            within[p.kind].append(text)
        sa, sb = split_of(p.a), split_of(p.b)
        if sa != sb and "train" in (sa, sb) and ({sa, sb} & {"val", "test"}):
            leaks.append(text)
    warns = []
    for (a, b), texts in sorted(cross.items()):
        warns.append(f"{len(texts)} near-identical images are in classes '{a}' and '{b}' (check their labels): "
                     f"{examples(texts)}")
    if leaks:
        warns.append(f"{len(leaks)} images are in both train and val/test (inflates validation accuracy): "
                     f"{examples(leaks)}")
    if within.get("exact"):
        warns.append(f"{len(within['exact'])} images are exact duplicates within their class "
                     f"(kept on one side of the split): {examples(within['exact'])}")
    if within.get("near"):
        warns.append(f"{len(within['near'])} images are near duplicates (resized or re-encoded copies) within "
                     f"their class (kept on one side of the split): {examples(within['near'])}")
    return warns


def ambiguous(dups: Duplicates, label_of: dict[str, str]) -> tuple[dict[str, list[str]], list[DuplicatePair]]:
    """Exact copies that sit in different classes: ({path: the other classes it is also in},
    their pairs). They are removed from `dups` (pairs and groups): the scan leaves them out of
    training, since no one can say which label is true."""
    exact: dict[str, set[str]] = defaultdict(set)  # first member of an exact group -> members
    for p in dups.pairs:
        if p.kind == "exact":
            exact[p.a] |= {p.a, p.b}
    out: dict[str, list[str]] = {}
    for members in exact.values():
        classes = {label_of[m] for m in members}
        if len(classes) > 1:
            for m in members:
                out[m] = sorted(classes - {label_of[m]})
    removed = [p for p in dups.pairs if p.a in out or p.b in out]
    if out:
        dups.pairs = [p for p in dups.pairs if p.a not in out and p.b not in out]
        dups.groups = [g2 for g in dups.groups if len(g2 := [p for p in g if p not in out]) >= 2]
    return out, removed
