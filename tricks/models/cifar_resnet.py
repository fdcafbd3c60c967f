"""CIFAR ResNets (v1), pre-activation ResNets (v2) and Wide ResNets.

Papers: He et al., "Deep Residual Learning for Image Recognition", arXiv:1512.03385 (v1, the CIFAR nets
of section 4.2); He et al., "Identity Mappings in Deep Residual Networks", arXiv:1603.05027 (pre-activation
v2); Zagoruyko & Komodakis, "Wide Residual Networks", arXiv:1605.07146 (WRN).

Written by hand because torchvision and timm only have the ImageNet ResNets (7x7 stride-2 stem plus
max-pool, widths 64-512); the CIFAR nets have a 3x3 stride-1 stem and widths 16-32-64 (times k for WRN).

Choices, fixed here so that parameter counts and surgery are predictable:

- Shortcuts are identity unless the shape changes, then a projection with stride s: a 1x1 conv
  (`shortcut='conv1x1'`, the paper's option B) or a 3x3 conv (`'conv3x3'`); or `'pad'`, the
  parameter-free option A the v1 paper used on CIFAR (section 4.2: "identity shortcuts in all cases"
  with "extra zero entries padded for increasing dimensions"): every s-th pixel of x, its new channels
  zero, half before and half after (`PadShortcut`). In v1 the projection is conv + BN, as in torchvision. In the
  pre-activation blocks (v2 and WRN) it is a conv alone applied to the pre-activated input BN-ReLU(x),
  as in the reference implementations (fb.resnet.torch preresnet.lua, szagoruyko/wide-residual-networks);
  an identity shortcut carries x itself.
- `zero_init_last` zeros `bn2.weight` of every block. In v1 that BN ends the branch, so every block
  starts as the identity (Goyal et al. 2017). In v2/WRN it is the BN before the last conv, as the
  notes defined it ('pre-act with last-gamma: 54.29'): with gamma = beta = 0 the following ReLU sees
  exactly 0, and since relu'(0) = 0 in PyTorch no gradient reaches bn2, conv1 or conv2 -- the branches
  stay dead and the net trains as stem + projections + head. Kept as defined to reproduce that ablation.
- Init: convs kaiming_normal_(mode='fan_out', nonlinearity='relu') as torchvision; BN weight 1, bias 0;
  Linear keeps PyTorch's default init.

Stable attribute names for surgery: `model.stem`, `model.stages` (nn.Sequential of nn.Sequential of
blocks), `model.final_act` (pre-activation nets only), `model.pool`, `model.fc`; blocks have `conv1, bn1,
act1, conv2, bn2, shortcut` (nn.Sequential or nn.Identity), v1 blocks `act_out` (ReLU after the
addition), pre-activation blocks `act2` and `drop` (nn.Dropout, or nn.Identity when drop_rate is 0).
All activations are nn.ReLU modules, so they can be swapped.

Registered here: the names `resnet<d>`, `preact_resnet<d>`, `wrn28_10`, the pattern 'wrn<depth>_<width>', and the two
families the surgery tricks use (`V1`, `PREACT`): blocks `BasicBlock` / `PreActBlock`, the last BN and conv of a
branch `bn2`, `conv2` (in PreActBlock the BN before the last conv), the final BN of the pre-activation nets
`final_act.0`, the classifier `fc`, the pooled features `pool(forward_features(x))`.
"""
from __future__ import annotations

import functools
import re
from typing import Iterator, Sequence

import torch
from torch import nn

from tricks.errors import ConfigError
from tricks.models.family import Family
from tricks.models.options import SHORTCUTS
from tricks.models.registry import MODELS, ModelPattern, register_family, register_pattern

CIFAR_WIDTHS = (16, 16, 32, 64)  # stem, stage 1, stage 2, stage 3
WRN_PATTERN = re.compile(r"wrn(\d+)_(\d+)")


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """Option A of He et al. 2016: x[:, :, ::stride, ::stride] with (cout - cin) zero channels, half before and
    half after (the odd one after); no parameters. Written by hand: torch has no such layer
    (`torch.nn.functional.pad` does the padding)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if cout < cin:
            raise ConfigError(f"shortcut 'pad' cannot shrink {cin} channels to {cout}")
        self.stride, self.before, self.after = stride, (cout - cin) // 2, cout - cin - (cout - cin) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, self.before, self.after))


def projection(cin: int, cout: int, stride: int, kind: str, bn: bool) -> nn.Module:
    """The shortcut when the shape changes: 1x1 or 3x3 conv with stride `stride`, BN if `bn`; or option A."""
    if kind not in SHORTCUTS:
        raise ConfigError(f"unknown shortcut '{kind}'; allowed: {', '.join(SHORTCUTS)}")
    if kind == "pad":
        return PadShortcut(cin, cout, stride)
    k = 1 if kind == "conv1x1" else 3
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """v1 block: conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU (`act_out`)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: str = "conv1x1"):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.ReLU()
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        projects = stride != 1 or cin != cout
        self.shortcut = projection(cin, cout, stride, shortcut, bn=True) if projects else nn.Identity()
        self.act_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act_out(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """v2 / WRN block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus the shortcut; no final ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: str = "conv1x1", drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = nn.ReLU()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = nn.ReLU()
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = conv3x3(cout, cout)
        self.projects = stride != 1 or cin != cout
        self.shortcut = projection(cin, cout, stride, shortcut, bn=False) if self.projects else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        skip = self.shortcut(pre) if self.projects else x
        out = self.conv2(self.drop(self.act2(self.bn2(self.conv1(pre)))))
        return out + skip


class CifarResNet(nn.Module):
    """Stem, three stages of `n` blocks (stride 2 at the start of stages 2 and 3), pool, fc.

    `widths` = (stem, stage1, stage2, stage3) channels; `preact` picks v2 blocks, a plain-conv stem and
    a final BN-ReLU (`final_act`) before the pool.
    """

    def __init__(self, n: int, widths: Sequence[int] = CIFAR_WIDTHS, *, preact: bool = False,
                 num_classes: int = 10, in_chans: int = 3, shortcut: str = "conv1x1",
                 drop_rate: float = 0.0, zero_init_last: bool = False):
        super().__init__()
        if n < 1:
            raise ConfigError(f"a CIFAR ResNet needs at least 1 block per stage; got {n}")
        self.preact = preact
        stem_w, *stage_ws = widths
        if preact:
            self.stem = nn.Sequential(conv3x3(in_chans, stem_w))
        else:
            self.stem = nn.Sequential(conv3x3(in_chans, stem_w), nn.BatchNorm2d(stem_w), nn.ReLU())
        stages, cin = [], stem_w
        for i, w in enumerate(stage_ws):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                if preact:
                    blocks.append(PreActBlock(cin, w, stride, shortcut, drop_rate))
                else:
                    blocks.append(BasicBlock(cin, w, stride, shortcut))
                cin = w
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        if preact:
            self.final_act = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU())
        self.num_features = cin
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = nn.Linear(cin, num_classes)
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for block in self.blocks():
                nn.init.zeros_(block.bn2.weight)

    def blocks(self) -> Iterator[nn.Module]:
        """Every residual block, stage by stage."""
        for stage in self.stages:
            yield from stage

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.final_act(x) if self.preact else x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Options each family takes besides num_classes, in_chans and bn_momentum (which every model with BN takes).
RESNET_OPTIONS = ("shortcut", "zero_init_last")
WRN_OPTIONS = ("shortcut", "zero_init_last", "drop_rate")


def cifar_resnet(depth: int, *, preact: bool = False, num_classes: int, in_chans: int = 3,
                 shortcut: str = "conv1x1", zero_init_last: bool = False) -> CifarResNet:
    """ResNet-`depth` for CIFAR, depth = 6n+2 (3n blocks of two convs, plus stem conv and fc)."""
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, ...); got {depth}")
    return CifarResNet((depth - 2) // 6, CIFAR_WIDTHS, preact=preact, num_classes=num_classes,
                       in_chans=in_chans, shortcut=shortcut, zero_init_last=zero_init_last)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    MODELS.add(f"resnet{_depth}", functools.partial(cifar_resnet, _depth),
               description=f"CIFAR ResNet-{_depth} v1: {3 * ((_depth - 2) // 6)} basic blocks, 16-32-64 channels",
               paper="He et al. 2016, Deep Residual Learning, arXiv:1512.03385", options=RESNET_OPTIONS)
for _depth in (8, 14, 20, 32, 44, 56, 110):
    MODELS.add(f"preact_resnet{_depth}", functools.partial(cifar_resnet, _depth, preact=True),
               description=f"CIFAR pre-activation ResNet-{_depth} v2: {3 * ((_depth - 2) // 6)} blocks, 16-32-64 channels",
               paper="He et al. 2016, Identity Mappings in Deep Residual Networks, arXiv:1603.05027",
               options=RESNET_OPTIONS)


def wide_resnet(depth: int, width: int, *, num_classes: int, in_chans: int = 3, shortcut: str = "conv1x1",
                zero_init_last: bool = False, drop_rate: float = 0.0) -> CifarResNet:
    """WRN-`depth`-`width`: pre-activation blocks, widths 16, 16k, 32k, 64k, n = (depth-4)/6 per stage."""
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 34, 40, ...); got {depth}")
    if width < 1:
        raise ConfigError(f"WRN width must be an integer >= 1; got {width}")
    widths = (16, 16 * width, 32 * width, 64 * width)
    return CifarResNet((depth - 4) // 6, widths, preact=True, num_classes=num_classes, in_chans=in_chans,
                       shortcut=shortcut, drop_rate=drop_rate, zero_init_last=zero_init_last)


def parse_wrn(name: str) -> tuple[int, int] | None:
    """(depth, width) for a name 'wrn<depth>_<width>', else None."""
    m = WRN_PATTERN.fullmatch(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


MODELS.add("wrn28_10", functools.partial(wide_resnet, 28, 10),
           description="Wide ResNet 28-10 (36.5M params); any wrn<depth>_<width> with depth 6n+4 also resolves",
           paper="Zagoruyko & Komodakis 2016, Wide Residual Networks, arXiv:1605.07146", options=WRN_OPTIONS)


def _wrn_factory(name: str):
    dw = parse_wrn(name)
    return functools.partial(wide_resnet, *dw) if dw is not None else None


register_pattern(ModelPattern("wrn<depth>_<width>", "Wide ResNet of any depth 6n+4 and width k, e.g. wrn16_4",
                              _wrn_factory, WRN_OPTIONS))


def _pooled(model: CifarResNet, x: torch.Tensor) -> torch.Tensor:
    return model.pool(model.forward_features(x))


# Where the surgery tricks find things (see `tricks.surgery`): the stable attribute names of the module docstring.
V1 = Family("v1", "CIFAR ResNet v1 (resnet<d>)", lambda m: isinstance(m, CifarResNet) and not m.preact,
            (BasicBlock,), lambda b: ("bn2", "conv2"), classifier=lambda m: "fc", pooled=_pooled)
PREACT = Family("preact", "CIFAR pre-activation ResNet (preact_resnet<d>, wrn<d>_<k>)",
                lambda m: isinstance(m, CifarResNet) and m.preact, (PreActBlock,), lambda b: ("bn2", "conv2"),
                preact=True, final_norm=lambda m: ("final_act.0", nn.Identity()), classifier=lambda m: "fc",
                pooled=_pooled)
register_family(V1)
register_family(PREACT)
