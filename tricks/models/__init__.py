"""Models by name: CIFAR ResNets v1/v2 and Wide ResNets (`cifar_resnet`), any timm model as 'timm:<name>',
fastai's XResNets as 'fastai:<name>' and torchvision's models as 'torchvision:<name>' (`library_models`).

`create_model(name, num_classes=...)` resolves, in order: 'timm:<name>', 'fastai:<name>', 'torchvision:<name>';
a registered name in `MODELS`;
the pattern 'wrn<depth>_<width>' (depth 6n+4). An option that does not apply to the chosen model raises
ConfigError when it differs from its default, so an ablation never silently ignores a setting.
"""
from __future__ import annotations

import functools
import numbers

from torch import nn

from tricks.errors import ConfigError
from tricks.registry import Registry

# Defined before the submodules are imported: they register their models here with `MODELS.add`.
MODELS = Registry("model")

# Importing cifar_resnet registers resnet<d>, preact_resnet<d> and wrn28_10.
from tricks.models.cifar_resnet import SHORTCUTS, WRN_OPTIONS, parse_wrn, wide_resnet  # noqa: E402
from tricks.models.timm_models import STEMS, TIMM_OPTIONS, TIMM_PREFIX, create_timm_model  # noqa: E402
from tricks.models.library_models import (FASTAI_PREFIX, LIBRARY_OPTIONS, TORCHVISION_PREFIX,  # noqa: E402
                                          create_fastai_model, create_torchvision_model)

PATTERNS = {
    "wrn<depth>_<width>": "Wide ResNet of any depth 6n+4 and width k, e.g. wrn16_4",
    "timm:<name>": "any timm model, pretrained=False, with the dataset's classes and channels",
    "fastai:<name>": "fastai's XResNets (xresnet18 ... xresnet152, _deep, xse_resnext), untrained",
    "torchvision:<name>": "torchvision's models (resnet18, wide_resnet50_2, ...), weights=None",
}
_DEFAULTS = {"shortcut": "conv1x1", "zero_init_last": False, "stem": "default", "drop_rate": 0.0}

__all__ = ["MODELS", "create_model", "model_names", "set_bn_momentum"]


def model_names() -> list[str]:
    """Registered names, then the patterns 'wrn<depth>_<width>', 'timm:<name>', 'fastai:<name>', 'torchvision:<name>'."""
    return MODELS.names() + list(PATTERNS)


def set_bn_momentum(model: nn.Module, momentum: float) -> int:
    """Set the momentum of every BatchNorm in `model`; returns how many were set."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = momentum
    return len(bns)


def _check_values(num_classes, in_chans, shortcut, bn_momentum, zero_init_last, stem, drop_rate) -> None:
    def is_int(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    def is_real(v):
        return isinstance(v, numbers.Real) and not isinstance(v, bool)

    if not is_int(num_classes) or num_classes < 1:
        raise ConfigError(f"num_classes must be an integer >= 1; got {num_classes!r}")
    if not is_int(in_chans) or in_chans < 1:
        raise ConfigError(f"in_chans must be an integer >= 1; got {in_chans!r}")
    if shortcut not in SHORTCUTS:
        raise ConfigError(f"unknown shortcut {shortcut!r}; allowed: {', '.join(SHORTCUTS)}")
    if bn_momentum is not None and not (is_real(bn_momentum) and 0 <= bn_momentum <= 1):
        raise ConfigError(f"bn_momentum must be None (torch default 0.1) or a number in [0, 1]; got {bn_momentum!r}")
    if not isinstance(zero_init_last, bool):
        raise ConfigError(f"zero_init_last must be True or False; got {zero_init_last!r}")
    if stem not in STEMS:
        raise ConfigError(f"unknown stem {stem!r}; allowed: {', '.join(STEMS)}")
    if not (is_real(drop_rate) and 0 <= drop_rate < 1):
        raise ConfigError(f"drop_rate must be a number in [0, 1); got {drop_rate!r}")


def create_model(name: str, *, num_classes: int, in_chans: int = 3, shortcut: str = "conv1x1",
                 bn_momentum: float | None = None, zero_init_last: bool = False,
                 stem: str = "default", drop_rate: float = 0.0) -> nn.Module:
    """Build model `name` (see `model_names()`); ConfigError for unknown names and bad or inapplicable options."""
    _check_values(num_classes, in_chans, shortcut, bn_momentum, zero_init_last, stem, drop_rate)
    options = {"shortcut": shortcut, "zero_init_last": zero_init_last, "stem": stem, "drop_rate": drop_rate}
    if name.startswith(TIMM_PREFIX):
        factory, takes = functools.partial(create_timm_model, name[len(TIMM_PREFIX):]), TIMM_OPTIONS
    elif name.startswith(FASTAI_PREFIX):
        factory, takes = functools.partial(create_fastai_model, name[len(FASTAI_PREFIX):]), LIBRARY_OPTIONS
    elif name.startswith(TORCHVISION_PREFIX):
        factory, takes = functools.partial(create_torchvision_model, name[len(TORCHVISION_PREFIX):]), LIBRARY_OPTIONS
    elif name in MODELS:
        factory, takes = MODELS.get(name), MODELS.meta(name)["options"]
    elif (dw := parse_wrn(name)) is not None:
        factory, takes = functools.partial(wide_resnet, *dw), WRN_OPTIONS
    else:
        MODELS.get(name)  # raises ConfigError with the close matches
        raise AssertionError("unreachable")
    for key, value in options.items():
        if key not in takes and value != _DEFAULTS[key]:
            raise ConfigError(f"option {key}={value!r} does not apply to model '{name}'; "
                              f"it takes: {', '.join(takes) or 'none'} (and bn_momentum)")
    model = factory(num_classes=num_classes, in_chans=in_chans, **{k: options[k] for k in takes})
    if bn_momentum is not None and set_bn_momentum(model, bn_momentum) == 0:
        raise ConfigError(f"option bn_momentum={bn_momentum!r} does not apply to model '{name}': it has no BatchNorm")
    return model
