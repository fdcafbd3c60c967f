"""The trainer's Learner (`recipes.build.TricksLearner`: cached per-event dispatch, the batch loop's
`_with_events` written out) runs callbacks exactly as fastai's own `Learner` does. Each test fits the same
callbacks, as a fastai user writes them, once in a fastai `Learner` and once in a `TricksLearner` on the same
data and model, and compares what the callbacks saw event by event (fastai is the reference); the part of
the trace that fastai's rules give is spelled out as well: callbacks in `order`, equal orders in the order
they were added, `run_train`/`run_valid`, callbacks added or removed mid-fit, the cancels."""
from __future__ import annotations

import random

import pytest
import torch
from fastai.callback.core import (Callback, CancelBackwardException, CancelBatchException, CancelFitException,
                                  CancelStepException, TrainEvalCallback)
from fastai.callback.progress import ProgressCallback
from fastai.data.transforms import Normalize
from fastai.learner import Learner, load_learner
from fastai.metrics import accuracy
from fastai.optimizer import OptimWrapper
from fastai.vision.data import ImageDataLoaders

from fixtures import tiny_model, write_toy_folder
from recipes.build import TricksLearner
from tricks.data.loaders import DeviceLoader, device_dataloaders

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_ITER = 3  # training batches an epoch (one test batch)
STEP = ("before_batch", "after_pred", "after_loss", "before_backward", "after_backward", "before_step", "after_step",
        "after_batch")
EVAL_STEP = ("before_batch", "after_pred", "after_loss", "after_batch")
LEARNERS = (Learner, TricksLearner)


class Note(Callback):
    """Writes (its tag, the event, the Learner's `training`) into `trace` at each event it defines."""

    def __init__(self, tag: str, trace: list, order: int = 0):
        self.tag, self.trace, self.order = tag, trace, order

    def note(self, event: str):
        self.trace.append((self.tag, event, self.learn.training))


class Steps(Note):
    """Every event of the batch loop, the cancels' included."""

    def before_batch(self): self.note("before_batch")
    def after_pred(self): self.note("after_pred")
    def after_loss(self): self.note("after_loss")
    def before_backward(self): self.note("before_backward")
    def after_cancel_backward(self): self.note("after_cancel_backward")
    def after_backward(self): self.note("after_backward")
    def before_step(self): self.note("before_step")
    def after_cancel_step(self): self.note("after_cancel_step")
    def after_step(self): self.note("after_step")
    def after_cancel_batch(self): self.note("after_cancel_batch")
    def after_batch(self): self.note("after_batch")


class TrainOnly(Steps):
    run_valid = False


class EvalOnly(Steps):
    run_train = False


class Stages(Note):
    """The events outside the batch loop."""

    def before_fit(self): self.note("before_fit")
    def before_epoch(self): self.note("before_epoch")
    def before_train(self): self.note("before_train")
    def after_train(self): self.note("after_train")
    def before_validate(self): self.note("before_validate")
    def after_validate(self): self.note("after_validate")
    def after_epoch(self): self.note("after_epoch")
    def after_cancel_fit(self): self.note("after_cancel_fit")
    def after_fit(self): self.note("after_fit")


def toy_learner(learner_cls, cbs, **kwargs):
    """A linear model on 2x2 one-channel images, SGD, TrainEval and `cbs`, in `learner_cls`; seeded."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8 * N_ITER, 1, 2, 2), dtype=torch.uint8, generator=g)
    labels = torch.arange(8 * N_ITER) % 2
    norm = dict(mean=torch.tensor([0.5]), std=torch.tensor([0.5]))
    train = DeviceLoader(images, labels, bs=8, shuffle=True, drop_last=True, seed=0, **norm)
    test = DeviceLoader(images[:8], labels[:8], bs=8, **norm)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    return learner_cls(device_dataloaders(train, test), model, loss_func=torch.nn.CrossEntropyLoss(),
                       opt_func=lambda _, lr: OptimWrapper(opt=torch.optim.SGD(model.parameters(), lr=lr)),
                       cbs=[TrainEvalCallback(), *cbs], default_cbs=False, **kwargs)


def both(make_cbs, run):
    """`run(learn)` with `make_cbs(trace)` in a fastai Learner and in a TricksLearner: {class: (trace, learn)}."""
    out = {}
    for cls in LEARNERS:
        trace = []
        learn = toy_learner(cls, make_cbs(trace))
        run(learn)
        out[cls] = trace, learn
    return out


def same_as_fastai(make_cbs, run=lambda learn: learn.fit(1, 0.1)) -> tuple[list, TricksLearner]:
    """The TricksLearner's trace, asserted equal to fastai's, and the TricksLearner."""
    got = both(make_cbs, run)
    assert got[TricksLearner][0] == got[Learner][0]
    return got[TricksLearner]


def test_callbacks_run_in_order_equal_orders_as_added_and_only_in_the_passes_they_run_in():
    def cbs(t):
        return [Steps("a", t), TrainOnly("b", t), Steps("c", t, order=-20), EvalOnly("d", t, order=5),
                Stages("e", t), Steps("f", t)]

    got = both(cbs, lambda learn: learn.fit(2, 0.1))
    trace, learn = got[TricksLearner]
    assert trace == got[Learner][0]
    train_batch = [(cb, ev, True) for ev in STEP for cb in ("c", "a", "b", "f")]  # c before TrainEval (-10)
    eval_batch = [(cb, ev, False) for ev in EVAL_STEP for cb in ("c", "a", "f", "d")]
    epoch = [("e", "before_epoch", False), ("e", "before_train", True), *train_batch * N_ITER,
             ("e", "after_train", True), ("e", "before_validate", False), *eval_batch,
             ("e", "after_validate", False), ("e", "after_epoch", False)]
    assert trace == [("e", "before_fit", False), *epoch * 2, ("e", "after_fit", False)]
    fastai_weights = got[Learner][1].model.state_dict()
    assert all(torch.equal(v, fastai_weights[k]) for k, v in learn.model.state_dict().items())


class Swap(Note):
    """At the second training batch's after_loss: adds `newcomer` (a callback of a lower order) and removes
    itself; the newcomer first hears the next event, the rest of after_loss goes on to the others."""

    def __init__(self, tag, trace, newcomer):
        super().__init__(tag, trace)
        self.newcomer = newcomer

    def after_loss(self):
        self.note("after_loss")
        if self.learn.training and self.learn.iter == 1:
            self.learn.add_cb(self.newcomer)
            self.learn.remove_cb(self)


def test_a_callback_added_and_one_removing_itself_mid_fit():
    trace, learn = same_as_fastai(lambda t: [Swap("swap", t, Steps("new", t, order=-30)), Steps("z", t, order=1)],
                                  lambda learn: learn.fit(2, 0.1))
    assert [e for e in trace if e[0] == "swap"] == [("swap", "after_loss", True)] * 2
    last_swap = max(i for i, e in enumerate(trace) if e[0] == "swap")
    assert trace[last_swap - 1:last_swap + 4] == [
        ("z", "after_pred", True), ("swap", "after_loss", True), ("z", "after_loss", True),
        ("new", "before_backward", True), ("z", "before_backward", True)]
    assert sum(e[0] == "new" for e in trace) == len(STEP) - 3 + len(STEP) * (N_ITER - 2) + \
        len(EVAL_STEP) + len(STEP) * N_ITER + len(EVAL_STEP)  # rest of batch 2, batch 3, eval; epoch 2
    assert [type(cb).__name__ for cb in learn.cbs] == ["TrainEvalCallback", "Steps", "Steps"]


def test_removed_cbs_added_cbs_and_the_callbacks_given_to_fit():
    def run(learn):
        a = learn.cbs[1]
        with learn.removed_cbs([a]):
            learn.fit(1, 0.1)  # a hears nothing
        learn.fit(1, 0.1, cbs=[Steps("extra", a.trace)])  # for this fit only, after a (equal orders)
        with learn.added_cbs([Stages("added", a.trace)]):
            learn.fit(1, 0.1)
        learn.fit(1, 0.1)

    trace, learn = same_as_fastai(lambda t: [Steps("a", t)], run)
    batches, evals = len(STEP) * N_ITER, len(EVAL_STEP)
    assert [e[0] for e in trace] == [*["a", "extra"] * (batches + evals),
                                     *["added"] * 3, *["a"] * batches, *["added"] * 2, *["a"] * evals, *["added"] * 3,
                                     *["a"] * (batches + evals)]
    assert [type(cb).__name__ for cb in learn.cbs] == ["TrainEvalCallback", "Steps"]


class Canceller(Callback):
    """In the first epoch: cancels training batch 0 at before_batch, the backward of batch 1, the step of
    batch 2; in the second epoch, the fit after its first batch."""

    order = -30

    def before_batch(self):
        if self.learn.training and self.learn.epoch == 0 and self.learn.iter == 0:
            raise CancelBatchException()

    def before_backward(self):
        if self.learn.epoch == 0 and self.learn.iter == 1:
            raise CancelBackwardException()

    def before_step(self):
        if self.learn.epoch == 0 and self.learn.iter == 2:
            raise CancelStepException()

    def after_batch(self):
        if self.learn.training and self.learn.epoch == 1:
            raise CancelFitException()


def test_the_cancels_reach_the_same_events():
    got = both(lambda t: [Canceller(), Steps("s", t), Stages("e", t)], lambda learn: learn.fit(3, 0.1))
    trace, learn = got[TricksLearner]
    assert trace == got[Learner][0]
    batches = [e[1] for e in trace if e[0] == "s"]
    assert batches[:2] == ["after_cancel_batch", "after_batch"]
    assert batches[2:10] == ["before_batch", "after_pred", "after_loss", "after_cancel_backward", "after_backward",
                             "before_step", "after_step", "after_batch"]
    assert batches[10:18] == ["before_batch", "after_pred", "after_loss", "before_backward", "after_backward",
                              "after_cancel_step", "after_step", "after_batch"]
    assert [e[1] for e in trace if e[0] == "e"][-3:] == ["before_train", "after_cancel_fit", "after_fit"]
    assert learn.epoch == 1 and learn.iter == 0


class Boom(Callback):
    def after_loss(self):
        raise ValueError("no loss today")


def test_an_error_names_the_callback_and_event_as_fastai_says_it():
    messages = []
    for cls in LEARNERS:
        with pytest.raises(ValueError) as err:
            toy_learner(cls, [Boom()]).fit(1, 0.1)
        messages.append(str(err.value))
    assert messages[0] == messages[1] == "Exception occured in `Boom` when calling event `after_loss`:\n\tno loss today"


class Pause(Note):
    """Sets its own `run` to False after the first training batch: fastai skips it for the rest of the fit, its
    after_fit included, and sets `run` back to True at after_fit."""

    def after_batch(self):
        self.note("after_batch")
        self.run = False

    def after_fit(self):
        self.note("after_fit")


def test_a_callback_that_stops_itself_hears_nothing_more_and_runs_again_after_the_fit():
    trace, learn = same_as_fastai(lambda t: [Pause("p", t)])
    assert trace == [("p", "after_batch", True)]
    assert learn.cbs[1].run is True


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return write_toy_folder(tmp_path_factory.mktemp("toy-folder"), n_train=32, n_test=16)


def image_dls(folder):
    """fastai's `ImageDataLoaders` over `folder`, seeded: fastai's loaders draw their shuffling seed from `random`."""
    random.seed(0)
    return ImageDataLoaders.from_folder(folder, train="train", valid="test", bs=8, num_workers=0,
                                        batch_tfms=[Normalize.from_stats([0.5] * 3, [0.25] * 3)])


def test_a_fastai_users_calls_after_fit_give_what_fastais_learner_gives(image_folder, tmp_path):
    out = {}
    for cls in LEARNERS:
        dls = image_dls(image_folder)
        learn = cls(dls, tiny_model(dls.c), metrics=accuracy, path=tmp_path / cls.__name__)
        learn.remove_cb(ProgressCallback)
        torch.manual_seed(1)
        learn.fit(2, 0.05)
        torch.manual_seed(2)
        out[cls] = dict(validate=learn.validate(), preds=learn.get_preds(), predict=learn.predict(dls.valid_ds.items[0]),
                        tta=learn.tta(n=1), weights=learn.model.state_dict(), learn=learn, dls=dls)
    mine, fastai = out[TricksLearner], out[Learner]
    assert all(torch.equal(v, fastai["weights"][k]) for k, v in mine["weights"].items())
    assert mine["validate"] == fastai["validate"]
    assert all(torch.equal(a, b) for a, b in zip(mine["preds"], fastai["preds"]))
    assert mine["predict"][0] == fastai["predict"][0] and torch.equal(mine["predict"][2], fastai["predict"][2])
    assert all(torch.equal(a, b) for a, b in zip(mine["tta"], fastai["tta"]))
    learn = mine["learn"]
    learn.export(tmp_path / "export.pkl")
    loaded = load_learner(tmp_path / "export.pkl")
    assert type(loaded) is TricksLearner
    assert torch.equal(loaded.get_preds(dl=mine["dls"].valid)[0], mine["preds"][0])
