"""A BatchNorm before the final cross entropy (`finalbn`) and the pre-activation nets' last BN (`lastbn`).

BatchNorm (Ioffe & Szegedy 2015, arXiv:1502.03167): y = gamma * (x - mean) / sqrt(var + eps) + beta,
batch statistics in training, running statistics in evaluation; torch's nn.BatchNorm1d as is.

- `finalbn` (notes S9, 'a BN just before the final cross entropy: 93.23, clearly higher'). The
  notes' words have two readings, both offered:
  `position=features` (default): BatchNorm1d(num_features) on the pooled features, the classifier
  becomes nn.Sequential(BN, fc) -- 'the BN before the classifier', the usual BN-neck;
  `position=logits`: BatchNorm1d(num_classes) on the logits, nn.Sequential(fc, BN) -- literally the
  last thing before the cross entropy. The classifier's keys become `fc.1.*` / `fc.0.*`. Any model whose
  classifier `tricks.surgery.classifier_path` finds; where that classifier is a 1x1 conv on (B, C, 1, 1)
  features (timm's ResNetV2 head), the BN is a BatchNorm2d, which on 1x1 maps normalises exactly as a
  BatchNorm1d on (B, C).
- `lastbn` (notes S9, resnetv2 'without the last bn, p=0.1: 92.75'): pre-activation nets end with
  BN-ReLU (`model.final_act` of the CIFAR nets, `model.norm` of timm's ResNetV2, a BatchNormAct2d);
  `on=false` replaces that BN, keeping the ReLU (where the model's family says, `Family.final_norm`).
  `on=true` is the model as built. Post-activation families have no such BN: a ConfigError.
"""
from __future__ import annotations

from torch import nn

from tricks.errors import ConfigError
from tricks.registry import Param, check_arguments, register_trick
from tricks.surgery import (ClassifierWrap, Family, ModelSurgery, classifier_family, classifier_layer,
                            classifier_widths, family, like, wrap_classifier)

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
        check_arguments("finalbn", position=position)
        self.position = position

    def settings(self) -> str:
        return f"position={self.position}"

    def check(self, model: nn.Module) -> Family | None:
        return classifier_family(model, self.trick)

    def edit(self, model: nn.Module, fam: Family | None) -> None:
        norm = nn.BatchNorm2d if isinstance(classifier_layer(model), nn.Conv2d) else nn.BatchNorm1d
        n_in, n_out = classifier_widths(model)
        if self.position == "features":
            bn = like(model, norm(n_in))
            wrap_classifier(self.edits, model, lambda fc: ClassifierWrap(bn, fc))
        else:
            bn = like(model, norm(n_out))
            wrap_classifier(self.edits, model, lambda fc: ClassifierWrap(fc, bn))


@register_trick(
    "lastbn",
    params=(Param("on", bool, True, "keep the BN of the final BN-ReLU of a pre-activation net"),),
    description="pre-activation nets only: on=false removes the BN of the final BN-ReLU (keeps the ReLU)",
    paper="the notes, S9; He et al. 2016, Identity Mappings in Deep Residual Networks, arXiv:1603.05027",
    touches=("model",),
)
class LastBN(ModelSurgery):
    """on=false: the final BN of a pre-activation net replaced, its ReLU kept (CIFAR nets: `model.final_act` =
    nn.Sequential(nn.Identity(), ReLU) instead of (BN, ReLU); timm's ResNetV2: `model.norm` = its ReLU)."""

    order = 4  # model surgery: after the final BN (3), before the last gamma (5)
    trick = "lastbn"
    rebuild_opt = True  # the BN's parameters leave the model

    def __init__(self, on: bool = True):
        super().__init__()
        self.on = on

    def settings(self) -> str:
        return f"on={str(self.on).lower()}"

    def check(self, model: nn.Module) -> Family:
        fam = family(model, self.trick)
        if fam.final_norm is None:
            raise ConfigError(f"lastbn applies to pre-activation models, not {type(model).__name__}, a {fam.label}; "
                              "use preact_resnet<d>, wrn<d>_<k> or timm:resnetv2_<d>")
        return fam

    def edit(self, model: nn.Module, fam: Family) -> None:
        if not self.on:
            path, replacement = fam.final_norm(model)
            parent, _, name = path.rpartition(".")
            self.edits.set(model.get_submodule(parent) if parent else model, name, replacement)
