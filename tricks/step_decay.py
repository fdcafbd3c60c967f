"""Step (multiplicative) lr decay, the notes' 'mul' (S7: 91.31 against cosine's 92.28).

    lr(t) = peak * gamma ** (number of milestones <= t)     t in epochs

which is torch's `MultiStepLR` in its closed form (`_get_closed_form_lr`: base_lr * gamma **
bisect_right(milestones, epoch)), written here because MultiStepLR is a stateful object bound to an
optimizer. Milestones are epochs as given (never scaled with the run). With warmup=true (the default)
the recipe's warmup (warmup_epochs from warmup_start_lr, linear or exp) comes first; the lr is set
each iteration or each epoch as the recipe's `step` says, so only the warmup sees the difference.
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Callable, Sequence

from tricks.errors import ConfigError
from tricks.registry import Param, check_arguments, register_trick
from tricks.schedules import LRSchedule
from tricks.sgdr import warmup_lr


def step_decay_lr(t: float, *, peak: float, milestones: Sequence[int], gamma: float) -> float:
    """peak * gamma ** (milestones <= t); `milestones` sorted, in epochs."""
    return peak * gamma ** bisect_right(milestones, t)


def step_decay_schedule(*, peak: float, milestones: Sequence[int], gamma: float, warmup_len: float = 0.0,
                        warmup_start: float = 1e-5, warmup_shape: str = "linear") -> Callable[[float], float]:
    """lr(t), t in epochs: warmup for `warmup_len` epochs (0: none), then step decay."""

    def lr_at(t: float) -> float:
        if t < warmup_len:
            return warmup_lr(t, peak=peak, start=warmup_start, length=warmup_len, shape=warmup_shape)
        return step_decay_lr(t, peak=peak, milestones=milestones, gamma=gamma)

    return lr_at


def parse_milestones(at: str, epochs: int, warmup_epochs: float) -> list[int]:
    """'100/150' -> [100, 150]; each an epoch inside the run and after the warmup, increasing."""
    try:
        milestones = [int(m) for m in at.split("/")]
    except ValueError:
        raise ConfigError(f"stepdecay: at={at!r} must be whole epochs separated by '/', e.g. at=100/150") from None
    for m in milestones:
        if m >= epochs:
            raise ConfigError(f"stepdecay: milestone {m} is not inside the run of {epochs} epochs; "
                              f"give milestones below {epochs}")
        if m <= warmup_epochs:
            raise ConfigError(f"stepdecay: milestone {m} is not after the warmup of {warmup_epochs:g} epochs; "
                              "give later milestones or warmup=false")
    if milestones != sorted(set(milestones)):
        raise ConfigError(f"stepdecay: at={at} must be increasing epochs, e.g. at=100/150")
    return milestones


def build_step_decay(recipe, *, at: str, gamma: float, warmup: bool) -> "StepDecay":
    warmup_epochs = recipe.warmup_epochs if warmup else 0.0
    return StepDecay(peak=recipe.lr, milestones=parse_milestones(at, recipe.epochs, warmup_epochs), gamma=gamma,
                     step=recipe.step, warmup_epochs=warmup_epochs, warmup_start=recipe.warmup_start_lr,
                     warmup_shape=recipe.warmup)


@register_trick(
    "stepdecay",
    params=(
        Param("at", str, "100/150", "milestone epochs, '/'-separated", epochs=True),
        Param("gamma", float, 0.1, "lr multiplier at each milestone", low=0, high=1, low_open=True, high_open=True),
        Param("warmup", bool, True, "the recipe's warmup first"),
    ),
    description="multiply the lr by gamma at fixed epochs, the notes' 'mul' (replaces the lr schedule)",
    paper="He et al. 2016, Deep Residual Learning for Image Recognition, arXiv:1512.03385",
    touches=("lr",),
    build=build_step_decay,
)
class StepDecay(LRSchedule):
    """Sets the step-decay lr before every training batch; t = epochs done (fractional with step='iter').
    The peak is `peak`, else (fastai's convention) the lr given to `fit`: `learn.fit(200, 0.1, cbs=StepDecay())`.
    With several param groups every group keeps its ratio to the last one (`tricks.schedules.lr_ratios`).
    """

    order = 60  # an lr schedule: replaces the default warmup + cosine

    def __init__(self, *, peak: float | None = None, milestones: Sequence[int] = (100, 150), gamma: float = 0.1,
                 step: str = "iter", warmup_epochs: float = 0.0, warmup_start: float = 1e-5,
                 warmup_shape: str = "linear"):
        check_arguments("stepdecay", gamma=gamma)
        self.peak, self.milestones, self.gamma = peak, list(milestones), gamma
        self.warmup_epochs, self.warmup_start, self.warmup_shape = warmup_epochs, warmup_start, warmup_shape
        super().__init__(self.schedule_for(peak), step=step)

    def schedule_for(self, peak: float | None):
        """The lr schedule with this peak; None (no peak yet) until before_fit takes the lr given to fit."""
        if peak is None:
            return None
        return step_decay_schedule(peak=peak, milestones=self.milestones, gamma=self.gamma,
                                   warmup_len=self.warmup_epochs, warmup_start=self.warmup_start,
                                   warmup_shape=self.warmup_shape)

    def before_fit(self):
        super().before_fit()
        if self.active and self.peak is None:
            self.schedule = self.schedule_for(self.fit_lr())

    def progress(self) -> float:
        """Here: epochs done (k * n_iter / n_iter is exactly k, so milestones switch on the right batch)."""
        if self.step == "iter":
            return self.learn.train_iter / self.learn.n_iter
        return self.learn.epoch
