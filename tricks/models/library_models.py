"""fastai's and torchvision's models as 'fastai:<name>' and 'torchvision:<name>', never pretrained (no downloads).

- 'fastai:<name>': the XResNet family of `fastai.vision.models.xresnet` ('xresnet18' ... 'xresnet152', the
  '_deep' / '_deeper' variants, 'xresnext*', 'xse_resnet*', 'xse_resnext*'), built as
  `xresnet18(n_out=num_classes, c_in=in_chans)`; its classifier is its last module, an nn.Linear.
- 'torchvision:<name>': `torchvision.models.get_model(name, weights=None, num_classes=num_classes)` (the
  ResNets, Wide ResNets, ...); in_chans other than 3 replaces the ResNets' first conv `conv1` by one with
  the same shape and init on `in_chans` channels.

`zero_init_last` (the recipes' presets set it) means the same for both as for the project's models: the last
BN gamma of every residual branch starts at 0 (True) or 1 (False). torchvision's ResNets take it as their own
`zero_init_residual`; fastai's XResNets are built with it (fastai's `NormType.BatchZero` on the last BN of
every ResBlock: right after construction, the only BNs whose gamma is all zeros), so False sets those to 1.

The notes' S3 stems (`stem=conv3x3s2`, `conv3x3s2-nomaxpool`, `conv3x3s1-nomaxpool`, see `timm_models`) apply
where the stem starts with a stride-2 conv and a max-pool: torchvision's ResNets (`conv1`, `maxpool`, as timm's
ResNet) and fastai's XResNets (the first of their three stem ConvLayers, `0.0`, and the max-pool `3`); any
other model refuses them in one line. The shortcut and drop_rate options are not offered for these
(create_model refuses them in one line).
"""
from __future__ import annotations

from torch import nn

from tricks.errors import ConfigError
from tricks.models.timm_models import replace_stem
from tricks.registry import unknown_name_message

FASTAI_PREFIX, TORCHVISION_PREFIX = "fastai:", "torchvision:"
LIBRARY_OPTIONS = ("zero_init_last", "stem")  # of create_model's options (shortcut, zero_init_last, stem, drop_rate)


def fastai_model_names() -> list[str]:
    from fastai.vision.models import xresnet

    return sorted(n for n in dir(xresnet) if n.startswith(("xresnet", "xresnext", "xse_")) and
                  callable(getattr(xresnet, n)))


def create_fastai_model(name: str, *, num_classes: int, in_chans: int = 3, zero_init_last: bool = False,
                        stem: str = "default") -> nn.Module:
    """fastai's `xresnet*` / `xse_resnext*` `name`, untrained, with `num_classes` outputs and `in_chans` inputs;
    the last BN gamma of every branch 0 (`zero_init_last`, as fastai builds it) or 1; an S3 `stem`."""
    from fastai.vision.models import xresnet

    if name not in fastai_model_names():
        raise ConfigError(unknown_name_message("fastai model", name, fastai_model_names()))
    model = getattr(xresnet, name)(pretrained=False, n_out=num_classes, c_in=in_chans)
    if not zero_init_last:  # fastai's BatchZero BNs: every other BN starts at gamma 1
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and not m.weight.any()):
            nn.init.ones_(bn.weight)
    if stem != "default":
        replace_stem(model, stem, label=FASTAI_PREFIX + name, first_conv="0.0", maxpools=("3",))
    return model


def create_torchvision_model(name: str, *, num_classes: int, in_chans: int = 3, zero_init_last: bool = False,
                             stem: str = "default") -> nn.Module:
    """torchvision's classification model `name`, untrained (weights=None), with `num_classes` outputs;
    `zero_init_last` is torchvision's `zero_init_residual` (ResNets and Wide ResNets); an S3 `stem` (ResNets)."""
    import torchvision

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
