"""Dropout inside the residual branch (`resdrop`) and at the last fc (`fcdrop`).

Dropout (Srivastava et al. 2014, JMLR 15) zeroes each unit with probability p and scales the rest by
1/(1-p) during training; torch's nn.Dropout does exactly that and is used as is. The notes (S6, S7,
S9) try it in two places:

- `resdrop`: right before the last conv of every residual branch, the place Wide ResNets put it
  (Zagoruyko & Komodakis 2016, arXiv:1605.07146). Pre-activation blocks (v2, WRN) have a `drop` slot
  there (BN-ReLU-[drop]-conv2; 'the middle of the branch' in the notes' words), which gets the
  nn.Dropout. In v1 and timm blocks the activation that feeds the last conv becomes
  nn.Sequential(activation, nn.Dropout(p)) (v1 and timm BasicBlock `act1`, timm Bottleneck `act2`;
  timm's anti-aliasing `aa`, an identity in plain ResNets, comes after it). Dropping after the ReLU
  is dropping the last conv's input, and no parameter is renamed: `model.pth` keeps its keys.
- `fcdrop`: on the pooled features before the classifier, nn.Sequential(nn.Dropout(p), fc)
  ('before'), or on the logits after it, nn.Sequential(fc, nn.Dropout(p)) ('after'). The classifier's
  keys become `fc.1.*` / `fc.0.*`.
"""
from __future__ import annotations

from torch import nn

from tricks.errors import ConfigError
from tricks.registry import Param, register_trick
from tricks.surgery import (ClassifierWrap, ModelSurgery, act_before_last_conv, blocks, classifier_family, family,
                            like, wrap_classifier)

POSITIONS = ("before_last_conv",)
WHERES = ("before", "after")


@register_trick(
    "resdrop",
    params=(Param("p", float, 0.1, "drop probability (S9 best: 0.1)", low=0.0, high=1.0, high_open=True),
            Param("position", str, "before_last_conv", "where in the branch (v2/WRN: the middle)",
                  choices=POSITIONS)),
    description="nn.Dropout(p) right before the last conv of every residual branch",
    paper="the notes, S6/S7/S9; as in Zagoruyko & Komodakis 2016, Wide Residual Networks, arXiv:1605.07146",
    touches=("model",),
)
class ResidualDropout(ModelSurgery):
    """Insert nn.Dropout(p) before the last conv of every residual branch."""

    order = 2  # model surgery: after the activation swap (1), so the dropout follows the new activation
    trick = "resdrop"

    def __init__(self, p: float = 0.1, position: str = "before_last_conv"):
        super().__init__()
        if position not in POSITIONS:
            raise ConfigError(f"resdrop position '{position}' is not one of {', '.join(POSITIONS)}")
        self.drop_p, self.position = p, position

    def check(self, model: nn.Module) -> str:
        kind = family(model, self.trick)
        if kind == "preact" and any(isinstance(b.drop, nn.Dropout) for b in blocks(model)):
            raise ConfigError("resdrop and the model's drop_rate both put dropout in the residual branch; "
                              "set one of them")
        return kind

    def edit(self, model: nn.Module, kind: str) -> None:
        for block in blocks(model):
            drop = like(model, nn.Dropout(self.drop_p))
            if kind == "preact":
                self.edits.set(block, "drop", drop)
            else:
                name = act_before_last_conv(block)
                self.edits.set(block, name, nn.Sequential(getattr(block, name), drop))


@register_trick(
    "fcdrop",
    params=(Param("p", float, 0.1, "drop probability (S9 best: 0.1 before)", low=0.0, high=1.0, high_open=True),
            Param("where", str, "before", "before the fc (pooled features) or after it (logits)",
                  choices=WHERES)),
    description="nn.Dropout(p) before the last fc (on the pooled features) or after it (on the logits)",
    paper="the notes, S7/S9; Srivastava et al. 2014, Dropout, JMLR 15",
    touches=("model",),
)
class FCDropout(ModelSurgery):
    """Wrap the classifier as nn.Sequential(Dropout, fc) or nn.Sequential(fc, Dropout)."""

    order = 2  # model surgery: before the final BN (3), which then wraps the wrapped classifier
    trick = "fcdrop"

    def __init__(self, p: float = 0.1, where: str = "before"):
        super().__init__()
        if where not in WHERES:
            raise ConfigError(f"fcdrop where='{where}' is not one of {', '.join(WHERES)}")
        self.drop_p, self.where = p, where

    def check(self, model: nn.Module) -> str:
        kind = classifier_family(model, self.trick)
        if self.where == "before" and hasattr(model, "get_classifier") and getattr(model, "drop_rate", 0):
            raise ConfigError(f"fcdrop:where=before and the model's drop_rate={model.drop_rate} both drop "
                              "the features before the fc; set one of them")
        return kind

    def edit(self, model: nn.Module, kind: str) -> None:
        drop = like(model, nn.Dropout(self.drop_p))
        wrap_classifier(self.edits, model,
                        lambda fc: ClassifierWrap(drop, fc) if self.where == "before" else ClassifierWrap(fc, drop))
