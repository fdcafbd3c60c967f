"""Zero-init the last BN gamma of every residual branch (Goyal et al. 2017, "Accurate, Large Minibatch
SGD: Training ImageNet in 1 Hour", arXiv:1706.02677, section 5.1).

With gamma = 0 in the BN that ends a branch, out = x + 0 * branch(x): every block starts as the
identity. The notes: S4 92.17 vs 92.06, S9 'with last_gamma: 93.23, without: 92.98'.

`on=true` sets that gamma (`weight`) to 0 at the start of training, `on=false` to 1 (so the trick
also switches off a model built with zero_init_last, and fastai's XResNet, whose `BatchZero` BN starts
at 0). The BN is the one `tricks.surgery.last_bn` names for the model's family (the table there): the BN
that ends the branch in post-activation blocks (`bn2` in v1, timm's and torchvision's BasicBlock, `bn3`
in their Bottleneck -- the ones timm's `zero_init_last()` zeros -- and the BN of fastai's last
`ConvLayer`), and in pre-activation blocks the BN before the last conv, as `cifar_resnet` defines it
(`bn2`; timm's ResNetV2: `norm2` / `norm3`), the notes' v2 'with last-gamma: 54.29': that branch never
trains. Done once, before the first fit; undone on cancel.
"""
from __future__ import annotations

from torch import nn

from tricks.registry import Param, register_trick
from tricks.surgery import Family, ModelSurgery, family, last_bn


def set_last_gamma(model: nn.Module, value: float) -> list[nn.BatchNorm2d]:
    """Fill the gamma of the last BN of every residual branch with `value`; returns those BNs."""
    bns = [last_bn(b) for b in family(model, "lastgamma").blocks(model)]
    for bn in bns:
        nn.init.constant_(bn.weight, value)
    return bns


@register_trick(
    "lastgamma",
    params=(Param("on", bool, True, "gamma of the last BN of each residual branch starts at 0 (on) or 1 (off)"),),
    description="zero-init the gamma of the last BN in every residual branch (off: gamma = 1)",
    paper="Goyal et al. 2017, Accurate, Large Minibatch SGD, arXiv:1706.02677",
    touches=("weights",),
)
class LastGamma(ModelSurgery):
    """Set the last BN gamma of every residual branch to 0 (on) or 1 (off) before training."""

    order = 5  # model surgery: after the layers have been swapped (1-4), before BN momentum (6)
    trick = "lastgamma"

    def __init__(self, on: bool = True):
        super().__init__()
        self.on = on

    def settings(self) -> str:
        return f"on={str(self.on).lower()}"

    def edit(self, model: nn.Module, fam: Family) -> None:
        for b in fam.blocks(model):
            self.edits.keep(last_bn(b).weight)
        set_last_gamma(model, 0.0 if self.on else 1.0)
