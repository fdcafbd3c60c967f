"""mixup and kl-mixup (order 30): train on convex combinations of pairs of images and their targets.

Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization", arXiv:1710.09412. For each training
batch, one lam ~ Beta(alpha, alpha) and one random permutation `perm` of the batch:

    x <- lam * x + (1 - lam) * x[perm]
    mix='labels': y <- lam * y + (1 - lam) * y[perm],   loss = soft_target_cross_entropy(pred, y)
    mix='losses': loss = lam * L(pred, y) + (1 - lam) * L(pred, y[perm])   (L: the loss in place)
    klmixup:      mix='labels' with loss = KL(y || softmax(pred))   (notes S7/S8)

y is the soft target an order-20 trick made (onehot, lsmooth), else the one-hot of the labels; the
targets are mixed at after_pred, where the number of classes (the prediction's width) is known. The
notes' S9: mixing labels beats mixing losses, KL and cross entropy on mixed labels are the same (their
gradients are equal, see `tricks.losses`), best alpha 0.3 on resnet20-v1.

Written here rather than called: timm's `mixup_target` pairs each row with the reversed batch
(`flip(0)`) and takes hard labels with epsilon smoothing only, while the partner here is a random
permutation (Zhang et al.'s code, the notes) and the targets may be the notes' on/off form; the tests
check `mixup_batch` against `mixup_target` when `perm` is the reversal. fastai's `MixUp` draws one
lam per image and uses max(lam, 1 - lam), which is not the notes' mixup.
The loss is swapped for training only (`tricks.losses.TrainingLoss`, as fastai's `MixHandler`).
A multi-label Learner (BCE loss): mixup mixes the float multi-hot targets and keeps the Learner's BCE loss
(mix='labels'), or mixes its two BCE values (mix='losses'; the same loss, BCE being linear in the target);
kl-mixup refuses it.
lam and perm come from torch's global RNG (CPU for lam, the batch's device for perm), seeded by the
trainer, so runs are reproducible under `torch.manual_seed`.
"""
from __future__ import annotations

from typing import Callable

import torch
from fastai.callback.mixup import reduce_loss
from fastai.layers import NoneReduce

from tricks.errors import ConfigError
from tricks.losses import SoftTargetLoss, TrainingLoss, kl_div_loss, one_hot
from tricks.registry import Param, check_arguments, register_trick

MIX = ("labels", "losses")


def mix_rows(t: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """lam * t + (1 - lam) * t[perm] along the batch dimension."""
    return lam * t + (1 - lam) * t[perm]


def mixup_batch(x: torch.Tensor, y_soft: torch.Tensor, lam: float, perm: torch.Tensor):
    """(mixed images, mixed soft targets): the same lam and partner for both."""
    return mix_rows(x, lam, perm), mix_rows(y_soft, lam, perm)


def mixed_loss(loss_func: Callable, pred: torch.Tensor, y: torch.Tensor, lam: float,
               perm: torch.Tensor) -> torch.Tensor:
    """Mixing losses: lam * L(pred, y) + (1 - lam) * L(pred, y[perm])."""
    return lam * loss_func(pred, y) + (1 - lam) * loss_func(pred, y[perm])


ALPHA = Param("alpha", float, 0.3, "Beta(alpha, alpha) of lam (notes S9 best: 0.3)", low=0.0, low_open=True)


@register_trick(
    "mixup",
    params=(ALPHA, Param("mix", str, "labels", "mix the targets (labels) or the two losses (losses)",
                         choices=MIX)),
    description="mixup: blend image pairs and their targets (labels) or losses, lam ~ Beta(alpha, alpha)",
    paper="Zhang et al. 2018, mixup: Beyond Empirical Risk Minimization, arXiv:1710.09412",
    touches=("input", "targets", "loss"),
)
class MixUp(TrainingLoss):
    """Mixes x at before_batch; the targets at after_pred (labels) or the loss (losses). Training only."""

    order = 30  # after one-hot / label smoothing (20) made the soft targets, before dynamic refine (36)
    mixes_batch = True
    multi_label = True  # multi-hot targets mixed under the Learner's BCE loss (kept)

    def __init__(self, alpha: float = 0.3, mix: str = "labels"):
        check_arguments("mixup", alpha=alpha, mix=mix)
        self.alpha, self.mix = alpha, mix
        self.beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
        self.lam, self.perm = 1.0, None
        self.plain_loss = None  # the loss whose two values are mixed (mix='losses'), during training
        if mix == "losses":
            self.replace_soft = True  # the mixed loss wraps the one in place, soft (onehot, lsmooth) or not
            self.any_loss = True  # it wraps whatever loss the Learner has

    def check_tricks(self):
        if any(isinstance(cb, MixUp) and cb is not self for cb in self.learn.cbs):
            raise ConfigError("mixup and klmixup both mix the batch; keep one")

    def training_loss(self):
        if self.mix == "labels":
            return super().training_loss()  # the soft cross entropy; a multi-label Learner's BCE is kept
        self.plain_loss = self.learn.loss_func  # cross entropy, or the soft one of onehot / lsmooth
        return SoftTargetLoss(self.loss_of_mixed_batch)

    def before_batch(self):
        x = self.learn.xb[0]
        self.lam = float(self.beta.sample())
        self.perm = torch.randperm(x.shape[0], device=x.device)
        self.learn.xb = (mix_rows(x, self.lam, self.perm),)

    def after_pred(self):
        if self.mix == "labels":
            y = self.learn.yb[0]
            y_soft = y if y.is_floating_point() else one_hot(y, self.learn.pred.shape[1])
            self.learn.yb = (mix_rows(y_soft, self.lam, self.perm),)

    def loss_of_mixed_batch(self, pred, y, reduction="mean"):
        """The loss in place during training with mix='losses' (fastai's `MixHandler.lf` for reductions)."""
        if reduction == "mean":
            return mixed_loss(self.plain_loss, pred, y, self.lam, self.perm)
        with NoneReduce(self.plain_loss) as loss_func:
            return reduce_loss(mixed_loss(loss_func, pred, y, self.lam, self.perm), reduction)

    def after_train(self):
        super().after_train()
        self.plain_loss = None


@register_trick(
    "klmixup",
    params=(ALPHA,),
    description="mixup of labels trained with KL(mixed targets || softmax(pred)) (notes S7/S8)",
    paper="Zhang et al. 2018, mixup: Beyond Empirical Risk Minimization, arXiv:1710.09412",
    touches=("input", "targets", "loss"),
    conflicts={"mixup": "both mix the batch; keep one (klmixup is mixup with a KL loss)"},
)
class KLMixUp(MixUp):
    """mixup of labels with the KL-divergence loss; same gradients as mixup:mix=labels."""

    train_loss = kl_div_loss
    replace_soft = True  # KL replaces the soft cross entropy of onehot / lsmooth
    multi_label = False
    single_label_only = "KL divergence compares softmax distributions; tricks.MixUp mixes multi-hot targets under BCE"

    def __init__(self, alpha: float = 0.3):
        check_arguments("klmixup", alpha=alpha)
        super().__init__(alpha=alpha, mix="labels")
