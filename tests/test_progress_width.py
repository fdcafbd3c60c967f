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
