"""Targets and losses for the target tricks: one-hot and smoothed targets, cross entropy and KL
divergence against soft targets. Pure functions; every loss also takes int64 class indices (the test
split is evaluated on hard labels) and then is the plain cross entropy.

    soft_target_cross_entropy(z, t) = mean_i -sum_c t_ic log softmax(z_i)_c
    kl_div_loss(z, t)               = mean_i  sum_c t_ic (log t_ic - log softmax(z_i)_c)  = KL(t || softmax(z))

The two differ by the entropy of t, a constant of the targets, so their gradients w.r.t. z are equal
(the notes' S8/S9 finding: "KL divergence and cross entropy on mixed labels give the same result").
Both are torch's own maths: `F.cross_entropy` takes class probabilities as targets, and
`F.kl_div(log_softmax(z), t, reduction='batchmean')`.

Both are `SoftTargetLoss` objects: they carry fastai's loss conventions (`activation` softmax, `decodes`
argmax, `reduction`, as `CrossEntropyLossFlat`), so a Learner that meets one can still decode. The
target tricks put them in place for training only (`TrainingLoss`, as fastai's `MixHandler`): validate,
get_preds, predict, tta and export see the Learner's own loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from timm.data.mixup import one_hot as timm_one_hot

from tricks.errors import ConfigError


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (B,) -> float32 one-hot rows (B, C)."""
    return F.one_hot(y, num_classes).float()


class SoftTargetLoss:
    """`func(logits, target, reduction=...)` with fastai's loss conventions (those of `BaseLoss` /
    `CrossEntropyLossFlat`): `activation` is the softmax and `decodes` the argmax over classes, and
    `reduction` ('mean', 'sum', 'none') is an attribute, so fastai's `NoneReduce` works on it."""

    def __init__(self, func, reduction: str = "mean"):
        self.func, self.reduction = func, reduction

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.func(logits, target, reduction=self.reduction)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(x, dim=-1)

    def decodes(self, x: torch.Tensor) -> torch.Tensor:
        return x.argmax(dim=-1)

    def __repr__(self) -> str:
        return f"SoftTargetLoss({getattr(self.func, '__name__', self.func)})"


def _soft_target_cross_entropy(logits, target, reduction="mean"):
    return F.cross_entropy(logits, target, reduction=reduction)


def _kl_div(logits, target, reduction="mean"):
    if not target.is_floating_point():
        return F.cross_entropy(logits, target, reduction=reduction)
    log_p = F.log_softmax(logits, dim=1)
    if reduction == "mean":
        return F.kl_div(log_p, target, reduction="batchmean")
    per_row = F.kl_div(log_p, target, reduction="none").sum(1)
    return per_row.sum() if reduction == "sum" else per_row


# Mean over the batch of -(target * log_softmax(logits)).sum(1); int targets: plain cross entropy.
# `F.cross_entropy` with float (B, C) targets computes exactly this (and does not renormalise rows, so
# the notes' on/off rows that do not sum to 1 are used as written); with one-hot targets it equals the
# hard-label cross entropy bit for bit.
soft_target_cross_entropy = SoftTargetLoss(_soft_target_cross_entropy)

# KL(target || softmax(logits)) summed over classes, averaged over the batch; int targets: cross entropy.
kl_div_loss = SoftTargetLoss(_kl_div)


def is_soft_target_loss(loss_func) -> bool:
    """True if `loss_func` is a loss a target trick installs."""
    return isinstance(loss_func, SoftTargetLoss)


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
    """(loss to install, loss to restore after training or None) for a trick that wants `wanted`.

    Target tricks run in `order` at both before_train and after_train, so a stack of them cannot
    unwind by each restoring what it found. Instead only the first trick that replaces a plain loss
    keeps it for restoring; a later trick that finds a soft-target loss in place restores nothing, and
    keeps that loss unless `replace_soft` (kl-mixup replaces cross entropy by KL).
    """
    if is_soft_target_loss(current):
        return (wanted if replace_soft else current), None
    return wanted, current


class TrainingLoss(Callback):
    """Base of the target tricks: `training_loss()` is the Learner's loss during training only.

    As fastai's `MixHandler`: installed at before_train, the Learner's own loss put back at
    after_train and when the training or the fit is cancelled: `validate`, `get_preds`, `predict`, `tta`
    and `export` (which run before_fit, but no training) see the Learner's loss, and `lr_find` gets it back
    when it cancels its fit. Stacks of target tricks combine through `switch_loss`.
    """

    run_valid = False
    train_loss = soft_target_cross_entropy  # the loss installed for training
    replace_soft = False  # replace a soft-target loss an earlier trick installed
    previous_loss = None  # the Learner's loss, while this trick's is in place

    def training_loss(self):
        """The loss to train with; None keeps the Learner's."""
        return self.train_loss

    def before_train(self):
        wanted = self.training_loss()
        if wanted is not None:
            self.learn.loss_func, self.previous_loss = switch_loss(self.learn.loss_func, wanted,
                                                                   replace_soft=self.replace_soft)

    def after_train(self):
        if self.previous_loss is not None:
            self.learn.loss_func, self.previous_loss = self.previous_loss, None

    def after_cancel_train(self):
        self.after_train()

    def after_cancel_fit(self):
        self.after_train()
