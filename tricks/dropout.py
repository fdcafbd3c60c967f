"""Dropout inside the residual branch (`resdrop`) and at the last fc (`fcdrop`).

Dropout (Srivastava et al. 2014, JMLR 15) zeroes each unit with probability p and scales the rest by
1/(1-p) during training; torch's nn.Dropout does exactly that and is used as is. The notes (S6, S7,
S9) try it in two places:

- `resdrop`: right before the last conv of every residual branch, the place Wide ResNets put it
  (Zagoruyko & Komodakis 2016, arXiv:1605.07146): on the input of the conv that `tricks.surgery.last_conv`
  names for the model's family (`conv2`, `conv3`, fastai's last `ConvLayer` conv; see the table in
  `tricks.surgery`). That conv gets an nn.Dropout child `resdrop`, and a forward pre-hook
  (`drop_conv_input`) passes the conv's input through it. In every family that input is the output of the
  branch's activation (pre-activation blocks: BN-ReLU-[drop]-conv2, 'the middle of the branch' in the
  notes' words), so this is dropout after that ReLU, as v1 blocks with their own activation module
  would have it; torchvision's blocks, which call one `relu` module before the last conv and again after
  the addition, get it in the same place. No parameter is added or renamed: `model.pth` keeps its keys.
- `fcdrop`: on the pooled features before the classifier, nn.Sequential(nn.Dropout(p), fc)
  ('before'), or on the logits after it, nn.Sequential(fc, nn.Dropout(p)) ('after'). The classifier's
  keys become `fc.1.*` / `fc.0.*`.
"""
from __future__ import annotations

from torch import nn

from tricks.errors import ConfigError
from tricks.registry import Param, check_arguments, register_trick
from tricks.surgery import (ClassifierWrap, Family, ModelSurgery, classifier_family, family, last_conv, like,
                            wrap_classifier)

POSITIONS = ("before_last_conv",)
WHERES = ("before", "after")


def drop_conv_input(conv: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of a branch's last conv: its input through the conv's `resdrop` child (an nn.Dropout).
    Module-level so that a pickled model (fastai's export) keeps it."""
    return (conv.resdrop(args[0]), *args[1:])


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

    order = 2  # model surgery: after the activation swap (1), with the fc dropout
    trick = "resdrop"

    def __init__(self, p: float = 0.1, position: str = "before_last_conv"):
        super().__init__()
        check_arguments("resdrop", p=p, position=position)
        self.drop_p, self.position = p, position

    def settings(self) -> str:
        return f"p={self.drop_p:g},position={self.position}"

    def check(self, model: nn.Module) -> Family:
        fam = family(model, self.trick)
        if any(isinstance(m, nn.Dropout) and m.p > 0 for b in fam.blocks(model) for m in b.modules()):
            raise ConfigError(f"resdrop and model {type(model).__name__}'s own dropout in the residual branches "
                              "(its drop_rate, or a resdrop already there) both drop there; set one of them")
        return fam

    def edit(self, model: nn.Module, fam: Family) -> None:
        for block in fam.blocks(model):
            conv = last_conv(block)
            self.edits.set(conv, "resdrop", like(model, nn.Dropout(self.drop_p)))
            self.edits.pre_hook(conv, drop_conv_input)


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
        check_arguments("fcdrop", p=p, where=where)
        self.drop_p, self.where = p, where

    def settings(self) -> str:
        return f"p={self.drop_p:g},where={self.where}"

    def check(self, model: nn.Module) -> Family | None:
        fam = classifier_family(model, self.trick)
        if self.where == "before" and hasattr(model, "get_classifier") and getattr(model, "drop_rate", 0):
            raise ConfigError(f"fcdrop:where=before and the model's drop_rate={model.drop_rate} both drop "
                              "the features before the fc; set one of them")
        return fam

    def edit(self, model: nn.Module, fam: Family | None) -> None:
        drop = like(model, nn.Dropout(self.drop_p))
        wrap_classifier(self.edits, model,
                        lambda fc: ClassifierWrap(drop, fc) if self.where == "before" else ClassifierWrap(fc, drop))
