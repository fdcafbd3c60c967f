"""A fastai user's own script: ImageDataLoaders over a folder of real CIFAR-10 JPEGs, a Learner with one
target trick in its callbacks, one short fit, then the rest of fastai's API on the trained Learner
(issue 12, section 1). The tricks swap the loss for training only, so every call after the fit meets the
Learner's own loss; where the maths gives it the answer is checked exactly."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fastai.data.transforms import Normalize
from fastai.interpret import ClassificationInterpretation
from fastai.learner import Learner, load_learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.vision.augment import Flip
from fastai.vision.data import ImageDataLoaders
from torch import nn

from fixtures import CIFAR10_CLASSES, check_evaluation, cifar10_jpeg_folder, tiny_model
from tricks import DynamicRefine, KLMixUp, LabelRefinery, LabelSmoothing, MixUp, OneHot
from tricks.losses import kl_div_loss, soft_target_cross_entropy

CLASSES = CIFAR10_CLASSES[:5]
PER_CLASS = {"train": 40, "test": 8}  # 200 training and 40 test JPEGs


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """`train/<class>/*.jpg`, `test/<class>/*.jpg` from the shared archive (PNGs of toy data without it)."""
    return cifar10_jpeg_folder(tmp_path_factory.mktemp("cifar-folder"), CLASSES, tuple(PER_CLASS.items()))


@pytest.fixture(scope="module")
def dls(image_folder):
    torch.manual_seed(0)
    return ImageDataLoaders.from_folder(image_folder, train="train", valid="test", bs=32, num_workers=0,
                                        batch_tfms=[Flip(), Normalize.from_stats([0.49, 0.48, 0.45], [0.25] * 3)])


def teacher_of(dls):
    return tiny_model(dls.c, seed=1)


TRICKS = {
    "mixup": lambda dls: [MixUp(alpha=0.3)],
    "mixup:mix=losses": lambda dls: [MixUp(alpha=0.3, mix="losses")],
    "klmixup": lambda dls: [KLMixUp()],
    "onehot": lambda dls: [OneHot()],
    "lsmooth": lambda dls: [LabelSmoothing(eps=0.1)],
    "refine": lambda dls: [LabelRefinery(teacher_of(dls))],
    "dynarefine": lambda dls: [DynamicRefine()],
    "lsmooth+mixup+dynarefine": lambda dls: [LabelSmoothing(), MixUp(), DynamicRefine()],
}


class LossSpy:
    """The loss functions the Learner held during its training batches."""

    def __init__(self):
        from fastai.callback.core import Callback

        spy = self

        class Spy(Callback):
            order, run_valid = 99, False

            def after_loss(self):
                spy.seen.add(type(self.learn.loss_func).__name__)

        self.seen, self.cb = set(), Spy()


@pytest.mark.parametrize("name", list(TRICKS))
def test_a_trained_learner_with_the_trick_attached_keeps_working(name, dls, tmp_path, one_torch_thread):
    spy = LossSpy()
    learn = Learner(dls, tiny_model(dls.c), metrics=accuracy, cbs=[*TRICKS[name](dls), spy.cb], path=tmp_path)
    assert isinstance(learn.loss_func, CrossEntropyLossFlat)
    learn.fit(2 if "dynarefine" in name else 1, 0.01)
    assert spy.seen == {"SoftTargetLoss"}  # the trick's loss during training ...
    assert isinstance(learn.loss_func, CrossEntropyLossFlat)  # ... and the Learner's own after it

    # validate: the plain cross entropy against the true labels, on the predictions get_preds gives
    logits, targets, probs = check_evaluation(learn, dls)

    for i in (0, len(dls.valid_ds) - 1):
        label, idx, p = learn.predict(dls.valid_ds.items[i])
        assert int(idx) == int(probs[i].argmax()) and label == dls.vocab[int(idx)]
        torch.testing.assert_close(p, probs[i])

    tta_probs, tta_targets = learn.tta(n=2)
    assert tta_probs.shape == probs.shape and torch.equal(tta_targets, targets)
    torch.testing.assert_close(tta_probs.sum(1), torch.ones(len(targets)))

    interp = ClassificationInterpretation.from_learner(learn)
    assert int(interp.confusion_matrix().sum()) == len(targets)
    torch.testing.assert_close(interp.losses, F.cross_entropy(logits, targets, reduction="none"),
                               rtol=1e-5, atol=1e-6)

    learn.export(tmp_path / "export.pkl")
    loaded = load_learner(tmp_path / "export.pkl")
    assert torch.equal(loaded.get_preds(dl=dls.valid)[0], probs)
    label, idx, p = loaded.predict(dls.valid_ds.items[0])
    assert int(idx) == int(probs[0].argmax()) and label == dls.vocab[int(idx)]

    learn.save("model")
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    learn.fit(1, 0.01)  # trains again with the trick, then the saved weights come back
    learn.load("model")
    assert all(torch.equal(v, weights[k]) for k, v in learn.model.state_dict().items())
    assert torch.equal(learn.get_preds()[0], probs)

    learn.lr_find(num_it=4, show_plot=False)  # cancels its fit: the loss and the model are restored
    assert isinstance(learn.loss_func, CrossEntropyLossFlat)
    assert all(torch.equal(v, weights[k]) for k, v in learn.model.state_dict().items())


def test_the_installed_losses_carry_fastai_decoding(dls, one_torch_thread):
    """A soft-target loss left in place (a fit stopped by an error) still decodes as cross entropy does."""
    z, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    for loss in (soft_target_cross_entropy, kl_div_loss):
        assert torch.equal(loss.activation(z), F.softmax(z, -1)) and torch.equal(loss.decodes(z), z.argmax(-1))
        for reduction in ("none", "sum", "mean"):
            loss.reduction = reduction
            torch.testing.assert_close(loss(z, y), F.cross_entropy(z, y, reduction=reduction))
        loss.reduction = "mean"
    t = F.softmax(torch.randn(6, 5), 1)
    torch.testing.assert_close(kl_div_loss.func(z, t, reduction="none").mean(), kl_div_loss(z, t))
    learn = Learner(dls, tiny_model(dls.c), loss_func=soft_target_cross_entropy)
    probs, _ = learn.get_preds()
    label, idx, p = learn.predict(dls.valid_ds.items[0])
    assert int(idx) == int(probs[0].argmax()) and label == dls.vocab[int(idx)]
