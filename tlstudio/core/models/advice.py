"""Strategy advice: the transfer-learning strategy table, as a starting point the user may change.

| target data | similarity | strategy |
| small | high | train only the head (feature extraction) |
| small | low  | unfreeze more layers (risky; consider another approach) |
| large | high | fine-tune the whole model |
| large | low  | fine-tune everything (scratch possible; source weights still speed it up) |

The numbers come from benchmarks/bench_realweights.py (EfficientNet-Lite0 ImageNet weights,
CPU, 96 px, 8 epochs, AdamW, body at 0.1x the head's rate, seed 0, 12 val images per class;
best-epoch val accuracy, final-epoch in brackets):

| task (5 classes)   | n/cls | head 1e-3 | head 3e-3 | head 1e-2 | last:2 3e-4 | last:2 1e-3 | last:2 3e-3 | none 1e-3 |
| natural (high sim) |   8   | .92 (.88) | .80 (.72) | .78 (.77) | .67 (.67)   | .82 (.80)   | .92 (.87)   | .82 (.80) |
| natural (high sim) |  24   | .92 (.92) | .92 (.87) | .92 (.80) | .88 (.88)   | .95 (.92)   | .97 (.90)   | .87 (.85) |
| shapes (low sim)   |   8   | .97 (.97) | .97 (.93) | .97 (.90) | .85 (.80)   | 1.0 (1.0)   | 1.0 (.98)   | 1.0 (.98) |
| shapes (low sim)   |  24   | 1.0 (.98) | .98 (.98) | .98 (.98) | .98 (.98)   | 1.0 (1.0)   | 1.0 (1.0)   | 1.0 (1.0) |
Seconds per run: head 0.1 (cached features), last:2 6-9, none 18-45.

So: with few ImageNet-like images the head alone is as good as anything and by far the cheapest;
head-only prefers lr 1e-3 (higher rates end lower). Images less like ImageNet, or more of them,
favour opening the last two groups, which needs a head lr of 1e-3..3e-3 (3e-4 barely moves the
body at 0.1x; 3e-3 has the best best-epoch accuracy, which the engine keeps). Everything
trainable was no better than last:2 at these sizes and 3-6x slower, so it is advised only for
large sets, at the usual AdamW 1e-3 (body 1e-4); large sets could not be measured on CPU here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Similarity = Literal["high", "low", "unknown"]

#: below this many images per class the target set is "small" (head-only / partial fine-tuning)
SMALL_PER_CLASS = 100
#: from this many images per class the target set is "large" (whole-model fine-tuning)
LARGE_PER_CLASS = 500


@dataclass(frozen=True)
class Advice:
    freeze: str
    lr: float
    epochs: int
    reason: str


def advise(images_per_class: float, similarity: Similarity = "unknown", n_classes: int = 2) -> Advice:
    """Freeze preset, head learning rate and epochs from data size and similarity to ImageNet."""
    ipc = max(0.0, float(images_per_class))
    sim = similarity if similarity in ("high", "low") else "unknown"
    size = "small" if ipc < SMALL_PER_CLASS else ("large" if ipc >= LARGE_PER_CLASS else "medium")
    n = int(ipc * max(1, n_classes))

    if size == "small":
        if sim == "low":
            return Advice("last:2", 3e-3, _epochs(n, 15),
                          f"Only {ipc:.0f} images per class and images unlike ImageNet: the head alone "
                          "may not be enough, so the last two groups also adapt, at a 10x lower rate "
                          "(risky with this little data; compare against the from-scratch baseline).")
        return Advice("head", 1e-3, _epochs(n, 20),
                      f"Only {ipc:.0f} images per class: train just the new head on the pretrained "
                      "features (feature extraction), which avoids overfitting and is fast.")
    if size == "medium":
        if sim == "low":
            return Advice("gradual:2", 3e-3, _epochs(n, 15),
                          f"{ipc:.0f} images per class unlike ImageNet: start with the head, then "
                          "unfreeze one more group every 2 epochs so the body adapts without being "
                          "wrecked early.")
        return Advice("last:2", 3e-3, _epochs(n, 12),
                      f"{ipc:.0f} images per class: fine-tune the last two groups with the head "
                      "(better than the head alone at this size); earlier layers keep their "
                      "generic features.")
    if sim == "low":
        return Advice("none", 2e-3, _epochs(n, 20),
                      f"Plenty of data ({ipc:.0f} per class) unlike ImageNet: fine-tune the whole "
                      "model; from scratch would work too, but pretrained weights converge faster.")
    return Advice("none", 1e-3, _epochs(n, 10),
                  f"Plenty of data ({ipc:.0f} per class): fine-tune the whole model for the best "
                  "accuracy, with the pretrained body at a lower learning rate.")


def _epochs(n_images: int, base: int) -> int:
    """Fewer epochs on big sets (each epoch is long), more on tiny ones (cheap, noisy)."""
    if n_images >= 20_000:
        return max(5, base // 2)
    if n_images < 200:
        return base + 5
    return base


def default_lr(freeze: str, images_per_class: float | None = None) -> float:
    """Head learning rate for a freeze preset the user chose (when no lr is given).

    From the benchmark: head-only ends best at 1e-3; last:N and gradual:K need 3e-3 (the body
    runs at 0.1x of it); the whole model 1e-3. ``images_per_class`` is accepted for callers
    that have it; the preset decides.
    """
    f = (freeze or "head").strip().lower()
    if f.startswith(("last:", "gradual:")):
        return 3e-3
    return 1e-3
