"""Any timm model as 'timm:<name>' (always pretrained=False: no downloads), with the notes' S3 stem options and S4
shortcut option (`tricks.models.options`: surgery on the model timm.create_model builds, as timm has no such
switches); and the family of timm's ImageNet ResNets (`timm.models.resnet.ResNet`: 'timm:resnet18', 'resnet26d',
...) for the tricks that change a network: blocks `BasicBlock` / `Bottleneck`, the last BN and conv of a branch
`bn2`, `conv2` / `bn3`, `conv3`, no final BN, the classifier `pretrained_cfg['classifier']` (`fc`), the pooled
features `global_pool(forward_features(x))`. timm's pre-activation ResNetV2 is `timm_resnetv2`.

`zero_init_last` is passed to timm for models that take it (ResNets); note timm's own default there is
True, ours is False, so the value asked for is always passed explicitly.
"""
from __future__ import annotations

import functools

import timm
from timm.models import resnet as timm_resnet
from torch import nn

from tricks.errors import ConfigError
from tricks.models.family import Family, built_of, timm_classifier
from tricks.models.options import PROJECTIONS, STEMS, replace_shortcuts, replace_stem
from tricks.models.registry import ModelPattern, register_family, register_pattern
from tricks.registry import unknown_name_message

TIMM_PREFIX = "timm:"
TIMM_OPTIONS = ("stem", "shortcut", "zero_init_last", "drop_rate")
_KWARG_DEFAULTS = {"zero_init_last": False, "drop_rate": 0.0}


def create_timm_model(name: str, *, num_classes: int, in_chans: int = 3, stem: str = "default",
                      shortcut: str = "conv1x1", zero_init_last: bool = False, drop_rate: float = 0.0) -> nn.Module:
    """timm.create_model(name, pretrained=False, ...) with the stem and shortcut options applied."""
    if not timm.is_model(name):
        raise ConfigError(unknown_name_message("timm model", name, timm.list_models()))
    if stem not in STEMS:
        raise ConfigError(f"unknown stem '{stem}'; allowed: {', '.join(STEMS)}")
    if shortcut not in PROJECTIONS:  # option A ('pad') is the CIFAR nets' only
        raise ConfigError(f"unknown shortcut '{shortcut}' for a timm model; allowed: {', '.join(PROJECTIONS)}")
    kwargs = {"zero_init_last": zero_init_last, "drop_rate": drop_rate}
    while True:
        try:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
            break
        except TypeError as e:  # the model's constructor does not take one of the optional kwargs
            bad = next((k for k in kwargs if "unexpected keyword" in str(e) and f"'{k}'" in str(e)), None)
            if bad is None:
                raise
            if kwargs[bad] != _KWARG_DEFAULTS[bad]:
                raise ConfigError(f"option {bad}={kwargs[bad]!r} does not apply to model '{TIMM_PREFIX}{name}' "
                                  f"(its timm constructor has no '{bad}' argument)") from None
            del kwargs[bad]
    if stem != "default":
        replace_stem(model, stem, label=TIMM_PREFIX + name)
    if shortcut != "conv1x1":
        replace_shortcuts(model, shortcut, label=TIMM_PREFIX + name)
    return model


def _timm_factory(name: str):
    return functools.partial(create_timm_model, name[len(TIMM_PREFIX):]) if name.startswith(TIMM_PREFIX) else None


register_pattern(ModelPattern("timm:<name>", "any timm model, pretrained=False, with the dataset's classes and "
                              "channels", _timm_factory, TIMM_OPTIONS))

_BLOCKS = (timm_resnet.BasicBlock, timm_resnet.Bottleneck)
FAMILY = Family("timm", "timm ResNet (timm:resnet18, ...)", built_of(timm_resnet.ResNet, _BLOCKS), _BLOCKS,
                lambda b: ("bn3", "conv3") if isinstance(b, timm_resnet.Bottleneck) else ("bn2", "conv2"),
                classifier=timm_classifier, pooled=lambda m, x: m.global_pool(m.forward_features(x)))
register_family(FAMILY)
