"""The distillation losses: pure functions of tensors (soft targets, KD, feature hint)."""

from __future__ import annotations

# --------------------------------------------------------------------------------------
# Losses (pure functions of tensors)
# --------------------------------------------------------------------------------------
def soft_targets(teacher_logits: list, temperature: float, weights: list[float] | None = None):
    """Teacher probabilities at temperature T, averaged (or weighted) over teachers."""
    import torch

    if not isinstance(teacher_logits, (list, tuple)):
        teacher_logits = [teacher_logits]
    n = len(teacher_logits)
    w = [1.0 / n] * n if weights is None else [x / sum(weights) for x in weights]
    probs = None
    for wi, t in zip(w, teacher_logits):
        p = torch.softmax(t.float() / temperature, dim=1) * wi
        probs = p if probs is None else probs + p
    return probs


def soft_kd_term(student_logits, teacher_probs, temperature: float):
    """KL(teacher || student) at temperature T, summed over classes, mean over rows (batchmean)."""
    import torch

    log_s = torch.log_softmax(student_logits.float() / temperature, dim=1)
    p_t = teacher_probs.float()
    # 0 * log 0 = 0: xlogy handles teacher probabilities that underflow to zero
    kl = torch.special.xlogy(p_t, p_t) - p_t * log_s
    return kl.sum(dim=1).mean()


def kd_loss_from_probs(student_logits, teacher_probs, y, temperature: float, alpha: float,
                       label_smoothing: float = 0.0):
    """alpha*T^2*KL(p_t || p_s) over all rows + (1-alpha)*CE(s, y) over labelled rows (y >= 0).

    Returns (loss, parts) where parts holds the weighted contributions "soft" and "hard"
    (they add up to the loss) as floats.
    """
    import torch
    import torch.nn.functional as F

    s = student_logits.float()
    soft = alpha * temperature**2 * soft_kd_term(s, teacher_probs, temperature) if alpha > 0 else s.sum() * 0.0
    labelled = y >= 0
    if alpha < 1 and bool(labelled.any()):
        hard = (1.0 - alpha) * F.cross_entropy(s[labelled], y[labelled], label_smoothing=label_smoothing)
    else:
        hard = s.sum() * 0.0
    total = soft + hard
    with torch.no_grad():
        parts = {"soft": float(soft.detach()), "hard": float(hard.detach())}
    return total, parts


def kd_loss(student_logits, teacher_logits, y, T: float = 4.0, alpha: float = 0.7,
            label_smoothing: float = 0.0):
    """Hinton KD: alpha*T^2*KL(softmax(t/T) || softmax(s/T)) + (1-alpha)*CE(s, y).

    KL is taken with the teacher as the target distribution, batchmean. Rows with y == -1
    (unlabelled) contribute only to the soft term. ``teacher_logits`` may be a list of
    tensors (several teachers: their probabilities at T are averaged).
    """
    return kd_loss_from_probs(student_logits, soft_targets(teacher_logits, T), y, T, alpha, label_smoothing)


def hint_loss(student_feat, teacher_feat):
    """MSE between standardised feature maps after matching spatial sizes by adaptive pooling.

    Each map is standardised per sample (zero mean, unit variance over C, H, W) so the loss
    has the same scale for any pair of architectures and cannot swamp the KD terms.
    """
    import torch.nn.functional as F

    s, t = _as_map(student_feat.float()), _as_map(teacher_feat.float())
    h, w = min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3])
    if s.shape[2:] != (h, w):
        s = F.adaptive_avg_pool2d(s, (h, w))
    if t.shape[2:] != (h, w):
        t = F.adaptive_avg_pool2d(t, (h, w))
    if s.shape[1] != t.shape[1]:
        raise ValueError(f"hint loss needs equal widths (adapter missing): {s.shape[1]} vs {t.shape[1]}")
    return F.mse_loss(_standardise(s), _standardise(t))


def _standardise(f):
    mean = f.mean(dim=(1, 2, 3), keepdim=True)
    std = f.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (f - mean) / (std + 1e-5)


def _as_map(f):
    """NCHW as is; token sequences (N, L, C) and vectors (N, C) become N x C x 1 x 1 (pooled)."""
    if f.dim() == 4:
        return f
    if f.dim() == 3:
        return f.mean(dim=1)[:, :, None, None]
    if f.dim() == 2:
        return f[:, :, None, None]
    raise ValueError(f"unsupported feature shape {tuple(f.shape)}")


