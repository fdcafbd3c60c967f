"""Issue 12, section 2 (first part): the tricks that only need the classifier or the activations (finalbn,
fcdrop, rotation, leakyrelu, swish) on the models fastai users have: fastai's XResNet, torchvision's ResNet,
timm's ResNetV2 (a 1x1-conv head), a user's own nn.Sequential with a final nn.Linear; a one-line refusal where no
classifier can be found."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fastai.learner import Learner
from torch import nn

from fixtures import cancel_at_train, edited, toy_data
from tricks import FCDropout, FinalBN, LeakyReLUSwap, RotationHead, SwishSwap
from tricks.data.loaders import DeviceLoader, device_dataloaders
from tricks.errors import ConfigError
from tricks.models import create_model
from tricks.surgery import ClassifierWrap, SideLinear, classifier_layer, classifier_path, pooled_features

MODELS = {
    "fastai:xresnet18": "11",
    "torchvision:resnet18": "fc",
    "own": "5",
}


def make(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "own":
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 4))
    return create_model(name, num_classes=4)


def features_and_logits(model, x):
    """The classifier's input and the model's output, seen by a hook on the classifier as first found."""
    seen = []
    hook = model.get_submodule(classifier_path(model)).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    out = model(x)
    hook.remove()
    return seen[0], out


@pytest.mark.parametrize("name", list(MODELS))
def test_the_classifier_is_found_and_wrapped_in_place(name):
    model, x = make(name).eval(), torch.randn(2, 3, 32, 32)
    assert classifier_path(model) == MODELS[name]
    fc = classifier_layer(model)
    feats, ref = features_and_logits(model, x)
    assert torch.equal(pooled_features(model, x), feats) and feats.shape == (2, fc.in_features)
    torch.testing.assert_close(F.linear(feats, fc.weight, fc.bias), ref)

    edited(FCDropout(p=0.5), model)  # order 2, then finalbn (3) wraps the wrap, then the rotation head (7)
    edited(FinalBN(), model)
    edited(RotationHead(), model)  # also on an nn.Sequential (fastai's XResNet, the user's model): see below
    assert type(model.rotation_head) is SideLinear and model.rotation_head.in_features == fc.in_features
    head = model.get_submodule(MODELS[name])
    assert isinstance(head, ClassifierWrap) and isinstance(head[1], ClassifierWrap)
    assert isinstance(head[0], nn.BatchNorm1d) and isinstance(head[1][0], nn.Dropout) and head[1][1] is fc
    assert classifier_path(model) == MODELS[name] and classifier_layer(model) is fc
    bn = head[0]
    # eval: dropout is the identity, a fresh BN divides by sqrt(1 + eps), the rotation head is not in the output
    torch.testing.assert_close(model(x), F.linear(feats / (1 + bn.eps) ** 0.5, fc.weight, fc.bias))
    torch.testing.assert_close(pooled_features(model, x), feats)


@pytest.mark.parametrize("name", list(MODELS))
def test_finalbn_on_the_logits_and_fcdrop_after(name):
    model = make(name)
    edited(FCDropout(where="after"), model)
    edited(FinalBN(position="logits"), model)
    head = model.get_submodule(MODELS[name])
    assert [type(m) for m in head] == [ClassifierWrap, nn.BatchNorm1d] and head[1].num_features == 4
    assert [type(m) for m in head[0]] == [nn.Linear, nn.Dropout]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("trick", [LeakyReLUSwap, SwishSwap])
def test_activation_swaps_every_relu(name, trick):
    model = make(name)
    n = sum(isinstance(m, nn.ReLU) for m in model.modules())
    edited(trick(), model)
    new = nn.LeakyReLU if trick is LeakyReLUSwap else nn.SiLU
    assert n > 0 and not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, new) for m in model.modules()) >= 1


def tiny_dls():
    data = toy_data(n_train=32, n_test=16)
    common = dict(bs=16, mean=torch.tensor([0.4] * 3), std=torch.tensor([0.3] * 3))
    return device_dataloaders(DeviceLoader(data.train.images, data.train.labels, shuffle=True, drop_last=True, **common),
                              DeviceLoader(data.test.images, data.test.labels, **common))


TRICKS = {"finalbn": FinalBN, "fcdrop": FCDropout, "rotation": RotationHead, "leakyrelu": LeakyReLUSwap,
          "swish": SwishSwap}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("trick", list(TRICKS))
def test_trains_in_a_learner_and_is_undone_on_a_cancelled_fit(name, trick, one_torch_thread):
    model = make(name)
    keys = list(model.state_dict())
    learn = Learner(tiny_dls(), model, loss_func=nn.CrossEntropyLoss(), cbs=[TRICKS[trick](), cancel_at_train()])
    learn.fit(1, 0.01)  # cancelled as training starts: the surgery is undone
    assert list(learn.model.state_dict()) == keys
    learn = Learner(tiny_dls(), model, loss_func=nn.CrossEntropyLoss(), cbs=[TRICKS[trick]()])
    learn.fit(1, 0.01)
    loss, = learn.validate()
    assert torch.isfinite(torch.tensor(loss))
    assert list(learn.model.state_dict()) != keys or trick in ("leakyrelu", "swish", "fcdrop")
    assert {id(p) for p in learn.opt.all_params(with_grad=False).itemgot(0)} == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("trick", list(TRICKS)[:3])
def test_a_model_without_a_classifier_found_is_refused_in_one_line(trick):
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ConfigError) as e:
        TRICKS[trick]().check(model)
    assert str(e.value) == (f"trick '{trick}' cannot find the classifier of model Sequential; looked for timm's "
                            "get_classifier() (pretrained_cfg['classifier']: an nn.Linear or a 1x1 nn.Conv2d), "
                            "torchvision's `fc` nn.Linear, or an nn.Linear as the model's last module")


def test_create_model_builds_fastai_and_torchvision_models_and_refuses_what_does_not_apply():
    from fastai.vision.models.xresnet import XResNet
    from torchvision.models import ResNet

    assert isinstance(create_model("fastai:xse_resnext18", num_classes=3), XResNet)
    model = create_model("torchvision:resnet18", num_classes=3, in_chans=1)
    assert isinstance(model, ResNet) and model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    with pytest.raises(ConfigError, match=r"^unknown fastai model 'xresnet19'; did you mean 'xresnet18'"):
        create_model("fastai:xresnet19", num_classes=3)
    with pytest.raises(ConfigError, match=r"^unknown torchvision model 'resnet19'; did you mean "):
        create_model("torchvision:resnet19", num_classes=3)
    with pytest.raises(ConfigError, match=r"^option shortcut='conv3x3' does not apply to model 'fastai:xresnet18'; "
                                          r"it takes: zero_init_last, stem \(and bn_momentum\)$"):
        create_model("fastai:xresnet18", num_classes=3, shortcut="conv3x3")
    with pytest.raises(ConfigError, match=r"^stem='conv3x3s1-nomaxpool' cannot handle model 'torchvision:vgg11': "):
        create_model("torchvision:vgg11", num_classes=3, stem="conv3x3s1-nomaxpool")
    with pytest.raises(ConfigError, match=r"^option zero_init_last=True does not apply to model 'torchvision:vgg11' "):
        create_model("torchvision:vgg11", num_classes=3, zero_init_last=True)
