import pytest
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from timm.data.mixup import mixup_target

from recipes.parse import parse_recipe
from fixtures import Spy, check_loss_restored, run_recipe, toy_learner
from tricks.errors import ConfigError
from tricks.losses import kl_div_loss, one_hot, smooth_targets, soft_target_cross_entropy
from tricks.mixup import KLMixUp, MixUp, mix_rows, mixed_loss, mixup_batch


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(16, 10, generator=g) * 2, torch.randint(0, 10, (16,), generator=g)
    return z, y, torch.randperm(16, generator=g)


def grad_of(loss_fn, z):
    z = z.clone().requires_grad_()
    loss_fn(z).backward()
    return z.grad


def test_mixed_targets_are_the_convex_combination_and_rows_sum_to_one(batch):
    _, y, perm = batch
    x = torch.randn(16, 3, 8, 8)
    y1 = one_hot(y, 10)
    for lam in (0.0, 0.3, 0.77, 1.0):
        mx, my = mixup_batch(x, y1, lam, perm)
        assert torch.equal(my, lam * y1 + (1 - lam) * y1[perm])
        assert torch.equal(mx, lam * x + (1 - lam) * x[perm])
        torch.testing.assert_close(my.sum(1), torch.ones(16), rtol=0, atol=1e-6)
    assert torch.equal(mix_rows(y1, 1.0, perm), y1)


def test_mixed_targets_match_timm_mixup_target_when_the_partner_is_the_reversed_batch(batch):
    _, y, _ = batch
    flip = torch.arange(15, -1, -1)
    for smoothing in (0.0, 0.1):
        soft = smooth_targets(y, 10, eps=smoothing)
        torch.testing.assert_close(mixup_batch(torch.zeros(16, 1), soft, 0.35, flip)[1],
                                   mixup_target(y, 10, lam=0.35, smoothing=smoothing))


def test_mixing_labels_and_mixing_losses_give_the_same_gradient(batch):
    z, y, perm = batch
    lam = 0.3
    _, y_mix = mixup_batch(torch.zeros(16, 1), one_hot(y, 10), lam, perm)
    by_labels = grad_of(lambda p: soft_target_cross_entropy(p, y_mix), z)
    by_losses = grad_of(lambda p: mixed_loss(F.cross_entropy, p, y, lam, perm), z)
    torch.testing.assert_close(by_labels, by_losses)
    torch.testing.assert_close(soft_target_cross_entropy(z, y_mix), mixed_loss(F.cross_entropy, z, y, lam, perm))


def test_kl_mixup_and_cross_entropy_mixup_give_the_same_gradient(batch):
    z, y, perm = batch
    _, y_mix = mixup_batch(torch.zeros(16, 1), smooth_targets(y, 10, eps=0.1), 0.6, perm)
    torch.testing.assert_close(grad_of(lambda p: kl_div_loss(p, y_mix), z),
                               grad_of(lambda p: soft_target_cross_entropy(p, y_mix), z))


class PeekDraws(Callback):
    """The lam and perm mixup (order 30) drew for each training batch."""

    order = 31
    run_valid = False

    def __init__(self):
        self.draws = []

    def before_batch(self):
        mixer = next(cb for cb in self.learn.cbs if isinstance(cb, MixUp))
        self.draws.append((mixer.lam, mixer.perm.clone()))


class PeekTargets(Callback):
    """The training targets mixup is about to mix: after label smoothing (20), before mixup (30)."""

    order = 25
    run_valid = False

    def __init__(self):
        self.targets = []

    def after_pred(self):
        self.targets.append(self.learn.yb[0].clone())


def batches_of(text, epochs=1):
    """(learn, Spy rows, [(lam, perm)], [targets before mixing]) of one fit."""
    spy, draws, targets = Spy(), PeekDraws(), PeekTargets()
    learn = toy_learner(text, spy, draws, targets, epochs=epochs)
    learn.fit(epochs)
    return learn, spy.rows, draws.draws, targets.targets


@pytest.mark.parametrize("text", ["baseline+mixup", "baseline+klmixup", "baseline+lsmooth:eps=0.1+mixup",
                                  "baseline+lsmooth+klmixup"])
def test_training_targets_are_mixed_and_the_test_split_is_not(text):
    learn, rows, lams, before = batches_of(text)
    train, test = [r for r in rows if r["training"]], [r for r in rows if not r["training"]]
    assert len(train) == len(lams) == len(before) == 4 and len(test) == 2
    loss = kl_div_loss if "klmixup" in text else soft_target_cross_entropy
    for r, (lam, perm), y in zip(train, lams, before):
        if "lsmooth" in text:
            assert y.is_floating_point()  # made soft at order 20, mixed at 30
        else:
            assert y.dtype == torch.int64
            y = one_hot(y, 4)
        assert torch.equal(r["y"], lam * y + (1 - lam) * y[perm])
        assert torch.equal(r["loss"], loss(r["pred"], r["y"]))
    for r in test:
        assert r["y"].dtype == torch.int64  # hard labels: the soft-target loss is plain cross entropy
        assert torch.equal(r["loss"], F.cross_entropy(r["pred"], r["y"]))


def test_mix_losses_mixes_the_loss_in_training_and_uses_the_plain_loss_on_the_test_split():
    learn, rows, lams, _ = batches_of("baseline+mixup:mix=losses")
    plain = learn.loss_func
    train, test = [r for r in rows if r["training"]], [r for r in rows if not r["training"]]
    for r, (lam, perm) in zip(train, lams):
        assert r["y"].dtype == torch.int64 and r["loss_func"] is not plain
        expected = lam * F.cross_entropy(r["pred"], r["y"]) + (1 - lam) * F.cross_entropy(r["pred"], r["y"][perm])
        torch.testing.assert_close(r["loss"], expected)
    assert len(test) == 2
    for r in test:
        assert r["loss_func"] is plain and r["y"].dtype == torch.int64
        assert torch.equal(r["loss"], F.cross_entropy(r["pred"], r["y"]))


def test_test_images_are_not_mixed():
    for text in ("baseline+mixup", "baseline+mixup:mix=losses"):
        learn, rows, _, _ = batches_of(text)
        test_x = torch.cat([r["x"] for r in rows if not r["training"]])
        dl = learn.dls.valid
        assert torch.equal(test_x, torch.cat([x for x, _ in dl]))


def test_same_seed_same_lambda_and_permutation():
    runs = [batches_of("baseline+mixup")[2] for _ in range(2)]
    assert [lam for lam, _ in runs[0]] == [lam for lam, _ in runs[1]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(runs[0], runs[1]))
    assert len({lam for lam, _ in runs[0]}) == 4  # one lambda per batch, a new one each batch


@pytest.mark.parametrize("text", ["baseline+mixup", "baseline+mixup:mix=losses", "baseline+klmixup"])
def test_loss_is_restored_after_fit_and_after_a_cancelled_fit(text):
    during = check_loss_restored(text)
    if text.endswith("+mixup"):
        assert during is soft_target_cross_entropy
    elif text.endswith("klmixup"):
        assert during is kl_div_loss


def test_mixup_and_klmixup_together_are_refused():
    with pytest.raises(ConfigError, match="^tricks klmixup and mixup both mix the batch"):
        parse_recipe("baseline+mixup+klmixup")
    learn = toy_learner("baseline", MixUp(), KLMixUp())  # in a user's own Learner: refused at fit
    with pytest.raises(ConfigError, match="mixup and klmixup both mix the batch"):
        learn.fit(1)


def test_bad_parameters_are_refused():
    with pytest.raises(ConfigError):
        MixUp(alpha=0.0)
    with pytest.raises(ConfigError):
        MixUp(mix="targets")
    assert KLMixUp().mix == "labels" and KLMixUp().alpha == 0.3


@pytest.mark.parametrize("text", ["baseline+mixup:alpha=1", "baseline+klmixup"])
def test_trains_through_train(text, tmp_path):
    run_recipe(text, tmp_path)
