"""Duplicate images in a data set: exact copies (same bytes) and near copies (the same picture
resized, re-encoded or lightly recompressed).

Why it matters: a copy on both sides of the train/validation split inflates the validation
score (the model is tested on an image it trained on), and the same picture under two classes
has no true label. The scan groups duplicates so `split.stratified` keeps each group on one side,
excludes exact copies that sit in different classes, and reports every pair it found.

Exact: the content hash the probe computes for files whose size collides (big files confirmed
on all bytes). Near: every image's `looks.look_of` (16x16 grey + 4x4 colour); a pair is a near
duplicate when the grey thumbnails differ by at most NEAR_MAX_DIFF levels on average, correlate
at least NEAR_MIN_CORR and the colour ones differ by at most NEAR_MAX_COLOR_DIFF (see
`near_pairs` for how candidates are found without comparing every pair).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tlstudio.core.data.images import QUICK_HASH_SPAN, full_hash
from tlstudio.core.data.looks import LOOK_BYTES, LOOK_SIDE

NEAR_MAX_DIFF = 4.0  # mean absolute difference of the 16x16 grey thumbnails (0..255) ...
NEAR_MIN_CORR = 0.95  # ... their correlation ...
NEAR_MAX_COLOR_DIFF = 4.5  # ... and the mean difference of the 4x4 colour thumbnails.
# Measured (benchmarks of the thresholds in tests/core/test_new_user_findings_data.py): copies
# resized to 0.5-1.5x and re-encoded at JPEG quality 60-90 of the bundled sample and of synthetic
# shapes stay within all three; different images with the same big shape in the same place
# (grey difference 2.8-5.5, correlation up to 0.99) differ in colour by 4.4 and more.
# beyond these, the scan looks for exact duplicates only (and says so): decoding looks costs about
# 20 ms per 4-megapixel JPEG (1/8 scale) and 0.5 s per 4-megapixel PNG on a busy 2-core laptop
NEAR_DUP_MAX_IMAGES = 10_000
NEAR_DUP_MAX_BYTES = 400e6  # JPEG-equivalent bytes to decode (probing.look_cost)
_MAX_BUCKET = 64  # a grid cell more crowded than this (plain backgrounds) is compared ...
_NEIGHBOURS = 8  # ... image by image with this many neighbours along each of _DIRECTIONS
_BEST_EDGES = 3  # near pairs kept per image (its closest), enough to connect a group
_DIRECTIONS = np.random.default_rng(17).standard_normal((3, 16)).astype(np.float32)  # of 4x4 block means


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


def _dedupe(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique's hashing is far slower on millions of int64 here)."""
    x = np.sort(x)
    return x[np.concatenate([[True], x[1:] != x[:-1]])] if len(x) else x


def _bucket_pairs(order: np.ndarray, keys: np.ndarray, coarse: np.ndarray, crowded: bool = True) -> np.ndarray:
    """(i, j) index pairs of images sharing a grid cell: all pairs in cells up to _MAX_BUCKET
    images; in a more crowded cell (plain backgrounds), each image and its _NEIGHBOURS next along
    three fixed random directions of the 4x4 block means (near copies are close along every
    direction; enough to chain a group of copies together)."""
    bounds = np.flatnonzero(np.diff(keys[order])) + 1
    starts = np.concatenate([[0], bounds])
    sizes = np.diff(np.concatenate([starts, [len(order)]]))
    out: list[np.ndarray] = []
    tri: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for size in np.unique(sizes[(sizes >= 2) & (sizes <= _MAX_BUCKET)]).tolist():
        a, b = tri.setdefault(size, np.triu_indices(size, 1))
        first = starts[sizes == size]  # every cell of this size at once
        members = order[first[:, None] + np.arange(size)[None, :]]
        out.append(np.stack([members[:, a].ravel(), members[:, b].ravel()], axis=1))
    for st, size in zip(starts[sizes > _MAX_BUCKET].tolist(), sizes[sizes > _MAX_BUCKET].tolist()):
        if not crowded:
            break
        cell = order[st:st + size]
        for direction in _DIRECTIONS:  # near copies are neighbours along every direction
            members = cell[np.argsort(coarse[cell] @ direction, kind="stable")]
            for o in range(1, _NEIGHBOURS + 1):
                out.append(np.stack([members[:-o], members[o:]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def near_pairs(looks: dict[str, bytes], *, max_diff: float = NEAR_MAX_DIFF) -> list[tuple[str, str, float]]:
    """(a, b, difference) for every pair of near-identical looks, a < b.

    Candidates share a cell of a grid over the four quadrant means (cells 16 grey levels wide,
    16 grids shifted by half a cell in each combination of axes: any two images whose quadrant
    means differ by less than 8 levels share a cell in one of them). Candidates are then
    filtered on the 4x4 block means (whose mean difference never exceeds the pixels': triangle
    inequality), then checked on the whole thumbnails, all vectorised."""
    paths = sorted(p for p, v in looks.items() if v is not None and len(v) == LOOK_BYTES)
    if len(paths) < 2:
        return []
    raw = np.frombuffer(b"".join(looks[p] for p in paths), np.uint8).reshape(len(paths), LOOK_BYTES)
    grey = LOOK_SIDE * LOOK_SIDE
    thumbs = raw[:, :grey].reshape(-1, LOOK_SIDE, LOOK_SIDE).astype(np.float32)
    color = raw[:, grey:].astype(np.float32)
    flat = thumbs.reshape(len(paths), -1)
    coarse = _blocks(thumbs, 4)
    quads = _blocks(thumbs, 2)
    centred = flat - flat.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred * centred).sum(axis=1))
    width = 16.0
    n = np.int64(len(paths))
    codes_all: list[np.ndarray] = []
    diffs_all: list[np.ndarray] = []
    for shift in range(16):
        offsets = np.array([(width / 2) * ((shift >> b) & 1) for b in range(4)], np.float32)
        cells = np.floor((quads + offsets) / width).astype(np.int64)
        keys = cells[:, 0] * 4096 + cells[:, 1] * 256 + cells[:, 2] * 16 + cells[:, 3]
        # crowded cells (near-plain images, video frames) hold the same images in every grid:
        # their neighbour pairs are taken from the unshifted and the fully shifted grid only
        pairs = _bucket_pairs(np.argsort(keys, kind="stable"), keys, coarse, crowded=shift in (0, 15))
        for lo in range(0, len(pairs), 1 << 15):  # bounded memory
            c = pairs[lo:lo + (1 << 15)]
            c = c[np.abs(coarse[c[:, 0]] - coarse[c[:, 1]]).mean(axis=1) <= max_diff]
            i, j = np.minimum(c[:, 0], c[:, 1]), np.maximum(c[:, 0], c[:, 1])
            diff = np.abs(flat[i] - flat[j]).mean(axis=1)
            den = norms[i] * norms[j]
            plain = den < (2.0 * 2.0) * grey  # both (nearly) plain: no pattern to correlate
            corr = np.where(plain, np.where(diff <= 2.0, 1.0, 0.0),
                            (centred[i] * centred[j]).sum(axis=1) / np.maximum(den, 1e-9))
            cdiff = np.abs(color[i] - color[j]).mean(axis=1)
            ok = (diff <= max_diff) & (corr >= NEAR_MIN_CORR) & (cdiff <= NEAR_MAX_COLOR_DIFF)
            codes_all.append(i[ok] * n + j[ok])
            diffs_all.append(diff[ok])
    if not codes_all:
        return []
    codes, diffs = np.concatenate(codes_all), np.concatenate(diffs_all)
    order = np.argsort(codes, kind="stable")
    codes, diffs = codes[order], diffs[order]
    first = np.concatenate([[True], codes[1:] != codes[:-1]]) if len(codes) else np.zeros(0, bool)
    codes, diffs = codes[first], diffs[first]
    i, j = codes // n, codes % n
    # each image keeps its _BEST_EDGES closest partners: a pair of copies is its own best, and a
    # crowd of near-identical frames stays connected without millions of pairs
    node = np.concatenate([i, j])
    edge = np.concatenate([np.arange(len(i)), np.arange(len(i))])
    by = np.lexsort((np.concatenate([diffs, diffs]), node))
    node, edge = node[by], edge[by]
    start = np.concatenate([[0], np.flatnonzero(node[1:] != node[:-1]) + 1])
    rank = np.arange(len(node)) - np.repeat(start, np.diff(np.concatenate([start, [len(node)]])))
    keep = np.unique(edge[rank < _BEST_EDGES])
    return sorted((paths[a], paths[b], float(d)) for a, b, d in zip(i[keep].tolist(), j[keep].tolist(),
                                                                    diffs[keep].tolist()))


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
    """Exact pairs (each group as a star around its first member), then the near pairs that join
    images not yet known to be copies, closest first: at most one pair fewer than images per
    group (3,000 copies of one blank frame are 2,999 pairs, not 4.5 million), and the groups."""
    exact = exact_groups(items, hashes)
    pairs = [DuplicatePair(g[0], other, "exact") for g in exact for other in g[1:]]
    parent = {p: g[0] for g in exact for p in g}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    if looks:
        same_look: dict[bytes, list[str]] = defaultdict(list)  # identical looks: compared once
        for p in sorted(looks):
            if looks[p] is not None:
                same_look[looks[p]].append(p)
        near = near_pairs({ps[0]: v for v, ps in same_look.items()})
        near += [(ps[0], q, 0.0) for ps in same_look.values() for q in ps[1:]]
        for a, b, d in sorted(near, key=lambda t: (t[2], t[0], t[1])):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
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
        if ca != cb and p.kind == "exact":
            continue  # left out of training: the scan says so in its own warning
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
    their pairs). The scan leaves them out of training (no one can say which label is true), so
    they leave the split's groups; their pairs stay in `dups.pairs` for the report."""
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
    if out:  # their pairs stay in the report (the Data step shows them), not in the split's groups
        dups.groups = [g2 for g in dups.groups if len(g2 := [p for p in g if p not in out]) >= 2]
    return out, removed
