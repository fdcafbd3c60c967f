"""`Recipe` + data -> a fastai `Learner`: device loaders, model, SGD param groups, lr schedule."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import torch
from fastai.callback.core import (Callback, CancelBackwardException, CancelBatchException, CancelEpochException,
                                  CancelFitException, CancelStepException, CancelTrainException, CancelValidException,
                                  TrainEvalCallback, _inner_loop, event)
from fastai.callback.fp16 import MixedPrecision
from fastai.learner import Learner
from fastai.optimizer import OptimWrapper
from fastai.torch_core import norm_bias_params
from fastcore.basics import noop
from fastcore.xtras import modify_exception
from fastai.data.core import DataLoaders

from recipes.recipe import Recipe
from tricks.compiled_step import CompiledStepOptimizer
from tricks.data import DATASETS, ImageData, Split
from tricks.data.augment import BatchAugment
from tricks.data.loaders import DeviceLoader, device_dataloaders
from tricks.data.subset import class_balanced_subset
from tricks.errors import ConfigError
from tricks.models import create_model
from tricks.registry import TRICKS
from tricks.schedules import LRSchedule, warmup_cosine
from tricks.surgery import check_surgery

INNER_LOOP = frozenset(_inner_loop)  # fastai's batch-loop events
CANCELS = (CancelBatchException, CancelBackwardException, CancelEpochException, CancelFitException, CancelStepException,
           CancelTrainException, CancelValidException)  # what fastai's Callback.__call__ lets through unchanged
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; a device that is not there is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device '{name}' is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but torch sees no CUDA GPU here; use --device cpu")
    return device


def check_device(device: torch.device) -> torch.device:
    """`device`, or a ConfigError when this machine cannot train or evaluate on it (mps without Apple's GPU,
    meta and the other devices that hold no data, a CUDA index beyond the GPUs there)."""
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device '{device}' asked for, but torch sees no Apple GPU (mps) here; use --device "
                              "cpu or auto")
    elif device.type == "cuda":
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{device}' asked for, but this machine has {torch.cuda.device_count()} "
                              f"CUDA GPU(s): cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type != "cpu":
        raise ConfigError(f"device '{device}' cannot train or evaluate a model (it is not a cpu, cuda or mps "
                          "device); use auto, cpu, cuda or cuda:N")
    return device


def normalization(recipe: Recipe, data: ImageData) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) in [0, 1] units for the recipe's `normalize` setting."""
    c = data.channels
    if recipe.normalize == "cifar":
        if c != 3:
            raise ConfigError(f"normalize=cifar needs 3-channel images, {data.name} has {c}; use dataset or half")
        mean, std = CIFAR_MEAN, CIFAR_STD
    elif recipe.normalize == "half":
        mean, std = (0.5,) * c, (0.5,) * c
    elif recipe.normalize == "none":
        mean, std = (0.0,) * c, (1.0,) * c
    elif DATASETS[data.name].mean is not None:
        mean, std = DATASETS[data.name].mean, DATASETS[data.name].std
    else:  # a folder dataset: measure the training images
        x = data.train.images.double().div_(255).transpose(0, 1).reshape(c, -1)
        return x.mean(1).float(), x.std(1).float()
    return torch.tensor(mean), torch.tensor(std)


def with_train(data: ImageData, images: torch.Tensor, labels: torch.Tensor) -> ImageData:
    """`data` with another train split."""
    return ImageData(data.name, data.classes, Split(images.contiguous(), labels), data.test, data.source, data.format)


def train_subset(data: ImageData, n: int, seed: int) -> ImageData:
    """`data` with its train split cut to the class-balanced subset of `n` images that `seed` picks (a recipe's
    `subset`, the refinery's labelled images)."""
    idx = class_balanced_subset(data.train.labels, n, seed)
    return with_train(data, data.train.images[idx], data.train.labels[idx])


def build_dataloaders(recipe: Recipe, data: ImageData, device: torch.device) -> DataLoaders:
    """Train loader (subset, shuffle, augmentation) and test loader (normalisation only)."""
    mean, std = normalization(recipe, data)
    train = data.train if recipe.subset is None else train_subset(data, recipe.subset, recipe.seed).train
    images, labels = train.images, train.labels
    test_images, test_labels = data.test.images, data.test.labels
    if recipe.test_subset is not None:
        idx = class_balanced_subset(test_labels, recipe.test_subset, recipe.seed)
        test_images, test_labels = test_images[idx], test_labels[idx]
    augment = BatchAugment(crop_pad=recipe.crop_pad, pad_mode=recipe.pad_mode, flip=recipe.flip,
                           resize_crop=recipe.resize_crop)
    common = dict(bs=recipe.bs, mean=mean, std=std, seed=recipe.seed, device=device,
                  channels_last=recipe.channels_last)
    train_dl = DeviceLoader(images, labels, shuffle=True, drop_last=True, augment=augment, **common)
    test_dl = DeviceLoader(test_images, test_labels, **{**common, "bs": recipe.eval_bs})
    return device_dataloaders(train_dl, test_dl)


def build_fit(recipe: Recipe, data: ImageData, device: torch.device,
              make_model: Callable[[], torch.nn.Module] | None = None
              ) -> tuple[DataLoaders, torch.nn.Module, list[Callback]]:
    """One fit's loaders, model (on `device`) and tricks, built after `recipes.speed.seed_everything`; a model a
    trick cannot change fails here, before anything is written. `make_model` builds the model in place of the
    recipe's."""
    dls = build_dataloaders(recipe, data, device)
    model = make_model() if make_model is not None else build_model(recipe, data.num_classes, data.channels)
    model = model.to(device)
    tricks = build_tricks(recipe)
    check_surgery(model, tricks)
    return dls, model, tricks


def build_model(recipe: Recipe, num_classes: int, in_chans: int) -> torch.nn.Module:
    return create_model(recipe.model, num_classes=num_classes, in_chans=in_chans, shortcut=recipe.shortcut,
                        bn_momentum=recipe.bn_momentum, zero_init_last=recipe.zero_init_last, stem=recipe.stem,
                        drop_rate=recipe.drop_rate)


def sgd_param_groups(model: torch.nn.Module, wd: float, wd_bn_bias: bool) -> list[dict]:
    """Two groups: decayed weights, and BatchNorm weights and biases (fastai's `norm_bias_params`)."""
    if wd_bn_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": wd}]
    no_decay = {id(p) for p in norm_bias_params(model, with_bias=True)}
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if id(p) not in no_decay], "weight_decay": wd},
            {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0}]


def optimizer_method(opt, name: str):
    """`opt.<name>` (`step`, `zero_grad`): of a fastai `OptimWrapper`, its torch optimizer's, read directly (the
    wrapper hands it over through fastcore's `GetAttr.__getattr__` after a failed lookup, a few us a step);
    anything else's, `getattr`."""
    if type(opt) is OptimWrapper and name not in vars(opt):
        return getattr(opt.opt, name)
    return getattr(opt, name)


class TricksLearner(Learner):
    """fastai's Learner with two changes, everything else fastai's: evaluation runs under
    `torch.inference_mode` instead of `no_grad` (no autograd bookkeeping or version counters on the
    evaluation pass), and a resumed fit starts at `resume_epoch`.

    The batch loop does fastai's work with less host work per step (`bench perf --overhead` measures it):
    events go only to the callbacks that define them, from plans cached per event (`_call_one`); the
    loop's `_with_events` are written out; the optimizer's `step`/`zero_grad` are read without fastcore's
    `GetAttr` miss (`optimizer_method`); a `DeviceLoader`'s batch is not walked again (`_set_device`,
    `_split`). The same events reach the same callbacks in the same order as in fastai's Learner
    (tests/test_learner_dispatch.py runs both side by side).

    `resume_epoch` (0 unless a callback sets it at before_fit: `recipes.checkpoint.Checkpoint`) is the
    first epoch the fit runs; the epochs before it are not run at all, no event fires for them (fastai's
    own `fit(start_epoch=)` cancels them one by one, and their after_epoch events still fire).
    """

    resume_epoch = 0
    _dispatch = None  # event -> (callbacks, plan): `_call_one`'s cache

    def __call__(self, event_name):
        """fastai's `Learner.__call__` (one event name or several) without building an `L` per event."""
        if isinstance(event_name, str):
            self._call_one(event_name)
        else:
            for name in event_name:
                self._call_one(name)

    def _call_one(self, event_name):
        """fastai's dispatch, without its cost: fastai sorts the callbacks and calls every one of them for every
        event, and a callback without that event's method answers through fastcore's `GetAttr.__getattr__`
        (the largest host cost of a batch in a profile of the trainer on the CPU). Here only the callbacks
        whose class (or instance) defines the event are called, in fastai's order (`cbs.sorted('order')`, a
        stable sort: equal orders keep the order they were added in), from a plan cached per event while
        `learn.cbs` holds the same callbacks in the same order; `after_fit` still reaches every callback (it
        resets `Callback.run`). Outside the batch loop each goes through `Callback.__call__` as fastai does;
        inside it (`batch_event`) the same decision without its per-call cost. Written by hand: fastai has no
        cached dispatch."""
        cbs = self.cbs.items
        cache = self._dispatch
        if cache is None:
            cache = self._dispatch = {}  # event -> (the callbacks it was made for, plan)
        cached = cache.get(event_name)
        if cached is None or cached[0] != cbs:  # the same callbacks: a list compare by identity, no allocation
            cached = cache[event_name] = (list(cbs), self.dispatch_plan(event_name))
        if event_name not in INNER_LOOP:
            for cb, _ in cached[1]:
                cb(event_name)
        elif cached[1]:
            self.batch_event(event_name, cached[1])

    def dispatch_plan(self, event_name: str) -> list[tuple[Callback, bool]]:
        """The callbacks `event_name` reaches, in fastai's order, each with whether `batch_event` may decide for
        it (its `__call__` is fastai's and it has no `training` of its own)."""
        if not hasattr(event, event_name):
            raise Exception(f'missing {event_name}')
        cbs = [cb for cb in self.cbs.sorted('order') if event_name == 'after_fit'
               or getattr(type(cb), event_name, None) is not None or event_name in vars(cb)]
        return [(cb, type(cb).__call__ is Callback.__call__ and "training" not in vars(cb)
                 and not hasattr(type(cb), "training")) for cb in cbs]

    def batch_event(self, event_name: str, plan: list[tuple[Callback, bool]]):
        """`cb(event_name)` for each callback of `plan`, as fastai's `Callback.__call__` decides it in the batch
        loop: a callback runs if its `run` is set and, training, its `run_train` (evaluating, its
        `run_valid`); an error other than fastai's cancels is re-raised naming the callback and event. The
        Learner's `training` is read once per event, not through each callback's `GetAttr`."""
        training = self.training
        for cb, decide in plan:
            if not decide:
                cb(event_name)
            elif cb.run and (cb.run_train if training else cb.run_valid):
                try:
                    getattr(cb, event_name, noop)()  # fastcore's getcallable, one call less
                except CANCELS:
                    raise
                except Exception as e:
                    raise modify_exception(e, f'Exception occured in `{cb.__class__.__name__}` when calling event '
                                              f'`{event_name}`:\n\t{e.args[0]}', replace=True)

    def one_batch(self, i, b):
        """fastai's `one_batch`, its `_with_events` written out (the same events, in the same order, the same
        cancel caught): a training step's host work is this loop's, where the arithmetic is small."""
        self.iter = i
        b = self._set_device(b)
        self._split(b)
        call = self._call_one
        try:
            call('before_batch')
            self._do_one_batch()
        except CancelBatchException:
            call('after_cancel_batch')
        call('after_batch')

    def _do_one_batch(self):
        """fastai's `_do_one_batch`, events dispatched directly."""
        call = self._call_one
        self.pred = self.model(*self.xb)
        call('after_pred')
        if len(self.yb):
            self.loss_grad = self.loss_func(self.pred, *self.yb)
            self.loss = self.loss_grad.clone()
        call('after_loss')
        if not self.training or not len(self.yb):
            return
        self._do_grad_opt()

    def _do_grad_opt(self):
        """fastai's `_do_grad_opt`, its two `_with_events` written out."""
        call = self._call_one
        try:
            call('before_backward')
            self._backward()
        except CancelBackwardException:
            call('after_cancel_backward')
        call('after_backward')
        try:
            call('before_step')
            self._step()
        except CancelStepException:
            call('after_cancel_step')
        call('after_step')
        optimizer_method(self.opt, 'zero_grad')()

    def _step(self):
        optimizer_method(self.opt, 'step')()

    def _split(self, b):
        """fastai's `_split` (inputs, then targets); a `DeviceLoader`'s `(x, y)` without asking the `DataLoaders`
        for an `n_inp` it does not have (fastcore's `GetAttr` miss: a few us a batch)."""
        if len(b) == 2 and isinstance(self.dl, DeviceLoader) and "n_inp" not in vars(self.dls):
            self.xb, self.yb = b[:1], b[1:]
        else:
            super()._split(b)

    def _set_device(self, b):
        """A `DeviceLoader` batch is on the model's device already: fastai's walk over it (`to_device`)
        is skipped; any other loader's batch goes through fastai's `_set_device`."""
        if isinstance(self.dl, DeviceLoader) and self.dl.device == self.dls.device:
            return b
        return super()._set_device(b)

    def _do_fit(self):
        for epoch in range(self.resume_epoch, self.n_epoch):
            self.epoch = epoch
            self._with_events(self._do_epoch, 'epoch', CancelEpochException)

    def _do_epoch_validate(self, ds_idx=1, dl=None):
        # a compiled model evaluates eagerly: a few large batches need no graphs of their own (no second
        # compile, no CUDA-graph memory for them); torch's own switch for it is set_stance("force_eager")
        with torch.inference_mode(), torch.compiler.set_stance("force_eager"):
            return super()._do_epoch_validate(ds_idx, dl)


class TrainEval(TrainEvalCallback):
    """fastai's `TrainEvalCallback` (`learn.train_eval` still), its after_batch reading the Learner's counts
    directly instead of through the Callback's `GetAttr` (once a training step)."""

    def after_batch(self):
        learn = self.learn
        learn.pct_train += 1. / (learn.n_iter * learn.n_epoch)
        learn.train_iter += 1


def build_learner(recipe: Recipe, dls: DataLoaders, model: torch.nn.Module,
                  cbs: Iterable[Callback] = (), tricks: list[Callback] | None = None) -> Learner:
    """A fastai Learner: torch SGD (momentum, optional Nesterov, L2 decay) in fastai's OptimWrapper,
    warmup + cosine stepped per iteration or epoch, one-hot cross entropy.

    fastai's default Recorder is left out: it moves the loss to the host after every batch;
    `recipes.stats.EpochStats` keeps the sums on the device and syncs once per epoch.
    """

    def opt_func(_params, lr):
        # groups from the model as it is now: tricks that add modules at before_fit call create_opt again
        groups = sgd_param_groups(learn.model, recipe.wd, recipe.wd_bn_bias)
        # fused: one kernel for the whole update on a CUDA GPU (torch's default elsewhere: foreach); a compiled
        # step is torch's default SGD, which torch.compile traces and fuses itself (`tricks.compiled_step`)
        fused = True if dls.device.type == "cuda" and not recipe.compile_step else None
        sgd = torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov, fused=fused)
        if recipe.compile_step:
            return CompiledStepOptimizer(sgd, mode=None if recipe.compile_mode == "auto" else recipe.compile_mode)
        return OptimWrapper(opt=sgd)

    if tricks is None:  # the caller may pass the recipe's tricks it built already
        tricks = build_tricks(recipe)
    callbacks = [TrainEval(), *tricks, *cbs]
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    if recipe.precision not in ("fp32", "auto"):
        callbacks.append(MixedPrecision(amp_mode=recipe.precision))
    if recipe.compile:
        callbacks.append(CompileModel(mode=None if recipe.compile_mode == "auto" else recipe.compile_mode))
    if not any(isinstance(cb, LRSchedule) for cb in tricks):
        warmup_pct = recipe.warmup_epochs / recipe.epochs
        schedule = warmup_cosine(peak_lr=recipe.lr, floor_lr=recipe.eta, warmup_pct=warmup_pct,
                                 start_lr=recipe.warmup_start_lr, warmup=recipe.warmup)
        callbacks.insert(1, LRSchedule(schedule, step=recipe.step))
    learn = TricksLearner(dls, model, loss_func=torch.nn.CrossEntropyLoss(), opt_func=opt_func, lr=recipe.lr,
                    wd_bn_bias=recipe.wd_bn_bias, cbs=callbacks, default_cbs=False)
    return learn


def check_speed(recipe: Recipe, device: torch.device) -> None:
    """Refuse speed settings the device cannot run (before anything is written)."""
    if recipe.precision not in ("fp32", "auto") and device.type != "cuda":
        raise ConfigError(f"precision={recipe.precision} autocasts on a CUDA GPU (fastai's MixedPrecision), "
                          f"and the device is {device}; use precision=fp32 here")


class CompileModel(Callback):
    """`torch.compile` the model in place (`nn.Module.compile`: the state_dict keeps its keys) once the
    tricks that change the model (orders 1-7) have done so; compiled once, at the first fit. `mode` is
    torch.compile's (None: its default; "reduce-overhead": CUDA graphs of the forward and backward);
    `backend` too (inductor; the tests count dynamo's graphs and recompiles with the quicker aot_eager)."""

    order = 8

    def __init__(self, mode: str | None = None, backend: str = "inductor"):
        self.mode, self.backend = mode, backend

    def before_fit(self):
        if getattr(self.learn.model, "_compiled_call_impl", None) is None:
            self.learn.model.compile(mode=self.mode, backend=self.backend)


def trained_model(recipe: Recipe, num_classes: int, in_chans: int, weights: Path,
                  device: torch.device) -> torch.nn.Module:
    """The model a fit of `recipe` left in `weights` (a model.pth): built as `fit_one` builds it, in
    channels-last format when the recipe asks (as `build_learner`), changed by the recipe's model-surgery
    tricks in their order (as their before_fit), then the saved weights loaded."""
    model = build_model(recipe, num_classes, in_chans).to(device)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    check_surgery(model, build_tricks(recipe), edit=True)
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    return model


def build_tricks(recipe: Recipe) -> list[Callback]:
    """The recipe's trick callbacks, sorted by (order, name): the recipe's own order never matters.

    Per-run tricks (the refinery's generations) are left to `recipes.generations`.
    """
    cbs = [(TRICKS.get(name).build(recipe, **dict(params)), name) for name, params in recipe.tricks
           if not TRICKS.get(name).per_run]
    return [cb for cb, _ in sorted(cbs, key=lambda c: (c[0].order, c[1]))]


def lr_schedule(learn: Learner) -> LRSchedule:
    """The callback that set the lr (the default warmup+cosine, or a trick's schedule)."""
    return next(cb for cb in learn.cbs if isinstance(cb, LRSchedule))
