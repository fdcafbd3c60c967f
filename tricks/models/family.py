"""What a model family's file describes for the tricks that change a network (`Family`), and the small pieces the
descriptions share. Imports no family, so every family file can import it (and `tricks.surgery` too).

`ClassifierWrap` and `SideLinear` are the modules the tricks put into a model (fcdrop and finalbn wrap the
classifier; rotation adds a head beside it): a family's classifier and pooled features look past them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

BatchNorm = nn.modules.batchnorm._BatchNorm  # torch's base of BatchNorm1d/2d/3d and SyncBatchNorm


def batchnorms(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm of `model`, in module order."""
    return [m for m in model.modules() if isinstance(m, BatchNorm)]


@dataclass(frozen=True)
class Family:
    """Where things are in one family of models, for every trick that changes a model.

    `matches(model)` says whether a model is of the family; `branch_end(block)` gives the dotted paths, inside the
    block, of the last BN and the last conv of its residual branch; `final_norm(model)` (pre-activation families
    only) the path of the net's final BN and the module that replaces it without the BN (its activation kept);
    `classifier(model)` the classifier's dotted path (None: the generic search of `tricks.surgery.classifier_path`);
    `pooled(model, x)` the pooled features (None: the classifier's input, see `tricks.surgery.pooled_features`).
    """

    name: str
    label: str
    matches: Callable[[nn.Module], bool]
    block_types: tuple[type, ...]
    branch_end: Callable[[nn.Module], tuple[str, str]]
    preact: bool = False
    final_norm: Callable[[nn.Module], tuple[str, nn.Module]] | None = None
    classifier: Callable[[nn.Module], str | None] | None = None
    pooled: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None

    def blocks(self, model: nn.Module) -> Iterator[nn.Module]:
        """Every residual block, in forward order (the order the model registers them in, for these families)."""
        return (m for m in model.modules() if isinstance(m, self.block_types))


def built_of(model_type: type, block_types: tuple[type, ...]) -> Callable[[nn.Module], bool]:
    """A model of `model_type` with blocks of `block_types`."""
    return lambda model: isinstance(model, model_type) and any(isinstance(m, block_types) for m in model.modules())


class ClassifierWrap(nn.Sequential):
    """The nn.Sequential a trick wraps a classifier in (fcdrop, finalbn): the next trick finds the whole."""


class SideLinear(nn.Linear):
    """An nn.Linear kept beside a model's forward rather than in it (the rotation head): calling the module
    passes its input through unchanged -- so in an nn.Sequential model, where every child runs in turn, it can
    follow the classifier without changing what `model(x)` returns -- and `linear(x)` is the linear map
    x @ weight.T + bias. Its parameters are nn.Linear's `weight` and `bias`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def children_before(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """x through the children of an nn.Sequential `model` that come before its child `name`."""
    for child_name, child in model.named_children():
        if child_name == name:
            return x
        x = child(x)
    raise AssertionError(f"{name} is not a child of the model")


def timm_classifier(model: nn.Module) -> str | None:
    """timm's `get_classifier()` path, `pretrained_cfg['classifier']` ('fc', 'head.fc')."""
    if not hasattr(model, "get_classifier"):
        return None
    return (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
