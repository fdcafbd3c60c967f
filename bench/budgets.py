"""The budgets of the bench: the `Recipe` that replays a row of the ablation table (`bench.table`) under
`smoke`, `short` or `full`, and the predicted CPU time of a recipe.

Budgets (`row_recipe(row, budget, seed)`) change only the schedule length and the data size, never
which tricks run or their other parameters:

- `full`: the row's recipe and options as the notes ran them (200 epochs on the whole training set and
  so on), for a GPU.
- `short`: a CPU schedule; one row finishes in at most about 2.5 minutes on 2 cores, a typical row in
  about 1, so a whole section (S9: 39 rows) replays with 2 seeds in under 1.5 hours. A model of
  ResNet-20's cost trains on a class-balanced `subset` of 5,000 images and is tested on 2,000
  (`test_subset`); a 200-epoch fit becomes 4 epochs (every run length scaled by 4/200). A model that
  costs c times ResNet-20's multiply-adds on a 3x32x32 image (`relative_cost`, c >= 1) gets 5000/c
  training and 2000/c test images, at least one batch (bs) and 100. The predicted time of the row,
  sum over its fits of epochs * c * (subset / 400 + test_subset / 1400) seconds, is held to
  `SHORT_SECONDS` (150 s): when the scaled row (a refinery of 5 or 8 fits, a 320- or 400-epoch run)
  would take longer, the scale factor shrinks until it fits; each fit keeps at least 1 epoch. 400
  training and 1,400 test images/s is ResNet-20 at batch 256 on these 2 idle cores, measured with
  `recipe run baseline --data cifar10-jpeg.tar.gz --epochs 2 --subset 5000` (401 train img/s, 7 s to
  test 10,000 images), so a typical row (4 epochs, 5,000 images) is predicted at 56 s plus ~10 s of
  start-up. Two replay workers of one thread each train ~12% more images per second in all than one
  of two threads (`--workers 2`).
- `smoke`: one batch per row, so that CI replays the whole table in minutes: 40 training and 40
  test images (at least one per class), batch 32, 1 epoch per fit, refinery generations capped at 1.
  The numbers mean nothing beyond 'it runs'.

What scales with the run length: every value whose `Param` counts epochs (`Param.epochs`, in
`recipes.recipe.PARAMS` and in each trick's parameters), so a new one is scaled without being named
here. `epochs` is rounded down to the budget's factor times the row's, at least 1; then, with
r = new epochs / the row's epochs: a float (`warmup_epochs`, `sgdr:len`) becomes r times itself, or,
when its trick's `unit` is iter, times the ratio of training iterations (the notes' full training set
being 50,000 CIFAR images); a str of '/'-separated epochs (`stepdecay:at`) has each milestone r times,
rounded down, kept increasing and after the warmup (the run is lengthened when they do not fit); an
int counts a schedule of its own (`refine:first_epochs`, `gen_epochs`, `early_stop`,
`dynarefine:start_epoch`) and becomes the budget's factor times itself, rounded down, at least 1, with 0
(the trick's 'none') kept. With the data size: a value whose `Param` counts images per class
(`Param.images_per_class`: `refine:weak`) scales with the subset, keeping at least one batch. `max_gens` caps
a value that counts generations (`Param.generations`: `refine:gens`). The returned `Recipe` keeps the row's
recipe string; the scaled values are in its fields and `tricks`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

from bench.table import Row
from recipes.generations import generation_plan, refine_params
from recipes.parse import parse_recipe
from recipes.recipe import PARAMS, Recipe
from tricks.data import DATASETS
from tricks.errors import ConfigError
from tricks.registry import TRICKS, Param

BUDGETS = ("smoke", "short", "full")
# short budget (units in the names)
SHORT_TRAIN_IMAGES = 5000  # training images for a model of ResNet-20's cost
SHORT_TEST_IMAGES = 2000
SHORT_MIN_TEST_IMAGES = 100
SHORT_EPOCHS_PER_200 = 4  # a 200-epoch fit becomes 4 epochs
SHORT_SECONDS = 150.0  # predicted train + test seconds of one row at most
TRAIN_IMAGES_PER_SECOND = 400.0  # ResNet-20, batch 256, on 2 idle CPU cores, measured (module docstring)
TEST_IMAGES_PER_SECOND = 1400.0
# smoke budget
SMOKE_IMAGES = 40
SMOKE_BS = 32
SMOKE_GENERATIONS = 1
# the notes' full training sets, for scaling iteration-counted lengths and per-class counts
TRAIN_SET_IMAGES = {"cifar10": 50000, "cifar100": 50000, "fashion-mnist": 60000}


@functools.lru_cache(maxsize=None)
def relative_cost(model: str, stem: str = "default") -> float:
    """Multiply-adds of one 3x32x32 forward pass of `model`, over ResNet-20's (conv and linear layers)."""
    return _macs(model, stem) / _macs("resnet20", "default")


@functools.lru_cache(maxsize=None)
def _macs(model: str, stem: str) -> int:
    import torch
    from tricks.models import create_model

    net = create_model(model, num_classes=10, in_chans=3, stem=stem).eval()
    total = 0

    def count(module, _inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * module.in_channels // module.groups * k
        elif isinstance(module, torch.nn.Linear):
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in net.modules()]
    with torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    return total


def fit_epochs(recipe: Recipe) -> list[int]:
    """Epochs of each fit the recipe trains (one, or one per refinery generation; an early stop counts)."""
    refine = refine_params(recipe)
    if refine is None:
        return [recipe.epochs]
    plan = [r.epochs for r in generation_plan(recipe, refine)]
    if refine["early_stop"]:
        plan[0] = min(plan[0], refine["early_stop"])
    return plan


def predicted_seconds(recipe: Recipe, cost: float) -> float:
    """Predicted train + test seconds on 2 CPU cores of `recipe` (with its subset sizes) for a model of `cost`."""
    per_epoch = cost * (recipe.subset / TRAIN_IMAGES_PER_SECOND + recipe.test_subset / TEST_IMAGES_PER_SECOND)
    return sum(fit_epochs(recipe)) * per_epoch


def row_recipe(row: Row, budget: str, seed: int, *, data: str | None = None, dataset: str = "cifar10",
               device: str = "auto") -> Recipe:
    """The `Recipe` that replays `row` under `budget` (see the module docstring) with `seed`.

    A dataset named in the row's options wins over `dataset`; `data` (a path for `dataset`) is then not
    passed, so the row's dataset is found by name ($TRICKS_DATA, the default locations).
    """
    if budget not in BUDGETS:
        raise ConfigError(f"budget '{budget}' is not one of {', '.join(BUDGETS)}")
    if row.status == "inexpressible":
        raise ConfigError(f"row '{row.id}' is inexpressible and cannot be replayed: {row.why}")
    options = dict(row.options)
    if options.get("dataset", dataset) != dataset:
        data = None
    overrides = {"dataset": dataset, "data": data, "seed": seed, "device": device, **options}
    try:
        full = parse_recipe(row.recipe, **overrides)
        if budget == "full":
            return full
        if budget == "smoke":
            return _smoke(full)
        return _short(full)
    except ConfigError as e:
        raise ConfigError(f"row '{row.id}' under budget '{budget}': {e}") from None


def _classes(dataset: str) -> int:
    spec = DATASETS.get(dataset)
    return spec.num_classes if spec is not None and spec.num_classes else 10


def _smoke(full: Recipe) -> Recipe:
    classes = _classes(full.dataset)
    n = max(SMOKE_IMAGES, classes)
    return scaled(full, factor=1 / full.epochs, subset=n, test_subset=n, bs=SMOKE_BS, max_gens=SMOKE_GENERATIONS)


def _short(full: Recipe) -> Recipe:
    cost = max(1.0, relative_cost(full.model, full.stem))
    classes = _classes(full.dataset)
    subset = max(full.bs, classes, round(SHORT_TRAIN_IMAGES / cost))
    test_subset = max(SHORT_MIN_TEST_IMAGES, classes, round(SHORT_TEST_IMAGES / cost))
    factor = SHORT_EPOCHS_PER_200 / 200
    recipe = scaled(full, factor=factor, subset=subset, test_subset=test_subset)
    if predicted_seconds(recipe, cost) <= SHORT_SECONDS:
        return recipe
    low, high = 0.0, factor  # bisect for the largest factor that fits; at 0 every fit trains 1 epoch
    for _ in range(40):
        mid = (low + high) / 2
        fits = predicted_seconds(scaled(full, factor=mid, subset=subset, test_subset=test_subset), cost)
        low, high = (mid, high) if fits <= SHORT_SECONDS else (low, mid)
    return scaled(full, factor=low, subset=subset, test_subset=test_subset)


def _scale_epochs(epochs: int, factor: float) -> int:
    return max(1, math.floor(epochs * factor + 1e-9))


def scale_epochs(param: Param, value: Any, *, factor: float, ratio: float, warmup: float) -> Any:
    """`value` of a parameter that counts epochs (`param.epochs`) in a run whose length is `ratio` times the
    row's under a budget of `factor` (module docstring); `warmup`: the scaled warmup, before every milestone."""
    if param.kind is int:
        return _scale_epochs(value, factor) if value else value
    if param.kind is float:
        return value * ratio
    return "/".join(map(str, _milestones(value, ratio, warmup)))


def scaled(full: Recipe, *, factor: float, subset: int, test_subset: int, bs: int | None = None,
           max_gens: int | None = None) -> Recipe:
    """`full` with every run length times `factor` and the given data sizes (module docstring)."""
    bs = bs or full.bs
    epochs = _scale_epochs(full.epochs, factor)
    tricks = [(TRICKS.get(name), dict(params)) for name, params in full.tricks]
    for spec, p in tricks:  # each milestone needs its own epoch after the warmup and before the end
        for at in (p[q.name] for q in spec.params if q.epochs and q.kind is str):
            epochs = max(epochs, math.floor(full.warmup_epochs * epochs / full.epochs) + len(at.split("/")) + 1)
    ratio = epochs / full.epochs
    warmup = full.warmup_epochs * ratio
    full_images = full.subset or TRAIN_SET_IMAGES.get(full.dataset, 50000)
    iter_ratio = (epochs * (subset // bs)) / (full.epochs * (full_images // full.bs))
    lengths = {q.name: scale_epochs(q, getattr(full, q.name), factor=factor, ratio=ratio, warmup=warmup)
               for q in PARAMS.values() if q.epochs and q.name != "epochs"}
    classes = _classes(full.dataset)
    out = []
    for spec, p in tricks:
        in_run = iter_ratio if p.get("unit") == "iter" else ratio
        for q in spec.params:
            if q.epochs:
                p[q.name] = scale_epochs(q, p[q.name], factor=factor, ratio=in_run, warmup=warmup)
            if q.images_per_class and p[q.name]:  # follows the data: at least a batch, at most the subset
                p[q.name] = min(subset // classes, max(-(-bs // classes), round(p[q.name] * subset / full_images)))
            if q.generations and max_gens is not None:  # smoke caps the generations
                p[q.name] = min(p[q.name], max_gens)
        out.append((spec.name, tuple(spec.resolve(p).items())))
    return dataclasses.replace(full, **lengths, epochs=epochs, subset=subset, test_subset=test_subset, bs=bs,
                               tricks=tuple(out))


def _milestones(at: str, ratio: float, warmup: float) -> list[int]:
    out: list[int] = []
    for m in (int(x) for x in at.split("/")):
        out.append(max(math.floor(m * ratio + 1e-9), math.floor(warmup) + 1, out[-1] + 1 if out else 0))
    return out
