import pytest
import torch
import torch.nn.functional as F

from recipes.parse import parse_recipe
from tricks.errors import ConfigError
from fixtures import Spy, check_loss_restored, run_recipe, toy_learner
from tricks.label_smoothing import LabelSmoothing, OneHot
from tricks.losses import (kl_div_loss, one_hot, smooth_targets, soft_target_cross_entropy, switch_loss)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 10, generator=g) * 3, torch.randint(0, 10, (32,), generator=g)


def test_soft_cross_entropy_with_one_hot_targets_is_cross_entropy_exactly(batch):
    z, y = batch
    assert torch.equal(soft_target_cross_entropy(z, one_hot(y, 10)), F.cross_entropy(z, y))
    assert torch.equal(soft_target_cross_entropy(z, y), F.cross_entropy(z, y))
    assert torch.equal(kl_div_loss(z, y), F.cross_entropy(z, y))  # hard labels: the test split


def test_soft_cross_entropy_is_the_formula(batch):
    z, _ = batch
    t = torch.softmax(torch.randn(32, 10), 1)
    torch.testing.assert_close(soft_target_cross_entropy(z, t), -(t * F.log_softmax(z, 1)).sum(1).mean())


def test_kl_is_cross_entropy_minus_target_entropy_and_has_the_same_gradient(batch):
    z, y = batch
    t = 0.7 * one_hot(y, 10) + 0.3 * torch.softmax(torch.randn(32, 10), 1)
    entropy = -(t * t.log()).sum(1).mean()
    torch.testing.assert_close(kl_div_loss(z, t), soft_target_cross_entropy(z, t) - entropy)
    grads = []
    for loss in (kl_div_loss, soft_target_cross_entropy):
        zz = z.clone().requires_grad_()
        loss(zz, t).backward()
        grads.append(zz.grad)
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[1], (torch.softmax(z, 1) - t) / 32)


def test_epsilon_smoothing_equals_torch_label_smoothing(batch):
    z, y = batch
    for eps in (0.1, 0.25):
        t = smooth_targets(y, 10, eps=eps)
        torch.testing.assert_close(t, (1 - eps) * one_hot(y, 10) + eps / 10)
        torch.testing.assert_close(t.sum(1), torch.ones(32))
        torch.testing.assert_close(soft_target_cross_entropy(z, t), F.cross_entropy(z, y, label_smoothing=eps))


def test_on_off_smoothing_is_on_at_the_class_and_off_elsewhere_as_written(batch):
    _, y = batch
    t = smooth_targets(y, 10, on=0.9, off=0.0001)
    assert t.dtype == torch.float32
    assert torch.equal(t[torch.arange(32), y], torch.full((32,), 0.9))
    mask = one_hot(y, 10).bool()
    assert torch.equal(t[~mask], torch.full((32 * 9,), 0.0001))
    torch.testing.assert_close(t.sum(1), torch.full((32,), 0.9009))  # not 1: replayed as the notes wrote it


def test_smooth_targets_refuses_unclear_arguments():
    y = torch.tensor([0, 1])
    for kw in (dict(), dict(eps=0.1, on=0.9, off=0.01), dict(on=0.9), dict(on=0.1, off=0.2), dict(eps=1.0)):
        with pytest.raises(ConfigError):
            smooth_targets(y, 3, **kw)


def test_switch_loss_installs_the_wanted_loss_unless_a_soft_one_is_in_place():
    plain = torch.nn.CrossEntropyLoss()
    assert switch_loss(plain, soft_target_cross_entropy) is soft_target_cross_entropy
    assert switch_loss(soft_target_cross_entropy, soft_target_cross_entropy) is soft_target_cross_entropy
    assert switch_loss(kl_div_loss, soft_target_cross_entropy) is kl_div_loss
    assert switch_loss(soft_target_cross_entropy, kl_div_loss, replace_soft=True) is kl_div_loss


# ---- the onehot and lsmooth tricks ----

def test_onehot_and_lsmooth_make_the_training_targets_and_leave_the_test_split_alone():
    for text, expected in (("baseline+onehot", lambda y: one_hot(y, 4)),
                           ("baseline+lsmooth", lambda y: smooth_targets(y, 4, on=0.9, off=0.0001)),
                           ("baseline+lsmooth:eps=0.1", lambda y: smooth_targets(y, 4, eps=0.1))):
        spy = Spy()
        learn = toy_learner(text, spy)
        labels = learn.dls.train.labels.clone()
        learn.fit(1)
        train_rows = [r for r in spy.rows if r["training"]]
        test_rows = [r for r in spy.rows if not r["training"]]
        assert len(train_rows) == 4 and len(test_rows) == 2
        for r in train_rows:
            assert r["y"].shape == (16, 4)
            hard = r["y"].argmax(1)
            assert torch.equal(r["y"], expected(hard))
            assert torch.equal(r["loss"], soft_target_cross_entropy(r["pred"], r["y"]))
        assert sorted(torch.cat([r["y"].argmax(1) for r in train_rows]).tolist()) == sorted(labels.tolist())
        for r in test_rows:
            assert r["y"].dtype == torch.int64 and torch.equal(r["loss"], F.cross_entropy(r["pred"], r["y"]))


@pytest.mark.parametrize("text", ["baseline+onehot", "baseline+lsmooth", "baseline+lsmooth+klmixup+dynarefine",
                                  "baseline+onehot+mixup:mix=losses"])
def test_loss_is_restored_after_fit_and_after_a_cancelled_fit(text):
    during = check_loss_restored(text)
    if "klmixup" in text:
        assert during is kl_div_loss
    elif "losses" not in text:
        assert during is soft_target_cross_entropy


def test_onehot_and_lsmooth_together_are_refused():
    with pytest.raises(ConfigError, match="^tricks lsmooth and onehot both make the soft targets; keep one$"):
        parse_recipe("baseline+onehot+lsmooth")
    learn = toy_learner("baseline", OneHot(), LabelSmoothing())  # in a user's own Learner: refused at fit
    with pytest.raises(ConfigError, match="onehot and lsmooth both set the targets"):
        learn.fit(1)


def test_lsmooth_refuses_on_not_above_off():
    with pytest.raises(ConfigError):
        LabelSmoothing(on=0.1, off=0.2)
    assert isinstance(OneHot(), OneHot)


@pytest.mark.parametrize("text", ["baseline+onehot", "baseline+lsmooth:on=0.95,off=0.00005"])
def test_trains_through_train(text, tmp_path):
    run_recipe(text, tmp_path)
