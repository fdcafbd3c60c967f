import pytest
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback

from test_losses import Spy, check_loss_restored, run_recipe, toy_learner
from tricks.dynamic_refine import DynamicRefine, refine_targets
from tricks.errors import ConfigError
from tricks.losses import one_hot, soft_target_cross_entropy


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(2)
    return torch.randn(16, 10, generator=g) * 2, torch.randint(0, 10, (16,), generator=g)


def test_refined_targets_are_the_formula_and_detached(batch):
    z, y = batch
    y_soft = one_hot(y, 10)
    for w, t in ((0.5, 1.0), (0.3, 2.0), (0.0, 1.0), (1.0, 0.5)):
        zz = z.clone().requires_grad_()
        r = refine_targets(y_soft, zz, w, t)
        assert not r.requires_grad
        assert torch.equal(r, (1 - w) * y_soft + w * torch.softmax(z / t, dim=1))
        torch.testing.assert_close(r.sum(1), torch.ones(16))
    assert torch.equal(refine_targets(y_soft, z, 0.0, 1.0), y_soft)


def test_at_temperature_one_the_gradient_is_cross_entropy_scaled_by_one_minus_w(batch):
    z, y = batch
    w = 0.3
    zz = z.clone().requires_grad_()
    soft_target_cross_entropy(zz, refine_targets(one_hot(y, 10), zz, w, 1.0)).backward()
    z_ce = z.clone().requires_grad_()
    F.cross_entropy(z_ce, y).backward()
    torch.testing.assert_close(zz.grad, (1 - w) * z_ce.grad)


class PeekTargets(Callback):
    """The training targets just before dynamic refine (order 45) changes them."""

    order = 44
    run_valid = False

    def __init__(self):
        self.targets = []

    def after_pred(self):
        self.targets.append(self.learn.yb[0].clone())


def test_targets_are_refined_from_start_epoch_on_and_the_test_split_is_untouched():
    spy, peek = Spy(), PeekTargets()
    learn = toy_learner("baseline+dynarefine:weight=0.4,temperature=2,start_epoch=1", spy, peek, epochs=2)
    learn.fit(2)
    train = [r for r in spy.rows if r["training"]]
    assert len(train) == len(peek.targets) == 8
    for r, before in zip(train, peek.targets):
        assert before.dtype == torch.int64
        if r["epoch"] == 0:  # before start_epoch: the labels as they came
            assert torch.equal(r["y"], before)
            assert torch.equal(r["loss"], F.cross_entropy(r["pred"], before))
        else:
            assert torch.equal(r["y"], refine_targets(one_hot(before, 4), r["pred"], 0.4, 2.0))
            assert torch.equal(r["loss"], soft_target_cross_entropy(r["pred"], r["y"]))
    test = [r for r in spy.rows if not r["training"]]
    assert len(test) == 4
    for r in test:
        assert r["y"].dtype == torch.int64 and torch.equal(r["loss"], F.cross_entropy(r["pred"], r["y"]))


def test_refines_the_mixed_smoothed_targets_when_composed():
    spy, peek = Spy(), PeekTargets()
    learn = toy_learner("baseline+lsmooth:eps=0.1+mixup+dynarefine", spy, peek)
    learn.fit(1)
    for r, before in zip([r for r in spy.rows if r["training"]], peek.targets):
        assert before.shape == (16, 4) and before.is_floating_point()  # smoothed at 20, mixed at 30
        assert torch.equal(r["y"], refine_targets(before, r["pred"], 0.5, 1.0))


@pytest.mark.parametrize("text", ["baseline+dynarefine", "baseline+lsmooth+mixup+dynarefine"])
def test_loss_is_restored_after_fit_and_after_a_cancelled_fit(text):
    assert check_loss_restored(text) is soft_target_cross_entropy


def test_mixing_losses_with_dynarefine_is_refused():
    learn = toy_learner("baseline+mixup:mix=losses+dynarefine")
    with pytest.raises(ConfigError, match="mix=labels"):
        learn.fit(1)


def test_bad_parameters_are_refused():
    for kw in (dict(weight=1.5), dict(temperature=0.0), dict(start_epoch=-1)):
        with pytest.raises(ConfigError):
            DynamicRefine(**kw)


def test_trains_through_train(tmp_path):
    run_recipe("baseline+dynarefine:weight=0.3,temperature=2", tmp_path)
