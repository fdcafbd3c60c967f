"""bnmom: every BatchNorm's momentum set exactly (torch convention), 1/bs^2 from the recipe's bs."""
import pytest
import torch
from fastai.callback.core import Callback
from torch import nn

from recipes.build import build_tricks
from recipes.parse import parse_recipe
from recipes.run import train
from tricks.bn_momentum import BNMomentum, batchnorms
from tricks.errors import ConfigError
from fixtures import cancel_at_train, learner, toy_data


class MomentaAtStart(Callback):
    order = 95

    def before_train(self):
        self.momenta = [(type(m), m.momentum) for m in batchnorms(self.learn.model)]


@pytest.mark.parametrize("text,bs,want", [("baseline+bnmom", 32, 0.01),
                                          ("baseline+bnmom:momentum=0.9", 32, 0.9),
                                          ("baseline+bnmom:per_bs2=true", 32, 1 / 1024),
                                          ("baseline+bnmom:per_bs2=true,momentum=0.5", 16, 1 / 256)])
def test_every_bn_momentum_set_exactly(text, bs, want):
    spy = MomentaAtStart()
    learn = learner(text + "+finalbn", cbs=[spy], bs=bs)  # finalbn's BatchNorm1d (order 3) is set too
    learn.fit(1)
    assert len(spy.momenta) == len(batchnorms(learn.model)) == 22
    assert nn.BatchNorm1d in {t for t, _ in spy.momenta}
    assert all(m == want for _, m in spy.momenta)


def test_running_stats_follow_torchs_convention():
    """running <- (1 - m) * running + m * batch mean: m = 1 - Gluon's momentum."""
    bn = nn.BatchNorm2d(3)
    cb = BNMomentum(0.25)
    cb.edit(bn, cb.check(bn))
    x = torch.randn(8, 3, 4, 4) + 2
    bn.train()(x)
    assert torch.allclose(bn.running_mean, 0.25 * x.mean((0, 2, 3)), rtol=1e-6)


def test_conflicts_and_models_without_bn_refused():
    with pytest.raises(ConfigError, match=r"^bnmom and bn_momentum=0.1 both set the BN momentum; give one$"):
        build_tricks(parse_recipe("baseline:bn_momentum=0.1+bnmom"))
    with pytest.raises(ConfigError, match=r"^bnmom: model Sequential has no BatchNorm to set$"):
        BNMomentum().check(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="out of range"):
        parse_recipe("baseline+bnmom:momentum=1.5")


def test_undone_on_cancel():
    learn = learner("baseline+bnmom:momentum=0.5", cbs=[cancel_at_train()])
    learn.fit(1)
    assert {m.momentum for m in batchnorms(learn.model)} == {0.1}


def test_trains_one_epoch(tmp_path):
    result = train(parse_recipe("baseline+bnmom:per_bs2=true", epochs=1, bs=32, device="cpu"), tmp_path / "run",
                   data=toy_data())
    assert result["epochs"] == 1 and 0.0 <= result["test_acc"] <= 100.0
