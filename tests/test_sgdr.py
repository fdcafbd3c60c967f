import csv
import math

import pytest
import torch
from timm.scheduler import CosineLRScheduler

from recipes.build import build_tricks
from recipes.parse import parse_recipe
from recipes.run import train
from fixtures import lr_per_batch, toy_data
from tricks.errors import ConfigError
from tricks.sgdr import SGDR, sgdr_lr

PEAK, FLOOR, START = 0.2, 1e-4, 1e-5
N_ITER = 3  # batches per epoch in the tiny Learner


def closed_form(t, cycle_len, mult, decay):
    """The module docstring's formula, cycles walked one by one."""
    i, start, length = 0, 0.0, cycle_len
    while t >= start + length:
        i, start, length = i + 1, start + length, length * mult
    return FLOOR + (PEAK * decay ** i - FLOOR) * (1 + math.cos(math.pi * (t - start) / length)) / 2


def timm_lrs(p, epochs, warmup_epochs):
    """timm's CosineLRScheduler driven as timm's train loop drives it: the lr of every batch."""
    in_iters = p["step"] == "iter" or p["unit"] == "iter"
    per_epoch = N_ITER if in_iters else 1
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=PEAK)
    sched = CosineLRScheduler(opt, t_initial=p["len"] * (per_epoch if p["unit"] == "epoch" else 1), lr_min=FLOOR,
                              cycle_mul=p["mult"], cycle_decay=p["decay"], cycle_limit=10 ** 9,
                              warmup_t=warmup_epochs * per_epoch if p["warmup"] else 0, warmup_lr_init=START,
                              warmup_prefix=True, t_in_epochs=not in_iters)
    lrs = []
    for epoch in range(epochs):
        for b in range(N_ITER):
            if p["step"] == "iter":
                sched.step_update(epoch * N_ITER + b)
            elif b == 0:
                sched.step(epoch) if not in_iters else sched.step_update(epoch * N_ITER)
            lrs.append(opt.param_groups[0]["lr"])
    return lrs


def fit_tiny(cb, epochs):
    return lr_per_batch(cb, epochs, N_ITER)


CASES = [  # the notes' S7/S8 runs, shortened where the cycles allow
    dict(len=10, unit="epoch", mult=2, decay=1, step="epoch", warmup=True, epochs=200),  # 81.63: ends mid-cycle
    dict(len=40, unit="epoch", mult=1.5, decay=0.7, step="epoch", warmup=False, epochs=200),
    dict(len=38, unit="epoch", mult=1, decay=1, step="epoch", warmup=False, epochs=200),
    dict(len=10, unit="iter", mult=2, decay=1, step="iter", warmup=False, epochs=200),
    dict(len=10, unit="epoch", mult=2, decay=0.5, step="iter", warmup=False, epochs=160),
    dict(len=4, unit="epoch", mult=2, decay=0.7, step="iter", warmup=True, epochs=40),
    dict(len=4, unit="epoch", mult=1.5, decay=1, step="epoch", warmup=True, epochs=40),
    dict(len=7, unit="iter", mult=2, decay=1, step="epoch", warmup=False, epochs=40),
]


@pytest.mark.parametrize("p", CASES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_lr_of_every_batch_equals_timm_and_the_closed_form(p):
    terms = ",".join(f"{k}={v}" for k, v in p.items() if k != "epochs")
    recipe = parse_recipe(f"baseline+sgdr:{terms}", epochs=p["epochs"], lr=PEAK, eta=FLOOR, warmup_start_lr=START)
    (cb,) = build_tricks(recipe)
    assert isinstance(cb, SGDR)
    seen = fit_tiny(cb, p["epochs"])
    expected = timm_lrs(p, p["epochs"], recipe.warmup_epochs)
    assert len(seen) == p["epochs"] * N_ITER
    assert seen == expected  # exact: the pure function mirrors timm's float operations
    assert cb.lrs == seen
    # the pure function, and the closed form, at every batch after the warmup
    in_iters = p["step"] == "iter" or p["unit"] == "iter"
    per_epoch = N_ITER if in_iters else 1
    cycle_len = p["len"] * (per_epoch if p["unit"] == "epoch" else 1)
    warm = recipe.warmup_epochs * per_epoch if p["warmup"] else 0
    for it, lr in enumerate(seen):
        t = it if p["step"] == "iter" else (it // N_ITER) * (N_ITER if p["unit"] == "iter" else 1)
        if t < warm:
            assert lr == pytest.approx(START + (PEAK - START) * t / warm, rel=1e-12)
            continue
        kw = dict(cycle_len=cycle_len, cycle_mul=p["mult"], cycle_decay=p["decay"])
        assert lr == sgdr_lr(t - warm, peak=PEAK, floor=FLOOR, **kw)
        assert lr == pytest.approx(closed_form(t - warm, cycle_len, p["mult"], p["decay"]), rel=1e-9, abs=1e-15)


def test_len10_mult2_max200_ends_mid_cycle_at_a_high_lr():
    # the notes' runs: 10 warmup epochs, then cycles of 10, 20, 40, 80 epochs ending at epoch 160
    lr = lambda epoch: sgdr_lr(epoch - 10, peak=PEAK, floor=FLOOR, cycle_len=10, cycle_mul=2)  # noqa: E731
    assert lr(159) == pytest.approx(FLOOR + (PEAK - FLOOR) * (1 + math.cos(math.pi * 79 / 80)) / 2, rel=1e-12)
    assert lr(159) < 1e-3  # max=160 ends at the end of a cycle (92.19)
    assert lr(160) == PEAK  # restart: a 160-epoch cycle
    # max=200 (81.63): the last epoch is 39 epochs into that cycle, far from the floor
    assert lr(199) == pytest.approx(FLOOR + (PEAK - FLOOR) * (1 + math.cos(math.pi * 39 / 160)) / 2, rel=1e-12)
    assert lr(199) > 0.8 * PEAK
    assert lr(319) < 1e-3  # max=320 ends that cycle (91.95)
    # through the callback (the first case above runs it and finds these lrs): not the floor at the end
    recipe = parse_recipe("baseline+sgdr:len=10,mult=2", epochs=200, lr=PEAK, eta=FLOOR)
    (cb,) = build_tricks(recipe)
    assert recipe.warmup_epochs == cb.warmup_epochs == 10 and cb.step == "epoch"


def test_a_cycle_starts_where_timms_log_rounds_down():
    # mult=3: cycle 5 starts at 10 * (3**5 - 1) / 2 = 1210, where log(243, 3) = 4.999...; timm then gives the
    # floor (the end of cycle 4) for t=1210, the closed form the restart at peak * decay**5
    assert math.floor(math.log(1 - 1210 / 10 * (1 - 3), 3)) == 4
    assert sgdr_lr(1210, peak=PEAK, floor=FLOOR, cycle_len=10, cycle_mul=3, cycle_decay=0.5) == PEAK * 0.5 ** 5
    assert sgdr_lr(1210, peak=PEAK, floor=FLOOR, cycle_len=10, cycle_mul=3, cycle_decay=0.5) == pytest.approx(
        closed_form(1210, 10, 3, 0.5), rel=1e-12)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="floor=-0.5 must be >= 0, or -1"):
        build_tricks(parse_recipe("baseline+sgdr:floor=-0.5"))
    with pytest.raises(ConfigError, match="must be below the peak lr"):
        build_tricks(parse_recipe("baseline+sgdr:floor=0.3", lr=0.2))
    with pytest.raises(ConfigError, match="choose one of epoch, iter"):
        parse_recipe("baseline+sgdr:unit=batch")
    with pytest.raises(ConfigError, match="mult=0.5 is out of range"):
        parse_recipe("baseline+sgdr:mult=0.5")


def test_trains_in_a_learner_and_the_epoch_lr_follows_sgdr(tmp_path):
    recipe = parse_recipe("baseline+sgdr:len=1,mult=2,step=iter", epochs=2, bs=32, device="cpu")
    result = train(recipe, tmp_path / "run", data=toy_data())  # 128 images: 4 iterations per epoch
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert len(rows) == 2 and 0 <= result["test_acc"] <= 100
    # warmup 10 * 2 / 200 = 0.1 epochs = 0.4 iterations; the last batch of epoch 1 is t=3, 2.6 into the
    # 4-iteration cycle 0; that of epoch 2 is t=7, 2.6 into the 8-iteration cycle 1
    assert recipe.warmup_epochs == pytest.approx(0.1)
    eta, peak = recipe.eta, recipe.lr
    lr = lambda t_curr, t_i: eta + (peak - eta) * (1 + math.cos(math.pi * t_curr / t_i)) / 2  # noqa: E731
    assert float(rows[0]["lr"]) == pytest.approx(lr(2.6, 4), rel=1e-5)
    assert float(rows[1]["lr"]) == pytest.approx(lr(2.6, 8), rel=1e-5)
