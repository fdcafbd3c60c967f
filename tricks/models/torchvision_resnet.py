"""torchvision's models as 'torchvision:<name>', never pretrained (no downloads), and the family of its ResNets for
the tricks that change a network.

'torchvision:<name>': `torchvision.models.get_model(name, weights=None, num_classes=num_classes)` (the ResNets, Wide
ResNets, ...); in_chans other than 3 replaces the ResNets' first conv `conv1` by one with the same shape and init on
`in_chans` channels. `zero_init_last` is torchvision's `zero_init_residual` (the last BN gamma of every residual
branch starts at 0). The notes' S3 stems (`tricks.models.options`) replace `conv1` and remove `maxpool`, as in timm's
ResNet; any other model refuses them in one line. The shortcut and drop_rate options are not offered (create_model
refuses them in one line).

The family (torchvision's `ResNet`: 'torchvision:resnet18', ..., 'wide_resnet50_2'): blocks `BasicBlock` /
`Bottleneck`; the last BN and conv of a branch `bn2`, `conv2` / `bn3`, `conv3`; no final BN; the classifier `fc`;
the pooled features `flatten(avgpool(layer4(...)))`, as its forward.
"""
from __future__ import annotations

import functools

import torch
import torchvision
import torchvision.models.resnet as tv_resnet
from torch import nn

from tricks.errors import ConfigError
from tricks.models.family import Family, built_of
from tricks.models.options import replace_stem
from tricks.models.registry import ModelPattern, register_family, register_pattern
from tricks.registry import unknown_name_message

TORCHVISION_PREFIX = "torchvision:"
TORCHVISION_OPTIONS = ("zero_init_last", "stem")  # of create_model's (shortcut, zero_init_last, stem, drop_rate)


def create_torchvision_model(name: str, *, num_classes: int, in_chans: int = 3, zero_init_last: bool = False,
                             stem: str = "default") -> nn.Module:
    """torchvision's classification model `name`, untrained (weights=None), with `num_classes` outputs;
    `zero_init_last` is torchvision's `zero_init_residual` (ResNets and Wide ResNets); an S3 `stem` (ResNets)."""
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise ConfigError(unknown_name_message("torchvision model", name, names))
    kwargs = {"zero_init_residual": True} if zero_init_last else {}
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as e:
        if "zero_init_residual" not in str(e):
            raise
        raise ConfigError(f"option zero_init_last=True does not apply to model '{TORCHVISION_PREFIX}{name}' (its "
                          "torchvision constructor has no 'zero_init_residual'; the ResNets' has)") from None
    if in_chans != 3:
        old = getattr(model, "conv1", None)
        if not isinstance(old, nn.Conv2d):
            raise ConfigError(f"in_chans={in_chans} does not apply to model '{TORCHVISION_PREFIX}{name}': only "
                              "torchvision models with a first conv `conv1` (the ResNets) take other than 3 channels")
        model.conv1 = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if stem != "default":
        replace_stem(model, stem, label=TORCHVISION_PREFIX + name, first_conv="conv1", maxpools=("maxpool",))
    return model


def _torchvision_factory(name: str):
    if not name.startswith(TORCHVISION_PREFIX):
        return None
    return functools.partial(create_torchvision_model, name[len(TORCHVISION_PREFIX):])


register_pattern(ModelPattern("torchvision:<name>", "torchvision's models (resnet18, wide_resnet50_2, ...), "
                              "weights=None", _torchvision_factory, TORCHVISION_OPTIONS))


def _pooled(model: tv_resnet.ResNet, x: torch.Tensor) -> torch.Tensor:
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
        x = getattr(model, name)(x)
    return torch.flatten(x, 1)


_BLOCKS = (tv_resnet.BasicBlock, tv_resnet.Bottleneck)
FAMILY = Family("torchvision", "torchvision ResNet (torchvision:resnet18, ..., torchvision:wide_resnet50_2)",
                built_of(tv_resnet.ResNet, _BLOCKS), _BLOCKS,
                lambda b: ("bn3", "conv3") if isinstance(b, tv_resnet.Bottleneck) else ("bn2", "conv2"),
                classifier=lambda m: "fc", pooled=_pooled)
register_family(FAMILY)
