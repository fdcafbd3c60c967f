"""fastai's XResNets as 'fastai:<name>', never pretrained (no downloads), and their family for the tricks that
change a network.

'fastai:<name>': the XResNet family of `fastai.vision.models.xresnet` ('xresnet18' ... 'xresnet152', the '_deep' /
'_deeper' variants, 'xresnext*', 'xse_resnet*', 'xse_resnext*'), built as `xresnet18(n_out=num_classes,
c_in=in_chans)`; its classifier is its last module, an nn.Linear. `zero_init_last` means the same as for the project's
models: the last BN gamma of every residual branch starts at 0 (True) or 1 (False). fastai's XResNets are built with
it (fastai's `NormType.BatchZero` on the last BN of every ResBlock: right after construction, the only BNs whose gamma
is all zeros), so False sets those to 1. The notes' S3 stems (`tricks.models.options`) replace the first of the three
stem ConvLayers, `0.0`, and remove the max-pool `3`. The shortcut and drop_rate options are not offered (create_model
refuses them in one line).

The family: blocks `ResBlock`; the last BN of a branch the BN of the last `ConvLayer` of `convpath` (fastai's
`BatchZero`), the last conv its conv; no final BN; the classifier the last module (`'11'`), the pooled features the
children before it, run in turn.
"""
from __future__ import annotations

import functools

from fastai.layers import ConvLayer, ResBlock
from fastai.vision.models import xresnet
from fastai.vision.models.xresnet import XResNet
from torch import nn

from tricks.errors import ConfigError
from tricks.models.family import BatchNorm, Family, SideLinear, built_of, children_before
from tricks.models.options import replace_stem
from tricks.models.registry import ModelPattern, register_family, register_pattern
from tricks.registry import unknown_name_message

FASTAI_PREFIX = "fastai:"
FASTAI_OPTIONS = ("zero_init_last", "stem")  # of create_model's options (shortcut, zero_init_last, stem, drop_rate)


def fastai_model_names() -> list[str]:
    return sorted(n for n in dir(xresnet) if n.startswith(("xresnet", "xresnext", "xse_")) and
                  callable(getattr(xresnet, n)))


def create_fastai_model(name: str, *, num_classes: int, in_chans: int = 3, zero_init_last: bool = False,
                        stem: str = "default") -> nn.Module:
    """fastai's `xresnet*` / `xse_resnext*` `name`, untrained, with `num_classes` outputs and `in_chans` inputs;
    the last BN gamma of every branch 0 (`zero_init_last`, as fastai builds it) or 1; an S3 `stem`."""
    if name not in fastai_model_names():
        raise ConfigError(unknown_name_message("fastai model", name, fastai_model_names()))
    model = getattr(xresnet, name)(pretrained=False, n_out=num_classes, c_in=in_chans)
    if not zero_init_last:  # fastai's BatchZero BNs: every other BN starts at gamma 1
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and not m.weight.any()):
            nn.init.ones_(bn.weight)
    if stem != "default":
        replace_stem(model, stem, label=FASTAI_PREFIX + name, first_conv="0.0", maxpools=("3",))
    return model


def _fastai_factory(name: str):
    return functools.partial(create_fastai_model, name[len(FASTAI_PREFIX):]) if name.startswith(FASTAI_PREFIX) else None


register_pattern(ModelPattern("fastai:<name>", "fastai's XResNets (xresnet18 ... xresnet152, _deep, xse_resnext), "
                              "untrained", _fastai_factory, FASTAI_OPTIONS))


def _branch_end(block: ResBlock) -> tuple[str, str]:
    i = max(i for i, m in enumerate(block.convpath) if isinstance(m, ConvLayer))
    j = next(j for j, m in enumerate(block.convpath[i]) if isinstance(m, BatchNorm))
    return f"convpath.{i}.{j}", f"convpath.{i}.0"


def last_child(model: nn.Module) -> str:
    """The name of an nn.Sequential's last child but the rotation head (fastai's XResNet: its classifier, '11')."""
    return next(n for n, c in reversed(list(model.named_children())) if not isinstance(c, SideLinear))


FAMILY = Family("fastai", "fastai XResNet (fastai:xresnet18, ..., fastai:xse_resnext50)",
                built_of(XResNet, (ResBlock,)), (ResBlock,), _branch_end, classifier=last_child,
                pooled=lambda m, x: children_before(m, last_child(m), x))
register_family(FAMILY)
