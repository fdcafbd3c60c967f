"""rotation: a 4-way head on the pooled features; weight * CE(rotation) added to the training loss only."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recipes.parse import parse_recipe
from recipes.run import train
from tricks.errors import ConfigError
from tricks.models import create_model
from tricks.rotation_head import RotationHead, rotate_batch
from tricks.surgery import SideLinear
from fixtures import cancel_at_train, learner, toy_data


def with_head(name, weight=1.0):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4)
    cb = RotationHead(weight)
    cb.edit(model, cb.check(model))
    return cb, model


def test_rotate_batch_is_rot90_per_image():
    x = torch.randn(12, 3, 5, 5)
    k = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0, 1, 1, 2, 0])
    out = rotate_batch(x, k)
    for i in range(len(x)):
        assert torch.equal(out[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))
    # label k means k quarter turns: a mark in the top-left corner goes counter-clockwise around the corners
    mark = torch.zeros(4, 1, 3, 3)
    mark[:, 0, 0, 0] = 1
    corners = rotate_batch(mark, torch.arange(4))[:, 0].flatten(1).argmax(1)
    assert corners.tolist() == [0, 6, 8, 2]  # top-left, bottom-left, bottom-right, top-right
    with pytest.raises(ConfigError, match="square"):
        rotate_batch(torch.randn(2, 3, 4, 5), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet20", "timm:resnet18"])
def test_head_on_the_pooled_features_and_model_output_unchanged(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        cb = RotationHead()
        cb.edit(model, cb.check(model))
        assert torch.equal(model(x), before)
    head = model.rotation_head
    assert type(head) is SideLinear and (head.in_features, head.out_features) == (model.fc.in_features, 4)
    assert not head.training  # same mode as the model
    assert "rotation_head.weight" in model.state_dict()


@pytest.mark.parametrize("name", ["resnet20", "timm:resnet18"])
def test_loss_grows_by_exactly_weight_times_the_rotation_ce(name):
    cb, model = with_head(name, weight=0.7)
    model.train()
    x, y = torch.randn(6, 3, 16, 16), torch.arange(6) % 4
    base = F.cross_entropy(model(x), y)
    cb.learn = SimpleNamespace(model=model, xb=(x,), loss_grad=base, loss=base.detach().clone(), training=True,
                               cbs=[], yb=(y,))
    torch.manual_seed(5)
    cb("after_loss")
    got = cb.learn.loss_grad
    # by hand: the same draw of rotations, each image turned by torch.rot90 on its own
    torch.manual_seed(5)
    k = torch.randint(0, 4, (6,))
    turned = torch.stack([torch.rot90(x[i], int(k[i]), dims=(1, 2)) for i in range(6)])
    pool = model.global_pool if name.startswith("timm") else model.pool
    by_hand = base + 0.7 * F.cross_entropy(model.rotation_head.linear(pool(model.forward_features(turned))), k)
    assert torch.allclose(got, by_hand, rtol=1e-6, atol=0)
    assert torch.allclose(cb.learn.loss, by_hand.detach(), rtol=1e-6, atol=0)
    grads = torch.autograd.grad(got, list(model.parameters()), retain_graph=True)
    want = torch.autograd.grad(by_hand, list(model.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(grads, want))


def test_evaluation_loss_untouched():
    cb, model = with_head("resnet20")
    model.eval()
    x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
    loss = F.cross_entropy(model(x), y)
    cb.learn = SimpleNamespace(model=model, xb=(x,), loss_grad=loss, loss=loss.detach(), training=False)
    cb("after_loss")  # fastai skips it: run_valid = False
    assert cb.learn.loss_grad is loss


def test_head_trained_in_the_optimizer_once_and_removed_on_cancel():
    learn = learner("baseline+rotation")
    learn.fit(1)
    head = learn.model.rotation_head
    in_opt = {id(p) for g in learn.opt.opt.param_groups for p in g["params"]}
    assert {id(head.weight), id(head.bias)} <= in_opt and in_opt == {id(p) for p in learn.model.parameters()}
    w = head.weight.detach().clone()
    learn.fit(1)
    assert learn.model.rotation_head is head and not torch.equal(head.weight, w)  # same head, trained on

    learn = learner("baseline+rotation", cbs=[cancel_at_train()])
    learn.fit(1)
    assert not hasattr(learn.model, "rotation_head")
    assert {id(p) for g in learn.opt.opt.param_groups for p in g["params"]} == {id(p) for p in learn.model.parameters()}


def test_side_linear_passes_its_input_through_and_maps_with_linear():
    head = SideLinear(3, 4)
    x = torch.randn(2, 3)
    assert head(x) is x
    assert torch.equal(head.linear(x), F.linear(x, head.weight, head.bias))


def test_models_without_a_classifier_refused():
    assert RotationHead().check(nn.Sequential(nn.Flatten(), nn.Linear(3, 4))) is None  # classifier found, no family
    with pytest.raises(ConfigError, match=r"^trick 'rotation' cannot find the classifier of model Sequential; "
                                          r"looked for timm's get_classifier\(\)"):
        RotationHead().check(nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()))


@pytest.mark.parametrize("model", ["resnet20", "timm:resnet18"])
def test_trains_one_epoch(model, tmp_path):
    result = train(parse_recipe("baseline+rotation:weight=0.5", epochs=1, bs=32, device="cpu", model=model),
                   tmp_path / "run", data=toy_data())
    assert result["epochs"] == 1 and 0.0 <= result["test_acc"] <= 100.0
