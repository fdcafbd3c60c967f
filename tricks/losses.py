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
from fastai.callback.mixup import MixHandler
from timm.data.mixup import one_hot as timm_one_hot
from torch import nn

from tricks.errors import ConfigError
from tricks.surgery import in_validation_context, undone_on_refusal


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


def smoothing_values(num_classes: int, *, eps: float | None = None, on: float | None = None,
                     off: float | None = None) -> tuple[float, float]:
    """(on, off) of label smoothing over `num_classes` classes: given as `on` and `off`, or from `eps`:
    off = eps / C, on = 1 - eps + eps / C."""
    if eps is not None and (on is not None or off is not None):
        raise ConfigError("label smoothing: give eps, or on and off, not both")
    if eps is not None:
        if not 0.0 <= eps < 1.0:
            raise ConfigError(f"label smoothing eps={eps} is out of range; allowed: [0, 1)")
        off = eps / num_classes
        return 1.0 - eps + off, off
    if on is None or off is None:
        raise ConfigError("label smoothing: give eps, or both on and off")
    if not 0.0 <= off < on <= 1.0:
        raise ConfigError(f"label smoothing on={on}, off={off}: need 0 <= off < on <= 1")
    return on, off


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
    on, off = smoothing_values(num_classes, eps=eps, on=on, off=off)
    return timm_one_hot(y, num_classes, on_value=on, off_value=off)


def smooth_multi_hot(y: torch.Tensor, *, eps: float | None = None, on: float | None = None,
                     off: float | None = None) -> torch.Tensor:
    """Label smoothing of multi-hot targets y (B, C) of 0s and 1s, each class its own two-class problem (the
    targets of a BCE loss): `on` where y is 1, `off` where it is 0. Epsilon form: the two-class values,
    on = 1 - eps / 2 and off = eps / 2, i.e. y * (1 - eps) + eps / 2.
    Written here: neither torch's BCE nor timm smooths multi-hot targets."""
    on, off = smoothing_values(2, eps=eps, on=on, off=off)
    return y.float() * (on - off) + off


def switch_loss(current, wanted, *, replace_soft: bool = False):
    """The loss to install for a trick that wants `wanted`, where `current` is in place.

    Target tricks run in `order` at before_train: the first one replaces the Learner's loss; a later one
    that finds a soft-target loss in place keeps it, unless `replace_soft` (kl-mixup replaces cross entropy
    by KL). Putting back is not this function's: every trick restores the loss the Learner held at before_fit.
    """
    if is_soft_target_loss(current) and not replace_soft:
        return current
    return wanted


SINGLE_LABEL, MULTI_LABEL = "single-label", "multi-label"
PLAIN_LOSSES = "give loss_func=CrossEntropyLossFlat() (single-label) or BCEWithLogitsLossFlat() (multi-label)"


def loss_task(loss_func) -> str | None:
    """The task a Learner's loss trains: `SINGLE_LABEL` for a plain cross entropy on class indices (fastai's
    `CrossEntropyLossFlat`, `nn.CrossEntropyLoss` without class weights or label smoothing, `F.cross_entropy`, a
    `SoftTargetLoss`), `MULTI_LABEL` for a BCE on multi-hot targets (`BCEWithLogitsLossFlat`,
    `nn.BCEWithLogitsLoss`, `F.binary_cross_entropy_with_logits`), None for any other loss."""
    if is_soft_target_loss(loss_func):
        return SINGLE_LABEL
    inner = getattr(loss_func, "func", loss_func)  # fastai's `BaseLoss` (the ...Flat losses) wraps a torch loss
    if inner is F.cross_entropy or (isinstance(inner, nn.CrossEntropyLoss) and inner.weight is None
                                    and inner.label_smoothing == 0):
        return SINGLE_LABEL
    if inner is F.binary_cross_entropy_with_logits or isinstance(inner, nn.BCEWithLogitsLoss):
        return MULTI_LABEL
    return None


def loss_name(loss_func) -> str:
    """How a message names a loss: its function's or its class's name."""
    return getattr(loss_func, "__name__", type(loss_func).__name__)


def fastai_mixer(learn) -> Callback | None:
    """fastai's own `MixUp` or `CutMix` (a `MixHandler`) among the Learner's callbacks, if any."""
    return next((cb for cb in learn.cbs if isinstance(cb, MixHandler)), None)


class TrainingLoss(Callback):
    """Base of the target tricks: `training_loss()` is the Learner's loss during training only.

    As fastai's `MixHandler`: installed at before_train, put back at after_train and when the training or the
    fit is cancelled: `validate`, `get_preds`, `predict`, `tta` and `export` (which run before_fit, but no
    training) see the Learner's loss, and `lr_find` gets it back when it cancels its fit. What is put back is the
    loss the Learner held at before_fit, whichever callback swapped first; stacks of target tricks combine
    through `switch_loss`.

    Refused at a fit's before_fit in one line naming both (a ConfigError; the model surgery of the fit's other
    tricks is put back first, `undone_on_refusal`): fastai's `MixUp` / `CutMix` beside any target trick (both
    change the training targets; fastai's mixing would be silently lost under a soft-target loss), a Learner's
    loss of another task than `loss_task` knows, and `check_tricks`' own pairs. `validate` / `get_preds` /
    `predict` refuse nothing (`in_validation_context`): the tricks do nothing there. `multi_label` says whether
    the trick trains a multi-label (BCE) Learner, keeping its loss; if not, `single_label_only` is the refusal's hint.
    """

    run_valid = False
    train_loss = soft_target_cross_entropy  # the loss installed for training (single-label)
    replace_soft = False  # replace a soft-target loss an earlier trick installed
    multi_label = False  # trains a multi-label Learner with its own BCE loss
    single_label_only = "it trains a softmax over classes"  # why not, when multi_label is False
    any_loss = False  # works with any loss of the Learner (mixup:mix=losses wraps it)
    mixes_batch = False  # mixes the images (mixup, kl-mixup)
    fit_loss = None  # the Learner's loss at before_fit: what after_train puts back
    swapped = False  # this trick's training loss is in place
    task = SINGLE_LABEL  # the task of the Learner's loss, found at before_fit

    def before_fit(self):
        self.fit_loss, self.swapped = self.learn.loss_func, False
        self.task = loss_task(self.learn.loss_func)
        if in_validation_context(self.learn):  # nothing trains, and a refusal would hang the Learner
            return
        with undone_on_refusal(self.learn):  # a refusal first puts back the model surgery made at this before_fit
            self.check_beside_fastai()
            self.check_task()
            self.check_tricks()

    def check_tricks(self):
        """Raise ConfigError for another trick among the Learner's callbacks that this one does not go with."""

    def check_beside_fastai(self):
        mixer = fastai_mixer(self.learn)
        if mixer is None:
            return
        name, fastai_name = type(self).__name__, type(mixer).__name__
        if self.mixes_batch:
            raise ConfigError(f"fastai's {fastai_name} and tricks' {name} both mix the batch; keep one")
        raise ConfigError(f"fastai's {fastai_name} and tricks' {name} both change the training targets; "
                          f"keep one (tricks.MixUp composes with tricks' {name})")

    def check_task(self):
        name, loss, task = type(self).__name__, self.learn.loss_func, self.task
        if task is None and not self.any_loss:
            raise ConfigError(f"tricks' {name} trains with a soft-target cross entropy in place of the Learner's "
                              f"loss {loss_name(loss)}, which would be dropped; {PLAIN_LOSSES}")
        if task == MULTI_LABEL and not self.multi_label:
            raise ConfigError(f"tricks' {name} does not train a multi-label Learner (loss {loss_name(loss)}): "
                              f"{self.single_label_only}; remove it or use a single-label CategoryBlock")

    def training_loss(self):
        """The loss to train with; None keeps the Learner's (a multi-label Learner's BCE)."""
        return None if self.task == MULTI_LABEL else self.train_loss

    def before_train(self):
        wanted = self.training_loss()
        if wanted is not None:
            self.learn.loss_func = switch_loss(self.learn.loss_func, wanted, replace_soft=self.replace_soft)
            self.swapped = True

    def after_train(self):
        if self.swapped:
            self.learn.loss_func, self.swapped = self.fit_loss, False

    def after_cancel_train(self):
        self.after_train()

    def after_cancel_fit(self):
        self.after_train()
