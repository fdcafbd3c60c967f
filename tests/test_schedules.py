import math

import pytest
import torch
from fastai.callback.core import Callback, TrainEvalCallback
from fastai.learner import Learner
from fastai.optimizer import OptimWrapper

from tricks.data.loaders import DeviceLoader, device_dataloaders
from tricks.schedules import LRSchedule, warmup_cosine

START, PEAK, FLOOR, W = 1e-5, 0.2, 1e-4, 0.05


def closed_form(p, warmup="linear"):
    if p < W:
        return START + (PEAK - START) * p / W if warmup == "linear" else START * (PEAK / START) ** (p / W)
    return FLOOR + (PEAK - FLOOR) * (1 + math.cos(math.pi * (p - W) / (1 - W))) / 2


@pytest.mark.parametrize("warmup", ["linear", "exp"])
def test_warmup_cosine_closed_form(warmup):
    f = warmup_cosine(peak_lr=PEAK, floor_lr=FLOOR, warmup_pct=W, start_lr=START, warmup=warmup)
    assert f(0.0) == pytest.approx(START, rel=1e-12)
    assert f(W) == pytest.approx(PEAK, rel=1e-12)
    assert f(1.0) == pytest.approx(FLOOR, rel=1e-12)
    assert f(W + (1 - W) / 2) == pytest.approx((PEAK + FLOOR) / 2, rel=1e-12)
    for i in range(1001):
        assert f(i / 1000) == pytest.approx(closed_form(i / 1000, warmup), rel=1e-12)


def test_without_warmup_starts_at_peak():
    f = warmup_cosine(peak_lr=0.1, floor_lr=0.0, warmup_pct=0.0)
    assert f(0.0) == pytest.approx(0.1) and f(0.5) == pytest.approx(0.05) and f(1.0) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("step", ["iter", "epoch"])
def test_lr_schedule_sets_the_optimizer_lr_each_batch(step):
    n, bs, epochs = 40, 8, 3  # 5 batches per epoch
    images, labels = torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.zeros(n, dtype=torch.long)
    dl = DeviceLoader(images, labels, bs=bs, mean=torch.tensor([0.5]), std=torch.tensor([0.5]), shuffle=True,
                      drop_last=True)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    f = warmup_cosine(peak_lr=PEAK, floor_lr=FLOOR, warmup_pct=1 / 3, start_lr=START)
    seen = []

    class Spy(Callback):
        order = 70

        def before_batch(self):
            if self.training:
                seen.append(self.opt.hypers[0]["lr"])

    learn = Learner(device_dataloaders(dl, dl.new(shuffle=False)), model, loss_func=torch.nn.CrossEntropyLoss(),
                    opt_func=lambda p, lr: OptimWrapper(opt=torch.optim.SGD(model.parameters(), lr=lr)),
                    cbs=[TrainEvalCallback(), LRSchedule(f, step=step), Spy()], default_cbs=False)
    learn.fit(epochs)
    if step == "iter":
        expected = [f(i / 15) for i in range(15)]
    else:
        expected = [f(e / 3) for e in range(3) for _ in range(5)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert learn.lr_schedule.lrs == seen


def test_lr_schedule_writes_to_an_optimizer_replaced_mid_fit():
    """A user's callback that swaps the Learner's optimizer at the second epoch: the schedule's next lr lands in the
    new optimizer's groups, from its first batch on (the schedule looks the optimizer up again when it changes)."""
    n, bs, epochs = 40, 8, 2  # 5 batches per epoch
    images, labels = torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.zeros(n, dtype=torch.long)
    dl = DeviceLoader(images, labels, bs=bs, mean=torch.tensor([0.5]), std=torch.tensor([0.5]), drop_last=True)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    f = warmup_cosine(peak_lr=PEAK, floor_lr=FLOOR, warmup_pct=0.2, start_lr=START)
    replaced, seen = [], []

    class Swap(Callback):
        order = 10

        def before_epoch(self):
            if self.learn.epoch == 1:
                self.learn.opt = OptimWrapper(opt=torch.optim.SGD(model.parameters(), lr=1.0))
                replaced.append(self.learn.opt)

    class Spy(Callback):
        order = 70

        def before_batch(self):
            if self.learn.training:
                seen.append(self.learn.opt.opt.param_groups[0]["lr"])

    learn = Learner(device_dataloaders(dl, dl.new(shuffle=False)), model, loss_func=torch.nn.CrossEntropyLoss(),
                    opt_func=lambda p, lr: OptimWrapper(opt=torch.optim.SGD(model.parameters(), lr=lr)),
                    cbs=[TrainEvalCallback(), Swap(), LRSchedule(f), Spy()], default_cbs=False)
    learn.fit(epochs)
    assert seen == [f(i / 10) for i in range(10)]  # exactly: the same float, each group's ratio 1.0
    assert replaced[0].opt.param_groups[0]["lr"] == f(9 / 10)
