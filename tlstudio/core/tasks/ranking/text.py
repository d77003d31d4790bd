"""The ranking in words: one sentence per candidate and a summary."""

from __future__ import annotations

from tlstudio.core.tasks.ranking.results import RankRow


def fmt_params(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e6:.1f} M" if n >= 1e5 else f"{n / 1e3:.0f} k"


def explain(rows: list[RankRow], n_classes: int) -> None:
    """One plain sentence per candidate."""
    scored = [r for r in rows if r.rank is not None]
    best = scored[0] if scored else None
    chance = 1.0 / max(1, n_classes)
    fastest = min((r.latency_ms for r in scored if r.latency_ms), default=None)
    for r in rows:
        c = r.candidate
        if r.rank is None:
            r.explanation = f"Not ranked: {r.error or c.get('reason') or 'could not be loaded'}."
            continue
        what = {"imagenet": "ImageNet features", "run": "features of your earlier run",
                "file": "features from your weights file", "random": "random (untrained) features"}[c["source"]]
        lead = "Best fit for your data" if r is best else f"#{r.rank}"
        if r.tie and not r.same_as:  # first in the Note column, which the table cuts short
            lead += f" (tied with #{r.tie})"
        probe = f"a linear classifier on its {what} gets {r.probe_acc:.0%} on held-out images"
        if r.probe_acc is not None and r.probe_acc < chance + 0.1:
            probe += " (close to guessing)"
        speed = ""
        if r.latency_ms:
            speed = f"; {r.latency_ms:.0f} ms per image" + (" (fastest)" if r.latency_ms == fastest and len(scored) > 1 else "")
        gap = ""
        if best is not None and r is not best and best.probe_acc is not None and r.probe_acc is not None:
            pts = 100 * (best.probe_acc - r.probe_acc)
            unit = "point" if round(abs(pts)) == 1 else "points"
            gap = (f", {pts:.0f} {unit} below the top one" if pts >= 0.5 else
                   f", {-pts:.0f} {unit} above the top one (LogME prefers the top one)" if pts <= -0.5 else
                   ", the same as the top one" + ("" if r.tie else "; LogME separates them"))
        tie = ""
        if r.tie:
            tie = (f" Within noise of #{r.tie}: their LogME differs by less than it moves between samples of "
                   "your images, so either may fine-tune better.")
        same = ""
        if r.same_as:  # identical features: no gap to explain, no noise to weigh
            gap = tie = ""
            same = (f" Its features are exactly those of {r.same_as}: the same body weights (a run that "
                    "trained only its head keeps the body it started from), so every score is the same.")
        r.explanation = (f"{lead}: {probe}{gap}, k-NN {r.knn_acc:.0%}{speed}, {fmt_params(r.params)} "
                         f"parameters.{same}{tie}")


def _same_features(a: RankRow, b: RankRow) -> bool:
    """Whether two rows scored exactly the same features (RankRow.same_as names the first one)."""
    la, lb = a.candidate["label"], b.candidate["label"]
    return a.same_as == lb or b.same_as == la or (a.same_as is not None and a.same_as == b.same_as)


def summary(scored: list[RankRow], unscored: list[RankRow], n: int) -> str:
    if not scored:
        return "No candidate could be scored: " + "; ".join(
            f"{r.candidate['label']}: {r.error}" for r in unscored) if unscored else "Nothing to rank."
    top = scored[0]
    parts = [f"Start from {top.candidate['label']}: its features fit your {n} images best "
             f"(LogME {top.logme:.3f}, linear probe {top.probe_acc:.0%})."]
    by_probe = sorted(scored, key=lambda r: -(r.probe_acc or 0))
    if len(scored) > 1 and by_probe[0] is not top and (by_probe[0].probe_acc or 0) > (top.probe_acc or 0) + 0.02:
        parts.append(f"The linear probe prefers {by_probe[0].candidate['label']} "
                     f"({by_probe[0].probe_acc:.0%}): with this little data the two are close; try both if time allows.")
    same = [r for r in scored[1:] if _same_features(r, top)]
    if same:
        names = ", ".join(r.candidate["label"] for r in same)
        parts.append(f"{names} {'has' if len(same) == 1 else 'have'} exactly its features (the same body).")
    tied = [r for r in scored if r.tie == 1 and r not in same]
    if tied:
        names = ", ".join(r.candidate["label"] for r in tied)
        parts.append(f"{names} {'is' if len(tied) == 1 else 'are'} within noise of it: with {n} images the "
                     "scores cannot tell which fine-tunes better; try both if time allows.")
    if unscored:
        parts.append(f"{len(unscored)} not ranked (see the reasons).")
    return " ".join(parts)
