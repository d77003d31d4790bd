"""How different the target images look from the training images: a 0..1 gap score.

A linear domain classifier (logistic regression on the top principal components of the pooled
features, 2-fold cross-validated on equal numbers of source and target images) tries to tell the
two folders apart: 50% accuracy = indistinguishable (gap 0), 100% = always told apart (gap 1).
The RBF-kernel MMD (median bandwidth) is reported alongside.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SMALL, LARGE = 0.35, 0.7


def mmd_rbf(a, b) -> float:
    """Squared maximum mean discrepancy with a Gaussian kernel (median heuristic), biased estimate."""
    import torch

    x = torch.cat([a, b]).double()
    d = torch.cdist(x, x).pow(2)
    bw = d[d > 0].median() if bool((d > 0).any()) else torch.tensor(1.0, dtype=torch.float64)
    k = torch.exp(-d / bw)
    n = len(a)
    return float(k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean())


def _logreg_acc(xtr, ytr, xte, yte, steps: int = 200) -> float:
    import torch

    w = torch.zeros(xtr.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xtr @ w + b, ytr) + 1e-2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((((xte @ w + b) > 0).double() == yte).double().mean())


def gap_from_features(fs, ft, *, components: int = 32, seed: int = 0) -> dict[str, Any]:
    """Gap report from source and target pooled features (N x D tensors)."""
    import torch

    n = min(len(fs), len(ft))
    if n < 4:
        return {"score": None, "domain_acc": None, "mmd": None, "n": int(n),
                "sentence": "Too few images to compare the two folders (need at least 4 in each)."}
    g = torch.Generator().manual_seed(seed)
    a = fs[torch.randperm(len(fs), generator=g)[:n]].double()
    b = ft[torch.randperm(len(ft), generator=g)[:n]].double()
    x = torch.cat([a, b])
    y = torch.cat([torch.ones(n), torch.zeros(n)]).double()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    q = min(components, x.shape[1], 2 * n - 1)
    _, _, v = torch.pca_lowrank(x, q=q, center=False)
    z = x @ v[:, :q]
    perm = torch.randperm(2 * n, generator=g)
    half = n
    i1, i2 = perm[:half], perm[half:]
    acc = 0.5 * (_logreg_acc(z[i1], y[i1], z[i2], y[i2]) + _logreg_acc(z[i2], y[i2], z[i1], y[i1]))
    score = max(0.0, min(1.0, 2.0 * (acc - 0.5)))
    mmd = mmd_rbf(a.float(), b.float())
    if score < SMALL:
        sentence = "These images look like your training images: the same kind, so semi-supervised learning fits."
    elif score < LARGE:
        sentence = ("These images look somewhat different from your training images: "
                    "domain adaptation may help.")
    else:
        sentence = ("These images look different from your training images (another camera, lighting or site): "
                    "a model trained on the labelled images alone will likely do worse on them; adapt to them.")
    return {"score": score, "domain_acc": acc, "mmd": mmd, "n": int(n), "sentence": sentence}


def measure_domain_gap(source_samples, target_samples, *, backbone: str | None = None, init: str = "pretrained",
                       image_size: int | None = None, max_images: int = 200, seed: int = 0, device: Any = "cpu",
                       stop: Any = None, progress: Callable[[int, int | None], None] | None = None,
                       model: Any = None) -> dict[str, Any]:
    """Gap between two lists of samples/paths, on the pooled features of ``backbone`` (ImageNet
    weights by default), up to ``max_images`` from each side."""
    import random

    from tlstudio.core.config import DEFAULT_BACKBONE
    from tlstudio.core.data.dataset import Sample
    from tlstudio.core.models.backbones import create_model, data_config
    from tlstudio.core.tasks.adaptation.features import extract

    def pick(items):
        items = [s if hasattr(s, "path") else Sample(str(s), -1) for s in items]
        rng = random.Random(seed)
        return rng.sample(items, max_images) if len(items) > max_images else list(items)

    src, tgt = pick(source_samples), pick(target_samples)
    if model is None:
        model = create_model(backbone or DEFAULT_BACKBONE, 2, init=init)
    model.to(device).eval()
    cfg = data_config(model, image_size)
    total = len(src) + len(tgt)

    def prog(offset):
        return None if progress is None else (lambda d, t=None: progress(offset + d, total))

    fs, _ = extract(model, src, cfg, device=device, stop=stop, progress=prog(0))
    ft, _ = extract(model, tgt, cfg, device=device, stop=stop, progress=prog(len(src)))
    rep = gap_from_features(fs, ft, seed=seed)
    rep["backbone"] = backbone or DEFAULT_BACKBONE
    return rep
