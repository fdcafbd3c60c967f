"""`bench perf --overhead` at a tiny size: what it prints and writes, never a timing."""
from __future__ import annotations

import json
import re

import pytest

import bench.overhead
from bench.cli import main
from bench.overhead import (BATCH_EVENTS, EPOCH_EVENTS, EventTimer, OverheadSizes, overhead_recipe, percentile,
                            stamped_model, step_us, tiny_data, trainer_fit)

TINY = OverheadSizes(steps=3, epochs=3, repeats=2, bs=8)
DEFAULT_CALLBACKS = {"TrainEval", "LRSchedule", "EpochStats", "StopOnNonFinite", "Checkpoint",
                     "RichProgress"}  # what `recipe run` trains with, its progress display included
STEP_EVENTS = {"before_batch", "after_pred", "after_loss", "before_backward", "after_backward", "before_step",
               "after_step", "after_batch"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_overhead_prints_both_sides_the_ratio_on_its_own_line_and_every_callbacks_cost(tmp_path, capsys,
                                                                                      monkeypatch):
    monkeypatch.setattr(bench.overhead, "QUICK", TINY)
    assert main(["perf", "--overhead", "--quick", "--device", "cpu", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out.splitlines()
    o = json.loads((tmp_path / "r" / "overhead.json").read_text())
    samples = TINY.repeats * (TINY.epochs - 1)  # the first epoch of each fit is the warm-up
    assert len(o["plain_us_per_step"]) == len(o["trainer_us_per_step"]) == samples
    assert o["ratio"] == o["trainer_us"] / o["plain_us"] and o["added_us"] == o["trainer_us"] - o["plain_us"]
    assert all(v > 0 for v in [*o["plain_us_per_step"], *o["trainer_us_per_step"]])
    assert f"ratio = {o['ratio']:.3f}" in out  # a line of its own
    assert f"plain loop: {o['plain_us']:.1f} us per step" in out
    assert f"trainer:    {o['trainer_us']:.1f} us per step" in out
    assert o["ratio_best"] == min(o["trainer_us_per_step"]) / min(o["plain_us_per_step"])
    assert o["steps_timed"] == TINY.repeats * (TINY.epochs - 1) * (TINY.steps - 1)  # between two forwards of an epoch
    assert o["ratio_steps"] == o["trainer_us_step"] / o["plain_us_step"] > 0
    assert (f"single steps, 10th percentile of {o['steps_timed']} a side: plain {o['plain_us_step']:.1f} us, trainer "
            f"{o['trainer_us_step']:.1f} us, added {o['added_us_step']:.1f} us, ratio_steps = {o['ratio_steps']:.3f}"
            in out)
    assert o["instrumented_steps"] == TINY.steps * TINY.epochs
    assert set(o["callbacks"]) == DEFAULT_CALLBACKS  # each default callback, those without a batch event at 0
    assert set(o["callbacks"]["StopOnNonFinite"]["events"]) == {"after_loss", "after_batch"}
    assert set(o["callbacks"]["LRSchedule"]["events"]) == {"before_batch"}
    assert set(o["callbacks"]["RichProgress"]["events"]) == {"after_batch"}
    assert set(o["events"]) == STEP_EVENTS  # every event a training step fires, none of evaluation's
    table = out[out.index(next(line for line in out if line.startswith("per callback"))) + 1:]
    listed = {m.group(1) for line in table if (m := re.match(r"  (\w+) +[\d.]+", line))}
    assert DEFAULT_CALLBACKS | STEP_EVENTS <= listed
    assert o["instrumented_epochs"] == TINY.epochs
    assert set(o["epoch_callbacks"]["RichProgress"]["events"]) == {"before_train", "after_train", "before_validate",
                                                                   "after_epoch"}  # adds, fills, renames, removes
    assert set(o["epoch_callbacks"]["Checkpoint"]["events"]) == {"after_epoch"}  # its save; before_fit not timed
    costs = o["epoch_callbacks"]["RichProgress"]
    assert costs["ms_per_epoch"] == sum(costs["events"].values()) > 0
    assert (f"per callback, ms per epoch (its epoch events; {TINY.epochs} epochs timed; before_train and after_train "
            "in the training pass):") in out
    assert any(re.fullmatch(rf"  RichProgress +{costs['ms_per_epoch']:.2f}  \(before_train [\d.]+, .*\)", line)
               for line in out)
    assert o["lr_checkpoint_lrs"] == 39_000 and o["lr_checkpoint_ms"] > 0
    assert (f"the lr schedule's part of a checkpoint at the end of a 200-epoch run (39,000 lrs): "
            f"{o['lr_checkpoint_ms']:.2f} ms an epoch (its state, sha256 and torch.save)") in out
    assert out[-1] == f"results: {tmp_path / 'r' / 'overhead.json'}"


def test_the_event_timer_counts_training_steps_and_takes_its_wrappers_away(tmp_path):
    import torch

    timer = EventTimer()
    trainer_fit(overhead_recipe(TINY, torch.device("cpu")), tiny_data(TINY), torch.device("cpu"), cbs=[timer])
    assert timer.steps == TINY.steps * TINY.epochs
    assert all(len(ns) == timer.steps for ns in timer.events.values())  # one per training step, not per test batch
    assert timer.epochs == TINY.epochs and all(len(ns) == TINY.epochs for ns in timer.epoch_methods.values())
    assert all(name not in vars(cb) for cb in timer.learn.cbs for name in BATCH_EVENTS + EPOCH_EVENTS)
    assert "_call_one" not in vars(timer.learn)


def test_a_step_is_the_time_between_two_training_forwards_of_an_epoch_after_the_first():
    sizes = OverheadSizes(steps=3, epochs=3)
    stamps = [0, 1000, 2000, 10_000, 10_500, 12_500, 20_000, 23_000, 23_250]  # ns, three forwards an epoch
    assert step_us(stamps, sizes) == [0.5, 2.0, 3.0, 0.25]
    assert percentile([3.0, 0.5, 2.0, 0.25], 10) == 0.25 and percentile([3.0, 0.5, 2.0, 0.25], 50) == 2.0


def test_the_stamped_model_stamps_training_forwards_only():
    import torch

    stamps = []
    model = stamped_model(stamps)()
    model(torch.zeros(2, 3, 8, 8))
    model.eval()
    model(torch.zeros(2, 3, 8, 8))
    assert len(stamps) == 1


def test_overhead_refuses_only(tmp_path, capsys):
    assert main(["perf", "--overhead", "--only", "speed", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--only chooses among the GPU measurements" in err
    assert not (tmp_path / "r").exists()
