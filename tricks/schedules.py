"""Learning-rate schedules as pure functions of training progress, and the callback that steps them.

Warmup then cosine (Goyal et al. 2017, "Accurate, Large Minibatch SGD", arXiv:1706.02677, for the
warmup; Loshchilov & Hutter 2017, "SGDR", arXiv:1608.03983, for the cosine):

    lr(p) = start + (peak - start) * p / w                                  for p < w  (linear warmup)
    lr(p) = start * (peak / start) ** (p / w)                               for p < w  (exp warmup)
    lr(p) = floor + (peak - floor) * (1 + cos(pi * (p - w) / (1 - w))) / 2  for p >= w

where p in [0, 1] is the fraction of training done and w the warmup fraction. The pieces are
fastai's `SchedLin`, `SchedExp` and `SchedCos`; the split between them is written here in float64
because fastai's `combine_scheds` computes positions in float32 and runs tensor ops every step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import LRFinder, ParamScheduler, SchedCos, SchedExp, SchedLin
from fastai.callback.tracker import ReduceLROnPlateau
from fastai.optimizer import OptimWrapper

from tricks.compiled_step import CompiledStepOptimizer, write_hyper
from tricks.errors import ConfigError
from tricks.lookahead import LookaheadOptimizer
from tricks.surgery import in_validation_context, undone_on_refusal

Schedule = Callable[[float], float]
WARMUPS = ("linear", "exp")
STEP_UNITS = ("iter", "epoch")


def warmup_cosine(
    *, peak_lr: float, floor_lr: float, warmup_pct: float, start_lr: float = 1e-5, warmup: str = "linear"
) -> Schedule:
    """lr as a function of progress p in [0, 1]: warmup over `warmup_pct`, then cosine to `floor_lr`."""
    if warmup not in WARMUPS:
        raise ValueError(f"warmup {warmup!r} is not one of {WARMUPS}")
    if not 0.0 <= warmup_pct < 1.0:
        raise ValueError(f"warmup_pct must be in [0, 1), got {warmup_pct}")
    warm = (SchedLin if warmup == "linear" else SchedExp)(start_lr, peak_lr)
    decay = SchedCos(peak_lr, floor_lr)

    def lr_at(p: float) -> float:
        if p < warmup_pct:
            return float(warm(p / warmup_pct))
        return float(decay(min(1.0, (p - warmup_pct) / (1.0 - warmup_pct))))

    return lr_at


def lr_ratios(opt) -> list[float]:
    """Each param group's lr over the last group's, as the optimizer holds them at before_fit: 1.0 for every group
    of a plain fit, the discriminative ratios of `fit(n, slice(1e-5, 1e-2))` or of fastai's `fine_tune` groups.
    The schedules scale each group from its own base lr with them, as fastai's ParamScheduler does."""
    lrs = [float(h["lr"]) for h in opt.hypers]
    return [1.0] * len(lrs) if lrs[-1] == 0 else [lr / lrs[-1] for lr in lrs]


def set_lr(opt, lr: float, ratios: list[float] | None = None) -> None:
    """Group i's lr = lr * ratios[i] (the last group's lr is `lr`; no ratios: every group's). For fastai's plain
    `OptimWrapper` around a torch optimizer (or the compiled step's) the torch groups' "lr" is written directly
    (what its set_hyper does, without converting every group's hyper-parameters to fastai's names first: ~0.2 ms
    a batch), in place where it is a tensor (`write_hyper`: the compiled step's lr, no host sync); any other
    optimizer (fastai's own, fastai's Lookahead) goes through its set_hyper; the lookahead trick's is looked
    through (`unwrap_lookahead`)."""
    groups = direct_lr_groups(opt)
    if groups is not None:
        write_lrs(groups, lr, [1.0] * len(groups) if ratios is None else ratios)
    else:
        opt = unwrap_lookahead(opt)
        opt.set_hyper("lr", [lr] * len(opt.hypers) if ratios is None else [lr * r for r in ratios])


def direct_lr_groups(opt) -> list[dict] | None:
    """The torch param groups whose "lr" `set_lr` writes directly: those of fastai's plain `OptimWrapper` or of the
    compiled step's optimizer (the lookahead trick's looked through); None for an optimizer set through its
    set_hyper. (Not len(opt.hypers): fastai builds every group's hypers to count them.)"""
    opt = unwrap_lookahead(opt)
    return opt.opt.param_groups if type(opt) in (OptimWrapper, CompiledStepOptimizer) else None


def write_lrs(groups: list[dict], lr: float, ratios: list[float]) -> None:
    """Group i's "lr" = lr * ratios[i], in place where it is a tensor (`write_hyper`)."""
    for group, ratio in zip(groups, ratios, strict=True):
        write_hyper(group, "lr", lr * ratio)


def unwrap_lookahead(opt):
    """The optimizer inside the lookahead trick's `LookaheadOptimizer` (whose hyper-parameters are the wrapped
    optimizer's: its `_set_hyper` hands them over), else `opt`."""
    while type(opt) is LookaheadOptimizer:
        opt = opt.opt
    return opt


def group_lrs(opt) -> list[float | torch.Tensor]:
    """Each param group's lr as the optimizer holds it, unread: a number, or the compiled step's 0-d tensor on the
    device (used there without a host read); fastai's own optimizers' through their `hypers`."""
    opt = unwrap_lookahead(opt)
    if type(opt) in (OptimWrapper, CompiledStepOptimizer):
        return [group["lr"] for group in opt.opt.param_groups]
    return [h["lr"] for h in opt.hypers]


def check_one_lr_schedule(schedule: Callback) -> bool:
    """At `schedule`'s before_fit: ConfigError if another lr schedule is among the Learner's callbacks
    (another `LRSchedule`, fastai's `ParamScheduler` of `fit_one_cycle` / `fit_flat_cos`, `ReduceLROnPlateau`),
    since two schedules would overwrite each other's lr; True (stand aside) if it is fastai's `lr_find`, or in
    fastai's `validate` / `get_preds` / `predict`, where nothing trains and a refusal would hang the Learner."""
    if in_validation_context(schedule.learn):
        return True
    others = [cb for cb in schedule.learn.cbs if cb is not schedule and (sets_lr(cb) or isinstance(cb, LRSchedule))]
    if any(isinstance(cb, LRFinder) for cb in others):
        return True
    if others:
        hint = ("drop ReduceLROnPlateau" if isinstance(others[0], ReduceLROnPlateau) else
                "use fit, not fit_one_cycle / fit_flat_cos, with an lr schedule trick")
        raise ConfigError(f"two lr schedules: {type(schedule).__name__} and {type(others[0]).__name__} both set "
                          f"the lr; keep one ({hint})")
    return False


def sets_lr(cb: Callback) -> bool:
    """One of fastai's callbacks that set the lr: the `ParamScheduler` of fit_one_cycle / fit_flat_cos / fine_tune
    (and lr_find's `LRFinder`, one), `ReduceLROnPlateau`."""
    return (isinstance(cb, ParamScheduler) and "lr" in cb.scheds) or isinstance(cb, ReduceLROnPlateau)


NO_LRS = torch.zeros(0, dtype=torch.float64)


def extended_lrs(saved: torch.Tensor, lrs: list[float]) -> torch.Tensor:
    """`lrs` as a float64 tensor, given `saved`, the tensor of its first lrs (from the last checkpoint): only the
    lrs after those are converted (a python float is a float64: the values are exact)."""
    if len(saved) == len(lrs):
        return saved
    if len(saved) > len(lrs):  # not this list's first lrs
        saved = NO_LRS
    return torch.cat([saved, torch.tensor(lrs[len(saved):], dtype=torch.float64)])


@dataclass
class LRTarget:
    """The optimizer the schedule last wrote to and its groups written directly (`direct_lr_groups`), found again
    only when the Learner's optimizer is another object: a plain object, so that a batch sets no Callback
    attribute (fastai's `Callback.__setattr__` asks the Learner for each name)."""
    opt: object = None
    groups: list[dict] | None = None


class LRSchedule(Callback):
    """Sets the optimizer's lr before every training batch from `schedule(progress)`: the last param group's
    (the lr given to `fit`), each other group's in its ratio to it at before_fit (`lr_ratios`).

    `step='iter'`: progress = iterations done / total iterations (changes every batch).
    `step='epoch'`: progress = epochs done / total epochs (constant within an epoch).
    """

    order = 60  # where fastai's ParamScheduler sits: after TrainEvalCallback has counted the step
    active = True  # False while fastai's lr_find sets the lr

    def __init__(self, schedule: Schedule, step: str = "iter"):
        if step not in STEP_UNITS:
            raise ValueError(f"step {step!r} is not one of {STEP_UNITS}")
        self.schedule, self.step = schedule, step
        self.lrs: list[float] = []
        self.saved_lrs, self.target = NO_LRS, LRTarget()

    def before_fit(self):
        self.lrs, self.saved_lrs = [], NO_LRS
        # fastai runs before_fit for validate / get_preds / predict too; a Learner from load_learner has no
        # optimizer there, and nothing trains: the schedule stands aside
        with undone_on_refusal(self.learn):  # a refused fit leaves no model surgery of the other tricks behind
            self.active = self.learn.opt is not None and not check_one_lr_schedule(self)
        self.ratios = lr_ratios(self.learn.opt) if self.active else None
        self.target = LRTarget()

    def fit_lr(self) -> float:
        """The lr given to `fit` (fastai's convention: `learn.fit(n, lr)`, else `learn.lr`), as the optimizer
        holds it at before_fit; the last param group's, as fastai's schedulers take `lr_max`."""
        return float(self.learn.opt.hypers[-1]["lr"])

    def checkpoint_state(self) -> dict:
        """What `recipes.checkpoint` saves to resume a run: the lrs set so far (for the curves), as one float64
        tensor (exactly the floats), extended by the lrs set since the last checkpoint (`extended_lrs`): a list
        of floats would be hashed and pickled one by one every epoch (35-60 ms at 39,000 lrs)."""
        self.saved_lrs = extended_lrs(self.saved_lrs, self.lrs)
        return {"lrs": self.saved_lrs}

    def load_checkpoint_state(self, state: dict) -> None:
        """The lrs of a checkpoint: a float64 tensor, or a list of floats (a checkpoint of format 1)."""
        lrs = state["lrs"]
        self.saved_lrs = lrs if isinstance(lrs, torch.Tensor) else torch.tensor(lrs, dtype=torch.float64)
        self.lrs = self.saved_lrs.tolist()

    def progress(self) -> float:
        if self.step == "epoch":
            return self.learn.epoch / self.learn.n_epoch
        return self.learn.train_iter / (self.learn.n_epoch * self.learn.n_iter)

    def before_batch(self):
        learn = self.learn  # read directly, not through the Callback's GetAttr (a batch's host cost)
        if not learn.training or not self.active:
            return
        lr = self.schedule(self.progress())
        target = self.target
        if learn.opt is not target.opt:  # the first batch, or a trick wrapped the optimizer (lookahead, order 65)
            target.opt, target.groups = learn.opt, direct_lr_groups(learn.opt)
        if target.groups is None:
            set_lr(learn.opt, lr, self.ratios)
        else:
            write_lrs(target.groups, lr, self.ratios)
        self.lrs.append(lr)

    def after_fit(self):
        self.target = LRTarget()  # no reference to the fit's optimizer is kept (learn.export pickles callbacks)
