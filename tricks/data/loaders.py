"""fastai `DataLoaders` over uint8 tensors that live on the training device.

A `DeviceLoader` yields `(images, labels)` batches cut from tensors already on the device: one index
per batch, the batched augmentation of `tricks.data.augment`, then normalisation to float32. fastai's
own `DataLoader` collates one item at a time in Python, which is what this avoids; the `Learner` only
needs `__iter__`, `__len__`, `to` and `new`, which this provides, wrapped in fastai's `DataLoaders`.

Several processes (`rank`, `world`, see `recipes.distributed`): every rank draws the same permutation
of the epoch and takes its interleaved shard `order[rank::world]`, so the shards of an epoch are
disjoint. With `drop_last` (training) the shards are cut to one length, so that every rank runs the
same number of batches, as DistributedDataParallel needs; without it (evaluation) every image is in
exactly one shard and the shards differ in length by one at most. `bs` is the batch of one process.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from fastai.data.core import DataLoaders

from tricks.data.augment import BatchAugment, normalize


class DeviceLoader:
    """Batches of a uint8 tensor dataset, augmented and normalised on its device."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        bs: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: BatchAugment | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        self.bs, self.shuffle, self.drop_last, self.augment, self.seed = bs, shuffle, drop_last, augment, seed
        self.rank, self.world = rank, world
        self.channels_last = channels_last
        self.images, self.labels = images, labels
        self.mean, self.std = mean.float(), std.float()
        self.order_rng = torch.Generator().manual_seed(seed)
        self.device: torch.device | None = None
        self.to(device)

    @property
    def n(self) -> int:
        """Images this process reads per epoch: all of them, or its shard."""
        total = len(self.labels)
        if self.world == 1:
            return total
        return total // self.world if self.drop_last else len(range(self.rank, total, self.world))

    def __len__(self) -> int:
        # Dropping the last partial batch would leave nothing when the data is smaller than a batch.
        if self.drop_last and self.n >= self.bs:
            return self.n // self.bs
        return math.ceil(self.n / self.bs)

    def to(self, device: torch.device | str) -> "DeviceLoader":
        """Move the data to `device`; the augmentation's generator lives there too."""
        device = torch.device(device)
        if device != self.device:
            self.device = device
            self.images, self.labels = self.images.to(device), self.labels.to(device)
            self.mean, self.std = self.mean.to(device), self.std.to(device)
            # rank 0 keeps the one-process seed; the other ranks augment their shards differently
            self.aug_rng = torch.Generator(device=device).manual_seed(self.seed + 1 + self.rank)
        return self

    def new(self, **kwargs) -> "DeviceLoader":
        """A copy with some settings changed (fastai calls `dl.new(shuffle=False, drop_last=False)`)."""
        args = dict(bs=self.bs, mean=self.mean, std=self.std, shuffle=self.shuffle, drop_last=self.drop_last,
                    augment=self.augment, seed=self.seed, device=self.device, channels_last=self.channels_last,
                    rank=self.rank, world=self.world)
        unknown = set(kwargs) - set(args)
        if unknown:
            raise TypeError(f"DeviceLoader.new() got unknown settings {sorted(unknown)}")
        args.update(kwargs)
        return DeviceLoader(self.images, self.labels, **args)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented, normalised batch of the images at `idx` (a device index tensor)."""
        x = self.images[idx]
        if self.augment is not None:
            x = self.augment(x, self.aug_rng)
        x = normalize(x, self.mean, self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx]

    def epoch_order(self) -> torch.Tensor:
        """This epoch's indices for this process (draws the next permutation when shuffling)."""
        total = len(self.labels)
        order = torch.randperm(total, generator=self.order_rng) if self.shuffle else torch.arange(total)
        if self.world > 1:
            order = order[self.rank::self.world][:self.n]
        return order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.epoch_order().to(self.device, non_blocking=True)
        for i in range(len(self)):
            yield self.batch(order[i * self.bs:(i + 1) * self.bs])


def device_dataloaders(train: DeviceLoader, test: DeviceLoader) -> DataLoaders:
    """fastai `DataLoaders` of a train and a test `DeviceLoader` (the test split is the validation)."""
    return DataLoaders(train, test, device=train.device)
