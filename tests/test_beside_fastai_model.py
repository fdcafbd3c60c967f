"""The weight, lr-schedule and model-changing tricks beside fastai's own callbacks, schedules and learners (issue
22): a fastai user's script over a folder of real CIFAR-10 JPEGs. The averaged weights are what fastai saves and
stops on; optimizer rebuilds and the lr schedules keep discriminative lrs; a refused fit undoes every surgery;
a second fit changes nothing; the rotation loss is accumulated as the main loss is; the structural tricks
reach into vision_learner bodies."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.tracker import EarlyStoppingCallback, ReduceLROnPlateau, SaveModelCallback
from fastai.callback.training import GradientAccumulation
from fastai.data.transforms import Normalize
from fastai.learner import Learner
from fastai.metrics import accuracy
from fastai.optimizer import ranger
from fastai.torch_core import params, set_seed
from fastai.vision.augment import Flip
from fastai.vision.data import ImageDataLoaders
from fastai.vision.learner import vision_learner
from fastai.vision.models.xresnet import xresnet18
from torch import nn
from torchvision.models import resnet18

from fixtures import CIFAR10_CLASSES, cifar10_jpeg_folder, tiny_model
from tricks import EMA, SGDR, FinalBN, LastBN, LastGamma, Lookahead, ResidualDropout, RotationHead, StepDecay
from tricks.errors import ConfigError
from tricks.sgdr import sgdr_lr
from tricks.step_decay import step_decay_lr

CLASSES = CIFAR10_CLASSES[:4]
BS = 16


def two_groups(model: nn.Module):
    """A user's splitter: the convolutional part, then the classifier and whatever follows it."""
    return [params(model[:3]), params(model[3:])]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """4 classes, 16 training and 8 test JPEGs each (PNGs of toy data without the shared archive)."""
    return cifar10_jpeg_folder(tmp_path_factory.mktemp("cifar-folder"), CLASSES, (("train", 16), ("test", 8)))


def loaders(folder, augment: bool = True, shuffle: bool = True):
    set_seed(0)
    tfms = ([Flip()] if augment else []) + [Normalize.from_stats([0.49, 0.48, 0.45], [0.25] * 3)]
    return ImageDataLoaders.from_folder(folder, train="train", valid="test", bs=BS, num_workers=0, batch_tfms=tfms,
                                        shuffle=shuffle)


@pytest.fixture(scope="module")
def dls(image_folder):
    return loaders(image_folder)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


class GroupLRs(Callback):
    """The lr of every param group at each training batch (after every schedule has set it), and which groups the
    Learner's parameters are in."""

    order, run_valid = 90, False

    def __init__(self):
        self.lrs, self.base, self.group_of = [], [], {}

    def before_fit(self):
        self.base = [float(h["lr"]) for h in self.learn.opt.hypers]  # as fit set them

    def after_batch(self):
        self.lrs.append([float(h["lr"]) for h in self.learn.opt.hypers])
        self.group_of = {id(p): i for i, pg in enumerate(self.learn.opt.param_lists) for p in pg}


# EMA and Lookahead beside SaveModelCallback and EarlyStoppingCallback

@pytest.mark.parametrize("trick", ["ema", "lookahead"])
def test_the_best_file_holds_the_weights_that_scored_best(trick, dls, tmp_path, one_torch_thread):
    cb = EMA(decay=0.5) if trick == "ema" else Lookahead(k=2, alpha=0.5)
    learn = Learner(dls, tiny_model(dls.c, pool=1), metrics=accuracy, path=tmp_path, cbs=[cb])
    learn.fit(3, 3e-2, cbs=[SaveModelCallback(monitor="valid_loss", fname="best")])
    losses = [v[1] for v in learn.recorder.values]
    best = int(np.argmin(losses))
    fresh = Learner(dls, tiny_model(dls.c, seed=1, pool=1), metrics=accuracy, path=tmp_path)
    fresh.load("best", with_opt=False)
    loss, acc = fresh.validate()
    assert loss == pytest.approx(losses[best], rel=1e-6, abs=0) and acc == learn.recorder.values[best][2]
    assert same_state(state(learn.model), state(fresh.model))  # SaveModelCallback loaded the best file at the end


class LiveWeights(Callback):
    """The live weights after every optimizer step."""

    order = 80

    def __init__(self):
        self.after_steps = []

    def after_step(self):
        self.after_steps.append(state(self.learn.model))


def test_early_stopping_leaves_the_averaged_weights(dls, tmp_path, one_torch_thread):
    ema, live = EMA(decay=0.5), LiveWeights()
    learn = Learner(dls, tiny_model(dls.c, pool=1), metrics=accuracy, path=tmp_path, cbs=[ema, live])
    learn.fit(5, 3e-2, cbs=[EarlyStoppingCallback(monitor="valid_loss", min_delta=10.0, patience=0)])
    assert learn.epoch == 1 and len(learn.recorder.values) == 2  # stopped after its second epoch
    final = state(learn.model)
    assert same_state(final, state(ema.average.module))
    assert not torch.equal(final["5.weight"], live.after_steps[-1]["5.weight"])
    read = learn.recorder.values[-1][1]  # the valid_loss EarlyStopping read
    assert learn.validate()[0] == pytest.approx(read, rel=1e-6, abs=0)


# discriminative lrs: optimizer rebuilds and the lr schedules

def test_ema_holding_the_lr_holds_each_group_at_its_own(dls, one_torch_thread):
    spy = GroupLRs()
    learn = Learner(dls, tiny_model(dls.c, pool=1), splitter=two_groups, cbs=[EMA(mode="noschedule"), spy])
    learn.fit(1, slice(1e-4, 1e-2))
    assert spy.lrs == [spy.base] * len(dls.train) and spy.base[0] < spy.base[1] == 1e-2


class BodyConvAtFit(Callback):
    """The first conv of a vision_learner body at the start of every fit."""

    order = 90

    def __init__(self):
        self.weights = []

    def before_train(self):
        if self.epoch == 0:
            self.weights.append(self.learn.model[0][0].weight.detach().clone())


@pytest.mark.parametrize("policy", ["fit", "fit_one_cycle"])
def test_optimizer_rebuilds_keep_the_discriminative_lrs(policy, dls, one_torch_thread):
    runs = {}
    for tricks in ((), (FinalBN(), RotationHead())):
        spy = GroupLRs()
        learn = Learner(dls, tiny_model(dls.c, pool=1), splitter=two_groups, cbs=[*tricks, spy])
        getattr(learn, policy)(1, slice(1e-4, 1e-2))
        runs[bool(tricks)] = spy, [h["wd"] for h in learn.opt.hypers]
    (plain, plain_wds), (tricked, tricked_wds) = runs[False], runs[True]
    assert tricked.lrs == plain.lrs and len(plain.lrs[0]) == 2 and plain.lrs[0][0] < plain.lrs[0][1]
    assert tricked_wds == plain_wds
    model = learn.model
    for module in (model[5], model.rotation_head):  # the classifier wrap (BN, fc) and the head: the last group
        assert {tricked.group_of[id(p)] for p in module.parameters()} == {1}


def test_fine_tune_with_finalbn_keeps_its_frozen_body_and_group_lrs(dls, one_torch_thread):
    runs = {}
    for tricks in ((), (FinalBN(),)):
        spy, body = GroupLRs(), BodyConvAtFit()
        learn = vision_learner(dls, resnet18, pretrained=False, n_out=dls.c, cbs=[*tricks, spy, body])
        learn.fine_tune(1, base_lr=1e-2, freeze_epochs=1)
        runs[bool(tricks)] = spy.lrs
    assert runs[True] == runs[False] and len(runs[True]) == 2 * len(dls.train)
    first, second = body.weights  # at the start of the frozen fit and of the unfrozen one
    assert torch.equal(first, second) and not torch.equal(learn.model[0][0].weight, second)
    assert isinstance(learn.model[1][8][0], nn.BatchNorm1d)


@pytest.mark.parametrize("schedule", ["sgdr", "stepdecay"])
def test_lr_schedules_scale_every_group_from_its_own_base_lr(schedule, dls, one_torch_thread):
    cb = SGDR(cycle_len=1, cycle_mul=1, step="iter") if schedule == "sgdr" else StepDecay(milestones=[1], gamma=0.1)
    spy = GroupLRs()
    learn = Learner(dls, tiny_model(dls.c, pool=1), splitter=two_groups, cbs=[cb, spy])
    learn.fit(2, slice(1e-4, 1e-2))
    base = spy.base
    n = len(dls.train)
    for t, got in enumerate(spy.lrs):
        if schedule == "sgdr":
            lr = sgdr_lr(t, peak=1e-2, floor=0.0, cycle_len=n, cycle_mul=1)
        else:
            lr = step_decay_lr(t / n, peak=1e-2, milestones=[1], gamma=0.1)
        assert got == [lr * (b / base[-1]) for b in base]
    assert spy.lrs[0] == pytest.approx([1e-4, 1e-2], rel=1e-12) and spy.lrs[0][0] != spy.lrs[0][1]


def test_two_lr_schedules_added_after_the_fit_refuse_the_next_fit_but_not_evaluation(dls, one_torch_thread):
    """fastai's validate / get_preds hold the Learner's lock during before_fit: a refusal there would leave it held
    and hang the next call, so the schedules stand aside there and refuse only a fit."""
    learn = Learner(dls, tiny_model(dls.c, pool=1), metrics=accuracy)
    learn.fit(1, 1e-2)
    learn.add_cbs([SGDR(), StepDecay(milestones=[1])])
    probs, targets = learn.get_preds()
    loss = learn.validate()[0]
    assert loss == pytest.approx(float(nn.functional.cross_entropy(probs.log(), targets)), rel=1e-5)
    assert not learn.lock.locked()
    with pytest.raises(ConfigError, match="two lr schedules: SGDR and StepDecay both set the lr; keep one"):
        learn.fit(1, 1e-2)


# a refused fit undoes every surgery; a second fit changes nothing

@pytest.mark.parametrize("refusal", ["two lr schedules", "reduce on plateau", "ema holding the lr", "ranger",
                                     "a trick that does not apply"])
def test_a_refused_fit_leaves_the_model_as_it_was(refusal, dls, one_torch_thread):
    learn = Learner(dls, tiny_model(dls.c, pool=1), splitter=two_groups)
    learn.create_opt()
    before, n_params = state(learn.model), sum(len(pg) for pg in learn.opt.param_lists)
    if refusal == "two lr schedules":
        with pytest.raises(ConfigError, match="two lr schedules: SGDR and ParamScheduler both set the lr"):
            learn.fit_one_cycle(1, cbs=[FinalBN(), RotationHead(), SGDR()])
    elif refusal == "reduce on plateau":
        with pytest.raises(ConfigError, match=r"two lr schedules: StepDecay and ReduceLROnPlateau both set the lr; "
                                              r"keep one \(drop ReduceLROnPlateau\)$"):
            learn.fit(1, cbs=[FinalBN(), RotationHead(), StepDecay(), ReduceLROnPlateau()])
    elif refusal == "ranger":
        learn.opt_func = ranger
        learn.create_opt()
        with pytest.raises(ConfigError, match="lookahead and the Learner's optimizer, already a fastai Lookahead"):
            learn.fit(1, cbs=[FinalBN(), RotationHead(), Lookahead()])
    elif refusal == "ema holding the lr":
        with pytest.raises(ConfigError, match="ema mode=noschedule holds the lr at the peak, which overrides "
                                              "ParamScheduler; drop one of them"):
            learn.fit_one_cycle(1, cbs=[FinalBN(), RotationHead(), EMA(mode="noschedule", peak_lr=1e-2)])
    else:
        with pytest.raises(ConfigError, match="trick 'lastbn' cannot change model Sequential"):
            learn.fit(1, cbs=[FinalBN(), RotationHead(), LastBN(on=False)])
    assert same_state(state(learn.model), before)
    assert not hasattr(learn.model, "tricks_surgeries") and not hasattr(learn.model, "rotation_head")
    assert sum(len(pg) for pg in learn.opt.param_lists) == n_params == len(list(learn.model.parameters()))


class HeadAtStart(Callback):
    """The rotation head's weights as the first batch of the fit trains (after every surgery)."""

    order = 90

    def before_train(self):
        if self.epoch == 0:
            self.weights = self.learn.model.rotation_head.weight.detach().clone()


def test_a_second_fit_with_new_callbacks_changes_nothing(dls, one_torch_thread):
    learn = Learner(dls, tiny_model(dls.c, pool=1), splitter=two_groups)
    learn.fit(1, 1e-2, cbs=[FinalBN(), RotationHead()])
    names, trained_head = [n for n, _ in learn.model.named_modules()], learn.model.rotation_head.weight.clone()
    at_start = HeadAtStart()
    learn.fit(1, 1e-2, cbs=[FinalBN(), RotationHead(), at_start])
    assert [n for n, _ in learn.model.named_modules()] == names  # no second BN, no new head
    assert sum(isinstance(m, nn.BatchNorm1d) for m in learn.model.modules()) == 1
    assert torch.equal(at_start.weights, trained_head)
    with pytest.raises(ConfigError, match="\tfinalbn:position=logits on a model that finalbn:position=features "
                                          "has already changed; give the same settings, or build a new model$"):
        learn.fit(1, 1e-2, cbs=[FinalBN(position="logits")])


def test_a_second_fit_does_not_zero_the_trained_gammas_again(dls, one_torch_thread):
    learn = vision_learner(dls, xresnet18, pretrained=False, n_out=dls.c)
    learn.fit(1, 1e-2, cbs=[LastGamma()])
    bn = learn.model[0][4][0].convpath[1][1]
    trained = bn.weight.detach().clone()
    assert trained.abs().sum() > 0  # it trained away from the zero it started at
    learn.fit(1, 0.0, cbs=[LastGamma()])  # lr 0: nothing moves but the BN running statistics
    assert torch.equal(bn.weight, trained)


# the rotation loss beside GradientAccumulation

class FirstGradients(Callback):
    order = 90

    def after_backward(self):
        if not hasattr(self, "grads"):
            self.grads = [p.grad.detach().clone() for p in self.learn.model.parameters()]


def test_rotation_loss_is_accumulated_as_the_main_loss(image_folder, one_torch_thread):
    grads = {}
    for n_acc in (None, 2 * BS):
        dls = loaders(image_folder, augment=False, shuffle=False)
        spy = FirstGradients()
        learn = Learner(dls, tiny_model(dls.c, pool=1), cbs=[RotationHead(weight=2.0), spy])
        set_seed(0)
        learn.fit(1, 1e-2, cbs=[GradientAccumulation(n_acc=n_acc)] if n_acc else [])
        grads[n_acc] = spy.grads
    assert len(grads[None]) == len(grads[2 * BS]) == 8  # conv, BN, fc, rotation head: weight and bias each
    for plain, accumulated in zip(grads[None], grads[2 * BS]):
        assert torch.equal(accumulated, plain * 0.5)  # both losses divided by n_acc / bs = 2, exactly


# the structural tricks on vision_learner bodies

ARCHS = {
    "fastai xresnet18": (xresnet18, "0.{layer}.{block}.convpath.1", "0", "1"),
    "timm resnet18": ("resnet18", "0.model.layer{layer}.{block}", "conv2", "bn2"),
    "torchvision resnet18": (resnet18, "0.{layer}.{block}", "conv2", "bn2"),
}


class GammasAtStart(Callback):
    """sum |gamma| of each named BN as training starts (after every surgery)."""

    order = 90

    def __init__(self, paths: list[str]):
        self.paths, self.gammas = paths, []

    def before_train(self):
        self.gammas = [float(self.learn.model.get_submodule(p).weight.detach().abs().sum()) for p in self.paths]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_structural_tricks_reach_into_vision_learner_bodies(arch, dls, one_torch_thread):
    model_arch, block, conv, bn = ARCHS[arch]
    layers = range(4, 8) if "layer{layer}" not in block else range(1, 5)
    blocks = [block.format(layer=layer, block=b) for layer in layers for b in (0, 1)]
    spy = GammasAtStart([f"{b}.{bn}" for b in blocks])
    learn = vision_learner(dls, model_arch, pretrained=False, n_out=dls.c)
    keys = list(learn.model.state_dict())
    learn.fit(1, 1e-3, cbs=[ResidualDropout(p=0.2), LastGamma(), spy])
    drops = [n for n, m in learn.model.named_modules() if isinstance(m, nn.Dropout) and n.endswith("resdrop")]
    assert drops == [f"{b}.{conv}.resdrop" for b in blocks]
    assert spy.gammas == [0.0] * 8
    assert list(learn.model.state_dict()) == keys
    with pytest.raises(ConfigError, match="\tlastbn applies to pre-activation models, not Sequential, a fastai "
                                          "vision_learner model, body: "):
        learn.fit(1, cbs=[LastBN(on=False)])


def test_lastbn_on_a_timm_resnetv2_body(dls, one_torch_thread):
    learn = vision_learner(dls, "resnetv2_18", pretrained=False, n_out=dls.c)
    act = learn.model[0].model.norm.act
    learn.fit(1, 1e-3, cbs=[LastBN(on=False)])
    assert learn.model[0].model.norm is act
    assert not [k for k in learn.model.state_dict() if k.startswith("0.model.norm.")]
