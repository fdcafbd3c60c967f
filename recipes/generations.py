"""A run's plan of fits: one fit for a plain recipe; for a `refine` term, the label refinery over generations
(Bagherinezhad et al. 2018, arXiv:1805.02641), as the notes ran it.

`refine:gens=N` trains generation 0 with the rest of the recipe, then generations 1..N, each a fresh
model trained on the soft predictions of the one before (`tricks.label_refinery.LabelRefinery`). The
notes' variants are the parameters of the `refine` term:

| parameter | meaning | notes |
|---|---|---|
| `mixup=first` / `all` | keep mixup (and kl-mixup) in generation 0 only, or in every generation | S8, S9 |
| `gen_epochs=E` | refinement generations train E epochs (0: the recipe's) | S10 |
| `first_epochs=E` | generation 0 trains a full schedule of E epochs (0: the recipe's) | S6 `naive=50` |
| `early_stop=E` | generation 0 stops after E epochs of its schedule | S9 early-stopped model |
| `weak=K` | generation 0 sees K labelled images per class; refinements train on all the images with their labels replaced by -1, so they are never read | S10 |
| `temperature`, `loss` | the refinery's softmax temperature and KL / soft cross entropy | S9 |

`fit_plan` lists the fits (`Fit`: recipe, data, early stop, teacher); `recipes.run.run_plan` trains them, each
into its folder (`recipes.run_folder`: `gen<N>/` when there are several), and writes the run's result.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from fastai.callback.core import Callback, CancelFitException

from recipes.build import train_subset, with_train
from recipes.parse import apply
from recipes.recipe import Recipe
from tricks.data import ImageData
from tricks.errors import ConfigError
from tricks.label_refinery import LabelRefinery
from tricks.registry import TRICKS, TrickSpec


def dropped_later(spec: TrickSpec, refine: dict[str, Any]) -> bool:
    """Whether the refinements drop the trick: trained without labels (refine:weak), every trick that reads the
    labels of a batch; under refine:mixup=first, the tricks that mix the batch (both declared at registration)."""
    return spec.reads_labels if refine["weak"] else spec.mixes_batch and refine["mixup"] == "first"


class StopAfter(Callback):
    """Cancel the fit after `epochs` epochs (an early-stopped generation 0)."""

    order = 100

    def __init__(self, epochs: int):
        self.epochs = epochs

    def after_epoch(self):
        if self.epoch + 1 >= self.epochs:
            raise CancelFitException()


def refine_params(recipe: Recipe) -> dict[str, Any] | None:
    """The `refine` term's parameters, or None when the recipe has no refinement."""
    return next((dict(params) for name, params in recipe.tricks if name == "refine"), None)


def generation_plan(recipe: Recipe, refine: dict[str, Any]) -> list[Recipe]:
    """The recipe of each generation, 0..gens (pure: no training)."""
    rest = tuple((n, p) for n, p in recipe.tricks if n != "refine")
    if refine["weak"] and refine["mixup"] == "all":
        raise ConfigError("refine:weak trains refinements without labels, so mixup cannot run in them; "
                          "use refine:mixup=first")
    dropped = {n for n, _ in rest if dropped_later(TRICKS.get(n), refine)}
    first = recipe.replace(tricks=rest, subset=None)
    later = recipe.replace(tricks=tuple((n, p) for n, p in rest if n not in dropped), subset=None)
    first, later = (apply(r, {"epochs": epochs}) if epochs else r  # the warmup rescaled with the epochs
                    for r, epochs in ((first, refine["first_epochs"]), (later, refine["gen_epochs"])))
    return [first] + [later.replace(seed=recipe.seed + g) for g in range(1, refine["gens"] + 1)]


def generation_data(recipe: Recipe, refine: dict[str, Any], data: ImageData) -> tuple[ImageData, ImageData]:
    """(generation 0's data, the refinements' data): the recipe's subset, then the weak split."""
    if recipe.subset is not None:
        data = train_subset(data, recipe.subset, recipe.seed)
    if not refine["weak"]:
        return data, data
    first = train_subset(data, refine["weak"] * data.num_classes, recipe.seed)
    unlabelled = with_train(data, data.train.images, torch.full_like(data.train.labels, -1))
    return first, unlabelled


@dataclass(frozen=True)
class Fit:
    """One fit of a run's plan: its recipe, the data it trains on, what its config.json and result.json record
    beside the recipe (`info`), and what it adds to the recipe's tricks: an early stop after `stop_after`
    epochs, and the refinery's parameters when it learns from the model of the fit before it."""

    recipe: Recipe
    data: ImageData
    info: dict[str, Any] = field(default_factory=dict)
    stop_after: int = 0
    refinery: dict[str, Any] | None = None


def fit_plan(recipe: Recipe, data: ImageData) -> list[Fit]:
    """The fits a run trains, in order: the recipe itself, or generation 0 and its refinements."""
    refine = refine_params(recipe)
    if refine is None:
        return [Fit(recipe, data)]
    recipes = generation_plan(recipe, refine)
    first, later = generation_data(recipe, refine, data)
    teacher = {"temperature": refine["temperature"], "loss": refine["loss"]}
    return [Fit(r, first if g == 0 else later, {"generation": g, "generations": len(recipes) - 1},
                stop_after=refine["early_stop"] if g == 0 else 0, refinery=None if g == 0 else teacher)
            for g, r in enumerate(recipes)]


def fit_count(recipe: Recipe) -> int:
    """How many fits the run of `recipe` trains (pure: no data)."""
    refine = refine_params(recipe)
    return 1 if refine is None else refine["gens"] + 1


def fit_callbacks(fit: Fit, teacher: torch.nn.Module | None) -> list[Callback]:
    """What `fit` adds to its recipe's tricks; `teacher`: the model of the fit before it."""
    extra: list[Callback] = [StopAfter(fit.stop_after)] if fit.stop_after else []
    if fit.refinery is not None:
        extra.append(LabelRefinery(teacher, **fit.refinery))
    return extra
