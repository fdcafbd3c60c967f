"""Stop a fit whose training loss became NaN or inf, and say at which epoch and batch it first did.

fastai's `TerminateOnNaNCallback` reads the loss on the host after every batch and then cancels the
fit silently, so a run "finishes" with garbage. `StopOnNonFinite` keeps the check on the device: at
`after_loss` it folds `isfinite(loss)` into a device tensor that holds the index of the epoch's first
non-finite batch (or -1), with no host sync. The host reads that tensor once every `every` batches
and once at the end of the epoch's training (before the test pass), and raises `TrainingError`
naming the epoch and that first bad batch, both counted from 1 as the progress display and
metrics.csv count epochs. Nothing is deleted: what the earlier epochs wrote stays in the run folder.
"""
from __future__ import annotations

import math
import os

import torch
from fastai.callback.core import Callback

from tricks.errors import TrainingError


class StopOnNonFinite(Callback):
    """Raise `TrainingError` when the training loss is NaN or inf; `out` is the run folder named in the message."""

    order = 99  # after_loss: after every trick that adds to the loss (e.g. the rotation head's term)

    def __init__(self, out: str | os.PathLike | None = None, every: int = 50):
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.out, self.every = out, every
        self.first_bad: torch.Tensor | None = None

    def before_train(self):
        self.first_bad = None  # made on the loss's device at the first batch

    def after_loss(self):
        if not self.training:
            return
        loss = self.learn.loss.detach().float().sum()  # a sum is NaN or inf when any element is
        if self.first_bad is None:
            self.first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
            self.bad_loss = torch.zeros((), dtype=torch.float32, device=loss.device)
        new = (self.first_bad < 0) & ~torch.isfinite(loss)
        self.first_bad = torch.where(new, self.iter, self.first_bad)
        self.bad_loss = torch.where(new, loss, self.bad_loss)

    def after_batch(self):
        if self.training and (self.iter + 1) % self.every == 0:
            self.check()

    def after_train(self):
        self.check()

    def check(self):
        """The one host sync: raise if a batch of this epoch had a non-finite loss."""
        if self.first_bad is None:
            return
        batch = int(self.first_bad)
        if batch < 0:
            return
        value = float(self.bad_loss)
        what = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        kept = f"what the earlier epochs wrote is kept in '{self.out}'; " if self.out is not None else ""
        raise TrainingError(f"loss became {what} at epoch {self.epoch + 1}, batch {batch + 1} of {self.n_iter}; "
                            f"{kept}lower the learning rate or check the data")
