"""Batched augmentation on uint8 image tensors, on whichever device holds them.

Every function takes a whole batch `(B, C, H, W)` and draws its randomness from a `torch.Generator`
on the batch's device: no PIL, no per-image Python (after airbench's `batch_crop` / `batch_flip_lr`).
Written by hand because torchvision's v2 transforms draw one random crop for a whole batch, not one
per image.

- `random_crop`: pad by `pad` pixels (zeros or reflection), then a random `H x W` window per image
  (the CIFAR "pad=4, then crop" of the notes, S6).
- `random_flip`: mirror each image left-right with probability 1/2.
- `random_resized_crop`: the notes' early "resize+crop" (S2, S3) read as torchvision's
  `RandomResizedCrop`: a box of random area fraction in `scale` and aspect ratio in `ratio`, resampled
  to the image size with bilinear `torchvision.ops.roi_align`.
- `normalize`: uint8 (or float in [0, 255]) -> float32 `(x / 255 - mean) / std`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

PAD_MODES = ("zeros", "reflect")


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator, mode: str = "zeros") -> torch.Tensor:
    """Pad each image by `pad` on every side, then cut a random window of the original size."""
    if pad <= 0:
        return x
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode {mode!r} is not one of {PAD_MODES}")
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="constant" if mode == "zeros" else "reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_resized_crop(
    x: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """A random box per image (area fraction in `scale`, aspect in `ratio`), resized back to H x W.

    Returns float32 in the input's value range. Boxes that would not fit are clamped to the image
    (torchvision instead retries ten times, then falls back to a centre crop).
    """
    b, _, h, w = x.shape
    dev = x.device
    area = h * w * torch.empty(b, device=dev).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(b, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    bw = torch.sqrt(area * aspect).clamp(1, w)
    bh = torch.sqrt(area / aspect).clamp(1, h)
    x0 = torch.rand(b, device=dev, generator=generator) * (w - bw)
    y0 = torch.rand(b, device=dev, generator=generator) * (h - bh)
    boxes = torch.stack([torch.arange(b, device=dev, dtype=torch.float32), x0, y0, x0 + bw, y0 + bh], 1)
    return roi_align(x.float(), boxes, output_size=(h, w), spatial_scale=1.0, sampling_ratio=1, aligned=True)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """`(x / 255 - mean) / std` per channel, as float32; `mean` and `std` have shape (C,)."""
    scale = 1.0 / (255.0 * std)
    return (x.float() * scale[:, None, None]) - (mean / std)[:, None, None]


@dataclass(frozen=True)
class BatchAugment:
    """The training augmentation of a recipe, applied to one uint8 batch on its device."""

    crop_pad: int = 4
    pad_mode: str = "zeros"
    flip: bool = True
    resize_crop: bool = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.resize_crop:
            x = random_resized_crop(x, generator)
        x = random_crop(x, self.crop_pad, generator, self.pad_mode)
        if self.flip:
            x = random_flip(x, generator)
        return x
