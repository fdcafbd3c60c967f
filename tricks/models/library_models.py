"""fastai's and torchvision's models as 'fastai:<name>' and 'torchvision:<name>', never pretrained (no downloads).

- 'fastai:<name>': the XResNet family of `fastai.vision.models.xresnet` ('xresnet18' ... 'xresnet152', the
  '_deep' / '_deeper' variants, 'xresnext*', 'xse_resnet*', 'xse_resnext*'), built as
  `xresnet18(n_out=num_classes, c_in=in_chans)`; its classifier is its last module, an nn.Linear.
- 'torchvision:<name>': `torchvision.models.get_model(name, weights=None, num_classes=num_classes)` (the
  ResNets, Wide ResNets, ...); in_chans other than 3 replaces the ResNets' first conv `conv1` by one with
  the same shape and init on `in_chans` channels.
The project's stem / shortcut options are not offered for these (create_model refuses them).
"""
from __future__ import annotations

from torch import nn

from tricks.errors import ConfigError
from tricks.registry import unknown_name_message

FASTAI_PREFIX, TORCHVISION_PREFIX = "fastai:", "torchvision:"
LIBRARY_OPTIONS = ()  # none of create_model's options (shortcut, zero_init_last, stem, drop_rate)


def fastai_model_names() -> list[str]:
    from fastai.vision.models import xresnet

    return sorted(n for n in dir(xresnet) if n.startswith(("xresnet", "xresnext", "xse_")) and
                  callable(getattr(xresnet, n)))


def create_fastai_model(name: str, *, num_classes: int, in_chans: int = 3) -> nn.Module:
    """fastai's `xresnet*` / `xse_resnext*` `name`, untrained, with `num_classes` outputs and `in_chans` inputs."""
    from fastai.vision.models import xresnet

    if name not in fastai_model_names():
        raise ConfigError(unknown_name_message("fastai model", name, fastai_model_names()))
    return getattr(xresnet, name)(pretrained=False, n_out=num_classes, c_in=in_chans)


def create_torchvision_model(name: str, *, num_classes: int, in_chans: int = 3) -> nn.Module:
    """torchvision's classification model `name`, untrained (weights=None), with `num_classes` outputs."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise ConfigError(unknown_name_message("torchvision model", name, names))
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_chans != 3:
        old = getattr(model, "conv1", None)
        if not isinstance(old, nn.Conv2d):
            raise ConfigError(f"in_chans={in_chans} does not apply to model '{TORCHVISION_PREFIX}{name}': only "
                              "torchvision models with a first conv `conv1` (the ResNets) take other than 3 channels")
        model.conv1 = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
