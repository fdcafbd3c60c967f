"""Per-epoch statistics kept on the training device and read back once per epoch."""
from __future__ import annotations

import time
from typing import Callable

import torch
from fastai.callback.core import Callback

from recipes.distributed import all_reduce_sum, world_size


class EpochStats(Callback):
    """Train loss, test loss and accuracy, lr, and timing, one record per epoch.

    Sums stay as device tensors during the epoch (no host sync per batch); a training batch only keeps
    its loss tensor and size (no op: the trainer's host cost per step), summed into the epoch's train
    loss at after_train (or when `running_train_loss` asks); `after_epoch` reads them once and hands the
    record to every listener (e.g. the run folder's metrics.csv writer). On several processes
    (`recipes.distributed`) the sums and counts are added over the ranks once per epoch, at after_train
    and after_validate, so every rank's record is the global one and img/s counts the images of all ranks.
    """

    order = 90

    def __init__(self, listeners: tuple[Callable[[dict], None], ...] = ()):
        self.listeners = list(listeners)
        self.records: list[dict] = []

    def before_fit(self):
        self.records, self.train_images, self.train_seconds = [], 0, 0.0

    def checkpoint_state(self) -> dict:
        """What `recipes.checkpoint` saves to resume a run: the records so far and the img/s sums."""
        return {"records": [dict(r) for r in self.records], "train_images": self.train_images,
                "train_seconds": self.train_seconds}

    def load_checkpoint_state(self, state: dict) -> None:
        self.records = [dict(r) for r in state["records"]]
        self.train_images, self.train_seconds = int(state["train_images"]), float(state["train_seconds"])

    def _sync(self):
        if self.dls.device.type == "cuda":
            torch.cuda.synchronize(self.dls.device)

    def before_epoch(self):
        self.epoch_start = time.perf_counter()

    def before_train(self):
        dev = self.dls.device
        self.train_loss, self.train_n = torch.zeros((), device=dev), 0
        self.batch_losses: list[torch.Tensor] = []  # this epoch's training losses and sizes, not yet summed
        self.batch_sizes: list[int] = []
        self.train_start = time.perf_counter()

    def before_validate(self):
        dev = self.dls.device
        self.test_loss, self.test_correct, self.test_n = torch.zeros((), device=dev), torch.zeros((), device=dev), 0

    def after_batch(self):
        learn = self.learn  # its attributes read directly, not through the Callback's GetAttr (a batch's host cost)
        y = learn.yb[0]
        n = y.shape[0]
        if learn.training:  # two appends, no attribute set (fastai's Callback.__setattr__ asks the Learner for it)
            self.batch_losses.append(learn.loss.detach().float())
            self.batch_sizes.append(n)
        else:
            self.test_loss += learn.loss.detach().float() * n
            self.test_correct += (learn.pred.argmax(dim=1) == y).sum()
            self.test_n += n

    def sum_train_losses(self) -> None:
        """Add the kept batches' loss x size to the train loss sum (three ops however many batches)."""
        if self.batch_losses:
            sizes = torch.tensor(self.batch_sizes, dtype=torch.float32).to(self.train_loss.device, non_blocking=True)
            self.train_loss = self.train_loss + (torch.stack(self.batch_losses) * sizes).sum()
            self.train_n += sum(self.batch_sizes)
            self.batch_losses, self.batch_sizes = [], []

    def after_train(self):
        self.sum_train_losses()
        if world_size() > 1:
            self.train_loss, n = all_reduce_sum(self.train_loss, self.train_n)
            self.train_n = int(n.item())
        self._sync()
        self.epoch_train_seconds = time.perf_counter() - self.train_start
        self.train_seconds += self.epoch_train_seconds
        self.train_images += self.train_n

    def after_validate(self):
        if world_size() > 1:
            self.test_loss, self.test_correct, n = all_reduce_sum(self.test_loss, self.test_correct, self.test_n)
            self.test_n = int(n.item())

    def running_train_loss(self) -> float:
        """The mean train loss of this epoch so far (one host sync)."""
        self.sum_train_losses()
        return (self.train_loss / max(self.train_n, 1)).item()

    def after_epoch(self):
        record = {
            "epoch": self.epoch + 1,
            "train_loss": self.running_train_loss(),
            "test_loss": (self.test_loss / max(self.test_n, 1)).item(),
            "test_acc": 100.0 * self.test_correct.item() / max(self.test_n, 1),
            "lr": self.learn.opt.hypers[0]["lr"],
            "seconds": time.perf_counter() - self.epoch_start,
            "train_seconds": self.epoch_train_seconds,  # the training pass alone (not in metrics.csv)
            "train_images": self.train_n,
        }
        self.records.append(record)
        for listener in self.listeners:
            listener(record)

    @property
    def images_per_second(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds else 0.0
