"""One graph per training step, recorded in the first epoch; no recompile after it, evaluation included.

A compiled fit (`compile=true`) on the CPU with a tiny ResNet, counted with dynamo's own counters
(`torch._dynamo.utils.counters`: frames compiled, graphs recorded, graph breaks): the first epoch's
training records one graph; its evaluation (eager: `torch.compiler.set_stance("force_eager")`), with a
last test batch smaller than the others, compiles nothing; the later epochs compile nothing either.
The training split does not divide by the batch size: the loader drops the smaller last batch, so every
training step has one shape. The backend is aot_eager (dynamo's capture and AOTAutograd's, without
Inductor's code generation, which takes minutes on two cores); the recompiles dynamo decides are the same.
"""
from __future__ import annotations

import pytest
import torch
from fastai.callback.core import Callback
from fixtures import toy_data
from torch._dynamo.utils import counters

from recipes.build import CompileModel, build_dataloaders, build_learner, build_model
from recipes.parse import parse_recipe
from recipes.speed import seed_everything
from tricks.registry import TRICKS

INSIDE = {"model", "weights", "input"}  # what the compiled forward sees of a trick
CALLS_THE_MODEL = {"dynarefine"}  # its teacher, a copy of the compiled model, runs on every batch
MODEL = {"lastbn": "preact_resnet8"}  # a trick for pre-activation ResNets
COMPILED_TRICKS = sorted(name for name in TRICKS.names() if not TRICKS.get(name).per_run
                         and (INSIDE & set(TRICKS.get(name).touches) or name in CALLS_THE_MODEL))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def compiled_counts() -> tuple[int, int, int]:
    """(frames dynamo compiled, graphs it recorded, graph breaks) so far."""
    return counters["frames"]["total"], counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


class Counts(Callback):
    """The counts after the first epoch's training, after its evaluation, and after every epoch."""

    order = 10 ** 6

    def __init__(self):
        self.after_first_train, self.after_first_eval, self.after_epochs = None, None, []

    def after_train(self):
        if self.epoch == 0:
            self.after_first_train = compiled_counts()

    def after_validate(self):
        if self.epoch == 0 and self.after_first_eval is None:
            self.after_first_eval = compiled_counts()

    def after_epoch(self):
        self.after_epochs.append(compiled_counts())


def compiled_fit(text: str, model: str = "resnet8") -> Counts:
    recipe = parse_recipe(text, epochs=3, bs=16, eval_bs=32, model=model, device="cpu", compile=True)
    data = toy_data(n_train=72, n_test=40)  # 4 training batches of 16 (8 images left out), test batches 32 + 8
    torch._dynamo.reset()
    counters.clear()
    seed_everything(recipe.seed, torch.device("cpu"))
    dls = build_dataloaders(recipe, data, torch.device("cpu"))
    assert len(dls.train) == 4 and len(dls.valid) == 2
    counts = Counts()
    learn = build_learner(recipe, dls, build_model(recipe, data.num_classes, data.channels), cbs=[counts])
    compile_cb = next(cb for cb in learn.cbs if isinstance(cb, CompileModel))
    compile_cb.backend = "aot_eager"
    learn.fit(recipe.epochs)
    return counts


@pytest.mark.parametrize("name", ["baseline", *COMPILED_TRICKS])
def test_one_graph_in_the_first_epoch_and_no_recompile_after_it(name):
    text = "baseline" if name == "baseline" else f"baseline+{name}"
    counts = compiled_fit(text, MODEL.get(name, "resnet8"))
    assert counts.after_first_train == (1, 1, 0)  # one frame, one graph, no graph break: one graph per step
    assert counts.after_first_eval == counts.after_first_train  # the evaluation compiles nothing
    assert counts.after_epochs == [(1, 1, 0)] * 3  # no recompile in epochs 2 and 3


def test_the_compiled_tricks_are_those_that_reach_the_model():
    assert {"bnmom", "finalbn", "resdrop", "rotation", "ema", "mixup", "dynarefine"} <= set(COMPILED_TRICKS)
    assert not {"sgdr", "stepdecay", "lsmooth", "refine"} & set(COMPILED_TRICKS)


def test_a_new_shape_after_the_first_epoch_is_counted_as_a_recompile():
    """The counter sees a recompile when there is one: a training batch of another size from epoch 2 on."""

    class SmallerBatchesLater(Callback):
        order = -5  # before every trick's before_batch

        def before_batch(self):
            if self.training and self.epoch >= 1:
                self.learn.xb, self.learn.yb = (self.xb[0][:8],), (self.yb[0][:8],)

    recipe = parse_recipe("baseline", epochs=2, bs=16, eval_bs=32, model="resnet8", device="cpu", compile=True)
    data = toy_data(n_train=64, n_test=32)
    torch._dynamo.reset()
    counters.clear()
    counts = Counts()
    learn = build_learner(recipe, build_dataloaders(recipe, data, torch.device("cpu")),
                          build_model(recipe, data.num_classes, data.channels), cbs=[counts, SmallerBatchesLater()])
    next(cb for cb in learn.cbs if isinstance(cb, CompileModel)).backend = "aot_eager"
    learn.fit(2)
    assert counts.after_epochs[0] == (1, 1, 0) and counts.after_epochs[1][0] == 2  # a second frame compiled
