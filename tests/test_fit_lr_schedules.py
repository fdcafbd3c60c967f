"""Section 3 of issue 12: `SGDR()` and `StepDecay()` follow fastai's scheduler conventions: with no `peak`
they take the lr given to `fit`; a Learner given two lr schedules is refused with one line; `lr_find`
still works with a schedule trick attached."""
from __future__ import annotations

import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import fit_flat_cos, fit_one_cycle  # noqa: F401  (patches Learner)
from fastai.learner import Learner
from fastai.optimizer import SGD

from tricks import SGDR, StepDecay
from tricks.errors import ConfigError
from tricks.schedules import LRSchedule, warmup_cosine
from tricks.sgdr import sgdr_lr
from tricks.step_decay import step_decay_lr
from tricks.data.loaders import DeviceLoader, device_dataloaders

N_ITER = 3


class LRSpy(Callback):
    order = 80

    def before_fit(self):
        self.lrs = []

    def before_batch(self):
        if self.training:
            self.lrs.append(self.learn.opt.hypers[-1]["lr"])


def tiny_learner(*cbs, lr=1e-3, opt_func=SGD, path=None):
    images, labels = torch.zeros(8 * N_ITER, 1, 2, 2, dtype=torch.uint8), torch.zeros(8 * N_ITER, dtype=torch.long)
    dl = DeviceLoader(images, labels, bs=8, mean=torch.tensor([0.5]), std=torch.tensor([0.5]), drop_last=True)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    spy = LRSpy()
    learn = Learner(device_dataloaders(dl, dl.new(shuffle=False)), model, loss_func=torch.nn.CrossEntropyLoss(),
                    opt_func=opt_func, lr=lr, cbs=[*cbs, spy], path=path)
    return learn, spy


def test_sgdr_without_a_peak_takes_the_lr_given_to_fit():
    learn, spy = tiny_learner(SGDR(cycle_len=2, cycle_mul=2))
    learn.fit(7, 0.2)
    expected = [sgdr_lr(e, peak=0.2, floor=0.0, cycle_len=2, cycle_mul=2) for e in range(7) for _ in range(N_ITER)]
    assert spy.lrs == expected
    assert spy.lrs[::N_ITER] == [0.2, 0.1, 0.2, sgdr_lr(3, peak=0.2, floor=0.0, cycle_len=2, cycle_mul=2), 0.1,
                                 sgdr_lr(5, peak=0.2, floor=0.0, cycle_len=2, cycle_mul=2), 0.2]
    learn.fit(2)  # no lr given: the Learner's lr, as fastai's fit
    assert spy.lrs == [1e-3] * N_ITER + [0.5e-3] * N_ITER


def test_sgdr_with_a_peak_keeps_it_and_a_floor_at_or_above_the_fit_lr_is_refused():
    learn, spy = tiny_learner(SGDR(peak=0.4, floor=0.1, cycle_len=2, cycle_mul=1))
    learn.fit(2, 0.01)
    assert spy.lrs == [0.4] * N_ITER + [0.25] * N_ITER
    learn, _ = tiny_learner(SGDR(floor=0.1))
    with pytest.raises(ConfigError, match="floor=0.1 must be below the peak lr=0.05"):
        learn.fit(1, 0.05)


@pytest.mark.parametrize("step", ["epoch", "iter"])
def test_step_decay_without_a_peak_takes_the_lr_given_to_fit(step):
    learn, spy = tiny_learner(StepDecay(milestones=(2, 3), gamma=0.5, step=step))
    learn.fit(4, 0.2)
    assert spy.lrs == [step_decay_lr(e, peak=0.2, milestones=[2, 3], gamma=0.5)
                       for e in range(4) for _ in range(N_ITER)]
    assert spy.lrs[::N_ITER] == [0.2, 0.2, 0.1, 0.05]


def test_two_lr_schedules_are_refused_with_one_line():
    for fit in (lambda learn: learn.fit_one_cycle(1, 0.1), lambda learn: learn.fit_flat_cos(1, 0.1)):
        for cb in (SGDR(cycle_len=1), StepDecay(milestones=(1,))):
            learn, _ = tiny_learner(cb)
            with pytest.raises(ConfigError) as e:
                fit(learn)
            line = str(e.value).splitlines()[-1].strip()  # fastai prefixes the event it was raised in
            assert line == (f"two lr schedules: {type(cb).__name__} and ParamScheduler both set the lr; keep one "
                            "(use fit, not fit_one_cycle / fit_flat_cos, with an lr schedule trick)")
    schedule = LRSchedule(warmup_cosine(peak_lr=0.1, floor_lr=0.0, warmup_pct=0.0))
    learn, _ = tiny_learner(SGDR(cycle_len=1), schedule)
    with pytest.raises(ConfigError, match="two lr schedules: SGDR and LRSchedule both set the lr"):
        learn.fit(1, 0.1)


def test_fit_one_cycle_alone_and_lr_find_with_a_schedule_trick_still_work(tmp_path):
    learn, spy = tiny_learner()
    learn.fit_one_cycle(1, 0.1)
    assert max(spy.lrs) <= 0.1 and len(spy.lrs) == N_ITER
    lrs = []
    for cbs in ((), (SGDR(cycle_len=1),)):  # lr_find sets the lr, the trick stands aside
        learn, spy = tiny_learner(*cbs, path=tmp_path)  # lr_find saves the model under path/models
        learn.lr_find(start_lr=1e-4, end_lr=1e-1, num_it=5, show_plot=False)
        lrs.append(spy.lrs)
    assert lrs[1] == lrs[0] and lrs[0][:5] == pytest.approx([1e-4 * 1000 ** (i / 6) for i in range(5)])
    learn.fit(1, 0.2)  # and schedules the next fit
    assert spy.lrs == [0.2] * N_ITER


def test_a_trick_that_rebuilds_the_optimizer_keeps_the_lr_given_to_fit():
    from tricks import FinalBN
    from tricks.models import create_model

    learn, spy = tiny_learner(FinalBN(), SGDR(cycle_len=2, cycle_mul=1))
    learn.model = create_model("resnet20", num_classes=2, in_chans=1)
    learn.fit(2, 0.2)  # FinalBN adds a BN to the classifier and rebuilds the optimizer at before_fit
    assert spy.lrs == [0.2] * N_ITER + [0.1] * N_ITER
