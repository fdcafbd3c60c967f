import pytest
import torch
from fastai.callback.core import Callback, CancelFitException, TrainEvalCallback
from fastai.learner import Learner
from fastai.optimizer import OptimWrapper

from recipes.build import build_model, build_tricks, normalization
from recipes.parse import parse_recipe
from recipes.run import train
from fixtures import toy_data
from tricks.data.loaders import DeviceLoader, device_dataloaders
from tricks.ema import EMA
from tricks.errors import ConfigError
from tricks.schedules import LRSchedule, warmup_cosine

N_ITER, EPOCHS = 3, 2


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Spy(Callback):
    """Records the live and EMA state after every step, and the model state and lr seen by each batch."""

    order = 80  # after EMA (70)

    def __init__(self, cancel_in_validation=False):
        self.cancel_in_validation = cancel_in_validation
        self.live, self.ema, self.lrs, self.valid_states, self.train_lrs = [], [], [], [], []

    def before_fit(self):
        ema = next(cb for cb in self.learn.cbs if isinstance(cb, EMA))
        self.live.append(state(self.learn.model))
        self.ema.append(state(ema.average.module))

    def before_batch(self):
        if self.training:
            self.train_lrs.append(self.learn.opt.hypers[0]["lr"])
        else:
            self.valid_states.append(state(self.learn.model))
            if self.cancel_in_validation:
                raise CancelFitException()

    def after_step(self):
        ema = next(cb for cb in self.learn.cbs if isinstance(cb, EMA))
        self.live.append(state(self.learn.model))
        self.ema.append(state(ema.average.module))
        self.lrs.append(self.learn.opt.hypers[0]["lr"])


def fit_tiny(ema_cb, spy, schedule=None):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8 * N_ITER, 2, 4, 4), dtype=torch.uint8, generator=g)
    labels = torch.arange(8 * N_ITER) % 3
    dl = DeviceLoader(images, labels, bs=8, mean=torch.tensor([0.5] * 2), std=torch.tensor([0.25] * 2),
                      shuffle=True, drop_last=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(16, 3))
    sched = schedule or LRSchedule(warmup_cosine(peak_lr=0.5, floor_lr=0.01, warmup_pct=0.0))
    learn = Learner(device_dataloaders(dl, dl.new(shuffle=False)), model, loss_func=torch.nn.CrossEntropyLoss(),
                    opt_func=lambda p, lr: OptimWrapper(opt=torch.optim.SGD(model.parameters(), lr=lr,
                                                                            momentum=0.9)),
                    cbs=[TrainEvalCallback(), sched, ema_cb, spy], default_cbs=False)
    learn.fit(EPOCHS)
    return learn


def expected_ema(spy, decay, every=1, decayed=(), wd=0.0):
    """ema_t = d * ema_{t-1} + (1 - d) * w_t in float64 (then - lr * wd * ema for `decayed` keys);
    integer buffers copied from the model."""
    ema = {k: v.double() if v.is_floating_point() else v for k, v in spy.ema[0].items()}
    out = [ema]
    for t in range(1, len(spy.live)):
        if t % every == 0:
            w = spy.live[t]
            ema = {k: decay * e + (1 - decay) * w[k].double() if e.is_floating_point() else w[k].clone()
                   for k, e in ema.items()}
            ema = {k: e - spy.lrs[t - 1] * wd * e if k in decayed else e for k, e in ema.items()}
        out.append(ema)
    return out


@pytest.mark.parametrize("every", [1, 2])
def test_ema_follows_the_recurrence_over_real_steps(every):
    spy = Spy()
    fit_tiny(EMA(decay=0.9, every=every), spy)
    assert len(spy.live) == 1 + EPOCHS * N_ITER
    assert not torch.equal(spy.live[-1]["4.weight"], spy.live[0]["4.weight"])  # the live weights moved
    for got, want in zip(spy.ema, expected_ema(spy, 0.9, every)):
        for k, v in want.items():
            if v.is_floating_point():  # weights, biases, BN running_mean and running_var
                torch.testing.assert_close(got[k].double(), v, rtol=1e-6, atol=1e-7)
            else:  # num_batches_tracked: copied, as timm does
                assert torch.equal(got[k], v)
    assert spy.ema[-1]["1.running_mean"].abs().sum() > 0


def test_lr_wd_mode_decays_the_ema_weights_with_the_current_lr():
    spy = Spy()
    fit_tiny(EMA(decay=0.9, mode="lr_wd", wd=0.01), spy)
    decayed = {"0.weight", "4.weight"}  # not the BatchNorm weights nor the biases
    for got, want in zip(spy.ema, expected_ema(spy, 0.9, decayed=decayed, wd=0.01)):
        for k, v in want.items():
            torch.testing.assert_close(got[k].double(), v.double(), rtol=1e-6, atol=1e-7)
    assert len(set(spy.lrs)) > 1  # the cosine lr, read at each step


@pytest.mark.parametrize("evaluate", [True, False])
def test_evaluation_uses_ema_weights_and_live_weights_come_back(evaluate):
    spy = Spy()
    learn = fit_tiny(EMA(decay=0.9, eval=evaluate), spy)
    # the validation batches of epoch e see the state after step (e + 1) * N_ITER
    for e in range(EPOCHS):
        t = (e + 1) * N_ITER
        seen = spy.valid_states[e * N_ITER]  # the test loader has N_ITER batches too
        source = spy.ema[t] if evaluate else spy.live[t]
        assert all(torch.equal(seen[k], source[k]) for k in seen)
    # between epochs training resumed on the live weights: the EMA is the average of them, not a restart
    assert not torch.equal(spy.ema[N_ITER]["4.weight"], spy.live[N_ITER]["4.weight"])
    final = state(learn.model)
    source = spy.ema[-1] if evaluate else spy.live[-1]
    assert all(torch.equal(final[k], source[k]) for k in final)  # saved: the EMA weights when eval=true


def test_noschedule_holds_the_lr_at_the_peak_over_the_schedule():
    spy = Spy()
    fit_tiny(EMA(decay=0.9, mode="noschedule", peak_lr=0.3), spy)
    assert spy.train_lrs == [0.3] * (EPOCHS * N_ITER)
    with pytest.raises(ConfigError, match="mode=noschedule holds the lr at the peak, which overrides sgdr"):
        build_tricks(parse_recipe("baseline+sgdr+ema:mode=noschedule"))
    (cb,) = build_tricks(parse_recipe("baseline+ema:mode=noschedule", lr=0.3))
    assert cb.peak_lr == 0.3


def test_a_fit_cancelled_during_validation_ends_on_the_averaged_weights():
    spy = Spy(cancel_in_validation=True)
    ema = EMA(decay=0.9)
    learn = fit_tiny(ema, spy)
    assert len(spy.live) == 1 + N_ITER
    final, average = state(learn.model), state(ema.average.module)
    assert all(torch.equal(final[k], spy.ema[-1][k]) and torch.equal(average[k], spy.ema[-1][k]) for k in final)
    assert not torch.equal(final["4.weight"], spy.live[-1]["4.weight"])


def test_recipe_values_reach_the_callback():
    (cb,) = build_tricks(parse_recipe("baseline:wd=0+ema:mode=lr_wd,wd=5e-4,decay=0.99,every=2"))
    assert (cb.decay, cb.every, cb.mode, cb.wd, cb.eval) == (0.99, 2, "lr_wd", 5e-4, True)
    assert build_tricks(parse_recipe("baseline+ema:mode=lr_wd"))[0].wd == 5e-4  # the recipe's wd
    with pytest.raises(ConfigError, match="wd=-0.5 must be >= 0, or -1"):
        build_tricks(parse_recipe("baseline+ema:wd=-0.5"))
    with pytest.raises(ConfigError, match="decay=1.0 is out of range"):
        parse_recipe("baseline+ema:decay=1")


def test_trains_and_saves_the_evaluated_ema_weights(tmp_path):
    recipe = parse_recipe("baseline+ema", epochs=2, bs=32, device="cpu")
    result = train(recipe, tmp_path / "run", data=toy_data())
    data = toy_data()
    model = build_model(recipe, data.num_classes, data.channels)
    model.load_state_dict(torch.load(tmp_path / "run" / "model.pth", weights_only=True))
    model.eval()
    mean, std = normalization(recipe, data)
    x = (data.test.images.float() / 255 - mean[:, None, None]) / std[:, None, None]
    with torch.no_grad():
        acc = (model(x).argmax(1) == data.test.labels).float().mean().item() * 100
    assert acc == pytest.approx(result["test_acc"], abs=1e-4)
