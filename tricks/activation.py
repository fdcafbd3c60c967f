"""Swap every ReLU of the network: leaky ReLU (`leakyrelu`) or swish (`swish`).

- Leaky ReLU (Maas et al. 2013, "Rectifier Nonlinearities Improve Neural Network Acoustic Models"):
  f(x) = x for x >= 0, slope * x otherwise; torch's nn.LeakyReLU. `msra` is the negative slope a
  given to the MSRA/Kaiming init (He et al. 2015, arXiv:1502.01852): when a > 0 every conv is
  re-initialised with torch's kaiming_normal_(w, a, mode='fan_out', nonlinearity='leaky_relu'), i.e.
  w ~ N(0, std^2) with std = sqrt(2 / (1 + a^2)) / sqrt(fan_out), fan_out = out_channels * kh * kw.
  a = 0 is the init both model families already use (kaiming_normal_, fan_out, relu: gain sqrt(2)),
  so the weights are left as they are. BatchNorm is not touched, so a zero-init last gamma stays 0.
  The notes (S9) try slope 0.00/0.01 with msra 0.00/0.01: 'leaky-relu does not work'.
- Swish / SiLU (Ramachandran et al. 2017, "Searching for Activation Functions", arXiv:1710.05941):
  f(x) = x * sigmoid(x); torch's nn.SiLU. The notes (S9): 92.82 against ReLU's 93.23.

Every nn.ReLU module is replaced, wherever it is, keeping its `inplace` (CIFAR nets: stem, block
act1/act2/act_out, final_act; timm ResNets: stem act1 and block act1/act2/act3; timm ResNetV2: the `act` of
every BatchNormAct2d; fastai's XResNet: every ConvLayer's and ResBlock's `act`; torchvision's ResNets: the
one `relu` of the stem and of each block). Any model with an nn.ReLU module, of a known family or not. Done
once, before the first fit.
"""
from __future__ import annotations

from torch import nn

from tricks.errors import ConfigError
from tricks.registry import Param, check_arguments, register_trick
from tricks.surgery import Family, ModelSurgery, find_family


def relus(model: nn.Module) -> list[tuple[nn.Module, str, nn.ReLU]]:
    """(parent, attribute name, module) of every nn.ReLU module in `model`."""
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if isinstance(child, nn.ReLU)]


class ActivationSwap(ModelSurgery):
    """Replace every nn.ReLU module with `self.make(relu)`."""

    order = 1  # model surgery first: later tricks (e.g. resdrop) wrap the new activations

    def check(self, model: nn.Module) -> Family | None:
        if not relus(model):
            raise ConfigError(f"trick '{self.trick}' found no nn.ReLU in {type(model).__name__} to replace; "
                              "use one activation trick per recipe")
        return find_family(model)

    def make(self, relu: nn.ReLU) -> nn.Module:
        raise NotImplementedError

    def edit(self, model: nn.Module, fam: Family | None) -> None:
        for parent, name, relu in relus(model):
            self.edits.set(parent, name, self.make(relu))


@register_trick(
    "leakyrelu",
    params=(Param("slope", float, 0.01, "negative slope of the leaky ReLU", low=0.0),
            Param("msra", float, 0.0, "negative slope a given to the Kaiming init of every conv (0: keep the init)",
                  low=0.0)),
    description="every ReLU becomes LeakyReLU(slope); msra>0 re-initialises the convs with Kaiming for that slope",
    paper="Maas et al. 2013, Rectifier Nonlinearities (leaky ReLU); He et al. 2015, Delving Deep into "
          "Rectifiers, arXiv:1502.01852 (msra init)",
    touches=("model", "weights"),
)
class LeakyReLUSwap(ActivationSwap):
    trick = "leakyrelu"

    def __init__(self, slope: float = 0.01, msra: float = 0.0):
        super().__init__()
        check_arguments("leakyrelu", slope=slope, msra=msra)
        self.slope, self.msra = slope, msra

    def settings(self) -> str:
        return f"slope={self.slope:g},msra={self.msra:g}"

    def make(self, relu: nn.ReLU) -> nn.Module:
        return nn.LeakyReLU(self.slope, inplace=relu.inplace)

    def edit(self, model: nn.Module, fam: Family | None) -> None:
        super().edit(model, fam)
        if self.msra > 0:
            for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
                self.edits.keep(conv.weight)
                nn.init.kaiming_normal_(conv.weight, a=self.msra, mode="fan_out", nonlinearity="leaky_relu")


@register_trick(
    "swish",
    description="every ReLU becomes swish / SiLU, x * sigmoid(x)",
    paper="Ramachandran et al. 2017, Searching for Activation Functions, arXiv:1710.05941",
    touches=("model",),
    conflicts={"leakyrelu": "both replace the activations; keep one"},
)
class SwishSwap(ActivationSwap):
    trick = "swish"

    def make(self, relu: nn.ReLU) -> nn.Module:
        return nn.SiLU(inplace=relu.inplace)
