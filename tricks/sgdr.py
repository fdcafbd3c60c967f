"""SGDR: cosine annealing with warm restarts (Loshchilov & Hutter 2017, arXiv:1608.03983).

Cycle i has length T_i = len * mult**i and starts at t_i = len * (mult**i - 1) / (mult - 1)
(t_i = i * len when mult = 1). Within it, at time t (in the unit of `len`):

    lr(t) = floor + (peak * decay**i - floor) * (1 + cos(pi * (t - t_i) / T_i)) / 2

With warmup=true (the default) the recipe's warmup (warmup_epochs from warmup_start_lr, linear or
exp) comes first and the cycles start after it. The notes' runs only add up with their 10-epoch
warmup first: 10 + (10+20+40+80) = 160, 10 + 310 = 320, 10 + (40+60+90) = 200, 10 + 5*38 = 200. The
run is recipe.epochs long (the notes' `max`) whether or not it ends on a cycle boundary: len=10,
mult=2, max=200 ends 40 epochs into a 160-epoch cycle, at a high lr (the notes' 81.63).

`sgdr_lr` MIRRORS timm's `CosineLRScheduler._get_lr` (with warmup_prefix=True) expression for
expression: the same cycle index from a log, the same float operations, so it gives timm's lr
exactly (tested over whole runs); timm's scheduler is bound to an optimizer, so it is not called. One
difference: where the log lands a hair below an exact cycle start (mult=3, len=10, t=1210) timm
gives the old cycle's floor, `sgdr_lr` the restart the formula asks for. Exp warmup is not in timm.
"""
from __future__ import annotations

import math
from typing import Callable

from tricks.errors import ConfigError
from tricks.registry import Param, check_arguments, register_trick
from tricks.schedules import LRSchedule
from tricks.surgery import undone_on_refusal

UNITS = ("epoch", "iter")


def sgdr_cycle(t: float, cycle_len: float, cycle_mul: float) -> tuple[int, float, float]:
    """(i, t - t_i, T_i): the cycle that holds t, the time into it, and its length (timm's maths)."""
    def cycle(i: int) -> tuple[int, float, float]:
        if cycle_mul == 1:
            return i, t - cycle_len * i, cycle_len
        return i, t - (1 - cycle_mul ** i) / (1 - cycle_mul) * cycle_len, cycle_mul ** i * cycle_len

    if cycle_mul == 1:
        i = int(t // cycle_len)
    else:
        i = math.floor(math.log(1 - t / cycle_len * (1 - cycle_mul), cycle_mul))
    i, t_curr, t_i = cycle(i)
    while t_curr < 0:  # log rounded up past a cycle start
        i, t_curr, t_i = cycle(i - 1)
    while t_curr >= t_i:  # log rounded down below a cycle start
        i, t_curr, t_i = cycle(i + 1)
    return i, t_curr, t_i


def sgdr_lr(t: float, *, peak: float, floor: float, cycle_len: float, cycle_mul: float = 2.0,
            cycle_decay: float = 1.0) -> float:
    """The SGDR lr at time t >= 0, t in the unit of `cycle_len`."""
    i, t_curr, t_i = sgdr_cycle(t, cycle_len, cycle_mul)
    return floor + 0.5 * (peak * cycle_decay ** i - floor) * (1 + math.cos(math.pi * t_curr / t_i))


def warmup_lr(t: float, *, peak: float, start: float, length: float, shape: str = "linear") -> float:
    """Warmup at time t < length: linear as timm's `warmup_t` (start + t * step), or exponential."""
    if shape == "linear":
        return start + t * ((peak - start) / length)
    return start * (peak / start) ** (t / length)


def sgdr_schedule(*, peak: float, floor: float, cycle_len: float, cycle_mul: float, cycle_decay: float,
                  warmup_len: float = 0.0, warmup_start: float = 1e-5,
                  warmup_shape: str = "linear") -> Callable[[float], float]:
    """lr(t): warmup for `warmup_len` (0: none), then SGDR from t = warmup_len (timm's warmup_prefix)."""

    def lr_at(t: float) -> float:
        if t < warmup_len:
            return warmup_lr(t, peak=peak, start=warmup_start, length=warmup_len, shape=warmup_shape)
        return sgdr_lr(t - warmup_len, peak=peak, floor=floor, cycle_len=cycle_len, cycle_mul=cycle_mul,
                       cycle_decay=cycle_decay)

    return lr_at


def build_sgdr(recipe, **p) -> "SGDR":
    floor = recipe.eta if p["floor"] == -1 else p["floor"]
    if floor < 0:
        raise ConfigError(f"sgdr: floor={p['floor']} must be >= 0, or -1 for the recipe's eta")
    if floor >= recipe.lr:
        raise ConfigError(f"sgdr: floor={floor} must be below the peak lr={recipe.lr}")
    return SGDR(peak=recipe.lr, floor=floor, cycle_len=p["len"], unit=p["unit"], cycle_mul=p["mult"],
                cycle_decay=p["decay"], step=p["step"], warmup_epochs=recipe.warmup_epochs if p["warmup"] else 0.0,
                warmup_start=recipe.warmup_start_lr, warmup_shape=recipe.warmup)


@register_trick(
    "sgdr",
    params=(
        Param("len", float, 10.0, "first cycle length, in `unit`", low=0, low_open=True, epochs=True),
        Param("unit", str, "epoch", "unit of len", choices=UNITS),
        Param("mult", float, 2.0, "cycle length multiplier", low=1),
        Param("decay", float, 1.0, "peak lr multiplier per cycle", low=0, high=1, low_open=True),
        Param("step", str, "epoch", "set the lr each epoch or each iteration", choices=UNITS),
        Param("warmup", bool, True, "the recipe's warmup first, cycles after it"),
        Param("floor", float, -1.0, "lowest lr; -1 = the recipe's eta", low=-1),
    ),
    description="cosine annealing with warm restarts (replaces the lr schedule)",
    paper="Loshchilov & Hutter 2017, SGDR: Stochastic Gradient Descent with Warm Restarts, arXiv:1608.03983",
    touches=("lr",),
    build=build_sgdr,
)
class SGDR(LRSchedule):
    """Sets the SGDR lr before every training batch; the peak is `peak`, else (fastai's convention) the lr
    given to `fit`: `learn.fit(200, 0.2, cbs=SGDR(cycle_len=10, cycle_mul=2))`. `floor` defaults to 0
    (timm's `lr_min`, torch's `eta_min`).

    Time t is counted in iterations when step='iter' or unit='iter' (a len in epochs is then len *
    iterations per epoch), else in epochs; with step='epoch' the lr is constant within an epoch.
    With several param groups (`fit(n, slice(1e-5, 1e-2))`, `fine_tune`) the last group follows the schedule
    and every other group keeps its ratio to it (`tricks.schedules.lr_ratios`), as fastai's schedules do.
    """

    order = 60  # an lr schedule: replaces the default warmup + cosine

    def __init__(self, *, peak: float | None = None, floor: float = 0.0, cycle_len: float = 10.0, unit: str = "epoch",
                 cycle_mul: float = 2.0, cycle_decay: float = 1.0, step: str = "epoch", warmup_epochs: float = 0.0,
                 warmup_start: float = 1e-5, warmup_shape: str = "linear"):
        check_arguments("sgdr", len=cycle_len, unit=unit, mult=cycle_mul, decay=cycle_decay, step=step)
        super().__init__(schedule=lambda t: peak, step=step)  # the real schedule is made at before_fit
        self.peak, self.floor, self.cycle_len, self.unit = peak, floor, cycle_len, unit
        self.cycle_mul, self.cycle_decay = cycle_mul, cycle_decay
        self.warmup_epochs, self.warmup_start, self.warmup_shape = warmup_epochs, warmup_start, warmup_shape

    def in_iters(self) -> bool:
        return self.step == "iter" or self.unit == "iter"

    def before_fit(self):
        super().before_fit()
        if not self.active:
            return
        n_iter = len(self.learn.dls.train)
        per_epoch = n_iter if self.in_iters() else 1  # time units per epoch
        cycle_len = self.cycle_len * (per_epoch if self.unit == "epoch" else 1)
        peak = self.fit_lr() if self.peak is None else self.peak
        if not self.floor < peak:
            with undone_on_refusal(self.learn):  # a refused fit leaves no model surgery of the other tricks behind
                raise ConfigError(f"sgdr: floor={self.floor} must be below the peak lr={peak}")
        self.schedule = sgdr_schedule(peak=peak, floor=self.floor, cycle_len=cycle_len,
                                      cycle_mul=self.cycle_mul, cycle_decay=self.cycle_decay,
                                      warmup_len=self.warmup_epochs * per_epoch, warmup_start=self.warmup_start,
                                      warmup_shape=self.warmup_shape)

    def progress(self) -> float:
        """Here: the time t fed to the schedule, in iterations or epochs (see the class docstring)."""
        if self.step == "iter":
            return self.learn.train_iter
        return self.learn.epoch * (len(self.learn.dls.train) if self.unit == "iter" else 1)
