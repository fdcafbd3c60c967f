"""Stop a fit whose training loss became NaN or inf, and say at which epoch and batch it first did.

fastai's `TerminateOnNaNCallback` reads the loss on the host after every batch and then cancels the
fit silently, so a run "finishes" with garbage. `StopOnNonFinite` keeps the check on the device: at
`after_loss` it keeps the batch's loss tensor and its index in a list (no copy, no host sync). The host
looks at the losses kept since its last look once every `every` batches and once at the end of the
epoch's training (before the test pass), stacked into one tensor, and raises `TrainingError` at the
first non-finite one, naming the epoch and that first bad batch, both counted from 1 as the progress
display and metrics.csv count epochs. Nothing is deleted: what the earlier epochs wrote stays in the run folder.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager

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
        self.losses: list[torch.Tensor] = []
        self.batches: list[int] = []

    def before_train(self):
        self.losses: list[torch.Tensor] = []  # this epoch's losses not yet looked at, on the loss's device
        self.batches: list[int] = []  # their batch indices in the epoch

    def after_loss(self):
        learn = self.learn
        if not learn.training:
            return
        loss = learn.loss.detach()
        self.losses.append(loss.float() if loss.dim() == 0 else loss.float().sum())  # a sum is NaN/inf if any is
        self.batches.append(learn.iter)

    def after_batch(self):
        learn = self.learn
        if learn.training and (learn.iter + 1) % self.every == 0:
            self.check()

    def after_train(self):
        self.check()

    def check(self):
        """The one host sync: raise if a batch of this epoch since the last look had a non-finite loss."""
        if not self.losses:
            return
        seen, batches = torch.stack(self.losses), self.batches
        self.losses, self.batches = [], []
        bad = ~torch.isfinite(seen)
        with host_read_allowed(seen.device):
            if not bool(bad.any()):
                return
            at = int(bad.nonzero()[0, 0])
            self.bad_loss = seen[at]
            value = float(self.bad_loss)
        batch = batches[at]
        what = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        kept = f"what the earlier epochs wrote is kept in '{self.out}'; " if self.out is not None else ""
        raise TrainingError(f"loss became {what} at epoch {self.epoch + 1}, batch {batch + 1} of {self.n_iter}; "
                            f"{kept}lower the learning rate or check the data")


@contextmanager
def host_read_allowed(device: torch.device):
    """The NaN check's one read, allowed under `torch.cuda.set_sync_debug_mode("error")` (the GPU's check that
    nothing else in a training step reads the device: tests/test_host_reads.py, `bash bench/gpu_session.sh N
    syncdebug`): on a CUDA device the mode is 0 while the read runs and restored after; elsewhere nothing changes."""
    if device.type != "cuda":
        yield
        return
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)
