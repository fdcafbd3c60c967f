import csv

import pytest
import torch
from fastai.callback.core import Callback, CancelFitException, TrainEvalCallback
from fastai.learner import Learner
from fastai.optimizer import Lookahead as FastaiLookahead
from fastai.optimizer import OptimWrapper

from recipes.build import build_tricks
from recipes.parse import parse_recipe
from recipes.run import train
from fixtures import toy_data
from tricks.data.loaders import DeviceLoader, device_dataloaders
from tricks.lookahead import Lookahead, LookaheadOptimizer
from tricks.schedules import LRSchedule, warmup_cosine

N_ITER, EPOCHS = 4, 3  # 12 steps


class Spy(Callback):
    """The fast weights after every inner SGD step (a torch step hook) and the weights after every full step."""

    order = 80

    def __init__(self, cancel_at_step=None):
        self.cancel_at_step = cancel_at_step
        self.start, self.fast, self.after, self.sgd_lrs, self.grads_none = None, [], [], [], []

    def before_fit(self):
        self.start = [p.detach().clone() for p in self.learn.model.parameters()]
        sgd = self.learn.opt.opt.opt  # LookaheadOptimizer -> OptimWrapper -> torch SGD
        self.hook = sgd.register_step_post_hook(
            lambda opt, args, kw: self.fast.append([p.detach().clone() for p in self.learn.model.parameters()]))
        self.sgd_lrs = []

    def before_step(self):
        self.sgd_lrs.append(self.learn.opt.opt.opt.param_groups[0]["lr"])

    def after_step(self):
        self.after.append([p.detach().clone() for p in self.learn.model.parameters()])
        if len(self.after) == self.cancel_at_step:
            raise CancelFitException()

    def before_batch(self):
        if self.training and self.after:
            self.grads_none.append(all(p.grad is None for p in self.learn.model.parameters()))

    def after_fit(self):
        self.hook.remove()


def fit_tiny(cb, spy):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8 * N_ITER, 1, 2, 2), dtype=torch.uint8, generator=g)
    labels = torch.arange(8 * N_ITER) % 2
    dl = DeviceLoader(images, labels, bs=8, mean=torch.tensor([0.5]), std=torch.tensor([0.25]), shuffle=True,
                      drop_last=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    sched = LRSchedule(warmup_cosine(peak_lr=0.5, floor_lr=0.01, warmup_pct=0.25))
    opt = lambda p, lr: OptimWrapper(opt=torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9,  # noqa: E731
                                                         weight_decay=5e-4))
    learn = Learner(device_dataloaders(dl, dl.new(shuffle=False)), model, loss_func=torch.nn.CrossEntropyLoss(),
                    opt_func=opt, cbs=[TrainEvalCallback(), sched, cb, spy], default_cbs=False)
    learn.fit(EPOCHS)
    return learn, sched


@pytest.mark.parametrize("k,alpha", [(5, 0.5), (3, 0.8), (1, 0.5)])
def test_every_k_steps_slow_moves_alpha_towards_fast_and_fast_restarts_there(k, alpha):
    spy = Spy()
    learn, sched = fit_tiny(Lookahead(k=k, alpha=alpha), spy)
    assert len(spy.fast) == len(spy.after) == EPOCHS * N_ITER
    slow = spy.start
    for n, (fast, after) in enumerate(zip(spy.fast, spy.after), start=1):
        if n % k == 0:
            slow = [s.clone().add_(f - s, alpha=alpha) for s, f in zip(slow, fast)]
            assert all(torch.equal(a, s) for a, s in zip(after, slow))  # exact; fast weights reset to slow
            assert not all(torch.equal(a, f) for a, f in zip(after, fast))
        else:
            assert all(torch.equal(a, f) for a, f in zip(after, fast))  # inner steps untouched
    assert spy.sgd_lrs == sched.lrs  # the schedule reaches the wrapped SGD
    assert len(set(spy.sgd_lrs)) > 2
    assert all(spy.grads_none)  # zero_grad is torch's: gradients set to None
    assert type(learn.opt) is OptimWrapper  # unwrapped after the fit


def test_fastai_lookahead_alone_would_freeze_the_lr_of_an_optimwrapper():
    model = torch.nn.Linear(2, 2)
    plain = FastaiLookahead(OptimWrapper(opt=torch.optim.SGD(model.parameters(), lr=0.1)))
    plain.set_hyper("lr", 0.5)
    assert plain.opt.opt.param_groups[0]["lr"] == 0.1  # silently lost: why LookaheadOptimizer exists
    ours = LookaheadOptimizer(OptimWrapper(opt=torch.optim.SGD(model.parameters(), lr=0.1)))
    ours.set_hyper("lr", 0.5)
    assert ours.opt.opt.param_groups[0]["lr"] == 0.5 and ours.hypers[0]["lr"] == 0.5


def test_cancel_unwraps_the_optimizer():
    spy = Spy(cancel_at_step=2)
    learn, _ = fit_tiny(Lookahead(k=2, alpha=0.5), spy)
    assert type(learn.opt) is OptimWrapper and len(spy.after) == 2


def test_recipe_values_reach_the_callback():
    (cb,) = build_tricks(parse_recipe("baseline+lookahead:k=5,alpha=0.8"))
    assert isinstance(cb, Lookahead) and (cb.k, cb.alpha) == (5, 0.8)
    (cb,) = build_tricks(parse_recipe("baseline+lookahead"))
    assert (cb.k, cb.alpha) == (6, 0.5)


def test_trains_in_a_learner(tmp_path):
    recipe = parse_recipe("baseline+lookahead:k=3", epochs=2, bs=32, device="cpu")
    result = train(recipe, tmp_path / "run", data=toy_data())
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert len(rows) == 2 and 0 <= result["test_acc"] <= 100
