"""A rich progress display for `recipe run`: one bar for the whole fit, one for the epoch.

A training batch only counts itself (a few tenths of a us: the trainer's host cost per step); the epoch's bar
is moved to the count at most `REFRESH_PER_SECOND` times a second, as often as rich redraws it, and to the exact
count when the training pass ends; the loss shown is read from `EpochStats` at most once per `refresh_s` seconds,
so the display costs no host sync per batch.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from fastai.callback.core import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from recipes.stats import EpochStats

REFRESH_PER_SECOND = 10  # rich's default redraws of the bars a second, and the epoch bar's moves a second


def progress_columns(width: int) -> list:
    """The display's columns for a terminal `width` characters wide, so that nothing is cut to "…": all of
    them from 120 on; from 80, a short bar and no elapsed time; below, the bar and the times go."""
    desc, info = TextColumn("{task.description:<14}"), TextColumn("{task.fields[info]}")
    if width >= 120:
        return [desc, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("left"),
                TimeRemainingColumn(), info]
    if width >= 80:
        return [desc, BarColumn(bar_width=8), MofNCompleteColumn(), TimeRemainingColumn(), info]
    return [desc, MofNCompleteColumn(), info]


def epoch_line(record: dict) -> str:
    """One epoch's line, within 80 columns up to epoch 9999 and 99.9 seconds an epoch."""
    return (f"epoch {record['epoch']:>4} train_loss {record['train_loss']:.4f} test_loss {record['test_loss']:.4f} "
            f"test_acc {record['test_acc']:6.2f}% lr {record['lr']:.2e} {record['seconds']:.1f}s")


@dataclass
class EpochCount:
    """The training pass's batches and images so far and when the bar and the info move next (perf_counter
    seconds): a plain object, so that a batch sets no Callback attribute (fastai's `Callback.__setattr__` asks the
    Learner for each name, about 1 us)."""
    start: float
    batches: int = 0
    images: int = 0
    next_bar: float = 0.0
    next_info: float = 0.0


class RichProgress(Callback):
    """The fit's bar and the epoch's bar, with the running loss, lr and img/s, and one line per epoch.

    `clock`: the seconds the bar and the info are timed by (`time.perf_counter`; a test's clock in tests)."""

    order = 95  # after EpochStats

    def __init__(self, console: Console, stats: EpochStats, title: str = "fit", refresh_s: float = 1.0,
                 clock: Callable[[], float] = time.perf_counter):
        self.console, self.stats, self.title, self.refresh_s, self.clock = console, stats, title, refresh_s, clock

    def before_fit(self):
        self.bars = Progress(*progress_columns(self.console.width), console=self.console,
                             refresh_per_second=REFRESH_PER_SECOND)
        self.bars.start()
        self.fit_task = self.bars.add_task(self.title, total=self.n_epoch, info="")
        self.count = None  # this training pass's EpochCount (none when a callback cancelled its before_train)
        self.epoch_task = None  # this epoch's bar, from its training pass (or its test pass when that was cancelled)

    def before_train(self):
        self.epoch_task = self.bars.add_task(f"epoch {self.epoch + 1}/{self.n_epoch}", total=len(self.dl), info="")
        self.count = EpochCount(start=self.clock())

    def after_batch(self):
        learn = self.learn  # read directly, not through the Callback's GetAttr (a batch's host cost)
        if not learn.training:
            return
        count = self.count
        count.batches += 1
        count.images += learn.yb[0].shape[0]
        now = self.clock()
        if now >= count.next_bar:
            self.show(count, now)

    def show(self, count: EpochCount, now: float) -> None:
        """Move the epoch's bar to the batches done; the info too once `refresh_s` has passed since its last move."""
        count.next_bar = now + 1 / REFRESH_PER_SECOND
        if now < count.next_info:
            self.bars.update(self.epoch_task, completed=count.batches)
            return
        count.next_info = now + self.refresh_s
        lr = self.learn.opt.hypers[0]["lr"]
        info = (f"loss {self.stats.running_train_loss():.4f} lr {lr:.1e} "
                f"{count.images / max(now - count.start, 1e-9):.0f} img/s")
        self.bars.update(self.epoch_task, completed=count.batches, info=info)

    def after_train(self):
        count, self.count = self.count, None
        if count is not None:  # the exact count, whenever it last moved
            self.bars.update(self.epoch_task, completed=count.batches)

    def before_validate(self):
        description = f"test {self.epoch + 1}/{self.n_epoch}"
        if self.epoch_task is None:
            self.epoch_task = self.bars.add_task(description, total=len(self.dl), info="")
        else:
            self.bars.update(self.epoch_task, description=description)

    def after_epoch(self):
        if self.epoch_task is not None:
            self.bars.remove_task(self.epoch_task)
            self.epoch_task = None
        r = self.stats.records[-1]
        self.bars.update(self.fit_task, advance=1, info=f"test acc {r['test_acc']:.2f}%  "
                         f"train loss {r['train_loss']:.4f}  {self.stats.images_per_second:.0f} img/s")
        self.console.print(epoch_line(r), highlight=False, soft_wrap=True)

    def after_fit(self):
        self.bars.stop()
