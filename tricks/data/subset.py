"""Seeded class-balanced subsets: the same number of images from every class."""
from __future__ import annotations

import torch

from tricks.errors import ConfigError


def class_balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted int64 indices of `n` images: n // C per class, the n % C left over one each to classes
    picked by `seed`; within a class, the first images of a seeded permutation.
    """
    labels = torch.as_tensor(labels).reshape(-1)
    classes, counts = torch.unique(labels, return_counts=True)
    num, total = len(classes), len(labels)
    smallest = int(counts.min()) if total else 0
    if not (num and num <= n <= num * smallest):
        raise ConfigError(f"subset size n={n} is out of range; for these {total} images ({num} classes, "
                          f"the smallest with {smallest}) n must be between {num} and {num * smallest}")
    g = torch.Generator().manual_seed(int(seed))
    take = torch.full((num,), n // num, dtype=torch.int64)
    take[torch.randperm(num, generator=g)[: n % num]] += 1
    picked = []
    for c, k in zip(classes.tolist(), take.tolist()):
        idx = (labels == c).nonzero().reshape(-1)
        picked.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.sort(torch.cat(picked)).values.to(torch.int64)
