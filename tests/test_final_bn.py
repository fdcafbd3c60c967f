"""finalbn (a BN1d before the final cross entropy) and lastbn (drop the final BN of a pre-activation net)."""
import pytest
import torch
from torch import nn

from recipes.parse import parse_recipe
from recipes.run import train
from tricks.errors import ConfigError
from tricks.final_bn import FinalBN, LastBN
from tricks.models import create_model
from tricks.surgery import pooled_features
from fixtures import cancel_at_train, edited, learner, toy_data


def batch_norm_by_hand(h: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    """Training-mode BN: (h - batch mean) / sqrt(biased batch var + eps) * gamma + beta."""
    mean, var = h.mean(0), h.var(0, unbiased=False)
    return (h - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias


@pytest.mark.parametrize("name", ["resnet20", "timm:resnet18"])
@pytest.mark.parametrize("position", ["features", "logits"])
def test_finalbn_normalises_right_before_the_cross_entropy(name, position):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4).train()
    fc = model.fc
    edited(FinalBN(position), model)
    bn = model.fc[0] if position == "features" else model.fc[1]
    assert type(bn) is nn.BatchNorm1d and bn.training
    assert bn.num_features == (fc.in_features if position == "features" else fc.out_features)
    assert (model.fc[1] if position == "features" else model.fc[0]) is fc
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        x = torch.randn(8, 3, 32, 32)
        out = model(x)
        h = pooled_features(model, x)
        by_hand = fc(batch_norm_by_hand(h, bn)) if position == "features" else batch_norm_by_hand(fc(h), bn)
    assert torch.allclose(out, by_hand, rtol=1e-4, atol=1e-5)


def test_lastbn_off_keeps_the_relu_and_drops_the_bn():
    torch.manual_seed(0)
    model = create_model("preact_resnet20", num_classes=4).eval()
    relu = model.final_act[1]
    keys = set(model.state_dict())
    edited(LastBN(on=False), model)
    assert type(model.final_act[0]) is nn.Identity and model.final_act[1] is relu
    assert keys - set(model.state_dict()) == {f"final_act.0.{k}" for k in
                                              ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), model.fc(model.pool(torch.relu(model.stages(model.stem(x))))))
    on = create_model("preact_resnet20", num_classes=4)
    plain = repr(on)
    assert repr(edited(LastBN(on=True), on)) == plain


@pytest.mark.parametrize("name,word", [("resnet20", "CifarResNet, a CIFAR ResNet v1"), ("timm:resnet18", "ResNet, a timm ResNet"),
                                       ("fastai:xresnet18", "XResNet, a fastai XResNet"),
                                       ("torchvision:resnet18", "ResNet, a torchvision ResNet")])
def test_lastbn_refuses_models_without_a_final_bn(name, word):
    with pytest.raises(ConfigError, match=rf"^lastbn applies to pre-activation models, not {word} \(.*\); "
                                          r"use preact_resnet<d>, wrn<d>_<k> or timm:resnetv2_<d>$"):
        LastBN(on=False).check(create_model(name, num_classes=4))


def test_finalbn_refuses_other_models():
    with pytest.raises(ConfigError, match=r"^trick 'finalbn' cannot find the classifier of model Linear; looked for "):
        FinalBN().check(nn.Linear(3, 3))
    with pytest.raises(ConfigError, match="position"):
        parse_recipe("baseline+finalbn:position=middle")


def test_optimizer_rebuilt_with_the_new_bn_and_without_the_removed_one():
    learn = learner("baseline+finalbn+lastbn:on=false", model="preact_resnet20")
    learn.fit(1)
    groups = learn.opt.opt.param_groups
    in_opt = {id(p) for g in groups for p in g["params"]}
    assert in_opt == {id(p) for p in learn.model.parameters()}
    bn = learn.model.fc[0]
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {id(bn.weight), id(bn.bias)} <= no_decay  # a BN: no weight decay, like every other BN
    assert not torch.equal(bn.bias.detach(), torch.zeros_like(bn.bias))  # it trained
    learn.fit(1)  # a second fit changes nothing
    assert type(learn.model.fc[0]) is nn.BatchNorm1d and type(learn.model.fc[1]) is nn.Linear


def test_undone_on_cancel():
    learn = learner("baseline+finalbn+lastbn:on=false", model="preact_resnet20", cbs=[cancel_at_train()])
    plain = repr(learn.model)
    learn.fit(1)
    assert repr(learn.model) == plain
    assert {id(p) for g in learn.opt.opt.param_groups for p in g["params"]} == {id(p) for p in learn.model.parameters()}


@pytest.mark.parametrize("text,model", [("baseline+finalbn", "resnet20"),
                                        ("baseline+finalbn:position=logits", "timm:resnet18"),
                                        ("baseline+lastbn:on=false", "preact_resnet20")])
def test_trains_one_epoch(text, model, tmp_path):
    result = train(parse_recipe(text, epochs=1, bs=32, device="cpu", model=model), tmp_path / "run",
                   data=toy_data())
    assert result["epochs"] == 1 and 0.0 <= result["test_acc"] <= 100.0
