"""The target tricks beside fastai's own callbacks, as a fastai user writes it (issue 22): an ImageDataLoaders or
DataBlock over a folder of real CIFAR-10 JPEGs, a Learner with fastai's `MixUp` / `CutMix` / `MixedPrecision` /
`GradientAccumulation` next to one trick, one short fit, then fastai's API. Each combination either composes
(the fit trains, the Learner's own loss object is back after it, `get_preds` rows sum to 1, `predict` gives one
label) or is refused at before_fit in one line naming both, leaving the Learner exactly as it was.
A multi-label DataBlock (`MultiCategoryBlock`, BCE loss): mixup and label smoothing train it with its BCE loss on
the mixed / smoothed multi-hot targets (checked to the value on each batch); the other target tricks refuse it.
A label-refinery teacher's Learner trains on after being a teacher."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.mixup import CutMix
from fastai.callback.mixup import MixUp as FastaiMixUp
from fastai.callback.training import GradientAccumulation
from fastai.data.block import DataBlock, MultiCategoryBlock
from fastai.data.transforms import GrandparentSplitter, Normalize, get_image_files
from fastai.learner import Learner
from fastai.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
from fastai.metrics import accuracy
from fastai.vision.data import ImageBlock, ImageDataLoaders
from torch import nn

from fixtures import CIFAR10_CLASSES, check_evaluation, cifar10_jpeg_folder, tiny_model
from tricks import (ChannelDrop, ConfigError, DynamicRefine, FinalBN, KLMixUp, LabelRefinery, LabelSmoothing, MixUp,
                    OneHot)

CLASSES = CIFAR10_CLASSES[:4]
PER_SPLIT = (("train", 16), ("test", 4))  # 64 training and 16 test JPEGs
STATS = ([0.49, 0.48, 0.45], [0.25] * 3)
VEHICLES = ("airplane", "automobile")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return cifar10_jpeg_folder(tmp_path_factory.mktemp("cifar-folder"), CLASSES, PER_SPLIT)


@pytest.fixture(scope="module")
def dls(image_folder):
    torch.manual_seed(0)
    return ImageDataLoaders.from_folder(image_folder, train="train", valid="test", bs=16, num_workers=0,
                                        batch_tfms=[Normalize.from_stats(*STATS)])


def two_labels(path):  # no return annotation: fastai would cast the labels to it
    """A multi-label task: the class and whether it is a vehicle or an animal."""
    return [path.parent.name, "vehicle" if path.parent.name in VEHICLES else "animal"]


@pytest.fixture(scope="module")
def multi_dls(image_folder):
    torch.manual_seed(0)
    block = DataBlock(blocks=(ImageBlock, MultiCategoryBlock), get_items=get_image_files, get_y=two_labels,
                      splitter=GrandparentSplitter(train_name="train", valid_name="test"),
                      batch_tfms=[Normalize.from_stats(*STATS)])
    return block.dataloaders(image_folder, bs=16, num_workers=0)


def teacher_model(dls):
    return tiny_model(dls.c, seed=1)


TRICKS = {
    "OneHot": lambda dls: OneHot(),
    "LabelSmoothing": lambda dls: LabelSmoothing(eps=0.1),
    "MixUp": lambda dls: MixUp(alpha=0.3),
    "MixUp:losses": lambda dls: MixUp(alpha=0.3, mix="losses"),
    "KLMixUp": lambda dls: KLMixUp(),
    "LabelRefinery": lambda dls: LabelRefinery(teacher_model(dls)),
    "DynamicRefine": lambda dls: DynamicRefine(),
}


def weights(learn) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}


def same_state(learn, before: dict[str, torch.Tensor]) -> bool:
    after = learn.model.state_dict()
    return list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())


def one_line_naming(message: str, *names: str) -> bool:
    """fastai's line naming the callback and the event (it prefixes every error a callback raises), then the
    refusal: one line naming both sides."""
    context, line = message.split("\n")
    return context.endswith("when calling event `before_fit`:") and all(n in line for n in names)


def check_single_label_api(learn, dls):
    """After a fit: validate, get_preds and predict as on any single-label Learner."""
    _, _, probs = check_evaluation(learn, dls)  # validate is the cross entropy of get_preds' logits
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)))
    label, idx, p = learn.predict(dls.valid_ds.items[0])
    assert isinstance(label, str) and label == dls.vocab[int(idx)] and int(idx) == int(probs[0].argmax())


# ---- fastai's MixUp / CutMix beside a target trick: refused at before_fit, nothing changed ----

@pytest.mark.parametrize("mixer", [FastaiMixUp, CutMix])
@pytest.mark.parametrize("name", list(TRICKS))
def test_fastai_mixing_beside_a_target_trick_is_refused_in_one_line_and_changes_nothing(mixer, name, dls,
                                                                                        one_torch_thread):
    trick = TRICKS[name](dls)
    learn = Learner(dls, tiny_model(dls.c), metrics=accuracy, cbs=[mixer(), trick])
    original, before = learn.loss_func, weights(learn)
    with pytest.raises(ConfigError) as refused:
        learn.fit(1, 0.01)
    assert one_line_naming(str(refused.value), f"fastai's {mixer.__name__}", f"tricks' {type(trick).__name__}")
    assert learn.loss_func is original and same_state(learn, before)
    probs, _ = learn.get_preds()  # get_preds runs before_fit too, but trains nothing: it refuses nothing
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)))

    learn.remove_cb(mixer)  # keep the trick: it trains, and leaves the Learner's own loss behind
    check_single_label_api(learn, dls)
    learn.fit(2 if name == "DynamicRefine" else 1, 0.01)
    assert learn.loss_func is original and not same_state(learn, before)
    check_single_label_api(learn, dls)


def test_a_refused_fit_puts_back_the_model_surgery_made_before_the_refusal(dls, one_torch_thread):
    learn = Learner(dls, tiny_model(dls.c), metrics=accuracy, cbs=[FinalBN(), LabelSmoothing(), FastaiMixUp()])
    original, before = learn.loss_func, weights(learn)
    with pytest.raises(ConfigError, match="fastai's MixUp and tricks' LabelSmoothing"):
        learn.fit(1, 0.01)
    assert learn.loss_func is original and same_state(learn, before)  # FinalBN's wrap of the classifier undone


class SwapAtBeforeTrain(Callback):
    """A user's callback that swaps the loss for training, as fastai's MixHandler does, and puts it back."""

    order = 0

    def __init__(self):
        self.seen = []

    def before_train(self):
        self.old = self.learn.loss_func
        self.learn.loss_func = lambda pred, *yb: self.old(pred, *yb)

    def after_loss(self):
        self.seen.append(self.learn.loss_func)

    def after_train(self):
        self.learn.loss_func = self.old


@pytest.mark.parametrize("name", ["LabelSmoothing", "MixUp", "LabelRefinery"])
def test_the_learners_own_loss_is_back_even_when_another_callback_swapped_first(name, dls, one_torch_thread):
    swap = SwapAtBeforeTrain()
    learn = Learner(dls, tiny_model(dls.c), metrics=accuracy, cbs=[swap, TRICKS[name](dls)])
    original = learn.loss_func
    learn.fit(1, 0.01)
    assert learn.loss_func is original
    assert all(type(f).__name__ == "SoftTargetLoss" for f in swap.seen[:len(dls.train)])
    check_single_label_api(learn, dls)


@pytest.mark.parametrize("mixer", [FastaiMixUp, CutMix])
def test_channel_drop_composes_with_fastai_mixing(mixer, dls, one_torch_thread):
    mix = mixer()
    seen = []

    class Seen(Callback):
        order, run_valid = 99, False

        def after_loss(self):
            seen.append(self.learn.loss_func)

    learn = Learner(dls, tiny_model(dls.c), metrics=accuracy, cbs=[mix, ChannelDrop(max=2), Seen()])
    original = learn.loss_func
    learn.fit(1, 0.01)
    assert seen == [mix.lf] * len(dls.train)  # fastai's mixing loss trained every batch ...
    assert learn.loss_func is original  # ... and fastai put the Learner's own back
    check_single_label_api(learn, dls)


# ---- MixedPrecision and GradientAccumulation beside each trick: they compose ----

class CPUMixedPrecision(MixedPrecision):
    """fastai's MixedPrecision with the CPU's bfloat16 autocast: fastai's own autocasts on CUDA only (on a CPU it
    is switched off with a warning), so without a GPU the tricks would not run under autocast at all."""

    def __init__(self):
        super().__init__(amp_mode="bf16")  # no GradScaler: bf16 has fp32's range

    def before_fit(self):
        super().before_fit()
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)


def mixed_precision() -> MixedPrecision:
    return MixedPrecision() if torch.cuda.is_available() else CPUMixedPrecision()


class CountSteps(Callback):
    """Optimizer steps, and the dtypes of the training predictions before MixedPrecision (10) casts them."""

    order, run_valid = 5, False

    def before_fit(self):
        self.steps, self.pred_dtypes = 0, set()

    def after_pred(self):
        self.pred_dtypes.add(self.learn.pred.dtype)

    def after_step(self):
        self.steps += 1


COMPOSING = {**TRICKS, "ChannelDrop": lambda dls: ChannelDrop(max=2)}


@pytest.mark.parametrize("fastai_cb", ["MixedPrecision", "GradientAccumulation"])
@pytest.mark.parametrize("name", list(COMPOSING))
def test_mixed_precision_and_gradient_accumulation_compose_with_each_trick(fastai_cb, name, dls, one_torch_thread):
    other = mixed_precision() if fastai_cb == "MixedPrecision" else GradientAccumulation(n_acc=32)
    steps = CountSteps()
    learn = Learner(dls, tiny_model(dls.c), metrics=accuracy, cbs=[other, COMPOSING[name](dls), steps])
    original, before = learn.loss_func, weights(learn)
    learn.fit(1, 0.01)
    assert learn.loss_func is original and not same_state(learn, before)
    if fastai_cb == "MixedPrecision":  # every batch trained under autocast
        assert steps.pred_dtypes == {torch.float16 if torch.cuda.is_available() else torch.bfloat16}
        # bf16 takes every step; fp16's GradScaler may skip the first ones (inf gradients at its first scale)
        assert 0 < steps.steps <= len(dls.train) and (torch.cuda.is_available() or steps.steps == len(dls.train))
    else:  # GradientAccumulation counts images with find_bs of the (soft) targets: one step per 2 batches of 16
        assert steps.pred_dtypes == {torch.float32} and steps.steps == len(dls.train) // 2
    check_single_label_api(learn, dls)


# ---- a Learner's loss of another kind ----

def test_a_loss_the_tricks_would_drop_is_refused_and_mixing_losses_wraps_it(dls, one_torch_thread):
    learn = Learner(dls, tiny_model(dls.c), loss_func=LabelSmoothingCrossEntropyFlat(), cbs=[LabelSmoothing()])
    original, before = learn.loss_func, weights(learn)
    with pytest.raises(ConfigError) as refused:
        learn.fit(1, 0.01)
    assert one_line_naming(str(refused.value), "tricks' LabelSmoothing", "LabelSmoothingCrossEntropyFlat")
    assert learn.loss_func is original and same_state(learn, before)

    learn = Learner(dls, tiny_model(dls.c), loss_func=original, metrics=accuracy, cbs=[MixUp(mix="losses")])
    learn.fit(1, 0.01)
    assert learn.loss_func is original
    probs, _ = learn.get_preds()
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)))


# ---- multi-label: mixup and label smoothing keep the BCE loss; the others refuse ----

class BatchSpy(Callback):
    """Per training batch: the labels as loaded, then the targets, prediction, loss function and loss."""

    order, run_valid = 1, False  # after_pred: before the target tricks (20, 30) change yb

    def __init__(self, mixup=None):
        self.mixup, self.rows = mixup, []

    def after_pred(self):
        self.labels = self.learn.yb[0].clone()

    def after_loss(self):
        mix = (self.mixup.lam, self.mixup.perm.clone()) if self.mixup else None
        self.rows.append(dict(labels=self.labels, y=self.learn.yb[0].clone(), pred=self.learn.pred.detach().clone(),
                              loss_func=self.learn.loss_func, loss=self.learn.loss.detach().clone(), mix=mix))


def smoothed(labels: torch.Tensor, eps: float | None = None, on: float = 0.9, off: float = 0.0001) -> torch.Tensor:
    """Multi-hot labels smoothed per class, written out: y * (1 - eps) + eps / 2, or on / off."""
    if eps is not None:
        return labels * (1 - eps) + eps / 2
    return torch.where(labels > 0.5, torch.tensor(on), torch.tensor(off))


MULTI = {  # tricks -> the BCE targets of a batch, from its labels and mixup's (lam, perm)
    "MixUp": (lambda: [MixUp(alpha=0.3)], lambda y, lam, perm: lam * y + (1 - lam) * y[perm]),
    "MixUp:losses": (lambda: [MixUp(alpha=0.3, mix="losses")], lambda y, lam, perm: lam * y + (1 - lam) * y[perm]),
    "LabelSmoothing": (lambda: [LabelSmoothing(eps=0.1)], lambda y, lam, perm: smoothed(y, eps=0.1)),
    "LabelSmoothing:onoff": (lambda: [LabelSmoothing(on=0.9, off=0.0001)], lambda y, lam, perm: smoothed(y)),
    "LabelSmoothing+MixUp": (lambda: [LabelSmoothing(eps=0.2), MixUp(alpha=0.3)],
                             lambda y, lam, perm: lam * smoothed(y, 0.2) + (1 - lam) * smoothed(y, 0.2)[perm]),
}


@pytest.mark.parametrize("name", list(MULTI))
def test_multi_label_mixup_and_label_smoothing_train_with_the_bce_of_their_targets(name, multi_dls, one_torch_thread):
    make, expected_targets = MULTI[name]
    tricks = make()
    spy = BatchSpy(next((cb for cb in tricks if isinstance(cb, MixUp)), None))
    learn = Learner(multi_dls, tiny_model(multi_dls.c), cbs=[*tricks, spy])
    original = learn.loss_func
    assert isinstance(original, BCEWithLogitsLossFlat)
    learn.fit(1, 0.01)
    assert learn.loss_func is original and len(spy.rows) == len(multi_dls.train)
    for row in spy.rows:
        lam, perm = row["mix"] if row["mix"] else (None, None)
        target = expected_targets(row["labels"], lam, perm)
        if "losses" in name:  # the two BCE values mixed: by linearity, the BCE of the mixed targets
            assert torch.equal(row["y"], row["labels"])
        else:
            assert row["loss_func"] is original and torch.allclose(row["y"], target)
        torch.testing.assert_close(row["loss"], F.binary_cross_entropy_with_logits(row["pred"], target))

    logits, targets = learn.get_preds(act=lambda x: x)
    probs, targets2 = learn.get_preds()
    torch.testing.assert_close(probs, torch.sigmoid(logits))  # the BCE loss's activation: a sigmoid per class
    assert torch.equal(targets, targets2) and set(targets.unique().tolist()) == {0.0, 1.0}
    labels, hot, p = learn.predict(multi_dls.valid_ds.items[0])
    torch.testing.assert_close(p, probs[0])
    assert list(labels) == [multi_dls.vocab[i] for i in torch.where(probs[0] > 0.5)[0].tolist()]


@pytest.mark.parametrize("name", ["OneHot", "KLMixUp", "LabelRefinery", "DynamicRefine"])
def test_multi_label_is_refused_in_one_line_by_the_softmax_tricks(name, multi_dls, one_torch_thread):
    trick = TRICKS[name](multi_dls)
    learn = Learner(multi_dls, tiny_model(multi_dls.c), cbs=[trick])
    original, before = learn.loss_func, weights(learn)
    with pytest.raises(ConfigError) as refused:
        learn.fit(1, 0.01)
    assert one_line_naming(str(refused.value), f"tricks' {name}", "multi-label", "BCEWithLogitsLoss")
    assert learn.loss_func is original and same_state(learn, before)


# ---- the refinery's teacher ----

def test_a_teacher_learner_trains_on_after_being_a_teacher(dls, one_torch_thread):
    teacher = Learner(dls, tiny_model(dls.c), metrics=accuracy)
    teacher.fit(1, 0.01)
    teacher.model.train()
    grads = [p.requires_grad for p in teacher.model.parameters()]
    taught = weights(teacher)

    student = Learner(dls, tiny_model(dls.c, seed=2), metrics=accuracy, cbs=[LabelRefinery(teacher.model)])
    student.fit(1, 0.01)
    assert isinstance(student.loss_func, CrossEntropyLossFlat)
    assert same_state(teacher, taught)  # weights and BN statistics as they were
    assert [p.requires_grad for p in teacher.model.parameters()] == grads == [True] * len(grads)
    assert teacher.model.training  # its train / eval mode given back

    params = [p.detach().clone() for p in teacher.model.parameters()]
    teacher.fit(1, 0.01)  # generation 0 trains on
    assert all(not torch.equal(p, q) for p, q in zip(teacher.model.parameters(), params))
