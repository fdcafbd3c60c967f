"""Any timm model as 'timm:<name>' (always pretrained=False: no downloads), plus the notes' S3 stem options.

Stem options for ImageNet-style CNNs, whose stem starts with a stride-2 conv (timm has no such switch):
'default' leaves the model untouched; 'conv3x3s2' replaces the first conv by a 3x3 stride-2 conv and
keeps the max-pool; 'conv3x3s2-nomaxpool' does the same and removes the max-pool; 'conv3x3s1-nomaxpool'
uses stride 1 and removes the max-pool. The first conv is found through `pretrained_cfg['first_conv']`
(for deep stems such as resnet26d that is 'conv1.0', the first conv of the stem, which is replaced the
same way); the max-pool is `model.maxpool` (timm ResNets). The new conv keeps the old one's channels and
gets kaiming_normal_(fan_out, relu) like timm's ResNet init.

`zero_init_last` is passed to timm for models that take it (ResNets); note timm's own default there is
True, ours is False, so the value asked for is always passed explicitly.
"""
from __future__ import annotations

import timm
from torch import nn

from tricks.errors import ConfigError
from tricks.registry import unknown_name_message

TIMM_PREFIX = "timm:"
TIMM_OPTIONS = ("stem", "zero_init_last", "drop_rate")
STEMS = ("default", "conv3x3s2", "conv3x3s2-nomaxpool", "conv3x3s1-nomaxpool")
_STEM_SPEC = {"conv3x3s2": (2, True), "conv3x3s2-nomaxpool": (2, False), "conv3x3s1-nomaxpool": (1, False)}
_KWARG_DEFAULTS = {"zero_init_last": False, "drop_rate": 0.0}


def create_timm_model(name: str, *, num_classes: int, in_chans: int = 3, stem: str = "default",
                      zero_init_last: bool = False, drop_rate: float = 0.0) -> nn.Module:
    """timm.create_model(name, pretrained=False, ...) with the stem option applied."""
    if not timm.is_model(name):
        raise ConfigError(unknown_name_message("timm model", name, timm.list_models()))
    if stem not in STEMS:
        raise ConfigError(f"unknown stem '{stem}'; allowed: {', '.join(STEMS)}")
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
    return model


def replace_stem(model: nn.Module, stem: str, label: str = "model") -> None:
    """Apply an S3 stem option in place; ConfigError when the model's stem is not one this handles."""
    stride, keep_maxpool = _STEM_SPEC[stem]
    path = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    old = None
    if isinstance(path, str):
        try:
            old = model.get_submodule(path)
        except AttributeError:
            old = None
    if not (isinstance(old, nn.Conv2d) and old.stride == (2, 2) and old.groups == 1):
        found = f"its first conv {path!r} is {old!r}" if old is not None else f"no first conv found at {path!r}"
        raise ConfigError(f"stem='{stem}' cannot handle model '{label}': {found}; the stem options need a "
                          f"stride-2 nn.Conv2d stem (ImageNet-style CNNs); use stem='default'")
    if not keep_maxpool and not isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        raise ConfigError(f"stem='{stem}' cannot remove the max-pool of model '{label}': it has no "
                          f"`maxpool` nn.MaxPool2d (timm ResNets do); use stem 'conv3x3s2' or 'default'")
    new = nn.Conv2d(old.in_channels, old.out_channels, 3, stride, padding=1, bias=old.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path), attr, new)
    if not keep_maxpool:
        model.maxpool = nn.Identity()
