"""Targets and losses for the target tricks: one-hot and smoothed targets, cross entropy and KL
divergence against soft targets. Pure functions; every loss also takes int64 class indices (the test
split is evaluated on hard labels) and then is the plain cross entropy.

    soft_target_cross_entropy(z, t) = mean_i -sum_c t_ic log softmax(z_i)_c
    kl_div_loss(z, t)               = mean_i  sum_c t_ic (log t_ic - log softmax(z_i)_c)  = KL(t || softmax(z))

The two differ by the entropy of t, a constant of the targets, so their gradients w.r.t. z are equal
(the notes' S8/S9 finding: "KL divergence and cross entropy on mixed labels give the same result").
Both are torch's own maths: `F.cross_entropy` takes class probabilities as targets, and
`F.kl_div(log_softmax(z), t, reduction='batchmean')`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data.mixup import one_hot as timm_one_hot

from tricks.errors import ConfigError


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (B,) -> float32 one-hot rows (B, C)."""
    return F.one_hot(y, num_classes).float()


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -(target * log_softmax(logits)).sum(1); int targets: plain cross entropy.

    `F.cross_entropy` with float (B, C) targets computes exactly this (and does not renormalise rows,
    so the notes' on/off rows that do not sum to 1 are used as written); with one-hot targets it equals
    the hard-label cross entropy bit for bit.
    """
    return F.cross_entropy(logits, target)


def kl_div_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)) summed over classes, averaged over the batch; int targets: cross entropy."""
    if not target.is_floating_point():
        return F.cross_entropy(logits, target)
    return F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")


# The losses the target tricks install; see `switch_loss` for how they are stacked and undone.
SOFT_TARGET_LOSSES = (soft_target_cross_entropy, kl_div_loss)


def is_soft_target_loss(loss_func) -> bool:
    """True if `loss_func` is one of the losses a target trick installs."""
    return any(loss_func is f for f in SOFT_TARGET_LOSSES)


def smooth_targets(y: torch.Tensor, num_classes: int, *, eps: float | None = None, on: float | None = None,
                   off: float | None = None) -> torch.Tensor:
    """Label smoothing (Szegedy et al. 2016, arXiv:1512.00567) of class indices y (B,) -> (B, C).

    Epsilon form (`eps`): (1 - eps) * onehot + eps / C, rows sum to 1 — the targets of
    `F.cross_entropy(label_smoothing=eps)` and of timm's `mixup_target(smoothing=eps)`.
    On/off form (`on`, `off`): `on` at the true class and `off` everywhere else, exactly as the notes
    wrote it (S7: 0.95/0.00005 and 0.9/0.0001, S8: 0.9/0.00005). These rows do NOT sum to 1
    (0.9 + 9 * 0.0001 = 0.9009 for CIFAR-10); they are replayed as written, not renormalised.
    Both forms are timm's `one_hot(y, C, on_value, off_value)`.
    """
    if eps is not None and (on is not None or off is not None):
        raise ConfigError("label smoothing: give eps, or on and off, not both")
    if eps is not None:
        if not 0.0 <= eps < 1.0:
            raise ConfigError(f"label smoothing eps={eps} is out of range; allowed: [0, 1)")
        off = eps / num_classes
        on = 1.0 - eps + off
    elif on is None or off is None:
        raise ConfigError("label smoothing: give eps, or both on and off")
    elif not 0.0 <= off < on <= 1.0:
        raise ConfigError(f"label smoothing on={on}, off={off}: need 0 <= off < on <= 1")
    return timm_one_hot(y, num_classes, on_value=on, off_value=off)


def switch_loss(current, wanted, *, replace_soft: bool = False):
    """(loss to install, loss to restore after the fit or None) for a trick that wants `wanted`.

    Target tricks run in `order` at both before_fit and after_fit, so a stack of them cannot unwind
    by each restoring what it found. Instead only the first trick that replaces a plain loss keeps
    it for restoring; a later trick that finds a soft-target loss in place restores nothing, and
    keeps that loss unless `replace_soft` (kl-mixup replaces cross entropy by KL).
    """
    if is_soft_target_loss(current):
        return (wanted if replace_soft else current), None
    return wanted, current
