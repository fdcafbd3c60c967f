"""BatchNorm momentum (notes S6: 'BN momentum set to: not specified 88.44 / default 0.1 87.28 /
0.01 87.34 / 1/bs^2 87.64').

torch's BatchNorm updates its running statistics as

    running <- (1 - m) * running + m * batch_statistic

with m = `momentum` (torch default 0.1). MXNet/Gluon, which the notes' code most likely used, writes
running <- g * running + (1 - g) * batch with g = 0.9 by default: Gluon's g is torch's 1 - m. So the
notes' 'default 0.1' reads as torch's default, 'not specified' as the framework's default, and if
their 0.01 and 1/bs^2 were Gluon values they are torch m = 0.99 and 1 - 1/bs^2 (give momentum=0.99
for that reading). Values here are always torch's m.

`momentum=m` sets every BatchNorm's momentum to m; `per_bs2=true` sets it to 1 / bs^2 with the
recipe's batch size (1.5e-5 at bs 256) and ignores `momentum`. Done once, before the first fit; works
on any model with BatchNorm. The recipe's own `bn_momentum` option sets the same thing at build time:
giving both is a ConfigError.
"""
from __future__ import annotations

from torch import nn

from tricks.errors import ConfigError
from tricks.models.family import batchnorms
from tricks.registry import Param, check_arguments, register_trick
from tricks.surgery import Family, ModelSurgery, find_family


def bs2_momentum(bs: int) -> float:
    """The notes' '1/bs^2' momentum."""
    return 1.0 / (bs * bs)


def build_bn_momentum(recipe, momentum: float = 0.01, per_bs2: bool = False) -> "BNMomentum":
    if recipe.bn_momentum is not None:
        raise ConfigError(f"bnmom and bn_momentum={recipe.bn_momentum} both set the BN momentum; give one")
    return BNMomentum(bs2_momentum(recipe.bs) if per_bs2 else momentum)


@register_trick(
    "bnmom",
    params=(Param("momentum", float, 0.01, "torch BN momentum m (Gluon's 1 - m)", low=0.0, high=1.0),
            Param("per_bs2", bool, False, "use m = 1/bs^2 with the recipe's bs instead of momentum")),
    description="set the momentum of every BatchNorm (torch convention), or 1/bs^2",
    paper="the notes, S6; Ioffe & Szegedy 2015, Batch Normalization, arXiv:1502.03167",
    touches=("model",),
    build=build_bn_momentum,
)
class BNMomentum(ModelSurgery):
    """Set every BatchNorm's `momentum` before training."""

    order = 6  # model surgery: after every BN has been added or removed (1-5), before the rotation head (7)
    trick = "bnmom"

    def __init__(self, momentum: float = 0.01):
        super().__init__()
        check_arguments("bnmom", momentum=momentum)
        self.bn_momentum = momentum

    def settings(self) -> str:
        return f"momentum={self.bn_momentum:g}"

    def check(self, model: nn.Module) -> Family | None:
        if not batchnorms(model):
            raise ConfigError(f"bnmom: model {type(model).__name__} has no BatchNorm to set")
        return find_family(model)  # any model with a BatchNorm, of a known family or not

    def edit(self, model: nn.Module, fam: Family | None) -> None:
        for bn in batchnorms(model):
            self.edits.set(bn, "momentum", self.bn_momentum)
