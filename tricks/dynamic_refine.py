"""Dynamic (online) refine, order 45: blend the targets with the model's own detached prediction.

The notes' S1-S3 'dynamic-refine' / 'dyna' (S3: 88.73 -> 89.06, 91.86 -> 92.22), an online form of
Label Refinery (Bagherinezhad et al. 2018, "Label Refinery: Improving ImageNet Classification through
Label Progression", arXiv:1805.02641). Defined here as: during training, from epoch `start_epoch` on,

    y <- (1 - w) * y_soft + w * softmax(pred.detach() / T)

where pred is the model's prediction on the same (possibly mixed) batch and y_soft the targets made
by the earlier target tricks (one-hot of the labels if none), trained with the soft-target loss.
Note: for T = 1 and rows of y_soft summing to 1 the gradient w.r.t. the logits is exactly
(1 - w) * (softmax(pred) - y_soft), i.e. plain cross entropy scaled by (1 - w); T != 1 makes the
refined targets sharper (T < 1) or flatter (T > 1) than the prediction.
Written by hand: no library has this blend; it is one line.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback

from tricks.errors import ConfigError
from tricks.losses import one_hot, soft_target_cross_entropy, switch_loss
from tricks.mixup import MixUp
from tricks.registry import Param, register_trick


def refine_targets(y_soft: torch.Tensor, logits: torch.Tensor, weight: float, temperature: float) -> torch.Tensor:
    """(1 - weight) * y_soft + weight * softmax(logits.detach() / temperature)."""
    return (1 - weight) * y_soft + weight * F.softmax(logits.detach() / temperature, dim=1)


@register_trick(
    "dynarefine",
    params=(
        Param("weight", float, 0.5, "weight w of the model's own prediction in the target", low=0.0, high=1.0),
        Param("temperature", float, 1.0, "softmax temperature T of the prediction", low=0.0, low_open=True),
        Param("start_epoch", int, 0, "epochs trained on the plain targets before refining", low=0),
    ),
    description="dynamic refine: targets (1-w)*y + w*softmax(pred.detach()/T), the notes' 'dyna' (S1-S3)",
    paper="Bagherinezhad et al. 2018, Label Refinery, arXiv:1805.02641 (online form, notes S1-S3)",
    touches=("targets", "loss"),
)
class DynamicRefine(Callback):
    """Refines the training targets at after_pred from `start_epoch` on; the test split is untouched."""

    order = 45  # after_pred: after one-hot / label smoothing (20) and mixup (30) made the targets
    run_valid = False

    def __init__(self, weight: float = 0.5, temperature: float = 1.0, start_epoch: int = 0):
        if not 0.0 <= weight <= 1.0:
            raise ConfigError(f"dynarefine weight={weight} is out of range; allowed: [0, 1]")
        if not temperature > 0:
            raise ConfigError(f"dynarefine temperature={temperature} is out of range; allowed: (0, inf)")
        if start_epoch < 0:
            raise ConfigError(f"dynarefine start_epoch={start_epoch} is out of range; allowed: [0, inf)")
        self.weight, self.temperature, self.start_epoch = weight, temperature, start_epoch
        self.previous_loss = None

    def before_fit(self):
        if any(isinstance(cb, MixUp) and cb.mix == "losses" for cb in self.learn.cbs):
            raise ConfigError("dynarefine refines mixed labels, and mixup:mix=losses has none; use mix=labels")
        self.learn.loss_func, self.previous_loss = switch_loss(self.learn.loss_func, soft_target_cross_entropy)

    def after_pred(self):
        if self.learn.epoch < self.start_epoch:
            return
        y, pred = self.learn.yb[0], self.learn.pred
        y_soft = y if y.is_floating_point() else one_hot(y, pred.shape[1])
        self.learn.yb = (refine_targets(y_soft, pred, self.weight, self.temperature),)

    def after_fit(self):
        if self.previous_loss is not None:
            self.learn.loss_func, self.previous_loss = self.previous_loss, None

    def after_cancel_fit(self):
        self.after_fit()
