"""`bench perf --overhead`: the trainer's host work per training step, measured where the step's arithmetic is nothing.

Both sides train `tiny_model` (one 3x3 convolution and a linear layer) on 8x8 images at batch 32, no
augmentation, not compiled (the device's precision as `recipe run` resolves it), with the project's
device loaders, so that a step's arithmetic costs next to nothing and the difference is the host work
of the loop:

- plain: `bench.perf.plain_fit`, the hand-written loop (lr set per iteration, forward, loss, backward,
  SGD step, zero_grad);
- trainer: `recipes.fit.fit_one`, what `recipe run` trains with (the fastai Learner of
  `recipes.build.build_learner`, its default callbacks, the NaN check, the per-epoch statistics, the
  checkpoint, and the progress display `recipe run` adds, `recipes.progress.RichProgress`, drawing into
  a 120-column terminal held in memory), into a temporary run folder. (A `bench replay` job trains the
  same without the display, with a deadline callback that acts at the end of an epoch only.)

Each side's time per step is its training pass's seconds over its batches, per epoch (the first epoch
of each fit, the warm-up, left out); the fits alternate (plain, trainer, plain, trainer, ...) and each
side's median over all its epochs is compared: `ratio = trainer / plain` (and the fastest epoch of
each, `ratio_best`). Other jobs on the cores preempt most epochs of 50 steps, so a second pair of fits a
repeat times each step alone: a forward pre-hook on the model stamps `time.perf_counter_ns` at every
training forward (the same hook on both sides), and the time between two forwards of an epoch is one step;
each side's low percentile (`STEP_PERCENTILE`) of its steps, `ratio_steps`, is what is left of a quiet
machine's figure when the cores are shared (a step of half a millisecond is rarely preempted). A last,
instrumented trainer fit times every batch event's dispatch and every callback's event method with
`time.perf_counter_ns` (training batches only): the median call times the calls per step (each figure
includes its own timing wrapper, a few tenths of a us a call, so the per-event sum is above the added time);
and each callback's epoch-event methods, in ms per epoch (the costs at the epochs' edges: those of
before_train and after_train fall in the training pass that the epoch medians time); and the lr schedule's
part of an epoch's checkpoint at the end of a 200-epoch run (`lr_checkpoint_ms`).
Written by hand: no library times a fastai Learner's host work against its own plain-loop equivalent.
"""
from __future__ import annotations

import dataclasses
import io
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from fastai.callback.core import Callback
from rich.console import Console
from torch import nn

from bench.perf import plain_fit
from recipes.build import resolve_device
from recipes.checkpoint import digest
from recipes.fit import fit_one
from recipes.parse import parse_recipe
from recipes.progress import RichProgress
from recipes.recipe import Recipe
from recipes.speed import resolve_speed
from tricks.data import ImageData, Split
from tricks.schedules import LRSchedule, warmup_cosine

FULL_RUN_STEPS, FULL_RUN_EPOCH_STEPS = 39_000, 195  # a 200-epoch CIFAR-10 run at batch 256 (drop_last)
GOAL_ADDED_US = 50.0  # issue 18: the trainer adds at most this per step on such a model
STEP_PERCENTILE = 10  # of the single steps' times: the quiet machine's figure under other jobs' load
BATCH_EVENTS = ("before_batch", "after_pred", "after_loss", "before_backward", "after_backward", "before_step",
                "after_step", "after_batch", "after_cancel_batch", "after_cancel_backward", "after_cancel_step")
EPOCH_EVENTS = ("before_epoch", "before_train", "after_train", "before_validate", "after_validate", "after_epoch")
CLASSES, CHANNELS, SIZE, WIDTH = 10, 3, 8, 4


@dataclass(frozen=True)
class OverheadSizes:
    steps: int = 50  # training batches per epoch
    epochs: int = 8  # per fit; the first is the warm-up
    repeats: int = 7  # fits per side
    bs: int = 32


FULL = OverheadSizes()
QUICK = OverheadSizes(steps=20, epochs=4, repeats=3)


def tiny_model() -> nn.Module:
    """One 3x3 convolution (3 -> 4 channels) and a linear layer (4x8x8 -> 10 classes)."""
    return nn.Sequential(nn.Conv2d(CHANNELS, WIDTH, 3, padding=1), nn.Flatten(),
                         nn.Linear(WIDTH * SIZE * SIZE, CLASSES))


def tiny_data(sizes: OverheadSizes) -> ImageData:
    """Seeded uint8 noise, 8x8, 10 classes: `steps` batches of training images and one batch of test images."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, CHANNELS, SIZE, SIZE), dtype=torch.uint8, generator=g)
        return Split(images, torch.arange(n) % CLASSES)

    return ImageData("folder", tuple(f"c{i}" for i in range(CLASSES)), split(sizes.steps * sizes.bs),
                     split(sizes.bs), "overhead", "synthetic")


def overhead_recipe(sizes: OverheadSizes, device: torch.device) -> Recipe:
    """The baseline recipe at batch `bs`, without augmentation, resolved for `device` as `recipe run` does, but
    not compiled: the model's call is the same work on both sides, and a compile per fit (two per repeat)
    would take minutes, past dynamo's limit of recompiles for one function (then the fits would run eagerly)."""
    recipe = parse_recipe("baseline", epochs=sizes.epochs, bs=sizes.bs, eval_bs=sizes.bs, device=str(device),
                          crop_pad=0, flip=False, warmup_epochs=sizes.epochs / 2, compile=False)
    return resolve_speed(recipe, device)[0]


def stamped_model(stamps: list[int]) -> Callable[[], nn.Module]:
    """A builder of `tiny_model` whose every training forward first appends `time.perf_counter_ns()` to `stamps`
    (a forward pre-hook)."""

    def stamp(module: nn.Module, args) -> None:
        if module.training:
            stamps.append(time.perf_counter_ns())

    def make() -> nn.Module:
        model = tiny_model()
        model.register_forward_pre_hook(stamp)
        return model

    return make


def step_us(stamps: list[int], sizes: OverheadSizes) -> list[float]:
    """Microseconds between consecutive training forwards within each epoch after the first (one step each)."""
    epochs = [stamps[e * sizes.steps:(e + 1) * sizes.steps] for e in range(1, len(stamps) // sizes.steps)]
    return [(b - a) / 1e3 for steps in epochs for a, b in zip(steps, steps[1:])]


def percentile(values: list[float], pct: float) -> float:
    """The value `pct` percent of `values` lie below (the nearest rank)."""
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, int(len(ranked) * pct / 100))]


def trainer_fit(recipe: Recipe, data: ImageData, device: torch.device, cbs=(),
                make_model: Callable[[], nn.Module] = tiny_model) -> list[float]:
    """`fit_one` of the tiny model into a temporary run folder, with `recipe run`'s progress display (into a
    terminal held in memory); each epoch's training seconds."""
    stats = []
    terminal = Console(file=io.StringIO(), force_terminal=True, width=120)

    def display(s):
        stats.append(s)
        return [RichProgress(terminal, s), *cbs]

    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        fit_one(recipe, Path(tmp) / "run", data, device, extra_cbs=[], callbacks=display,
                on_start=lambda info: None, info={}, checkpoint=True, make_model=make_model)
    return [r["train_seconds"] for r in stats[-1].records]


class EventTimer(Callback):
    """Times, over the training batches of a fit, each batch event's dispatch by the Learner and each
    callback's event method, in nanoseconds, and every call of each callback's epoch-event methods. It wraps the
    Learner's `_call_one` and the callbacks' event methods at before_fit (instance attributes) and takes the
    wrappers away at after_fit."""

    order = -10 ** 6

    def __init__(self):
        self.events: dict[str, list[int]] = defaultdict(list)  # ns of each call
        self.methods: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.epoch_methods: dict[tuple[str, str], list[int]] = defaultdict(list)  # ns of each epoch-event call
        self.train_passes: list[int] = []  # the epoch of each

    def before_fit(self):
        learn = self.learn
        dispatch = learn._call_one

        def timed_dispatch(name):
            if name not in BATCH_EVENTS or not learn.training:
                return dispatch(name)
            start = time.perf_counter_ns()
            try:
                return dispatch(name)
            finally:
                self.events[name].append(time.perf_counter_ns() - start)

        vars(learn)["_call_one"] = timed_dispatch
        self.wrapped = [(cb, name) for cb in learn.cbs if cb is not self for name in BATCH_EVENTS + EPOCH_EVENTS
                        if getattr(type(cb), name, None) is not None]
        for cb, name in self.wrapped:
            vars(cb)[name] = self.timed_method(cb, name, getattr(cb, name))

    def timed_method(self, cb: Callback, name: str, method):
        key, learn = (type(cb).__name__, name), self.learn
        if name in EPOCH_EVENTS:
            return self.timed_epoch_method(key, method)

        def timed():
            if not learn.training:
                return method()
            start = time.perf_counter_ns()
            try:
                return method()
            finally:
                self.methods[key].append(time.perf_counter_ns() - start)

        return timed

    def timed_epoch_method(self, key: tuple[str, str], method):
        def timed():
            start = time.perf_counter_ns()
            try:
                return method()
            finally:
                self.epoch_methods[key].append(time.perf_counter_ns() - start)

        return timed

    def before_train(self):
        self.train_passes.append(self.epoch)  # an append: no Callback attribute set

    @property
    def epochs(self) -> int:
        """The epochs timed: one training pass each."""
        return len(self.train_passes)

    @property
    def steps(self) -> int:
        """The training steps timed: one before_batch each (the timer has no batch event of its own to cost)."""
        return len(self.events.get("before_batch", ()))

    def after_fit(self):
        vars(self.learn).pop("_call_one", None)
        for cb, name in self.wrapped:
            vars(cb).pop(name, None)


def per_step_us(seconds: list[float], steps: int) -> list[float]:
    """Microseconds per step of each epoch after the first."""
    return [1e6 * s / steps for s in seconds[1:]]


def us_per_step(ns: list[int], steps: int) -> float:
    """The median call's microseconds times the calls per step: robust to the other jobs' preemptions."""
    return statistics.median(ns) / 1e3 * len(ns) / steps


def callback_costs(timer: EventTimer) -> dict[str, dict[str, Any]]:
    """{callback: {'us_per_step', 'events': {event: us per step}}}, the costliest first."""
    out: dict[str, dict[str, Any]] = {}
    for (cb, event), ns in timer.methods.items():
        entry = out.setdefault(cb, {"us_per_step": 0.0, "events": {}})
        entry["events"][event] = us_per_step(ns, timer.steps)
        entry["us_per_step"] += entry["events"][event]
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["us_per_step"]))


def epoch_costs(timer: EventTimer) -> dict[str, dict[str, Any]]:
    """{callback: {'ms_per_epoch', 'events': {event: ms per epoch}}} of the callbacks' epoch events (the median
    call times the calls per epoch), the costliest first."""
    out: dict[str, dict[str, Any]] = {}
    for (cb, event), ns in timer.epoch_methods.items():
        entry = out.setdefault(cb, {"ms_per_epoch": 0.0, "events": {}})
        entry["events"][event] = statistics.median(ns) / 1e6 * len(ns) / timer.epochs
        entry["ms_per_epoch"] += entry["events"][event]
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["ms_per_epoch"]))


def lr_checkpoint_ms(steps: int = FULL_RUN_STEPS, epoch_steps: int = FULL_RUN_EPOCH_STEPS, epochs: int = 7) -> float:
    """The median milliseconds, over a run's last `epochs` epochs (of `epoch_steps` steps, `steps` in all), of the
    lr schedule's part of each epoch's checkpoint: `LRSchedule.checkpoint_state`, the sha256 and `torch.save` of it
    into memory, as `recipes.checkpoint` does them; of a warmup-cosine schedule (its values do not change the cost)."""
    schedule = LRSchedule(warmup_cosine(peak_lr=0.2, floor_lr=1e-4, warmup_pct=0.05))
    lrs = [schedule.schedule(i / steps) for i in range(steps)]
    schedule.lrs = lrs[:steps - epoch_steps * (epochs + 1)]
    took = []
    for _ in range(epochs + 1):  # the first is the warm-up: all the lrs so far converted at once
        schedule.lrs.extend(lrs[len(schedule.lrs):len(schedule.lrs) + epoch_steps])
        start = time.perf_counter()
        state = {"callbacks": {"LRSchedule": schedule.checkpoint_state()}}
        digest(state)
        torch.save(state, io.BytesIO())
        took.append(1e3 * (time.perf_counter() - start))
    return statistics.median(took[1:])


def run_overhead(device: str = "auto", sizes: OverheadSizes = FULL, log=print) -> dict[str, Any]:
    """Both sides' microseconds per step, interleaved fits, and the instrumented trainer fit's costs."""
    dev = resolve_device(device)
    data = tiny_data(sizes)
    recipe = overhead_recipe(sizes, dev)
    plain, trainer, plain_steps, trainer_steps = [], [], [], []
    for r in range(sizes.repeats):
        plain += per_step_us(plain_fit(recipe, data, dev, make_model=tiny_model)["train_seconds"], sizes.steps)
        trainer += per_step_us(trainer_fit(recipe, data, dev), sizes.steps)
        stamps_plain, stamps_trainer = [], []
        plain_fit(recipe, data, dev, make_model=stamped_model(stamps_plain))
        trainer_fit(recipe, data, dev, make_model=stamped_model(stamps_trainer))
        plain_steps += step_us(stamps_plain, sizes)
        trainer_steps += step_us(stamps_trainer, sizes)
        log(f"repeat {r + 1}/{sizes.repeats}: plain {statistics.median(plain):.1f} us, trainer "
            f"{statistics.median(trainer):.1f} us per step so far")
    timer = EventTimer()
    trainer_fit(recipe, data, dev, cbs=[timer])
    plain_us, trainer_us = statistics.median(plain), statistics.median(trainer)
    # every registered callback of the trainer, those with no batch event at 0
    names = [type(cb).__name__ for cb in timer.learn.cbs if cb is not timer]
    costs = callback_costs(timer)
    costs.update({n: {"us_per_step": 0.0, "events": {}} for n in names if n not in costs})
    return {
        "device": str(dev), "threads": torch.get_num_threads(),
        "setup": f"one 3x3 conv ({CHANNELS}->{WIDTH}) and a linear layer on {SIZE}x{SIZE} inputs, batch {sizes.bs}, "
                 f"no augmentation, not compiled; {sizes.steps} steps x {sizes.epochs} epochs (first left out), "
                 f"{sizes.repeats} fits per side, alternating; medians",
        "sizes": dataclasses.asdict(sizes),
        "plain_us_per_step": plain, "trainer_us_per_step": trainer,
        "plain_us": plain_us, "trainer_us": trainer_us, "added_us": trainer_us - plain_us,
        "ratio": trainer_us / plain_us, "goal_added_us": GOAL_ADDED_US,
        # the fastest epoch of each side: what a quiet machine gives when other jobs share the cores
        "plain_us_best": min(plain), "trainer_us_best": min(trainer), "ratio_best": min(trainer) / min(plain),
        # single steps between two training forwards: their low percentile is the quiet machine's figure
        "step_percentile": STEP_PERCENTILE, "steps_timed": len(plain_steps),
        "plain_us_step": percentile(plain_steps, STEP_PERCENTILE),
        "trainer_us_step": percentile(trainer_steps, STEP_PERCENTILE),
        "added_us_step": percentile(trainer_steps, STEP_PERCENTILE) - percentile(plain_steps, STEP_PERCENTILE),
        "ratio_steps": percentile(trainer_steps, STEP_PERCENTILE) / percentile(plain_steps, STEP_PERCENTILE),
        "callbacks": costs, "events": dict(sorted(((k, us_per_step(ns, timer.steps)) for k, ns in timer.events.items()),
                                                  key=lambda kv: -kv[1])),
        "instrumented_steps": timer.steps,
        "epoch_callbacks": epoch_costs(timer), "instrumented_epochs": timer.epochs,
        "lr_checkpoint_ms": lr_checkpoint_ms(), "lr_checkpoint_lrs": FULL_RUN_STEPS,
    }


def overhead_lines(o: dict[str, Any]) -> list[str]:
    """What `bench perf --overhead` prints: both sides, the ratio on its own line, then the cost tables."""
    lines = [f"trainer overhead ({o['device']}, {o['threads']} threads): {o['setup']}",
             f"plain loop: {o['plain_us']:.1f} us per step",
             f"trainer:    {o['trainer_us']:.1f} us per step",
             f"added:      {o['added_us']:.1f} us per step (goal <= {o['goal_added_us']:.0f})",
             f"ratio = {o['ratio']:.3f}",
             f"fastest epochs (other jobs on the cores): plain {o['plain_us_best']:.1f} us, trainer "
             f"{o['trainer_us_best']:.1f} us per step, ratio {o['ratio_best']:.3f}",
             f"single steps, {o['step_percentile']}th percentile of {o['steps_timed']} a side: plain "
             f"{o['plain_us_step']:.1f} us, trainer {o['trainer_us_step']:.1f} us, added {o['added_us_step']:.1f} us, "
             f"ratio_steps = {o['ratio_steps']:.3f}", "",
             f"per callback, us per training step (its event methods; {o['instrumented_steps']} steps timed):"]
    for name, c in o["callbacks"].items():
        parts = ", ".join(f"{e} {us:.1f}" for e, us in c["events"].items()) or "no batch event"
        lines.append(f"  {name:<20} {c['us_per_step']:7.1f}  ({parts})")
    lines += ["per event, us per training step (the Learner's dispatch, the callbacks' methods included):"]
    lines += [f"  {name:<20} {us:7.1f}" for name, us in o["events"].items()]
    lines.append(f"  {'all events':<20} {sum(o['events'].values()):7.1f}")
    lines.append(f"per callback, ms per epoch (its epoch events; {o['instrumented_epochs']} epochs timed; before_train "
                 "and after_train in the training pass):")
    for name, c in o["epoch_callbacks"].items():
        parts = ", ".join(f"{e} {ms:.2f}" for e, ms in c["events"].items())
        lines.append(f"  {name:<20} {c['ms_per_epoch']:7.2f}  ({parts})")
    lines.append(f"the lr schedule's part of a checkpoint at the end of a 200-epoch run ({o['lr_checkpoint_lrs']:,} "
                 f"lrs): {o['lr_checkpoint_ms']:.2f} ms an epoch (its state, sha256 and torch.save)")
    return lines
