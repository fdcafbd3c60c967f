"""A BatchNorm before the final cross entropy (`finalbn`) and the pre-activation nets' last BN (`lastbn`).

BatchNorm (Ioffe & Szegedy 2015, arXiv:1502.03167): y = gamma * (x - mean) / sqrt(var + eps) + beta,
batch statistics in training, running statistics in evaluation; torch's nn.BatchNorm1d as is.

- `finalbn` (notes S9, 'a BN just before the final cross entropy: 93.23, clearly higher'). The
  notes' words have two readings, both offered:
  `position=features` (default): BatchNorm1d(num_features) on the pooled features, the classifier
  becomes nn.Sequential(BN, fc) -- 'the BN before the classifier', the usual BN-neck;
  `position=logits`: BatchNorm1d(num_classes) on the logits, nn.Sequential(fc, BN) -- literally the
  last thing before the cross entropy. The classifier's keys become `fc.1.*` / `fc.0.*`.
- `lastbn` (notes S9, resnetv2 'without the last bn, p=0.1: 92.75'): pre-activation nets end with
  BN-ReLU (`model.final_act`); `on=false` replaces that BN with nn.Identity and keeps the ReLU.
  `on=true` is the model as built. v1 and timm ResNets have no such BN: a ConfigError.
"""
from __future__ import annotations

from torch import nn

from tricks.errors import ConfigError
from tricks.registry import Param, register_trick
from tricks.surgery import (ClassifierWrap, ModelSurgery, classifier_family, classifier_linear, family, like,
                            num_features, wrap_classifier)

POSITIONS = ("features", "logits")


@register_trick(
    "finalbn",
    params=(Param("position", str, "features", "BN1d on the pooled features (before the fc) or on the logits",
                  choices=POSITIONS),),
    description="a BatchNorm1d just before the final cross entropy: on the pooled features or on the logits",
    paper="the notes, S9; Ioffe & Szegedy 2015, Batch Normalization, arXiv:1502.03167",
    touches=("model",),
)
class FinalBN(ModelSurgery):
    """Wrap the classifier as nn.Sequential(BatchNorm1d, fc) or nn.Sequential(fc, BatchNorm1d)."""

    order = 3  # model surgery: after the fc dropout (2), before the last-bn switch (4)
    trick = "finalbn"
    rebuild_opt = True

    def __init__(self, position: str = "features"):
        super().__init__()
        if position not in POSITIONS:
            raise ConfigError(f"finalbn position '{position}' is not one of {', '.join(POSITIONS)}")
        self.position = position

    def check(self, model: nn.Module) -> str:
        return classifier_family(model, self.trick)

    def edit(self, model: nn.Module, kind: str) -> None:
        if self.position == "features":
            bn = like(model, nn.BatchNorm1d(num_features(model)))
            wrap_classifier(self.edits, model, lambda fc: ClassifierWrap(bn, fc))
        else:
            bn = like(model, nn.BatchNorm1d(classifier_linear(model).out_features))
            wrap_classifier(self.edits, model, lambda fc: ClassifierWrap(fc, bn))


@register_trick(
    "lastbn",
    params=(Param("on", bool, True, "keep the BN of the final BN-ReLU of a pre-activation net"),),
    description="pre-activation nets only: on=false removes the BN of the final BN-ReLU (keeps the ReLU)",
    paper="the notes, S9; He et al. 2016, Identity Mappings in Deep Residual Networks, arXiv:1603.05027",
    touches=("model",),
)
class LastBN(ModelSurgery):
    """on=false: `model.final_act` = nn.Sequential(nn.Identity(), ReLU) instead of (BN, ReLU)."""

    order = 4  # model surgery: after the final BN (3), before the last gamma (5)
    trick = "lastbn"
    rebuild_opt = True  # the BN's parameters leave the model

    def __init__(self, on: bool = True):
        super().__init__()
        self.on = on

    def check(self, model: nn.Module) -> str:
        kind = family(model, self.trick)
        if kind != "preact":
            what = "timm ResNet" if kind == "timm" else "ResNet v1"
            raise ConfigError(f"lastbn applies to pre-activation models, not {type(model).__name__} ({what}); "
                              "use preact_resnet<d> or wrn<d>_<k>")
        return kind

    def edit(self, model: nn.Module, kind: str) -> None:
        if not self.on:
            self.edits.set(model.final_act, "0", nn.Identity())
