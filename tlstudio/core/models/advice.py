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
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tlstudio.core.data.records import ScanReport

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


SCRATCH_LR = 3e-3  # the engine's one rate for every layer when training from scratch


def advise(images_per_class: float, similarity: Similarity = "unknown", n_classes: int = 2,
           init: str = "pretrained") -> Advice:
    """Freeze preset, head learning rate and epochs from the number of *training* images per
    class and similarity to ImageNet. From scratch (`init="scratch"`) every layer trains."""
    ipc = max(0.0, float(images_per_class))
    sim = similarity if similarity in ("high", "low") else "unknown"
    size = "small" if ipc < SMALL_PER_CLASS else ("large" if ipc >= LARGE_PER_CLASS else "medium")
    n = int(ipc * max(1, n_classes))

    if init == "scratch":
        risk = " (with this little data a pretrained start would do far better)" if size == "small" else ""
        return Advice("none", SCRATCH_LR, _epochs(n, 30),
                      f"From scratch with {ipc:.0f} training images per class: every layer must learn, "
                      f"since a frozen random body extracts nothing useful{risk}.")

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


def scratch_freeze_warning(init: str, freeze: str, frozen_groups: list[int] | None = None) -> str | None:
    """One line when a from-scratch run keeps layers frozen (their weights stay random), else None."""
    if init != "scratch":
        return None
    f = (freeze or "head").strip().lower()
    if not frozen_groups and f == "none":
        return None
    what = "only the head learns" if f == "head" and not frozen_groups else "part of the body stays frozen"
    if f.startswith("gradual:") and not frozen_groups:
        what = "the body stays frozen for the first epochs"
    return (f"from scratch with freeze '{f if not frozen_groups else 'custom'}': the body's weights are random and "
            f"{what}, so the frozen layers never learn anything; use freeze 'none' (all layers) unless this is "
            "what you want.")


def train_images_per_class(report: ScanReport, val_fraction: float = 0.2) -> float:
    """Training images per class of a scanned data set: its own train/ folder when it has one
    (and carves no validation out of it when it also has val/), else the training side of the
    automatic split. Validation images never count: they are not learnt from."""
    from tlstudio.core.data.split import make_split

    n_classes = max(1, sum(1 for c in report.classes if report.counts.get(c, 0) > 0))
    try:
        n_train = len(make_split(report, val_fraction).train)
    except Exception:  # noqa: BLE001 - a fraction the split refuses: fall back on the plain share
        n_train = int(round(len(report.samples) * (1 - val_fraction)))
    return n_train / n_classes


def advise_for_report(report: ScanReport, val_fraction: float = 0.2, similarity: Similarity = "unknown",
                      init: str = "pretrained") -> Advice:
    """`advise` for a scanned data set, counting its training images only (the GUI's Layers
    step and "Apply advice" use this)."""
    n_classes = sum(1 for c in report.classes if report.counts.get(c, 0) > 0)
    return advise(train_images_per_class(report, val_fraction), similarity, max(1, n_classes), init)
