"""compile_step=true: the SGD step compiled once per optimizer, each param group's lr a 0-d tensor written in place.

Each fit here runs on the CPU with Inductor (the step's graph compiles in seconds; the model is not compiled, so
the counts are the step's alone) and starts from `torch._dynamo.reset()`. Against the eager fit (compile_step=false)
the lr the SGD holds is the same number rounded to float32 (the tensor's dtype), exactly, at every step; the weights
agree to float32 rounding, not to the bit: traced with a tensor lr, torch's SGD rounds grad * lr before adding it,
where the eager step adds with alpha=-lr in one multiply-add (`tricks.compiled_step`'s docstring). What the
compiled step changes in the eager maths, zero-started momentum buffers, is the eager step to the bit.
"""
from __future__ import annotations

import dataclasses
import json
from functools import partial

import pytest
import torch
from fastai.callback.core import Callback
from fastai.data.transforms import Normalize
from fastai.learner import Learner, load_learner
from fastai.metrics import accuracy
from fastai.optimizer import OptimWrapper
from fastai.vision.data import ImageDataLoaders
from torch._dynamo.utils import counters

from fixtures import check_evaluation, tiny_model, toy_data, write_cifar10, write_toy_folder
from recipes.build import build_dataloaders, build_learner, build_model, lr_schedule
from recipes.parse import parse_recipe
from recipes.speed import resolve_speed, seed_everything
from tricks.compiled_step import CompiledStepOptimizer, compiled_sgd, start_momentum
from tricks.registry import TRICKS

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


def compiled_counts() -> tuple[int, int]:
    """(frames dynamo compiled, graphs it recorded) so far."""
    return counters["frames"]["total"], counters["stats"]["unique_graphs"]


class StepSpy(Callback):
    """After every optimizer step: each param group's lr as the SGD held it (the same tensor objects while the
    step is compiled), and dynamo's counts after the first step."""

    order = 99

    def __init__(self):
        self.lrs, self.lr_objects, self.after_first_step = [], [], None

    def after_step(self):
        groups = torch_optimizer(self.learn.opt).param_groups
        self.lrs.append([float(g["lr"]) for g in groups])
        self.lr_objects.append([id(g["lr"]) for g in groups])
        if self.after_first_step is None:
            self.after_first_step = compiled_counts()


def torch_optimizer(opt) -> torch.optim.Optimizer:
    """The torch SGD inside fastai's wrappers (`OptimWrapper`, the compiled step's, a Lookahead around either)."""
    while not isinstance(opt, torch.optim.Optimizer):
        opt = opt.opt
    return opt


def fit(text: str, compile_step: bool, model: str = "resnet8", epochs: int = 3, **values):
    """A fit of `text` on toy data (4 steps an epoch), compile_step on or off; (learner, spy, counts at the end)."""
    torch._dynamo.reset()
    counters.clear()
    recipe = parse_recipe(text, epochs=epochs, bs=16, eval_bs=32, model=model, device="cpu", compile=False,
                          compile_step=compile_step, warmup_epochs=1, **values)
    data = toy_data(n_train=64, n_test=32)
    seed_everything(recipe.seed, CPU)
    dls = build_dataloaders(recipe, data, CPU)
    spy = StepSpy()
    learn = build_learner(recipe, dls, build_model(recipe, data.num_classes, data.channels), cbs=[spy])
    learn.fit(recipe.epochs)
    return learn, spy, compiled_counts()


def as_float32(lrs: list[list[float]]) -> list[list[float]]:
    return [[float(torch.tensor(v, dtype=torch.float32)) for v in row] for row in lrs]


def assert_same_weights_to_rounding(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Every state_dict entry within 1e-5: a float32 rounding a step (~1e-7 of a weight) grows through 12 steps
    to ~7e-6 at most (ema:noschedule, lr 0.2 throughout); one lr missed at one step moves weights ~1e-3."""
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, msg=name)


def test_a_compiled_step_trains_the_eager_fit_with_its_lr_as_a_tensor_and_never_recompiles():
    text = "baseline:nesterov=true,momentum=0.9,wd=5e-4,lr=0.2,warmup=linear"
    eager, eager_spy, eager_counts = fit(text, False)
    learn, spy, counts = fit(text, True)
    assert type(learn.opt) is CompiledStepOptimizer and eager_counts == (0, 0)
    groups = learn.opt.opt.param_groups
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0] and groups[0]["nesterov"]  # decayed / BN and biases
    assert all(g["lr"].shape == () and g["lr"].dtype == torch.float32 and g["lr"].device == CPU for g in groups)
    # 12 steps of warmup (4) then cosine, each lr the eager one rounded to float32, in the same tensors throughout
    assert len(spy.lrs) == 12 and len({row[0] for row in eager_spy.lrs}) == 12
    assert eager_spy.lrs == [[v, v] for v in lr_schedule(eager).lrs]
    assert spy.lrs == as_float32(eager_spy.lrs)
    assert spy.lr_objects == [[id(g["lr"]) for g in groups]] * 12
    # one graph for the step, compiled at the first step; no recompile as the lr changes
    assert spy.after_first_step == counts and counts[1] == 1
    assert_same_weights_to_rounding(learn.model, eager.model)
    assert learn.opt.hypers[0]["lr"] == spy.lrs[-1][0]  # fastai's readers get a number


def test_zero_started_momentum_buffers_are_the_eager_step_to_the_bit():
    def train_steps(start: bool) -> list[torch.Tensor]:
        model = tiny_model(4)
        opt = torch.optim.SGD([{"params": list(model.parameters())[:2], "weight_decay": 5e-4},
                               {"params": list(model.parameters())[2:], "weight_decay": 0.0}],
                              lr=0.1, momentum=0.9, nesterov=True)
        if start:
            start_momentum(opt)
        g = torch.Generator().manual_seed(0)
        for step in range(5):
            x, y = torch.randn(8, 3, 8, 8, generator=g), torch.arange(8) % 4
            torch.nn.functional.cross_entropy(model(x), y).backward()
            for group in opt.param_groups:
                group["lr"] = 0.1 / (step + 1)
            opt.step()
            opt.zero_grad()
        return [p.detach() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(train_steps(True), train_steps(False)))


TRICK_FITS = {  # recipe text, model: every trick that writes the lr or rebuilds the optimizer
    "sgdr": ("baseline+sgdr:len=4,unit=iter,step=iter,mult=1", "resnet8"),
    "stepdecay": ("baseline+stepdecay:at=2,gamma=0.1", "resnet8"),
    "lookahead": ("baseline+lookahead:k=2,alpha=0.5", "resnet8"),
    "ema:lr_wd": ("baseline+ema:mode=lr_wd", "resnet8"),
    "ema:noschedule": ("baseline+ema:mode=noschedule", "resnet8"),
    "finalbn": ("baseline+finalbn", "resnet8"),
    "lastbn": ("baseline+lastbn", "preact_resnet8"),
    "rotation": ("baseline+rotation", "resnet8"),
}


@pytest.mark.parametrize("name", list(TRICK_FITS))
def test_each_trick_that_writes_the_lr_or_rebuilds_the_optimizer_runs_with_a_compiled_step(name):
    text, model = TRICK_FITS[name]
    eager, eager_spy, _ = fit(text, False, model)
    learn, spy, counts = fit(text, True, model)
    assert type(learn.opt) is CompiledStepOptimizer  # a rebuilt optimizer is compiled too; Lookahead unwrapped
    assert len(spy.lrs) == 12 and spy.lrs == as_float32(eager_spy.lrs)
    assert spy.lr_objects == [[id(g["lr"]) for g in learn.opt.opt.param_groups]] * 12  # written in place
    assert spy.after_first_step == counts and counts[1] == 1
    assert_same_weights_to_rounding(learn.model, eager.model)


def test_sgdr_and_ema_noschedule_lrs_read_back_exactly():
    _, spy, _ = fit("baseline+sgdr:len=4,unit=iter,step=iter,mult=1,warmup=false", True)
    f32 = lambda v: float(torch.tensor(v, dtype=torch.float32))  # noqa: E731
    # a restart every 4 steps: each cycle starts at the peak 0.2
    assert [spy.lrs[i][0] for i in (0, 4, 8)] == [f32(0.2)] * 3 and spy.lrs[1][0] < f32(0.2)
    _, spy, _ = fit("baseline+ema:mode=noschedule", True, lr=0.15)
    assert spy.lrs == [[f32(0.15)] * 2] * 12


def test_a_trick_that_cannot_run_with_a_compiled_step_steps_eagerly_with_one_line(monkeypatch, tmp_path, capsys):
    from fixtures import simple_image_folder
    from recipes.cli import main

    unsafe = dataclasses.replace(TRICKS.get("mixup"), compile_step_unsafe="it swaps the optimizer per step")
    monkeypatch.setitem(TRICKS._entries, "mixup", unsafe)  # as if mixup had registered with compile_step_unsafe=...
    line = "compile_step=false: mixup cannot run with a compiled optimizer step (it swaps the optimizer per step)"
    recipe, notes = resolve_speed(parse_recipe("baseline+mixup", compile_step=True), CPU)
    assert recipe.compile_step is False and notes == [line]
    simple_image_folder(tmp_path / "images", n_train=8, n_test=2, hw=(8, 8))
    assert main(["run", "baseline+mixup", "--dataset", "folder", "--data", str(tmp_path / "images"), "--out",
                 str(tmp_path / "run"), "--device", "cpu", "--epochs", "1", "--bs", "4", "--compile-step"]) == 0
    assert capsys.readouterr().out.count(line) == 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["compile_step"] is False


def test_auto_is_off_on_every_device_and_what_the_user_names_is_kept(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for device in (CPU, torch.device("cuda")):
        assert resolve_speed(parse_recipe("baseline"), device)[0].compile_step is False
        assert resolve_speed(parse_recipe("baseline", compile_step=True), device)[0].compile_step is True
    from recipes.cli import build_parser, recipe_from

    assert recipe_from(build_parser().parse_args(["run", "baseline", "--compile-step"])).compile_step is True
    assert recipe_from(build_parser().parse_args(["run", "baseline", "--no-compile-step"])).compile_step is False
    assert parse_recipe("baseline:compile_step=true").compile_step is True


def test_a_fastai_users_learner_with_compiled_sgd_schedules_evaluates_exports_and_loads(tmp_path):
    folder = write_toy_folder(tmp_path / "images", n_train=64, n_test=16)
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(folder, train="train", valid="test", bs=16, num_workers=0,
                                       batch_tfms=[Normalize.from_stats([0.4] * 3, [0.3] * 3)])
    eager = Learner(dls, tiny_model(dls.c), opt_func=partial(OptimWrapper, opt=partial(torch.optim.SGD, momentum=0.9,
                                                                                   nesterov=True)))
    # fit_one_cycle reads its peak back from the optimizer: the compiled step's is 0.05 in float32
    eager.fit_one_cycle(2, float(torch.tensor(0.05, dtype=torch.float32)), moms=(0.9, 0.9, 0.9))
    torch._dynamo.reset()
    counters.clear()
    learn = Learner(dls, tiny_model(dls.c), opt_func=partial(compiled_sgd, mom=0.9, nesterov=True), metrics=accuracy,
                    path=tmp_path)
    # fastai's ParamScheduler sets the lr (and the momentum, held at 0.9 here) through set_hyper every batch
    learn.fit_one_cycle(2, 0.05, moms=(0.9, 0.9, 0.9))
    assert type(learn.opt) is CompiledStepOptimizer and counters["stats"]["unique_graphs"] == 1  # no recompile
    lrs = learn.recorder.lrs  # what the Recorder read from `hypers`: numbers, one a batch
    assert len(lrs) == 8 and all(type(v) is float for v in lrs)
    assert lrs == [float(torch.tensor(v, dtype=torch.float32)) for v in eager.recorder.lrs]  # the one cycle's
    assert float(learn.opt.opt.param_groups[0]["lr"]) == lrs[-1]
    logits, targets, probs = check_evaluation(learn, dls)
    label, idx, p = learn.predict(dls.valid_ds.items[0])
    assert int(idx) == int(probs[0].argmax()) and label == dls.vocab[int(idx)]
    torch.testing.assert_close(p, probs[0])
    learn.export(tmp_path / "export.pkl")
    assert type(learn.opt) is CompiledStepOptimizer  # export builds the optimizer again and loads its state
    loaded = load_learner(tmp_path / "export.pkl")
    assert torch.equal(loaded.get_preds(dl=dls.valid)[0], probs)
    _, idx2, p2 = loaded.predict(dls.valid_ds.items[0])
    assert int(idx2) == int(idx) and torch.equal(p2, p)


def test_the_plain_loop_with_a_compiled_step_does_the_recipes_work(tmp_path):
    from bench.perf import plain_fit, recipe_fit
    from tricks.data import load_dataset

    write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=40, n_test=100)
    data = load_dataset("cifar10", tmp_path / "cifar-10-batches-py", cache_dir=tmp_path / "cache")
    recipe = parse_recipe("baseline", epochs=2, subset=64, test_subset=100, seed=1, device="cpu", bs=32,
                          compile_step=True)
    torch._dynamo.reset()
    a, b = recipe_fit(recipe, data), plain_fit(recipe, data, CPU)
    assert all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items())  # the same compiled step
    assert a["test_acc"] == b["test_acc"]


class CtrlCAtEpoch(Callback):
    """Ctrl-C as epoch `epoch` (0-based) begins: the run stops with its checkpoint of the epochs before."""

    def __init__(self, epoch: int):
        self.at = epoch

    def before_epoch(self):
        if self.epoch == self.at:
            raise KeyboardInterrupt


def test_a_run_stopped_and_resumed_with_a_compiled_step_ends_on_the_uninterrupted_runs_weights(tmp_path, monkeypatch):
    """The checkpoint holds the SGD's state with its lr tensors; loading it writes the saved lrs into the tensors the
    new compiled step reads (`CompiledStepOptimizer.load_state_dict`) and keeps the momentum buffers."""
    import recipes.fit
    from fixtures import simple_image_folder
    from recipes.cli import main

    simple_image_folder(tmp_path / "images", n_train=8, n_test=2, hw=(8, 8))

    def cli(out, *extra):
        return ["run", "baseline", "--dataset", "folder", "--data", str(tmp_path / "images"), "--out", str(out),
                "--device", "cpu", "--epochs", "3", "--bs", "4", "--compile-step", *extra]

    assert main(cli(tmp_path / "full")) == 0
    real = recipes.fit.build_learner
    with monkeypatch.context() as m:
        m.setattr(recipes.fit, "build_learner",
                  lambda recipe, dls, model, cbs=(), **kw: real(recipe, dls, model, [CtrlCAtEpoch(2), *cbs], **kw))
        assert main(cli(tmp_path / "run")) == 130
    assert main(cli(tmp_path / "run", "--resume")) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["compile_step"] is True
    full, resumed = (torch.load(tmp_path / run / "model.pth", weights_only=True) for run in ("full", "run"))
    assert all(torch.equal(full[k], v) for k, v in resumed.items())  # the same compiled step, to the bit


@pytest.mark.parametrize("text", ["baseline", "baseline+lookahead", "baseline+ema:mode=lr_wd", "baseline+sgdr"])
def test_the_callbacks_read_no_lr_to_the_host_with_a_compiled_step(text, tmp_path):
    """`tests/test_host_reads.py`'s interceptor around `recipe run` with compile_step=true. Under its dispatch mode
    dynamo compiles nothing (`counters` stay empty): the step runs eagerly, where torch's SGD reads a tensor lr to
    the host once a parameter (`_single_tensor_sgd`'s alpha=-lr), the one site counted as the step's. Every other
    reader of the lr -- the schedule's set_lr (through the lookahead trick's optimizer too), EMA's lr_wd decay,
    fastai's set_hyper -- reads nothing: no `float()` of the tensors, which on a GPU would wait for the device."""
    from test_host_reads import disallowed, training_reads

    torch._dynamo.reset()
    counters.clear()
    reads = training_reads(text, tmp_path, compile_step=True, sync_errors=False)
    assert reads.batches == 8 and counters["frames"]["total"] == 0
    assert set(disallowed(reads)) == {"tricks/compiled_step.py:step"}


def test_with_the_model_compiled_too_the_step_is_two_graphs_recorded_in_the_first_step_and_never_again():
    """compile=true and compile_step=true: the model's forward and backward (one graph, aot_eager here as in
    tests/test_recompiles.py) and the optimizer step (one graph, Inductor), both recorded at the first step; the
    evaluations (eager) and the later epochs compile nothing."""
    from recipes.build import CompileModel

    torch._dynamo.reset()
    counters.clear()
    recipe = parse_recipe("baseline", epochs=3, bs=16, eval_bs=32, model="resnet8", device="cpu", compile=True,
                          compile_step=True)
    data = toy_data(n_train=72, n_test=40)
    seed_everything(recipe.seed, CPU)
    spy = StepSpy()
    learn = build_learner(recipe, build_dataloaders(recipe, data, CPU), build_model(recipe, data.num_classes,
                                                                                     data.channels), cbs=[spy])
    next(cb for cb in learn.cbs if isinstance(cb, CompileModel)).backend = "aot_eager"
    learn.fit(recipe.epochs)
    assert len(spy.lrs) == 12 and spy.after_first_step == compiled_counts()
    assert counters["stats"]["unique_graphs"] == 2
