"""Every registered trick in a fastai user's own Learner, on each model family fastai users have (issue 12):
`ImageDataLoaders` over a folder of real CIFAR-10 JPEGs, fastai's batch transforms, the model as its own
library builds it, one short fit (`fit_one_cycle` or `fit_flat_cos`; `fit` for the tricks that set the lr),
then the rest of fastai's API on the trained Learner with the trick still attached. Exact where the maths
gives it: `predict`'s class is the argmax of `get_preds` for the same item, `validate`'s loss is the plain
cross entropy of those predictions, and `load_learner`'s predictions equal the original Learner's.

A trick that does not apply to a family (`lastbn` needs a pre-activation net) must refuse it with one line
naming the model class, before anything trains."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import timm
import torch
import torchvision
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import fit_flat_cos, fit_one_cycle  # noqa: F401  (patch Learner)
from fastai.data.transforms import Normalize
from fastai.interpret import ClassificationInterpretation
from fastai.learner import Learner, load_learner
from fastai.metrics import accuracy
from fastai.vision.augment import Flip
from fastai.vision.data import ImageDataLoaders
from fastai.vision.models.xresnet import xresnet18

import tricks
from fixtures import check_evaluation, cifar10_jpeg_folder
from tricks.errors import ConfigError
from tricks.models import create_model
from tricks.registry import TRICKS

# The smallest model of each family, built the way its own library's users build it.
FAMILIES = {
    "project": lambda c: create_model("resnet8", num_classes=c),
    "project-preact": lambda c: create_model("preact_resnet8", num_classes=c),
    "timm": lambda c: timm.create_model("resnet10t", num_classes=c),
    "timm-v2": lambda c: timm.create_model("resnetv2_18", num_classes=c),
    "fastai": lambda c: xresnet18(n_out=c),
    "torchvision": lambda c: torchvision.models.resnet18(num_classes=c),
}
PREACT = {"project-preact", "timm-v2"}
FLAT_COS = {"timm", "torchvision", "timm-v2"}  # fitted with fit_flat_cos; the others with fit_one_cycle


def teacher(dls):
    torch.manual_seed(1)
    return create_model("resnet8", num_classes=dls.c)


# Each registered trick as a fastai user writes it: the class with its defaults (the teacher for the refinery).
CALLBACKS = {
    "leakyrelu": lambda dls: tricks.LeakyReLUSwap(),
    "swish": lambda dls: tricks.SwishSwap(),
    "bnmom": lambda dls: tricks.BNMomentum(),
    "channeldrop": lambda dls: tricks.ChannelDrop(),
    "resdrop": lambda dls: tricks.ResidualDropout(),
    "fcdrop": lambda dls: tricks.FCDropout(),
    "refine": lambda dls: tricks.LabelRefinery(teacher(dls)),
    "mixup": lambda dls: tricks.MixUp(),
    "klmixup": lambda dls: tricks.KLMixUp(),
    "dynarefine": lambda dls: tricks.DynamicRefine(),
    "ema": lambda dls: tricks.EMA(),
    "finalbn": lambda dls: tricks.FinalBN(),
    "lastbn": lambda dls: tricks.LastBN(on=False),
    "onehot": lambda dls: tricks.OneHot(),
    "lsmooth": lambda dls: tricks.LabelSmoothing(eps=0.1),
    "lastgamma": lambda dls: tricks.LastGamma(),
    "lookahead": lambda dls: tricks.Lookahead(),
    "rotation": lambda dls: tricks.RotationHead(),
    "sgdr": lambda dls: tricks.SGDR(cycle_len=1),
    "stepdecay": lambda dls: tricks.StepDecay(milestones=(1,)),
}
SETS_LR = {name for name in TRICKS.names() if "lr" in TRICKS.get(name).touches}


def test_every_registered_trick_is_in_the_matrix():
    assert set(CALLBACKS) == set(TRICKS.names())


@pytest.fixture(scope="module")
def dls(tmp_path_factory):
    folder = cifar10_jpeg_folder(tmp_path_factory.mktemp("cifar-folder"), per_split=(("train", 4), ("test", 2)))
    torch.manual_seed(0)
    return ImageDataLoaders.from_folder(folder, train="train", valid="test", bs=20, num_workers=0,
                                        batch_tfms=[Flip(), Normalize.from_stats([0.49, 0.48, 0.45], [0.25] * 3)])


def applies(trick: str, family: str) -> bool:
    return trick != "lastbn" or family in PREACT


# Every trick on the four families the issue names; the pre-activation families (which lastbn needs) with
# the tricks that change the model, the only ones that see a difference between a net and its pre-act form.
MAIN = ("project", "timm", "fastai", "torchvision")
CHANGE_THE_MODEL = [name for name in TRICKS.names() if "model" in TRICKS.get(name).touches or name == "lastgamma"]
CASES = [(t, f) for t in CALLBACKS for f in MAIN] + [(t, f) for t in CHANGE_THE_MODEL for f in sorted(PREACT)]


def optimizer_tensors(learn) -> list[torch.Tensor]:
    """Every tensor of the optimizer's state (fastai's Adam by default: its moving averages), in order."""
    state = learn.opt.state_dict()["state"]
    per_param = [state[k] for k in sorted(state)] if isinstance(state, dict) else list(state)
    return [v.clone() for st in per_param for v in st.values() if isinstance(v, torch.Tensor)]


@pytest.mark.filterwarnings("error:Could not load the optimizer state")
@pytest.mark.parametrize("trick,family", CASES, ids=[f"{t}-{f}" for t, f in CASES])
def test_trick_in_a_users_learner(trick, family, dls, tmp_path, one_torch_thread):
    torch.manual_seed(0)
    model = FAMILIES[family](dls.c)
    learn = Learner(dls, model, metrics=accuracy, cbs=[CALLBACKS[trick](dls)], path=tmp_path)
    learn.remove_cb(ProgressCallback)  # quiet logs; the calls below are fastai's own all the same
    own_loss = learn.loss_func
    if not applies(trick, family):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ConfigError, match=f"not {type(model).__name__}") as err:
            learn.fit(1, 0.01)
        assert "\n" not in str(err.value).strip().splitlines()[-1]
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        return
    if trick in SETS_LR:
        learn.fit(1, 0.01)  # the trick is the lr schedule: fit_one_cycle's would be a second one (refused)
    elif family in FLAT_COS:
        learn.fit_flat_cos(1, 0.01)
    else:
        learn.fit_one_cycle(1, 0.01)
    assert learn.loss_func is own_loss

    logits, targets, probs = check_evaluation(learn, dls)
    label, idx, p = learn.predict(dls.valid_ds.items[0])
    assert int(idx) == int(probs[0].argmax()) and label == dls.vocab[int(idx)]
    torch.testing.assert_close(p, probs[0])

    tta_probs, tta_targets = learn.tta(n=1)
    assert tta_probs.shape == probs.shape and torch.equal(tta_targets, targets)
    interp = ClassificationInterpretation.from_learner(learn)
    assert int(interp.confusion_matrix().sum()) == len(targets)
    learn.show_results(max_n=2)
    plt.close("all")

    learn.export(tmp_path / "export.pkl")
    loaded = load_learner(tmp_path / "export.pkl")
    assert torch.equal(loaded.get_preds(dl=dls.valid)[0], probs)
    assert loaded.predict(dls.valid_ds.items[0])[0] == label

    learn.save("model")
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    momenta = optimizer_tensors(learn)
    learn.lr_find(num_it=2, show_plot=False, suggest_funcs=None)  # a mock fit: loss, model, optimizer come back
    assert learn.loss_func is own_loss
    assert all(torch.equal(v, weights[k]) for k, v in learn.model.state_dict().items())
    after = optimizer_tensors(learn)
    assert len(after) == len(momenta) > 0 and all(torch.equal(a, b) for a, b in zip(after, momenta))
    learn.load("model")
    assert torch.equal(learn.get_preds()[0], probs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="to_fp16 needs a GPU")
@pytest.mark.parametrize("trick", list(CALLBACKS))
def test_trick_with_to_fp16_on_a_gpu(trick, dls, tmp_path):
    learn = Learner(dls.to("cuda"), FAMILIES["fastai"](dls.c), cbs=[CALLBACKS[trick](dls)], path=tmp_path).to_fp16()
    learn.fit(1, 0.01)
    probs = learn.get_preds()[0]
    assert torch.isfinite(probs).all()
    assert int(learn.predict(dls.valid_ds.items[0])[1]) == int(probs[0].argmax())
