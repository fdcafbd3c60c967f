"""The progress display fits the terminal: nothing is cut to '…' at 80 columns or wider."""
from __future__ import annotations

import io

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
