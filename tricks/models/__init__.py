"""Models by name: the project's CIFAR ResNets v1/v2 and Wide ResNets, any timm model as 'timm:<name>', fastai's
XResNets as 'fastai:<name>' and torchvision's models as 'torchvision:<name>'.

A model family is one file: its factory (registered in `MODELS` by name, or as a name pattern in `PATTERNS`) and its
surgery description (`tricks.models.family.Family`: blocks, branch BNs and convs, final BN, classifier, pooled
features, registered in `FAMILIES`) together. The registry and `create_model` are in `tricks.models.registry`, the
stem and shortcut choices in `tricks.models.options`; importing a family's file below registers it. Adding a family
is one new file and one line here.
"""
from __future__ import annotations

from tricks.models.options import SHORTCUTS, STEMS
from tricks.models.registry import FAMILIES, MODELS, PATTERNS, create_model, model_names, set_bn_momentum

# The families, one line each, in the order `tricks.surgery.find_family` tries them.
from tricks.models import cifar_resnet  # noqa: F401  resnet<d>, preact_resnet<d>, wrn<d>_<k>
from tricks.models import timm_resnet  # noqa: F401  timm:<name>; timm's ResNet
from tricks.models import timm_resnetv2  # noqa: F401  timm's pre-activation ResNetV2
from tricks.models import fastai_xresnet  # noqa: F401  fastai:<name>
from tricks.models import torchvision_resnet  # noqa: F401  torchvision:<name>; torchvision's ResNet

__all__ = ["FAMILIES", "MODELS", "PATTERNS", "SHORTCUTS", "STEMS", "create_model", "model_names", "set_bn_momentum"]
