"""Rotation prediction as an auxiliary self-supervised loss (Gidaris et al. 2018, "Unsupervised
Representation Learning by Predicting Image Rotations", arXiv:1803.07728; used next to the supervised
loss by Hendrycks et al. 2019, "Using Self-Supervised Learning Can Improve Model Robustness and
Uncertainty", arXiv:1906.12340). Notes S9: 'a self-supervised head that predicts the rotation angle,
together with mixup: 89.06'.

A 4-way head `model.rotation_head` = nn.Linear(num_features, 4) sits on the pooled features, next to
the classifier, as a `tricks.surgery.SideLinear`: an nn.Linear that calling passes its input through, so
that in a model that is an nn.Sequential (fastai's XResNet), which runs every child in turn, the head
follows the classifier and `model(x)` is unchanged; the loss calls its linear map,
`rotation_head.linear`. For each training batch x (the current `learn.xb[0]`: after channel drop and
mixup), every image gets one rotation k ~ U{0, 1, 2, 3} (k * 90 degrees, torch.rot90 over (H, W)), and

    loss = CE(classifier(x), y) + weight * CE(rotation_head(pool(features(rot_k(x)))), k)

One random rotation per image (not all four, as Gidaris et al. do) keeps the cost to one extra
forward and backward of the batch. That extra forward runs in training mode, so the BN running
statistics also see the rotated images. Evaluation is untouched: the head does not change
`model(x)` and no loss is added. Beside fastai's `GradientAccumulation` (order 6, whose after_loss
divides the main loss's gradient by n_acc / bs before this callback's) the rotation loss is divided the
same way (`accumulation_scale`), so the two keep the weights they have without it. Images must be
square. The pooled features are where the model's family says (`tricks.surgery.pooled_features`; for
a model of no family, the classifier's input). A second fit keeps the trained head
(`tricks.surgery.ModelSurgery`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.callback.training import GradientAccumulation
from fastai.torch_core import find_bs
from torch import nn

from tricks.errors import ConfigError
from tricks.registry import Param, check_arguments, register_trick
from tricks.surgery import Family, ModelSurgery, SideLinear, classifier_family, like, num_features, pooled_features

ROTATIONS = 4


def rotate_batch(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Image i of x (B, C, H, W) rotated by k[i] * 90 degrees, as torch.rot90(x[i], k[i], dims=(1, 2))."""
    if x.shape[-1] != x.shape[-2]:
        raise ConfigError(f"rotation needs square images; got {x.shape[-2]}x{x.shape[-1]}")
    out = x
    for r in range(1, ROTATIONS):  # a select per rotation, no index of data-dependent size: no host sync on CUDA
        out = torch.where((k == r).view(-1, 1, 1, 1), torch.rot90(x, r, dims=(2, 3)), out)
    return out


def rotation_loss(model: nn.Module, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """CE(model.rotation_head's linear map of the pooled features of the rotated batch, k)."""
    return F.cross_entropy(model.rotation_head.linear(pooled_features(model, rotate_batch(x, k))), k)


def accumulation_scale(learn, order: int) -> float:
    """The factor fastai's `GradientAccumulation` callbacks that ran before `order` at after_loss have already
    scaled the main loss's gradient by (bs / n_acc each: their after_loss divides `loss_grad` by n_acc / bs),
    so that a loss added after them is scaled the same; 1.0 without them."""
    scale = 1.0
    for cb in learn.cbs:
        if isinstance(cb, GradientAccumulation) and cb.order < order:
            scale *= find_bs(learn.yb) / cb.n_acc
    return scale


@register_trick(
    "rotation",
    params=(Param("weight", float, 1.0, "weight of the rotation loss", low=0.0),),
    description="auxiliary 4-way rotation head on the pooled features, weight * CE added to the training loss",
    paper="Gidaris et al. 2018, Predicting Image Rotations, arXiv:1803.07728; Hendrycks et al. 2019, "
          "Self-Supervised Learning Can Improve Robustness, arXiv:1906.12340",
    touches=("model", "loss"),
)
class RotationHead(ModelSurgery):
    """Add `model.rotation_head`; add weight * rotation CE to every training loss."""

    order = 7  # model surgery last: the head reads the features the other tricks leave
    run_valid = False
    trick = "rotation"
    rebuild_opt = True

    def __init__(self, weight: float = 1.0):
        super().__init__()
        check_arguments("rotation", weight=weight)
        self.weight = weight

    def check(self, model: nn.Module) -> Family | None:
        return classifier_family(model, self.trick)

    def edit(self, model: nn.Module, fam: Family | None) -> None:
        self.edits.set(model, "rotation_head", like(model, SideLinear(num_features(model), ROTATIONS)))

    def after_loss(self):
        x = self.learn.xb[0]
        k = torch.randint(0, ROTATIONS, (x.shape[0],), device=x.device)
        model = self.learn.model  # under DistributedDataParallel (recipes.distributed) the head is on .module
        model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        extra = self.weight * rotation_loss(model, x, k)
        self.learn.loss_grad = self.learn.loss_grad + extra * accumulation_scale(self.learn, self.order)
        self.learn.loss = self.learn.loss + extra.detach()
