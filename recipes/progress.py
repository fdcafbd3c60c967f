"""A rich progress display for `recipe run`: one bar for the whole fit, one for the epoch.

The bars advance on every batch without touching the device; the loss shown is read from
`EpochStats` at most once per `refresh_s` seconds, so the display costs no host sync per batch.
"""
from __future__ import annotations

import time

from fastai.callback.core import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from recipes.stats import EpochStats


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


class RichProgress(Callback):
    order = 95  # after EpochStats

    def __init__(self, console: Console, stats: EpochStats, title: str = "fit", refresh_s: float = 1.0):
        self.console, self.stats, self.title, self.refresh_s = console, stats, title, refresh_s

    def before_fit(self):
        self.bars = Progress(*progress_columns(self.console.width), console=self.console)
        self.bars.start()
        self.fit_task = self.bars.add_task(self.title, total=self.n_epoch, info="")

    def before_train(self):
        self.epoch_task = self.bars.add_task(f"epoch {self.epoch + 1}/{self.n_epoch}", total=len(self.dl), info="")
        self.start, self.last_refresh, self.done = time.perf_counter(), 0.0, 0

    def after_batch(self):
        if not self.training:
            return
        self.done += self.learn.yb[0].shape[0]
        now = time.perf_counter()
        info = None
        if now - self.last_refresh >= self.refresh_s:
            self.last_refresh = now
            lr = self.learn.opt.hypers[0]["lr"]
            info = (f"loss {self.stats.running_train_loss():.4f} lr {lr:.1e} "
                    f"{self.done / (now - self.start):.0f} img/s")
        self.bars.update(self.epoch_task, advance=1, **({"info": info} if info else {}))

    def before_validate(self):
        self.bars.update(self.epoch_task, description=f"test {self.epoch + 1}/{self.n_epoch}")

    def after_epoch(self):
        self.bars.remove_task(self.epoch_task)
        r = self.stats.records[-1]
        self.bars.update(self.fit_task, advance=1, info=f"test acc {r['test_acc']:.2f}%  "
                         f"train loss {r['train_loss']:.4f}  {self.stats.images_per_second:.0f} img/s")
        self.console.print(epoch_line(r), highlight=False, soft_wrap=True)

    def after_fit(self):
        self.bars.stop()
