"""leakyrelu and swish: every ReLU swapped; msra re-initialises the convs with the Kaiming std for that slope."""
import math

import pytest
import torch
from torch import nn

from recipes.parse import parse_recipe
from recipes.run import train
from tricks.activation import LeakyReLUSwap, SwishSwap
from tricks.errors import ConfigError
from tricks.models import create_model
from tricks.surgery import blocks
from fixtures import cancel_at_train, edited, learner, toy_data


def count(model, kind):
    return sum(type(m) is kind for m in model.modules())


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet20", "timm:resnet18", "timm:resnet26"])
@pytest.mark.parametrize("make,kind", [(lambda: LeakyReLUSwap(slope=0.2), nn.LeakyReLU), (SwishSwap, nn.SiLU)])
def test_every_relu_replaced(name, make, kind):
    model = create_model(name, num_classes=4)
    n = count(model, nn.ReLU)
    inplace = sorted(m.inplace for m in model.modules() if type(m) is nn.ReLU)
    edited(make(), model)
    assert count(model, nn.ReLU) == 0 and count(model, kind) == n > 0
    assert sorted(m.inplace for m in model.modules() if type(m) is kind) == inplace
    if kind is nn.LeakyReLU:
        assert {m.negative_slope for m in model.modules() if type(m) is kind} == {0.2}


def test_leaky_slope_exact_in_the_forward():
    model = edited(LeakyReLUSwap(slope=0.01), create_model("resnet20", num_classes=4))
    act = next(iter(blocks(model))).act1
    x = torch.tensor([-3.0, -0.5, 0.0, 2.0])
    assert torch.equal(act(x), torch.where(x >= 0, x, 0.01 * x))


@pytest.mark.parametrize("a", [0.5, 1.0, 3.0])
def test_msra_init_std_is_the_kaiming_fan_out_std_for_slope_a(a):
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4)
    edited(LeakyReLUSwap(slope=0.01, msra=a), model)

    def kaiming_std(c):  # gain / sqrt(fan_out), gain = sqrt(2 / (1 + a^2)), fan_out = out_channels * kh * kw
        return math.sqrt(2 / (1 + a * a)) / math.sqrt(c.out_channels * c.kernel_size[0] * c.kernel_size[1])

    z = torch.cat([(c.weight / kaiming_std(c)).flatten() for c in convs(model)])  # should be N(0, 1)
    assert z.numel() > 200_000
    assert abs(z.std().item() - 1) < 0.01 and abs(z.mean().item()) < 0.01
    for c in (c for c in convs(model) if c.weight.numel() >= 9000):  # conv by conv, a few standard errors
        assert c.weight.std().item() == pytest.approx(kaiming_std(c), rel=0.05)


def test_msra_zero_keeps_the_weights_and_bn_gammas_are_never_touched():
    model = create_model("resnet20", num_classes=4, zero_init_last=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    edited(LeakyReLUSwap(slope=0.01, msra=0.0), model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model2 = edited(LeakyReLUSwap(slope=0.01, msra=0.01), create_model("resnet20", num_classes=4, zero_init_last=True))
    assert all(not b.bn2.weight.any() for b in blocks(model2))  # zero-init last gamma kept
    bn_before = {k: v for k, v in before.items() if "bn" in k or "shortcut.1" in k}
    assert all(torch.equal(v, model2.state_dict()[k]) for k, v in bn_before.items())


def test_two_activation_tricks_and_other_models_refused():
    with pytest.raises(ConfigError, match="^tricks leakyrelu and swish both replace the activations; keep one$"):
        parse_recipe("baseline+leakyrelu+swish")
    SwishSwap().check(nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU()))  # any model with ReLUs (issue 12)
    with pytest.raises(ConfigError, match=r"^trick 'swish' found no nn.ReLU in Sequential to replace"):
        SwishSwap().check(nn.Sequential(nn.Conv2d(3, 3, 3), nn.GELU()))
    with pytest.raises(ConfigError, match=r"slope=-0.1 is out of range"):
        parse_recipe("baseline+leakyrelu:slope=-0.1")


def test_once_over_two_fits_and_undone_on_cancel():
    learn = learner("baseline+leakyrelu:msra=0.5")
    learn.fit(1)
    weights = [c.weight.detach().clone() for c in convs(learn.model)]
    learn.fit(0)  # before_fit again: no second re-initialisation
    assert all(torch.equal(w, c.weight) for w, c in zip(weights, convs(learn.model)))

    learn = learner("baseline+leakyrelu:msra=0.5", cbs=[cancel_at_train()])
    plain, state = repr(learn.model), {k: v.clone() for k, v in learn.model.state_dict().items()}
    learn.fit(1)
    assert repr(learn.model) == plain
    assert all(torch.equal(state[k], v) for k, v in learn.model.state_dict().items())


@pytest.mark.parametrize("text,model", [("baseline+leakyrelu:slope=0.01,msra=0.01", "resnet20"),
                                        ("baseline+swish", "preact_resnet20"),
                                        ("baseline+leakyrelu", "timm:resnet18")])
def test_trains_one_epoch(text, model, tmp_path):
    result = train(parse_recipe(text, epochs=1, bs=32, device="cpu", model=model), tmp_path / "run",
                   data=toy_data())
    assert result["epochs"] == 1 and 0.0 <= result["test_acc"] <= 100.0
