"""Lookahead (Zhang et al. 2019, "Lookahead Optimizer: k steps forward, 1 step back", arXiv:1907.08610).

The inner optimizer (the recipe's SGD) updates the fast weights; every k steps the slow weights move
towards them and the fast weights restart from there:

    slow <- slow + alpha * (fast - slow);   fast <- slow

The step is fastai's `fastai.optimizer.Lookahead` (slow weights copied at the first step). Around
fastai's `OptimWrapper` (our torch SGD) that class is not enough, so `LookaheadOptimizer` overrides
two methods: its inherited `_set_hyper` writes into `hypers`, which OptimWrapper computes afresh from
the torch param groups on every read, so an lr schedule would silently never reach the SGD; and its
inherited `zero_grad` zeroes gradients where torch's sets them to None (with None, SGD skips a
parameter; with zeros it still applies momentum and weight decay). Both are delegated to the wrapped
optimizer. Evaluation and the saved weights are the fast weights, as fastai leaves them (so fastai's
`SaveModelCallback` saves, and `EarlyStoppingCallback` stops on, the weights it scored). A Learner whose
optimizer is already a fastai Lookahead (`opt_func=ranger`) is refused at before_fit.
"""
from __future__ import annotations

from fastai.callback.core import Callback
from fastai.optimizer import Lookahead as FastaiLookahead
from fastcore.foundation import L

from tricks.errors import ConfigError
from tricks.registry import Param, check_arguments, register_trick
from tricks.surgery import undone_on_refusal


class LookaheadOptimizer(FastaiLookahead):
    """fastai's Lookahead with hyper-parameters and zero_grad handed to the wrapped optimizer."""

    def _set_hyper(self, k, v):
        self.opt._set_hyper(k, v)

    def zero_grad(self):
        self.opt.zero_grad()

    def state_dict(self) -> dict:
        """The SGD's state, the step count and the slow weights as plain lists (loadable with
        `torch.load(weights_only=True)`, which fastai's `L` is not)."""
        state = self.opt.state_dict()
        slow = None if self.slow_weights is None else [list(pg) for pg in self.slow_weights]
        return {**state, "count": self.count, "slow_weights": slow}

    def load_state_dict(self, sd: dict) -> None:
        """Also takes the wrapped optimizer's own state (no count, no slow weights: Lookahead starts over),
        as fastai's `lr_find` saves it before this callback wraps and loads it back before it unwraps."""
        sd = dict(sd)
        self.count, slow = int(sd.pop("count", 0)), sd.pop("slow_weights", None)
        if slow is None:
            self.slow_weights = None
        else:
            self.slow_weights = L(L(s.detach().clone().to(p.device) for s, p in zip(spg, pg))
                                  for spg, pg in zip(slow, self.param_lists))
        self.opt.load_state_dict(sd)


@register_trick(
    "lookahead",
    params=(
        Param("k", int, 6, "inner steps between slow-weight updates", low=1),
        Param("alpha", float, 0.5, "slow weights step towards the fast weights", low=0, high=1, low_open=True),
    ),
    description="every k SGD steps, move slow weights alpha of the way to the fast ones and restart from them",
    paper="Zhang et al. 2019, Lookahead Optimizer: k steps forward, 1 step back, arXiv:1907.08610",
    touches=("optimizer", "weights"),
)
class Lookahead(Callback):
    """Wraps the Learner's optimizer at before_fit; unwraps it when the fit ends or is cancelled."""

    order = 65  # after tricks that rebuild the optimizer at before_fit (1-7) and the lr schedule (60)

    def __init__(self, k: int = 6, alpha: float = 0.5):
        check_arguments("lookahead", k=k, alpha=alpha)
        self.k, self.alpha = k, alpha

    def before_fit(self):
        if isinstance(self.learn.opt, FastaiLookahead):  # fastai's `ranger` (Lookahead(RAdam)), say
            with undone_on_refusal(self.learn):
                raise ConfigError("lookahead and the Learner's optimizer, already a fastai Lookahead (ranger?), both "
                                  "keep slow weights; drop the lookahead trick or give another opt_func")
        self.learn.opt = LookaheadOptimizer(self.learn.opt, k=self.k, alpha=self.alpha)

    def after_cancel_fit(self):
        self._unwrap()

    def after_fit(self):
        self._unwrap()

    def _unwrap(self):
        if isinstance(self.learn.opt, LookaheadOptimizer):
            self.learn.opt = self.learn.opt.opt
