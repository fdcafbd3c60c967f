"""resdrop and fcdrop: nn.Dropout exactly where the notes put it, once, undone on cancel, in a Learner."""
import pytest
import torch
from fastai.callback.core import Callback, CancelFitException
from torch import nn

from recipes.parse import parse_recipe
from recipes.run import train
from tricks.dropout import FCDropout, ResidualDropout
from tricks.errors import ConfigError
from tricks.models import create_model
from tricks.surgery import blocks
from fixtures import cancel_at_train, edited, learner, toy_data


class CancelAfterOneBatch(Callback):
    """Stops the fit after its first training step, as early stopping or TerminateOnNaN would."""

    def after_batch(self):
        raise CancelFitException


# (model, the last conv of each branch: the dropout is on its input)
BRANCHES = [("resnet20", "conv2"), ("preact_resnet20", "conv2"), ("timm:resnet18", "conv2"), ("timm:resnet26", "conv3")]


@pytest.mark.parametrize("name,last", BRANCHES)
def test_resdrop_sits_right_before_the_last_conv_of_every_branch(name, last):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4)
    keys = list(model.state_dict())
    edited(ResidualDropout(p=0.3), model)
    assert list(model.state_dict()) == keys  # no parameter renamed
    n = 0
    for block in blocks(model):
        drop = getattr(block, last).resdrop
        assert type(drop) is nn.Dropout and drop.p == 0.3
        n += 1
    assert n == len(list(blocks(create_model(name, num_classes=4)))) == sum(type(m) is nn.Dropout for m in model.modules())
    # in training, the last conv sees its input (the branch's ReLU output) with each unit either 0 or scaled by 1/(1-p)
    conv = getattr(next(iter(blocks(model))), last)
    seen = {}
    conv.register_forward_pre_hook(lambda m, i: seen.__setitem__("relu", i[0].clone()), prepend=True)  # before resdrop
    conv.register_forward_pre_hook(lambda m, i: seen.__setitem__("conv_in", i[0].clone()))  # after it
    model.train()
    model(torch.randn(4, 3, 32, 32))
    assert (seen["relu"] >= 0).all()
    kept = seen["conv_in"] != 0
    assert torch.allclose(seen["conv_in"][kept], seen["relu"][kept] / 0.7, rtol=1e-6)
    assert 0.2 < 1 - kept[seen["relu"] != 0].float().mean().item() < 0.4  # about p of the units dropped


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("name", ["resnet20", "timm:resnet18"])
def test_fcdrop_wraps_the_classifier(name, where):
    model = create_model(name, num_classes=4)
    fc = model.fc
    edited(FCDropout(p=0.2, where=where), model)
    drop, lin = (model.fc[0], model.fc[1]) if where == "before" else (model.fc[1], model.fc[0])
    assert lin is fc and type(drop) is nn.Dropout and drop.p == 0.2
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), fc(model.forward_head(model.forward_features(x), pre_logits=True))
                           if name.startswith("timm") else fc(model.pool(model.forward_features(x))))


def test_eval_output_unchanged_by_either_dropout():
    model = create_model("resnet20", num_classes=4).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        edited(FCDropout(0.5), edited(ResidualDropout(0.5), model))
        assert torch.equal(model(x), before)


def test_unsupported_models_and_conflicts_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"^trick 'resdrop' cannot change model Sequential; it supports .*timm"):
        ResidualDropout().check(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="drop_rate"):
        ResidualDropout().check(create_model("wrn10_1", num_classes=4, drop_rate=0.3))
    with pytest.raises(ConfigError, match=r"^resdrop and model CifarResNet's own dropout .*a resdrop already there"):
        ResidualDropout().check(edited(ResidualDropout(), create_model("resnet20", num_classes=4)))
    with pytest.raises(ConfigError, match="drop_rate"):
        FCDropout(where="before").check(create_model("timm:resnet18", num_classes=4, drop_rate=0.3))
    FCDropout(where="after").check(create_model("timm:resnet18", num_classes=4, drop_rate=0.3))
    with pytest.raises(ConfigError, match="where"):
        parse_recipe("baseline+fcdrop:where=middle")
    with pytest.raises(ConfigError, match=r"p=1.0 is out of range"):
        parse_recipe("baseline+resdrop:p=1")


def test_surgery_once_over_two_fits_and_undone_on_cancel():
    learn = learner("baseline+resdrop:p=0.1+fcdrop:p=0.1")
    learn.fit(1)
    learn.fit(1)
    assert all(type(b.conv2.resdrop) is nn.Dropout and len(b.conv2._forward_pre_hooks) == 1 for b in blocks(learn.model))
    assert type(learn.model.fc[1]) is nn.Linear

    learn = learner("baseline+resdrop+fcdrop", cbs=[cancel_at_train()])
    plain = repr(learn.model)
    learn.fit(1)
    assert repr(learn.model) == plain
    assert not any(b.conv2._forward_pre_hooks for b in blocks(learn.model))  # the hooks went too


def test_cancel_after_training_started_keeps_the_trained_structure():
    learn = learner("baseline+resdrop+fcdrop", cbs=[CancelAfterOneBatch()])
    learn.fit(1)
    assert learn.train_iter == 1 and type(learn.model.fc[0]) is nn.Dropout
    assert all(type(b.conv2.resdrop) is nn.Dropout for b in blocks(learn.model))


@pytest.mark.parametrize("text,model", [("baseline+resdrop:p=0.1", "resnet20"),
                                        ("baseline+resdrop:p=0.1", "preact_resnet20"),
                                        ("baseline+fcdrop:p=0.1,where=after", "resnet20"),
                                        ("baseline+resdrop+fcdrop", "timm:resnet18")])
def test_trains_one_epoch(text, model, tmp_path):
    result = train(parse_recipe(text, epochs=1, bs=32, device="cpu", model=model), tmp_path / "run",
                   data=toy_data())
    assert result["epochs"] == 1 and 0.0 <= result["test_acc"] <= 100.0
