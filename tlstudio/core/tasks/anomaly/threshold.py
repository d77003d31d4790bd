"""Thresholds and metrics for anomaly scores (numpy only).

With normal images only, the threshold is set on held-out normal images at a chosen false-alarm
rate ("flag at most 1 in 100 good parts"); with labelled defects the F1-optimal threshold is
offered too. Scores are then normalised so that the threshold maps to 0.5.
"""

from __future__ import annotations

import math

import numpy as np

NORM_SLOPE = 3.0  # logistic slope: the median good image scores ~0.05, threshold + scale ~0.95


# With fewer held-out good images than 1/rate, the highest of n good scores is exceeded by a new
# good image 1/(n+1) of the time, not at `rate`. Measured on real-photo sets
# (benchmarks/anomaly_textures.py: brick, grass, gravel, coffee, coins; 30 good + 60 defect test
# images each): with 100 normal images (20 held out), the test false-alarm rate was 0-7%, and
# with 30 (6 held out) 3-30%, against the 1% the user set. A one-sided normal prediction bound
# held it to 0-7% (mean 1.3% over the ten sets) at recall 0.92 instead of 0.98.
PREDICTION_BOUND_MIN_N = 4  # from 3 degrees of freedom a spread is worth estimating


def _t_cdf_central(t: float, dof: int) -> float:
    """P(|T| < t) for Student's t with an integer `dof` (closed form, Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(abs(t) / math.sqrt(dof))
    c2, sn = math.cos(theta) ** 2, math.sin(theta)
    if dof % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, total = 1.0, 1.0 if dof > 1 else 0.0
        for k in range(1, (dof - 1) // 2):
            term *= (2 * k) / (2 * k + 1) * c2
            total += term
        return (2 / math.pi) * (theta + sn * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for k in range(1, dof // 2):
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return sn * total


def t_quantile(p: float, dof: int) -> float:
    """Student's t quantile for p > 0.5 and an integer `dof` >= 1 (bisection on the exact CDF)."""
    target = 2 * p - 1  # P(|T| < t)
    lo, hi = 0.0, 1.0
    while _t_cdf_central(hi, dof) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf_central(mid, dof) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10 * hi:
            break
    return (lo + hi) / 2


def false_alarm_threshold(normal_scores, rate: float) -> float:
    """The smallest threshold at which at most ``rate`` of these normal scores lie above it.

    With n scores the lowest reachable rate is 0 (above the maximum). For a rate below 1/n the
    threshold is the higher of two values. One is just above the highest normal score (a margin
    of 1% of the score spread). The other is the one-sided prediction bound that a new good
    score exceeds with probability `rate` when the scores are roughly normal:
    mean + t(1 - rate, n - 1) * sd * sqrt(1 + 1/n), used from PREDICTION_BOUND_MIN_N scores."""
    s = np.sort(np.asarray(normal_scores, dtype=np.float64))
    if s.size == 0:
        raise ValueError("no normal scores to set a threshold on")
    allowed = int(math.floor(rate * s.size + 1e-9))  # normal images that may score above
    if allowed <= 0:
        spread = float(s[-1] - s[0]) if s.size > 1 else abs(float(s[-1]))
        above_max = float(s[-1] + 0.01 * (spread or 1.0))
        if s.size < PREDICTION_BOUND_MIN_N:
            return above_max
        n = s.size
        bound = float(s.mean() + t_quantile(1.0 - rate, n - 1) * s.std(ddof=1) * math.sqrt(1 + 1 / n))
        return max(above_max, bound)
    # flagged = score > threshold; put the threshold on the (allowed+1)-th highest score
    return float(s[s.size - allowed - 1])


def few_scores_rule(n: int) -> str:
    """How false_alarm_threshold sets the threshold from n scores too few for the rate (the log)."""
    return ("estimated from the spread of their scores" if n >= PREDICTION_BOUND_MIN_N
            else "set just above the highest held-out good score")


def normal_scale(normal_scores, threshold: float) -> float:
    """Spread used by the normalisation: threshold minus the median normal score."""
    s = np.asarray(normal_scores, dtype=np.float64)
    scale = threshold - float(np.median(s)) if s.size else 0.0
    if not scale > 0:
        scale = abs(threshold) * 0.1 or 1.0
    return float(scale)


def auroc(scores, labels) -> float | None:
    """Area under the ROC curve (Mann-Whitney with tied ranks); None without both classes."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_report(scores, labels, threshold: float) -> dict[str, float]:
    """Precision, recall, F1, false-alarm rate and accuracy of ``score > threshold``."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    pred = s > threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "false_alarm_rate": fp / (fp + tn) if fp + tn else 0.0,
            "accuracy": (tp + tn) / max(1, s.size), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def f1_optimal_threshold(scores, labels) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``score > threshold`` over the observed scores."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if not y.any():
        raise ValueError("no defect images: the F1-optimal threshold needs labelled defects")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # a cut can only sit between distinct scores: keep the last index of each tie group
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    f1 = 2 * tp / (tp + fp + y.sum())
    f1 = np.where(last, f1, -1.0)
    i = int(np.argmax(f1))
    below = s_sorted[i + 1] if i + 1 < s.size else s_sorted[i] - 1.0
    return float((s_sorted[i] + below) / 2.0), float(f1[i])


def histogram(scores, labels, bins: int = 30, lo: float = 0.0, hi: float = 1.0) -> dict:
    """Counts of normalised scores per bin for good and defect images (the Evaluate histogram)."""
    s = np.clip(np.asarray(scores, dtype=np.float64), lo, hi)
    y = np.asarray(labels)
    edges = np.linspace(lo, hi, bins + 1)
    return {"edges": edges.tolist(),
            "good": np.histogram(s[y == 0], edges)[0].tolist(),
            "defect": np.histogram(s[y == 1], edges)[0].tolist(),
            "unknown": np.histogram(s[y == -1], edges)[0].tolist()}


def normalise_np(raw, threshold: float, scale: float):
    """The model's normalisation in numpy: 0.5 at the threshold, monotone, 0..1."""
    z = NORM_SLOPE * (np.asarray(raw, dtype=np.float64) - threshold) / max(scale, 1e-12)
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def raw_from_normalised(p, threshold: float, scale: float):
    """Inverse of ``normalise_np`` (arrays too; ends clipped)."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    out = threshold + scale * np.log(q / (1 - q)) / NORM_SLOPE
    return float(out) if out.ndim == 0 else out


def renormalise(norm, old: tuple[float, float], new: tuple[float, float]):
    """A map normalised at (threshold, scale) ``old`` re-expressed at ``new`` (a moved threshold)."""
    return normalise_np(raw_from_normalised(norm, *old), *new)
