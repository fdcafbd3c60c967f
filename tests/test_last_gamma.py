"""lastgamma: the last BN gamma of every residual branch is exactly 0 (on) or 1 (off) when training starts."""
import pytest
import torch
from fastai.callback.core import Callback
from torch import nn

from recipes.parse import parse_recipe
from recipes.run import train
from tricks.errors import ConfigError
from tricks.last_gamma import LastGamma
from tricks.models import create_model
from tricks.surgery import blocks, last_bn
from fixtures import cancel_at_train, learner, toy_data


class GammasAtStart(Callback):
    """The gammas of the last BNs, and of every other BN, at the first training batch of each fit."""

    order = 95

    def before_fit(self):
        self.seen = None

    def before_batch(self):
        if self.training and self.seen is None:
            last = {id(last_bn(b).weight) for b in blocks(self.learn.model)}
            bns = [m.weight for m in self.learn.model.modules() if isinstance(m, nn.BatchNorm2d)]
            self.seen = ([w.detach().clone() for w in bns if id(w) in last],
                         [w.detach().clone() for w in bns if id(w) not in last])


@pytest.mark.parametrize("model", ["resnet20", "preact_resnet20", "timm:resnet18"])
@pytest.mark.parametrize("on,built_with,value", [(True, False, 0.0), (False, True, 1.0)])
def test_every_last_gamma_exact_at_the_start_of_training(model, on, built_with, value):
    spy = GammasAtStart()
    learn = learner(f"baseline+lastgamma:on={str(on).lower()}", model=model, cbs=[spy], zero_init_last=built_with)
    learn.fit(1)
    last, others = spy.seen
    assert len(last) == len(list(blocks(learn.model))) > 0
    assert all(torch.equal(w, torch.full_like(w, value)) for w in last)
    assert all(torch.equal(w, torch.ones_like(w)) for w in others)  # only the last BN of each branch


@pytest.mark.parametrize("name", ["timm:resnet18", "timm:resnet26"])
def test_same_bns_as_timms_zero_init_last(name):
    ours = create_model(name, num_classes=4)
    LastGamma(on=True).edit(ours, LastGamma().check(ours))
    theirs = create_model(name, num_classes=4)
    for m in theirs.modules():
        if hasattr(m, "zero_init_last"):
            m.zero_init_last()
    zeros = lambda model: sorted(k for k, v in model.state_dict().items()  # noqa: E731
                                 if k.endswith(".weight") and v.ndim == 1 and not v.any())
    assert zeros(ours) == zeros(theirs) and len(zeros(ours)) == len(list(blocks(ours)))


def test_gammas_set_once_over_two_fits_and_restored_on_cancel():
    spy = GammasAtStart()
    learn = learner("baseline+lastgamma:on=true", cbs=[spy], zero_init_last=False)
    learn.fit(1)
    trained = [last_bn(b).weight.detach().clone() for b in blocks(learn.model)]
    assert any(w.any() for w in trained)  # the zero gammas moved during training
    learn.fit(1)
    assert all(torch.equal(a, b) for a, b in zip(spy.seen[0], trained))  # not zeroed again
    trained = [last_bn(b).weight.detach().clone() for b in blocks(learn.model)]
    learn.fit(1, cbs=[cancel_at_train()])  # a later cancelled fit keeps what the earlier ones trained
    assert all(torch.equal(last_bn(b).weight, w) for b, w in zip(blocks(learn.model), trained))

    learn = learner("baseline+lastgamma:on=true", cbs=[cancel_at_train()], zero_init_last=False)
    learn.fit(1)
    assert all(torch.equal(last_bn(b).weight, torch.ones(last_bn(b).num_features)) for b in blocks(learn.model))


def test_other_models_refused():
    with pytest.raises(ConfigError, match=r"^trick 'lastgamma' cannot change model Sequential; it supports "):
        LastGamma().check(nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3)))


def test_trains_one_epoch(tmp_path):
    result = train(parse_recipe("baseline+lastgamma:on=false", epochs=1, bs=32, device="cpu"), tmp_path / "run",
                   data=toy_data())
    assert result["epochs"] == 1 and 0.0 <= result["test_acc"] <= 100.0
