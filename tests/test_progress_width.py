"""The progress display fits the terminal: nothing is cut to '…' at 80 columns or wider."""
from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from rich.progress import Progress

from recipes.progress import progress_columns


@pytest.mark.parametrize("width", [60, 80, 100, 120, 160])
def test_every_column_shows_whole_at_this_width(width):
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    bars = Progress(*progress_columns(width), console=console, auto_refresh=False)
    info = "loss 2.3026 lr 2.0e-01 61234 img/s"
    task = bars.add_task("epoch 200/200", total=195, info=info)
    bars.update(task, advance=97)
    line = "".join(seg.text for seg in console.render(bars.get_renderable(), console.options))
    assert "…" not in line
    assert info in line and "epoch 200/200" in line and "97/195" in line
    assert len(line.rstrip("\n").splitlines()[0]) <= width


def test_the_setup_and_epoch_lines_fit_80_columns():
    """What a fit prints of the issue's example run: the setup lines and an epoch line fit 80 columns."""
    from recipes.cli import setup_lines
    from recipes.progress import epoch_line

    info = {"recipe": "baseline+mixup+refine:gens=1", "model": "resnet20", "parameters": 272474,
            "dataset": "cifar10", "train_images": 1000, "test_images": 10000, "channels": 3,
            "image_size": [32, 32], "epochs": 200, "device": "cuda:0", "out": "runs/baseline-20261206-031000"}
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(setup_lines(info), highlight=False, soft_wrap=True)
    console.print(epoch_line({"epoch": 200, "train_loss": 2.30261, "test_loss": 2.3026, "test_acc": 100.0,
                              "lr": 0.159, "seconds": 99.94}), highlight=False, soft_wrap=True)
    lines = console.file.getvalue().splitlines()
    assert lines == ["baseline+mixup+refine:gens=1",
                     "resnet20 (272,474 parameters), 200 epochs, device cuda:0",
                     "cifar10: 1,000 train / 10,000 test images of 3x32x32",
                     "run folder: runs/baseline-20261206-031000",
                     "epoch  200 train_loss 2.3026 test_loss 2.3026 test_acc 100.00% lr 1.59e-01 99.9s"]
    assert max(len(line) for line in lines) <= 80


def test_the_epoch_bar_moves_as_often_as_rich_redraws_and_ends_each_epoch_on_the_exact_count():
    """A fastai user's fit with the display: on a clock of 1/16 s a batch, the bar (redrawn 10 times a second)
    moves every second batch, its info once a second, and it ends the training pass on all 16 batches."""
    import itertools

    from fastai.callback.core import Callback

    from recipes.progress import REFRESH_PER_SECOND, RichProgress
    from recipes.stats import EpochStats
    from tests.fixtures import learner

    ticks = itertools.count()
    console = Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None)
    stats = EpochStats()
    progress = RichProgress(console, stats, clock=lambda: next(ticks) / 16)
    seen: list[tuple[str, int, str]] = []  # (event, the epoch bar's count, its info) after the display's own

    class Watch(Callback):
        order = RichProgress.order + 1

        def shown(self, event: str) -> None:
            task = next(t for t in progress.bars.tasks if t.id == progress.epoch_task)
            seen.append((event, int(task.completed), task.fields["info"]))

        def after_batch(self):
            if self.learn.training:
                self.shown("batch")

        def after_train(self):
            self.shown("train")

    learn = learner("baseline", cbs=[stats, progress, Watch()], bs=8, epochs=2)  # 128 images: 16 batches
    learn.fit(2)
    assert REFRESH_PER_SECOND == 10
    for epoch in range(2):
        epoch_seen = seen[epoch * 17:(epoch + 1) * 17]
        moves = [("batch", b - (b + 1) % 2) for b in range(1, 17)]  # 1, 1, 3, 3, ..., 15, 15
        assert [(e, n) for e, n, _ in epoch_seen] == [*moves, ("train", 16)]
        infos = {info for _, _, info in epoch_seen}  # set at the first batch (8 images in 1/16 s), not after 1 s
        assert len(infos) == 1 and infos.pop().endswith(" 128 img/s")
    fit_task = next(t for t in progress.bars.tasks if t.id == progress.fit_task)
    assert fit_task.completed == 2
    printed = re.findall(r"epoch +(\d+) train_loss", console.file.getvalue())  # between the terminal's codes
    assert printed == ["1", "2"]  # each epoch's line, once


def test_a_training_pass_cancelled_before_the_display_saw_it_is_not_an_error():
    """fastai runs after_train when a callback ahead of the display cancels before_train: the display has no
    count for that pass and moves nothing, as fastai's own ProgressCallback does."""
    from fastai.callback.core import Callback, CancelTrainException

    from recipes.progress import RichProgress
    from recipes.stats import EpochStats
    from tests.fixtures import learner

    class SkipFirstTraining(Callback):
        order = RichProgress.order - 1

        def before_train(self):
            if self.epoch == 0:
                raise CancelTrainException()

    console = Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None)
    stats = EpochStats()
    progress = RichProgress(console, stats)
    learn = learner("baseline", cbs=[SkipFirstTraining(), stats, progress], bs=8, epochs=2)
    seen = []

    class Watch(Callback):
        order = RichProgress.order + 1

        def after_train(self):
            seen.append([(t.description, t.completed) for t in progress.bars.tasks if t.id != progress.fit_task])

    learn.add_cb(Watch())
    learn.fit(2)
    assert seen == [[], [("epoch 2/2", 16)]]  # no bar for the cancelled pass, then the next epoch's, whole
    assert re.findall(r"epoch +(\d+) train_loss", console.file.getvalue()) == ["1", "2"]  # both epochs' lines
