import csv

import pytest
import torch

from recipes.build import build_tricks
from recipes.parse import parse_recipe
from recipes.run import train
from fixtures import lr_per_batch, toy_data
from tricks.errors import ConfigError
from tricks.step_decay import StepDecay, step_decay_lr

N_ITER = 3


def test_closed_form_values():
    f = lambda t: step_decay_lr(t, peak=0.2, milestones=[100, 150], gamma=0.1)  # noqa: E731
    assert [f(0), f(99), f(99.99)] == [0.2] * 3
    assert f(100) == f(149.5) == 0.2 * 0.1 and f(100) == pytest.approx(0.02, rel=1e-15)
    assert f(150) == f(199) == 0.2 * 0.1 ** 2 and f(150) == pytest.approx(0.002, rel=1e-15)


def test_equals_torch_multisteplr_every_epoch():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[30, 60, 80], gamma=0.2)
    for epoch in range(100):
        lr = step_decay_lr(epoch, peak=0.2, milestones=[30, 60, 80], gamma=0.2)
        assert lr == sched._get_closed_form_lr()[0]  # torch's closed form, exactly
        assert lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)  # its chained steps, to rounding
        opt.step()
        sched.step()


def fit_tiny(cb, epochs):
    return lr_per_batch(cb, epochs, N_ITER)


@pytest.mark.parametrize("step", ["iter", "epoch"])
def test_warmup_then_steps_in_a_learner(step):
    # 20 epochs: warmup 1 epoch (10 * 20 / 200), milestones 10 and 15
    recipe = parse_recipe("baseline+stepdecay:at=10/15,gamma=0.1", epochs=20, step=step, lr=0.2,
                          warmup_start_lr=1e-5)
    (cb,) = build_tricks(recipe)
    assert isinstance(cb, StepDecay) and cb.milestones == [10, 15] and recipe.warmup_epochs == 1
    seen = fit_tiny(cb, 20)
    assert cb.lrs == seen and len(seen) == 20 * N_ITER
    for it, lr in enumerate(seen):
        epoch, t = it // N_ITER, (it / N_ITER if step == "iter" else it // N_ITER)
        if t < 1:
            assert lr == pytest.approx(1e-5 + (0.2 - 1e-5) * t, rel=1e-12)
        else:
            assert lr == 0.2 * 0.1 ** ((epoch >= 10) + (epoch >= 15))  # the milestone epoch is decayed, exactly


def test_without_warmup_starts_at_peak():
    (cb,) = build_tricks(parse_recipe("baseline+stepdecay:at=3,gamma=0.5,warmup=false", epochs=5, lr=0.2))
    assert fit_tiny(cb, 5) == [0.2] * 9 + [0.1] * 6


def test_milestones_outside_the_run_or_in_the_warmup_are_config_errors():
    with pytest.raises(ConfigError, match="milestone 150 is not inside the run of 120 epochs"):
        build_tricks(parse_recipe("baseline+stepdecay", epochs=120))
    with pytest.raises(ConfigError, match="milestone 5 is not after the warmup of 10 epochs"):
        build_tricks(parse_recipe("baseline+stepdecay:at=5/100"))
    with pytest.raises(ConfigError, match="must be increasing epochs"):
        build_tricks(parse_recipe("baseline+stepdecay:at=150/100"))
    with pytest.raises(ConfigError, match="must be whole epochs separated by '/'"):
        build_tricks(parse_recipe("baseline+stepdecay:at=10.5"))
    with pytest.raises(ConfigError, match="gamma=1.0 is out of range"):
        parse_recipe("baseline+stepdecay:gamma=1")
    assert build_tricks(parse_recipe("baseline+stepdecay:at=5,warmup=false", epochs=10))[0].milestones == [5]


def test_trains_in_a_learner(tmp_path):
    recipe = parse_recipe("baseline+stepdecay:at=1", epochs=2, bs=32, device="cpu")
    result = train(recipe, tmp_path / "run", data=toy_data())
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert len(rows) == 2 and 0 <= result["test_acc"] <= 100
    assert [float(r["lr"]) for r in rows] == pytest.approx([recipe.lr, recipe.lr * 0.1], rel=1e-5)
