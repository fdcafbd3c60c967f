"""Exponential moving average of the weights (Polyak & Juditsky 1992; the notes' S9 'EMA', 93.17).

After every `every`-th optimizer step, for every float entry of the model's state_dict (parameters
and BatchNorm running statistics; integer buffers such as num_batches_tracked are copied):

    ema <- decay * ema + (1 - decay) * w

The notes' alpha is `decay` (alpha=0.9 means ema = 0.9 * ema + 0.1 * w), which is timm's convention:
the update CALLS timm's `ModelEmaV3.update` (a lerp by 1 - decay), on the model's own device. The
average starts as a copy of the model at the start of the fit, in the model's dtype: float32 in a run
(bf16 / fp16 precision autocasts; the weights stay float32), so an update draws no random numbers
(timm 1.0.31 rounds only a bfloat16 average stochastically, from a private generator; 1.0.29 never),
and the average with the step counter is all a checkpoint needs to resume bit for bit.

Modes (the notes' S9 rows):
- plain: only the average (alpha=0.9, sgd_wd=5e-4, lr=wd=0: 93.17).
- lr_wd: 'lr and wd applied on the ema' (91.50 with sgd_wd=0, 93.17 with sgd_wd=5e-4): after each
  update, every parameter the SGD decays (not BatchNorm weights and biases unless the recipe's
  wd_bn_bias) is decayed once more on the EMA with the current lr of its param group: ema <- ema -
  lr * wd * ema, wd being the recipe's wd, or this trick's `wd` when given (so
  `baseline:wd=0+ema:mode=lr_wd,wd=5e-4` is the 91.50 row). Buffers are not decayed.
- noschedule: 'no cosine and no warmup, ema alone' (88.24): this callback sets lr = peak (`peak_lr`;
  0: the lr given to `fit`) before every training batch (each other param group in its ratio to the
  last one at before_fit); its
  order (70) is after the lr schedule (60), which it overrides. The schedule callback still records
  what it would have set; the epoch `lr` column shows the peak.

With eval=true the averaged weights are the model's weights wherever fastai evaluates, saves or stops:
they go into the model at before_validate and stay there through after_epoch up to this callback's
own after_epoch (order 70), so fastai's `SaveModelCallback` and `EarlyStoppingCallback` (order 61),
`ReduceLROnPlateau` and any after_epoch callback of a lower order see (and save) the weights whose
score they read; the live weights come back at order 70, before the next epoch trains (and before the
recipes' checkpoint, order 200, saves the live model). After the last epoch, after a fit stopped by
EarlyStopping or cancelled mid-epoch, the model holds the average (`SaveModelCallback.after_fit`,
order 61, may then load its best file over it: that file holds averaged weights too). A fit cancelled
before its first step keeps the model as it was. With eval=false evaluation and saved weights are the
live weights.
"""
from __future__ import annotations

import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import LRFinder
from fastai.torch_core import norm_bias_params
from timm.utils.model_ema import ModelEmaV3

from tricks.errors import ConfigError
from tricks.registry import TRICKS, Param, check_arguments, register_trick
from tricks.schedules import LRSchedule, group_lrs, lr_ratios, set_lr, sets_lr
from tricks.surgery import undone_on_refusal

MODES = ("plain", "lr_wd", "noschedule")


@torch.no_grad()
def copy_state(dst: torch.nn.Module, values: list[torch.Tensor]) -> None:
    """Write `values` (one tensor per state_dict entry, in order) into `dst`'s state_dict entries, in place."""
    for x, y in zip(dst.state_dict().values(), values):
        x.copy_(y)


def state_values(model: torch.nn.Module) -> list[torch.Tensor]:
    """A copy of every state_dict entry of `model`, in order."""
    return [v.detach().clone() for v in model.state_dict().values()]


@torch.no_grad()
def decay_ema_weights(params: list[torch.Tensor], lr: float | torch.Tensor, wd: float) -> None:
    """ema <- ema - lr * wd * ema, for each tensor (the lr_wd mode); an lr tensor (compile_step's, on the device)
    is used there, never read to the host."""
    if isinstance(lr, torch.Tensor):
        decay = lr * wd
        for p in params:
            p.sub_(p * decay)
        return
    for p in params:
        p.sub_(p, alpha=lr * wd)


def refuse_other_schedules(cbs) -> None:
    """mode=noschedule holds the lr at the peak in place of the recipe's warmup + cosine (a plain `LRSchedule`);
    beside any other lr schedule -- fastai's `ParamScheduler` (fit_one_cycle, fit_flat_cos, fine_tune),
    `ReduceLROnPlateau`, SGDR, step decay -- one of the two would be lost: a ConfigError naming both."""
    other = next((cb for cb in cbs if sets_lr(cb) or (isinstance(cb, LRSchedule) and type(cb) is not LRSchedule)),
                 None)
    if other is not None:
        raise ConfigError(f"ema mode=noschedule holds the lr at the peak, which overrides {type(other).__name__}; "
                          "drop one of them (use fit, not fit_one_cycle / fit_flat_cos / fine_tune)")


def build_ema(recipe, *, decay: float, eval: bool, every: int, mode: str, wd: float) -> "EMA":
    if wd != -1 and wd < 0:
        raise ConfigError(f"ema: wd={wd} must be >= 0, or -1 for the recipe's wd")
    others = [n for n, _ in recipe.tricks if n != "ema" and "lr" in TRICKS.get(n).touches]
    if mode == "noschedule" and others:
        raise ConfigError(f"ema: mode=noschedule holds the lr at the peak, which overrides {others[0]}; "
                          "drop one of them")
    return EMA(decay=decay, eval=eval, every=every, mode=mode, peak_lr=recipe.lr,
               wd=recipe.wd if wd == -1 else wd, wd_bn_bias=recipe.wd_bn_bias)


@register_trick(
    "ema",
    params=(
        Param("decay", float, 0.9, "the notes' alpha: ema = decay * ema + (1 - decay) * w", low=0, high=1,
              high_open=True),
        Param("eval", bool, True, "evaluate on (and save) the EMA weights"),
        Param("every", int, 1, "update the average every N optimizer steps", low=1),
        Param("mode", str, "plain", "plain | lr_wd (lr*wd decay on the ema) | noschedule (lr held at peak)",
              choices=MODES),
        Param("wd", float, -1.0, "lr_wd mode: weight decay on the ema; -1 = the recipe's wd", low=-1),
    ),
    description="exponential moving average of the weights, evaluated in place of the live weights",
    paper="Polyak & Juditsky 1992, Acceleration of Stochastic Approximation by Averaging, SIAM J. Control "
          "Optim. 30(4)",
    touches=("weights",),
    build=build_ema,
)
class EMA(Callback):
    """Keeps a timm `ModelEmaV3` of the model; see the module docstring for the modes."""

    order = 70  # after the lr schedule (60, overridden in noschedule mode) and lookahead (65)

    def __init__(self, *, decay: float = 0.9, eval: bool = True, every: int = 1, mode: str = "plain",
                 peak_lr: float = 0.0, wd: float = 0.0, wd_bn_bias: bool = False):
        check_arguments("ema", decay=decay, eval=eval, every=every, mode=mode)
        self.decay, self.eval, self.every, self.mode = decay, eval, every, mode
        self.peak_lr, self.wd, self.wd_bn_bias = peak_lr, wd, wd_bn_bias
        self.average: ModelEmaV3 | None = None
        self.live: list[torch.Tensor] | None = None
        self.active = True  # False during fastai's lr_find: its mock steps are not averaged

    def before_fit(self):
        self.active = not any(isinstance(cb, LRFinder) for cb in self.learn.cbs)
        if not self.active:  # lr_find puts the model back itself; the average of a real fit stays
            return
        if self.mode == "noschedule":
            with undone_on_refusal(self.learn):
                refuse_other_schedules(self.learn.cbs)
        model = self.learn.model
        self.lr_ratios = lr_ratios(self.learn.opt) if self.learn.opt is not None else None
        if self.learn.opt is not None:  # peak_lr=0 (the callback's default): the lr given to fit, fastai's convention
            self.held_lr = self.peak_lr or float(self.learn.opt.hypers[-1]["lr"])
        self.average = ModelEmaV3(model, decay=self.decay)
        self.steps, self.live = 0, None  # live: the live weights while the model holds the average
        no_decay = set() if self.wd_bn_bias else {id(p) for p in norm_bias_params(model, with_bias=True)}
        groups = list(self.learn.opt.param_lists) if self.learn.opt is not None else [list(model.parameters())]
        group_of = {id(p): i for i, pg in enumerate(groups) for p in pg}
        self.decayed = [[] for _ in groups]  # per param group: the average's tensors of the decayed parameters
        for p, e in zip(model.parameters(), self.average.module.parameters()):
            if p.requires_grad and id(p) not in no_decay and id(p) in group_of:
                self.decayed[group_of[id(p)]].append(e)

    def checkpoint_state(self) -> dict:
        """What `recipes.checkpoint` saves to resume a run: the average and the step counter (all of the
        average's state: its updates draw no random numbers, module docstring)."""
        state = {"average": self.average.module.state_dict(), "steps": self.steps}
        if self.live is not None:  # saved after the last epoch, the model holding the average: the live weights too
            state["live"] = dict(zip(self.learn.model.state_dict(), self.live))
        return state

    def load_checkpoint_state(self, state: dict) -> None:
        self.average.module.load_state_dict(state["average"])
        self.steps = int(state["steps"])
        if "live" in state:
            self.learn.model.load_state_dict(state["live"])

    def before_batch(self):
        if self.mode == "noschedule" and self.training and self.active:
            set_lr(self.learn.opt, self.held_lr, self.lr_ratios)

    def after_step(self):
        if not self.active:
            return
        self.steps += 1
        if self.steps % self.every:
            return
        self.average.update(self.learn.model)
        if self.mode == "lr_wd":
            for tensors, lr in zip(self.decayed, group_lrs(self.learn.opt)):
                decay_ema_weights(tensors, lr, self.wd)

    def before_validate(self):
        if self.eval and self.active and self.average is not None and self.live is None:
            self.live = state_values(self.learn.model)
            copy_state(self.learn.model, list(self.average.module.state_dict().values()))

    def after_epoch(self):
        """Training goes on from the live weights; after the last epoch the model keeps the average. (fastai's
        `validate` runs before_fit and after_epoch too: no step was taken, the live weights come back.)"""
        if self.live is not None and (self.steps == 0 or self.epoch < self.n_epoch - 1):
            self._restore_live()

    def after_fit(self):
        if not (self.eval and self.active) or self.average is None or self.steps == 0:
            return  # nothing averaged: the model is as it was (a validate, a refused or early-cancelled fit)
        if self.live is None:  # stopped mid-epoch: the average goes in now
            copy_state(self.learn.model, list(self.average.module.state_dict().values()))
        self.live = None  # the model holds the average (or the best file SaveModelCallback loaded over it)

    def _restore_live(self):
        copy_state(self.learn.model, self.live)
        self.live = None
