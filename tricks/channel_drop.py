"""Channel drop: zero up to `max` randomly chosen input channels of every training image.

The notes' own trick (S6, 'randomly drop at most two channels'; 'at most one channel' also tried),
not from a paper. For each image, independently:

    k ~ Uniform{0, 1, ..., min(max, C)},   drop k of the C channels chosen without replacement,
    x[c] <- 0 for each dropped channel c

The input is already normalised, so 0 is the channel's dataset mean. Written by hand (no library
has it): the k channels are the ones whose uniform random keys rank below k, which draws a uniformly
random k-subset for the whole batch at once, with no per-image Python.
"""
from __future__ import annotations

import torch
from fastai.callback.core import Callback

from tricks.registry import Param, check_arguments, register_trick


def channel_drop(x: torch.Tensor, max_channels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """x (B, C, H, W) with k ~ U{0..min(max_channels, C)} random channels of each image set to 0."""
    b, c = x.shape[:2]
    k = torch.randint(0, min(max_channels, c) + 1, (b, 1), generator=generator, device=x.device)
    keys = torch.rand(b, c, generator=generator, device=x.device)
    rank = keys.argsort(dim=1).argsort(dim=1)  # rank of each channel's key: a random permutation
    keep = (rank >= k).to(x.dtype)
    return x * keep[:, :, None, None]


@register_trick(
    "channeldrop",
    params=(Param("max", int, 2, "at most this many channels zeroed per image", low=1),),
    description="zero k ~ U{0..max} random input channels of each training image",
    paper="the notes, S6 (the notes' own trick: 'randomly drop at most two channels')",
    touches=("input",),
)
class ChannelDrop(Callback):
    """Zero up to `max` random channels of each training image (never in evaluation)."""

    order = 10  # input: before the targets are made (20) and before mixup mixes the images (30)
    run_valid = False

    def __init__(self, max: int = 2):  # noqa: A002  (the notes' word, the trick's parameter name)
        super().__init__()
        check_arguments("channeldrop", max=max)
        self.max_channels = max

    def before_batch(self):
        self.learn.xb = (channel_drop(self.learn.xb[0], self.max_channels),)
