"""The family of timm's pre-activation ResNetV2 with BatchNorm (`timm.models.resnetv2.ResNetV2`: 'timm:resnetv2_18',
'resnetv2_50d', ...; not the GroupNorm / EvoNorm / FRN ones), for the tricks that change a network. Built as any
'timm:<name>' (`timm_resnet`). Blocks `PreActBasic` / `PreActBottleneck`; the last BN of a branch `norm2` / `norm3`
(before the last conv, as `cifar_resnet` defines it for the notes' 'pre-act with last-gamma'; timm's own
zero_init_last zeros the last conv instead), the last conv `conv2` / `conv3`; the final BN `norm` (BN + its ReLU
`norm.act`, which stays when the BN goes); the classifier `head.fc` (a 1x1 conv); the pooled features
`head.global_pool(forward_features(x))`, flattened.
"""
from __future__ import annotations

import torch
from timm.models import resnetv2 as timm_resnetv2
from torch import nn

from tricks.models.family import Family, built_of, timm_classifier
from tricks.models.registry import register_family

_BLOCKS = (timm_resnetv2.PreActBasic, timm_resnetv2.PreActBottleneck)


def _matches(model: nn.Module) -> bool:
    return built_of(timm_resnetv2.ResNetV2, _BLOCKS)(model) and all(
        isinstance(b.norm1, nn.BatchNorm2d) for b in model.modules() if isinstance(b, _BLOCKS))


FAMILY = Family("timm-v2", "timm pre-activation ResNetV2 with BatchNorm (timm:resnetv2_18, ...)", _matches, _BLOCKS,
                lambda b: ("norm3", "conv3") if isinstance(b, timm_resnetv2.PreActBottleneck) else ("norm2", "conv2"),
                preact=True, final_norm=lambda m: ("norm", m.norm.act), classifier=timm_classifier,
                pooled=lambda m, x: torch.flatten(m.head.global_pool(m.forward_features(x)), 1))
register_family(FAMILY)
