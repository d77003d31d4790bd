"""A linear head fitted to convergence on the cached features before the first epoch.

When only the head trains, its input is fixed (the feature cache), so the loss is convex in the
head's weights and full-batch L-BFGS finds its minimum in about a second for thousands of images.
The epochs alone do not get there on small data: with 95 training images an epoch is 3 AdamW steps
at a head learning rate of 1e-3, and 10 epochs left the training loss at 0.69 (label smoothing
0.1, 5 classes) and still falling.

Measured (benchmarks/RESULTS.md, session 8): 6 crop replicates x 2 targets of bench_rank.py's
check, 95 training images, 300 test images, head only for 10 epochs, fitted head against not:
- ImageNet bodies (Lite0/1/2): better in 33 of 36, the same in 1, mean +2.5 points (-2.0 to +6.0);
- a frozen random body: +9.4 mean;
- a body from an earlier run (fine-tuned on other classes): worse in 7 of 10, mean -1.3 points
  (down to -4.7). Its features carry the source task, and the penalty chosen by cross-validation
  did not make up for it, so such a body (init "run") is not pre-fitted
  (ClassificationObjective.fit_head). A run that trained only its head kept its backbone's body
  (backbones.run_body_trained): that one is fitted (session 9, one replicate: 91.7% against 87.0%
  for the same features left to the epochs).

Who fits: plain classification (ClassificationObjective.fit_head) and distillation, whose
student is fitted to the teacher's answers (DistillObjective.fit_head). Domain adaptation turns
it off for its sub-runs (adaptation/job.py): MCC starting from a converged source head lost.

The epochs then go on from the fitted head (with the run's dropout, augmentation views and
learning-rate schedule), and the best epoch is kept as before. Not done: on a resumed run (its
weights already hold the fit), under torchrun (each process holds only its share of the images),
or with a single class. With one training image in some class the penalty is ONE_SHOT_L2.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tlstudio.core.events import Event, Log

L2_GRID = (1.0, 1e-1, 1e-2, 1e-3)  # L2 on the weights (not the bias) for a mean cross-entropy
CV_FOLDS = 3
CV_MAX_IMAGES = 1000  # the penalty is chosen by k-fold log-loss on at most this many images (view 0)
CV_CALLS = 2  # at most 50 L-BFGS iterations per cross-validation fit (each starts from the previous)
# rows x feature dim of the final fit (20 MB as float32): a large set gets many steps per epoch and
# needs the fit least, so more rows are subsampled
MAX_ROWS_X_DIM = 5_000_000
ITERS_PER_CALL = 25
MAX_CALLS = 8  # at most 200 L-BFGS iterations
# with one training image in some class there is nothing to cross-validate: this penalty then.
# Real photos, 10 classes x 1 training image (benchmarks/adapt_data.py fewlabel, 400 test images):
# the fitted head scored 83.8-84.3% at every penalty from 1e-3 to 1, the epochs alone 68.3%
ONE_SHOT_L2 = 1e-2


def _penalised_loss(x, y, weight, bias, *, l2: float, label_smoothing: float, class_weight):
    """Mean cross-entropy of the linear head (weight, bias or None) + l2 * |weight|^2."""
    import torch.nn.functional as F

    logits = x @ weight.T + (bias if bias is not None else 0.0)
    return F.cross_entropy(logits, y, weight=class_weight, label_smoothing=label_smoothing) + l2 * (weight ** 2).sum()


def _lbfgs(x, y, weight, bias, *, l2: float, label_smoothing: float, class_weight, stop=None,
           calls: int = MAX_CALLS) -> int | None:
    """Minimise ``_penalised_loss`` in place (weight, bias: leaf tensors with grad; bias may be
    None). Returns the iterations used, or None when stopped."""
    import functools

    import torch

    params = [weight] + ([bias] if bias is not None else [])
    objective = functools.partial(_penalised_loss, x, y, weight, bias, l2=l2, label_smoothing=label_smoothing,
                                  class_weight=class_weight)

    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=ITERS_PER_CALL, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    prev, iters = None, 0
    with torch.enable_grad():
        for _ in range(calls):
            if stop is not None and stop.is_set():
                return None
            opt.step(closure)
            iters = int(opt.state[params[0]].get("n_iter", iters))
            with torch.no_grad():
                now = float(objective())
            if prev is not None and abs(prev - now) <= 1e-6 * max(1.0, abs(prev)):
                break
            prev = now
    return iters


def choose_l2(x, y, *, label_smoothing: float, class_weight, stop=None,
              seed: int = 0) -> tuple[float, bool] | None:
    """(penalty, cross-validated): the grid penalty with the lowest k-fold held-out log-loss
    (images, not views, are split), or (ONE_SHOT_L2, False) when some class has a single image;
    None when stopped.
    Strong penalties win on features that carry another task (an earlier run fine-tuned on other
    classes): a converged head with a weak penalty lost 2-6 points there on held-out images."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from tlstudio.core.data.split import stratified_folds

    yn = y.numpy()
    _, counts = np.unique(yn, return_counts=True)
    k = int(min(CV_FOLDS, counts.min()))
    if k < 2:
        return ONE_SHOT_L2, False
    losses = np.zeros(len(L2_GRID))
    for held in stratified_folds(yn, k, seed):
        te = torch.zeros(len(yn), dtype=torch.bool)
        te[torch.from_numpy(held)] = True
        tr = ~te
        w = torch.zeros(int(y.max()) + 1, x.shape[1], requires_grad=True)
        b = torch.zeros(w.shape[0], requires_grad=True)
        for j, l2 in enumerate(L2_GRID):  # strong to weak: each fit starts from the previous one
            if _lbfgs(x[tr], y[tr], w, b, l2=l2, label_smoothing=label_smoothing, class_weight=class_weight,
                      stop=stop, calls=CV_CALLS) is None:
                return None
            with torch.no_grad():
                losses[j] += float(F.cross_entropy(x[te] @ w.T + b, y[te], reduction="sum"))
    return float(L2_GRID[int(np.argmin(losses))]), True


def fit_linear_head(linear: Any, feats: Any, labels: Any, *, label_smoothing: float = 0.0,
                    class_weight: Any = None, stop: Any = None, seed: int = 0,
                    views: int = 1) -> dict[str, float] | None:
    """Fit ``linear`` (torch.nn.Linear) in place by L-BFGS on ``feats`` [views * N, D] (view-major:
    rows v * N + i are image i) and integer ``labels`` [views * N] (rows with label < 0 are left
    out), with the penalty chosen by ``choose_l2`` on view 0. Returns the loss before and after,
    the penalty and the iterations, or None when there is nothing to fit, it was stopped, or the
    fit did not lower the loss."""
    import numpy as np
    import torch

    x_all = torch.as_tensor(np.ascontiguousarray(feats), dtype=torch.float32)
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n = x_all.shape[0] // max(1, views)
    g = torch.Generator().manual_seed(seed)
    x0, y0 = x_all[:n], y_all[:n]
    keep = y0 >= 0
    x0, y0 = x0[keep], y0[keep]
    if x0.shape[0] < 2 or y0.unique().numel() < 2:
        return None
    cw = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32).cpu()
    if x0.shape[0] > CV_MAX_IMAGES:
        rows = torch.randperm(x0.shape[0], generator=g)[:CV_MAX_IMAGES]
        x0, y0 = x0[rows], y0[rows]
    chosen = choose_l2(x0, y0, label_smoothing=label_smoothing, class_weight=cw, stop=stop, seed=seed)
    if chosen is None:
        return None
    l2, cross_validated = chosen
    keep = y_all >= 0
    x, y = x_all[keep], y_all[keep]
    if x.shape[0] * x.shape[1] > MAX_ROWS_X_DIM:
        rows = torch.randperm(x.shape[0], generator=g)[: MAX_ROWS_X_DIM // x.shape[1]]
        x, y = x[rows], y[rows]
    weight = linear.weight.detach().float().cpu().clone().requires_grad_(True)
    bias = linear.bias.detach().float().cpu().clone().requires_grad_(True) if linear.bias is not None else None

    def loss_now() -> float:
        with torch.no_grad():
            return float(_penalised_loss(x, y, weight, bias, l2=l2, label_smoothing=label_smoothing, class_weight=cw))

    before = loss_now()
    iters = _lbfgs(x, y, weight, bias, l2=l2, label_smoothing=label_smoothing, class_weight=cw, stop=stop)
    after = loss_now()
    if iters is None or not np.isfinite(after) or after >= before:
        return None
    with torch.no_grad():
        linear.weight.copy_(weight.to(linear.weight.device, linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.copy_(bias.to(linear.bias.device, linear.bias.dtype))
    return {"before": before, "after": after, "iterations": iters, "rows": int(x.shape[0]), "l2": l2,
            "cross_validated": cross_validated}


def fit_head_on_cache(model: Any, loaders: Any, *, label_smoothing: float, class_weight: Any,
                      stop: Any = None, seed: int = 0, labels: Any = None) -> Iterator[Event]:
    """Fit the model's linear classifier on every cached training view (features mode), to the
    loaders' labels or to ``labels`` (one per training row, -1 = leave out)."""
    import numpy as np
    import torch

    clf = model.get_classifier()
    if not isinstance(clf, torch.nn.Linear) or getattr(loaders, "feats", None) is None:
        return
    rows = np.flatnonzero(np.asarray(loaders.valid, bool))
    total = len(rows)
    n_views, dim = len(loaders.feats), int(np.asarray(loaders.feats[0][:1]).shape[-1])
    cap = max(CV_MAX_IMAGES, MAX_ROWS_X_DIM // max(1, dim * n_views))
    if len(rows) > cap:  # a large set: a random share of the images is plenty for a linear head
        rows = np.sort(np.random.default_rng(seed).choice(rows, cap, replace=False))
    labels = np.asarray(loaders.labels if labels is None else labels)[rows]
    views = [np.asarray(v[rows]) for v in loaders.feats]
    feats = np.concatenate(views, 0)
    ys = np.concatenate([labels] * len(views), 0)
    from tlstudio.core.runtime.inference import one_thread

    with one_thread():  # [N, D] x [D, C] products are too small to split between threads
        got = fit_linear_head(clf, feats, ys, label_smoothing=label_smoothing, class_weight=class_weight,
                              stop=stop, seed=seed, views=len(views))
    if got is None:
        return
    n = int((labels >= 0).sum())
    which = f"{n} images" if len(rows) == total else f"a random {n} of the {total} images"
    views_txt = f" x {len(views)} augmented views" if len(views) > 1 else ""
    how = "chosen by cross-validation" if got["cross_validated"] else "fixed, as a class has one training image"
    yield Log(f"Head fitted to the cached features of {which}{views_txt} (L-BFGS, penalty {got['l2']:g} {how}, "
              f"{got['iterations']} iterations): training loss {got['before']:.3f} -> {got['after']:.3f}; "
              "the epochs go on from there")
