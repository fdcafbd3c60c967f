"""Issue 12, section 2: the structural tricks on every model family `tricks.surgery` describes -- the project's
CIFAR ResNets (v1, pre-activation), timm's ResNet and ResNetV2, fastai's XResNet, torchvision's ResNet -- each
change where the family's description says, undone exactly on a cancelled fit, made once over two fits; and
the recipe side trains fastai's and torchvision's models with them."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from fastai.learner import Learner
from torch import nn

from fixtures import cancel_at_train, edited, toy_data
from recipes.build import trained_model
from recipes.parse import parse_recipe
from recipes.run import train
from tricks import (FCDropout, FinalBN, LastBN, LastGamma, LeakyReLUSwap, ResidualDropout, RotationHead,
                    SwishSwap)
from tricks.data.loaders import DeviceLoader, device_dataloaders
from tricks.errors import ConfigError
from tricks.models import create_model
from tricks.rotation_head import rotation_loss
from tricks.surgery import (SUPPORTED, ClassifierWrap, SideLinear, blocks, classifier_layer, classifier_path,
                            find_family, last_bn, last_conv, num_features, pooled_features)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny inputs: one thread is faster, and fair to others

# model: (family, number of residual blocks, the first block, its last BN and last conv, the classifier, the
# pooled features' width) -- the table of tricks/surgery.py, written out
WHERE = {
    "resnet20": ("v1", 9, "stages.0.0", "bn2", "conv2", "fc", 64),
    "wrn10_1": ("preact", 3, "stages.0.0", "bn2", "conv2", "fc", 64),
    "timm:resnet18": ("timm", 8, "layer1.0", "bn2", "conv2", "fc", 512),
    "timm:resnet26": ("timm", 8, "layer1.0", "bn3", "conv3", "fc", 2048),
    "timm:resnetv2_18": ("timm-v2", 8, "stages.0.blocks.0", "norm2", "conv2", "head.fc", 512),
    "timm:resnetv2_50": ("timm-v2", 16, "stages.0.blocks.0", "norm3", "conv3", "head.fc", 2048),
    "fastai:xresnet18": ("fastai", 8, "4.0", "convpath.1.1", "convpath.1.0", "11", 512),
    "fastai:xse_resnext18": ("fastai", 8, "4.0", "convpath.1.1", "convpath.1.0", "11", 512),  # the SE module after
    "fastai:xresnet50": ("fastai", 16, "4.0", "convpath.2.1", "convpath.2.0", "11", 2048),
    "torchvision:resnet18": ("torchvision", 8, "layer1.0", "bn2", "conv2", "fc", 512),
    "torchvision:resnet50": ("torchvision", 16, "layer1.0", "bn3", "conv3", "fc", 2048),
}
# the smallest model of each family
SMALL = ["resnet20", "wrn10_1", "timm:resnet18", "timm:resnetv2_18", "fastai:xresnet18", "torchvision:resnet18"]
PREACT = {"wrn10_1", "timm:resnetv2_18"}


def make(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=4)


def batchnorm_weights(model):
    return {n: m.weight.detach().clone() for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def path_of(model, module):
    return next(n for n, m in model.named_modules() if m is module)


@pytest.mark.parametrize("name", list(WHERE))
def test_the_family_description_says_where_things_are(name):
    fam_name, n, first, bn, conv, fc, width = WHERE[name]
    model = make(name).eval()
    assert find_family(model).name == fam_name
    found = list(blocks(model))
    assert len(found) == n and path_of(model, found[0]) == first
    for b in found:
        assert last_bn(b) is b.get_submodule(bn) and isinstance(last_bn(b), nn.BatchNorm2d)
        assert last_conv(b) is b.get_submodule(conv) and type(last_conv(b)) is nn.Conv2d
    assert classifier_path(model) == fc and num_features(model) == width
    seen = []
    model.get_submodule(fc).register_forward_pre_hook(lambda m, a: seen.append(a[0].flatten(1)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
        assert torch.equal(pooled_features(model, x), seen[0]) and seen[0].shape == (2, width)


@pytest.mark.parametrize("name", list(WHERE))
@pytest.mark.parametrize("on", [True, False])
def test_lastgamma_sets_exactly_the_last_bn_of_every_branch(name, on):
    model = make(name)
    before = batchnorm_weights(model)
    edited(LastGamma(on=on), model)
    last = {path_of(model, last_bn(b)) for b in blocks(model)}
    after = batchnorm_weights(model)
    assert len(last) == WHERE[name][1]
    for path, w in after.items():
        assert torch.equal(w, torch.full_like(w, 0.0 if on else 1.0) if path in last else before[path]), path


@pytest.mark.parametrize("name", SMALL)
def test_resdrop_puts_one_dropout_on_the_input_of_each_branchs_last_conv(name):
    model = edited(LastGamma(on=False), make(name)).train()  # branches that are not zero from the start
    plain = copy.deepcopy(model)
    keys, dropouts = list(model.state_dict()), sum(type(m) is nn.Dropout for m in model.modules())
    edited(ResidualDropout(p=0.0), model)
    assert list(model.state_dict()) == keys
    assert sum(type(m) is nn.Dropout for m in model.modules()) - dropouts == WHERE[name][1]
    assert all(type(last_conv(b).resdrop) is nn.Dropout for b in blocks(model))
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    want = plain(x)
    torch.manual_seed(1)
    assert torch.equal(model(x), want)  # p=0: exactly the unedited model, in training mode
    dropped = edited(ResidualDropout(p=0.5), copy.deepcopy(plain))
    torch.manual_seed(1)
    assert not torch.equal(dropped(x), want)
    seen = []
    conv = last_conv(next(iter(blocks(dropped))))
    conv.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()), prepend=True)  # before the dropout
    conv.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))  # after it
    dropped(x)
    kept = seen[1] != 0
    assert torch.equal(seen[1][kept], seen[0][kept] * 2) and 0 < kept.float().mean() < 1


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("position", ["features", "logits"])
def test_finalbn_and_fcdrop_wrap_the_familys_classifier(name, position):
    model = make(name)
    fc, path, width = classifier_layer(model), WHERE[name][5], WHERE[name][6]
    edited(FCDropout(p=0.2, where="before"), model)
    edited(FinalBN(position=position), model)
    head = model.get_submodule(path)
    assert type(head) is ClassifierWrap and classifier_path(model) == path and classifier_layer(model) is fc
    bn, inner = (head[0], head[1]) if position == "features" else (head[1], head[0])
    assert type(bn) is (nn.BatchNorm2d if isinstance(fc, nn.Conv2d) else nn.BatchNorm1d)
    assert bn.num_features == (width if position == "features" else 4)
    assert type(inner) is ClassifierWrap and type(inner[0]) is nn.Dropout and inner[1] is fc
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # eval: the dropout is the identity, a fresh BN divides by sqrt(1 + eps)
        feats = pooled_features(model, x)
        logits = (F.conv2d(feats[:, :, None, None], fc.weight, fc.bias).flatten(1) if isinstance(fc, nn.Conv2d)
                  else F.linear(feats, fc.weight, fc.bias))
        want = F.linear(feats / (1 + bn.eps) ** 0.5, fc.weight.flatten(1), fc.bias) if position == "features" \
            else logits / (1 + bn.eps) ** 0.5
        torch.testing.assert_close(model(x), want)


@pytest.mark.parametrize("name", SMALL)
def test_rotation_head_on_the_pooled_features_leaves_the_output(name):
    model = make(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        edited(RotationHead(), model)
        assert torch.equal(model(x), before)  # also where the model is an nn.Sequential (fastai's XResNet)
    head = model.rotation_head
    assert type(head) is SideLinear and (head.in_features, head.out_features) == (WHERE[name][6], 4)
    assert {"rotation_head.weight", "rotation_head.bias"} <= set(model.state_dict())
    k = torch.tensor([0, 3])
    turned = torch.stack([torch.rot90(x[i], int(k[i]), dims=(1, 2)) for i in range(2)])
    with torch.no_grad():
        want = F.cross_entropy(F.linear(pooled_features(model, turned), head.weight, head.bias), k)
        assert torch.equal(rotation_loss(model, x, k), want)


@pytest.mark.parametrize("name", SMALL)
def test_lastbn_on_the_preactivation_families_and_refused_elsewhere(name):
    model = make(name).eval()
    if name not in PREACT:
        with pytest.raises(ConfigError, match=r"^lastbn applies to pre-activation models, not \w+, a "):
            LastBN(on=False).check(model)
        return
    path = {"wrn10_1": "final_act.0", "timm:resnetv2_18": "norm"}[name]
    keys = set(model.state_dict())
    edited(LastBN(on=False), model)
    assert keys - set(model.state_dict()) == {f"{path}.{k}" for k in
                                              ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.get_submodule(path).modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the features after the last stage go through the ReLU alone
        stages = model.stages(model.stem(x))
        assert torch.equal(model.forward_features(x), torch.relu(stages))


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("trick,kind", [(LeakyReLUSwap, nn.LeakyReLU), (SwishSwap, nn.SiLU)])
def test_activation_swaps_reach_every_relu(name, trick, kind):
    model = make(name)
    n = sum(type(m) is nn.ReLU for m in model.modules())
    edited(trick(), model)
    assert n > 0 and not any(type(m) is nn.ReLU for m in model.modules())
    assert sum(type(m) is kind for m in model.modules()) == n


def tiny_dls():
    data = toy_data(n_train=32, n_test=16)
    common = dict(bs=16, mean=torch.tensor([0.4] * 3), std=torch.tensor([0.3] * 3))
    return device_dataloaders(DeviceLoader(data.train.images, data.train.labels, shuffle=True, drop_last=True, **common),
                              DeviceLoader(data.test.images, data.test.labels, **common))


def all_tricks(name):
    preact = [LastBN(on=False)] if name in PREACT else []
    return [SwishSwap(), ResidualDropout(0.2), FCDropout(0.2), FinalBN(), *preact, LastGamma(), RotationHead()]


def pre_hooks(model):
    return sum(len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name", SMALL)
def test_every_trick_undone_exactly_on_a_cancelled_fit_and_made_once_over_two_fits(name):
    model = make(name)
    state, plain = {k: v.clone() for k, v in model.state_dict().items()}, repr(model)
    learn = Learner(tiny_dls(), model, loss_func=nn.CrossEntropyLoss(), cbs=[*all_tricks(name), cancel_at_train()])
    learn.fit(1, 0.01)
    assert repr(model) == plain and pre_hooks(model) == 0
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    learn = Learner(tiny_dls(), model, loss_func=nn.CrossEntropyLoss(), cbs=all_tricks(name))
    learn.fit(1, 0.01)
    edited_repr, hooks, keys = repr(model), pre_hooks(model), list(model.state_dict())
    assert hooks == WHERE[name][1]
    gammas = [last_bn(b).weight.detach().clone() for b in blocks(model)]
    learn.fit(1, 0.0)  # lr 0: what the second fit changes is the surgery's doing only, and it does nothing
    assert repr(model) == edited_repr and pre_hooks(model) == hooks and list(model.state_dict()) == keys
    assert all(torch.equal(last_bn(b).weight, g) for b, g in zip(blocks(model), gammas))
    assert {id(p) for p in learn.opt.all_params(with_grad=False).itemgot(0)} == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("name", ["fastai:xresnet18", "torchvision:resnet18"])
def test_a_resdrop_model_pickles_with_its_dropout(name):
    model = edited(ResidualDropout(p=0.5), make(name)).train()
    loaded = pickle.loads(pickle.dumps(model))  # fastai's export pickles the model like this
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(3)
    want = model(x)
    torch.manual_seed(3)
    assert torch.equal(loaded(x), want) and pre_hooks(loaded) == WHERE[name][1]
    loaded.eval()
    model.eval()
    assert torch.equal(loaded(x), model(x))


def test_models_of_no_family_refused_in_one_line():
    own = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4))
    for trick in (ResidualDropout(), LastGamma(), LastBN()):
        with pytest.raises(ConfigError) as e:
            trick.check(own)
        assert str(e.value) == f"trick '{trick.trick}' cannot change model Sequential; it supports {SUPPORTED}"
    assert SUPPORTED.count("(") == 6 and "\n" not in SUPPORTED
    for trick in (FinalBN(), FCDropout(), RotationHead(), SwishSwap()):
        assert trick.check(own) is None  # the classifier (or the ReLUs) found: no family needed
    headless = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ConfigError, match=r"^trick 'finalbn' cannot find the classifier of model Sequential; "
                                          r"looked for timm's get_classifier\(\)"):
        FinalBN().check(headless)
    with pytest.raises(ConfigError, match=r"^trick 'resdrop' cannot change model ResNetV2; it supports "):
        ResidualDropout().check(create_model("timm:resnetv2_50d_gn", num_classes=4))  # GroupNorm, not BatchNorm


@pytest.mark.parametrize("text,model", [("baseline+finalbn+resdrop", "fastai:xresnet18"),
                                        ("baseline+finalbn+resdrop+rotation", "torchvision:resnet18"),
                                        ("baseline+finalbn+resdrop+lastgamma+lastbn:on=false", "timm:resnetv2_18")])
def test_recipes_train_the_library_models_and_rebuild_them_from_model_pth(text, model, tmp_path):
    recipe = parse_recipe(text, epochs=1, bs=32, device="cpu", model=model)
    result = train(recipe, tmp_path / "run", data=toy_data(n_train=64, n_test=32))
    assert result["epochs"] == 1 and 0.0 <= result["test_acc"] <= 100.0
    rebuilt = trained_model(recipe, 4, 3, tmp_path / "run" / "model.pth", torch.device("cpu"))
    saved = torch.load(tmp_path / "run" / "model.pth", weights_only=True)
    assert list(rebuilt.state_dict()) == list(saved)
    assert pre_hooks(rebuilt) == WHERE[model][1]


@pytest.mark.parametrize("name,first,pool", [("fastai:xresnet18", "0.0", "3"), ("torchvision:resnet18", "conv1", "maxpool")])
@pytest.mark.parametrize("zero", [True, False])
def test_library_models_take_zero_init_last_and_the_s3_stems(name, first, pool, zero):
    model = create_model(name, num_classes=4, zero_init_last=zero, stem="conv3x3s1-nomaxpool")
    assert all(torch.equal(last_bn(b).weight, torch.full_like(last_bn(b).weight, 0.0 if zero else 1.0))
               for b in blocks(model))
    conv = model.get_submodule(first)
    assert (conv.kernel_size, conv.stride) == ((3, 3), (1, 1)) and type(model.get_submodule(pool)) is nn.Identity
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_a_fastai_users_xresnet_with_the_structural_tricks_predicts_exports_and_loads(tmp_path):
    from fastai.data.transforms import Normalize
    from fastai.learner import load_learner
    from fastai.vision.data import ImageDataLoaders

    from fixtures import write_toy_folder

    folder = write_toy_folder(tmp_path / "images", n_train=32, n_test=8)
    dls = ImageDataLoaders.from_folder(folder, train="train", valid="test", bs=16, num_workers=0,
                                       batch_tfms=[Normalize.from_stats([0.4] * 3, [0.3] * 3)])
    model = create_model("fastai:xresnet18", num_classes=dls.c)
    learn = Learner(dls, model, cbs=[ResidualDropout(0.2), FinalBN(), RotationHead()], path=tmp_path)
    learn.fit(1, 0.01)
    assert type(model.rotation_head) is SideLinear and pre_hooks(model) == 8
    probs, _ = learn.get_preds()
    assert probs.shape == (8, dls.c)  # the rotation head, last in the nn.Sequential, left the logits as they were
    item = dls.valid_ds.items[0]
    _, idx, p = learn.predict(item)
    torch.testing.assert_close(p, probs[0])
    learn.export(tmp_path / "export.pkl")
    loaded = load_learner(tmp_path / "export.pkl")
    assert pre_hooks(loaded.model) == 8 and type(loaded.model.rotation_head) is SideLinear
    _, idx2, p2 = loaded.predict(item)
    assert int(idx2) == int(idx) and torch.equal(p2, p)
