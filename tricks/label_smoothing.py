"""One-hot and label-smoothed targets (order 20), trained with `soft_target_cross_entropy`.

onehot: the notes' S8 "own cross entropy, everything changed to one-hot targets": y -> onehot(y).
lsmooth: label smoothing (Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer
Vision", arXiv:1512.00567), y -> (1 - eps) * onehot(y) + eps / C, or the notes' on/off form: `on` at
the true class, `off` elsewhere (0.9/0.0001 as written in S7; rows do not sum to 1, replayed as is).

The targets are made at after_pred, not before_batch: the number of classes C is the width of the
prediction, which is known only then (the data loaders do not carry it). Order 20 still runs before
mixup (30) and dynamic refine (36) at after_pred. Training batches only; the test split keeps its
hard labels, and the soft-target loss is in place for training only (`tricks.losses.TrainingLoss`).
A multi-label Learner (BCE loss): lsmooth smooths each class of the multi-hot targets,
y * (1 - eps) + eps / 2 (or `on` / `off`), under the Learner's own BCE loss; onehot refuses it.
"""
from __future__ import annotations

from tricks.errors import ConfigError
from tricks.losses import MULTI_LABEL, TrainingLoss, one_hot, smooth_multi_hot, smooth_targets
from tricks.registry import Param, register_trick


class SoftTargets(TrainingLoss):
    """Replaces the training targets by `self.targets(y, C)` and trains with soft cross entropy."""

    order = 20  # targets: one-hot / label smoothing, before mixup (30) and dynamic refine (36)

    def targets(self, y, num_classes):
        raise NotImplementedError

    def check_tricks(self):
        if any(isinstance(cb, SoftTargets) and cb is not self for cb in self.learn.cbs):
            raise ConfigError("onehot and lsmooth both set the targets; keep one")

    def after_pred(self):
        y = self.learn.yb[0]
        multi = self.task == MULTI_LABEL
        self.learn.yb = (self.multi_hot_targets(y) if multi else self.targets(y, self.learn.pred.shape[1]),)

    def multi_hot_targets(self, y):
        """The targets of a multi-label Learner (its BCE loss kept), for the tricks with `multi_label`."""
        raise NotImplementedError


@register_trick(
    "onehot",
    description="one-hot float targets and a soft-target cross entropy (the notes' S8 'own cross entropy')",
    paper="notes S8: own cross-entropy implementation, everything changed to one-hot targets",
    touches=("targets", "loss"),
    reads_labels=True,
)
class OneHot(SoftTargets):
    """y -> onehot(y); the loss equals plain cross entropy exactly. Single-label only."""

    single_label_only = "a multi-label Learner's targets are already multi-hot, its loss a BCE"

    def targets(self, y, num_classes):
        return one_hot(y, num_classes)


@register_trick(
    "lsmooth",
    params=(
        Param("eps", float, 0.0, "epsilon form (1-eps)*onehot + eps/C; 0 = use on/off", low=0.0, high=1.0,
              high_open=True),
        Param("on", float, 0.9, "target at the true class (on/off form)", low=0.0, high=1.0, low_open=True),
        Param("off", float, 0.0001, "target at every other class (on/off form)", low=0.0, high=1.0,
              high_open=True),
    ),
    description="label smoothing: eps form, or the notes' on/off targets (default 0.9/0.0001, S7)",
    paper="Szegedy et al. 2016, Rethinking the Inception Architecture for Computer Vision, arXiv:1512.00567",
    touches=("targets", "loss"),
    conflicts={"onehot": "both make the soft targets; keep one"},
    reads_labels=True,
)
class LabelSmoothing(SoftTargets):
    """eps > 0: (1 - eps) * onehot + eps / C; else `on` at the true class, `off` elsewhere. A multi-label Learner
    (BCE loss, kept): every class smoothed as a two-class problem, y * (1 - eps) + eps / 2, or on/off."""

    multi_label = True

    def __init__(self, eps: float = 0.0, on: float = 0.9, off: float = 0.0001):
        if eps == 0.0 and not off < on:
            raise ConfigError(f"lsmooth on={on}, off={off}: on must be larger than off")
        self.eps, self.on, self.off = eps, on, off

    def targets(self, y, num_classes):
        if self.eps > 0:
            return smooth_targets(y, num_classes, eps=self.eps)
        return smooth_targets(y, num_classes, on=self.on, off=self.off)

    def multi_hot_targets(self, y):
        if self.eps > 0:
            return smooth_multi_hot(y, eps=self.eps)
        return smooth_multi_hot(y, on=self.on, off=self.off)
