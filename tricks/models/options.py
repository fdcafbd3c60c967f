"""The stem and shortcut choices of every model family, listed once (the Recipe's `stem` and `shortcut` fields and
`create_model` take them from here), and the surgery that applies the notes' S3 stems and S4 shortcut to the
ImageNet-style CNNs built by timm, torchvision and fastai.

Both options are surgery on the model the library builds, because the libraries have no such switches; only the
replaced layers are written here. Where they are in timm's ResNets, v1 (`timm.models.resnet.ResNet`: 'resnet18',
'resnet26d', ...) and pre-activation v2 (`timm.models.resnetv2.ResNetV2`: 'resnetv2_18', ...):

| option | v1 ResNet | v2 ResNetV2 |
|---|---|---|
| stem: first conv (`pretrained_cfg['first_conv']`) | `conv1` (deep: `conv1.0`) | `stem.conv` (deep: `stem.conv1`) |
| stem: max-pool | `maxpool` | `stem.pool` (BiT 'fixed' stems: with its `stem.pad`) |
| shortcut: the 1x1 conv of every `downsample` | `downsample.0` (avg-down: `.1`) | `downsample.conv` |

torchvision's ResNets have theirs at `conv1` and `maxpool` (as timm's ResNet), fastai's XResNets at `0.0` (the first
of their three stem ConvLayers) and `3`; their family files pass those places.

Stem options, for any CNN whose stem starts with a stride-2 conv: 'default' leaves the model untouched;
'conv3x3s2' replaces the first conv by a 3x3 stride-2 conv and keeps the max-pool; 'conv3x3s2-nomaxpool'
does the same and removes the max-pool; 'conv3x3s1-nomaxpool' uses stride 1 and removes the max-pool
(S3's 32x32 stem). Removing the max-pool needs one of the places above; a deep stem has only its first
conv replaced.

Shortcut options: 'conv1x1' (default) leaves the model untouched; 'conv3x3' replaces the 1x1 conv of every
block's `downsample` (the projection shortcut where resolution or width changes) by a 3x3 conv with the same
channels and stride, padding 1; its norm (BN in v1, none in pre-act v2) is kept. Identity shortcuts stay. 'pad'
(option A, parameter-free) is built by the project's CIFAR ResNets only (`tricks.models.cifar_resnet`).

Every new conv keeps the old one's channels and bias and gets kaiming_normal_(fan_out, relu) like timm's
ResNet and ResNetV2 init.
"""
from __future__ import annotations

from torch import nn

from tricks.errors import ConfigError

STEMS = ("default", "conv3x3s2", "conv3x3s2-nomaxpool", "conv3x3s1-nomaxpool")
PROJECTIONS = ("conv1x1", "conv3x3")  # the shortcuts that are a conv (every model family with shortcuts)
SHORTCUTS = PROJECTIONS + ("pad",)  # 'pad': option A, the project's CIFAR ResNets only
_STEM_SPEC = {"conv3x3s2": (2, True), "conv3x3s2-nomaxpool": (2, False), "conv3x3s1-nomaxpool": (1, False)}
_MAXPOOLS = ("maxpool", "stem.pool")  # timm ResNet, timm ResNetV2 (see the table above)
_MAXPOOL_PADS = {"stem.pool": "stem.pad"}  # the explicit padding of BiT's 'fixed' stem belongs to its pool


def _conv_like(old: nn.Conv2d, kernel: int, stride: int) -> nn.Conv2d:
    """A `kernel`x`kernel` conv, padding kernel // 2, with `old`'s channels and bias, kaiming-initialised.

    Written by hand because timm has no option for the notes' stems or shortcuts: this is the replacement.
    """
    new = nn.Conv2d(old.in_channels, old.out_channels, kernel, stride, padding=kernel // 2, bias=old.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path), attr, module)


def _find(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def replace_stem(model: nn.Module, stem: str, label: str = "model", first_conv: str | None = None,
                 maxpools: tuple[str, ...] = _MAXPOOLS) -> None:
    """Apply an S3 stem option in place; ConfigError when the model's stem is not one this handles. The first
    conv is at `first_conv`, by default timm's `pretrained_cfg['first_conv']`; the max-pool at one of `maxpools`
    (also used for torchvision's ResNets, 'conv1' and 'maxpool', and fastai's XResNets, '0.0' and '3')."""
    stride, keep_maxpool = _STEM_SPEC[stem]
    path = first_conv or (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    old = _find(model, path) if isinstance(path, str) else None
    if not (isinstance(old, nn.Conv2d) and old.stride == (2, 2) and old.groups == 1):
        found = f"its first conv {path!r} is {old!r}" if old is not None else f"no first conv found at {path!r}"
        raise ConfigError(f"stem='{stem}' cannot handle model '{label}': {found}; the stem options need a "
                          f"stride-2 nn.Conv2d stem (ImageNet-style CNNs); use stem='default'")
    pool = next((p for p in maxpools if isinstance(_find(model, p), nn.MaxPool2d)), None)
    if not keep_maxpool and pool is None:
        raise ConfigError(f"stem='{stem}' cannot remove the max-pool of model '{label}': it has no "
                          f"nn.MaxPool2d at {' or '.join(map(repr, maxpools))} (timm ResNets and ResNetV2s do); "
                          f"use stem 'conv3x3s2' or 'default'")
    _set(model, path, _conv_like(old, 3, stride))
    if not keep_maxpool:
        _set(model, pool, nn.Identity())
        pad = _MAXPOOL_PADS.get(pool)
        if pad is not None and _find(model, pad) is not None:
            _set(model, pad, nn.Identity())


def replace_shortcuts(model: nn.Module, shortcut: str, label: str = "model") -> None:
    """Apply a shortcut option in place: every `downsample`'s 1x1 conv becomes a 3x3 conv (same stride,
    padding 1), its norm kept; ConfigError when the model has no such projection shortcuts."""
    k = 3 if shortcut == "conv3x3" else 1
    found = []
    for block_path, block in model.named_modules():
        downsample = getattr(block, "downsample", None)
        if not isinstance(downsample, nn.Module):
            continue
        for name, conv in downsample.named_children():
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1):
                if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.dilation != (1, 1):
                    raise ConfigError(f"option shortcut={shortcut!r} cannot handle model '{label}': its shortcut "
                                      f"conv '{block_path}.downsample.{name}' is {conv!r}; it needs a plain "
                                      f"nn.Conv2d (timm ResNets and BatchNorm ResNetV2s; not BiT's StdConv2d)")
                found.append((f"{block_path}.downsample.{name}" if block_path else f"downsample.{name}", conv))
    if not found:
        raise ConfigError(f"option shortcut={shortcut!r} does not apply to model '{label}': it has no "
                          f"projection shortcut with a 1x1 conv at `<block>.downsample` (timm ResNets and "
                          f"ResNetV2s do)")
    for path, conv in found:
        _set(model, path, _conv_like(conv, k, conv.stride[0]))
