"""Label refinery over generations (Bagherinezhad et al. 2018, arXiv:1805.02641), as the notes ran it.

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

Each generation's run folder is `gen<N>/`, with its own `checkpoint.pth` while it trains
(`recipes.checkpoint`); the top `result.json` lists every generation.

Resuming (`resume=True`) checks the top config.json, then for each generation in turn: a finished one
(`gen<N>/result.json`) is not trained again: its `model.pth` is loaded into a model built as its own
was (the model surgery of its tricks, channels_last, compile), the next generation's teacher; the first
unfinished one resumes from its checkpoint (or starts afresh without one) and the later ones train as
usual. Every fit starts with `set_seed(seed)`, so a skipped generation changes no random state the
next one sees: the resumed run ends with the weights of a run never stopped.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from fastai.callback.core import Callback, CancelFitException

from recipes import checkpoint as ckpt
from recipes.build import trained_model
from recipes.recipe import Recipe
from recipes.fit import fit_one, versions
from recipes.stats import EpochStats
from tricks.data import ImageData, Split, class_balanced_subset
from tricks.errors import ConfigError
from tricks.files import write_atomic
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
    first = recipe.replace(tricks=rest, subset=None)
    if refine["first_epochs"]:
        first = first.replace(epochs=refine["first_epochs"],
                              warmup_epochs=recipe.warmup_epochs * refine["first_epochs"] / recipe.epochs)
    dropped = {n for n, _ in rest if dropped_later(TRICKS.get(n), refine)}
    later = recipe.replace(tricks=tuple((n, p) for n, p in rest if n not in dropped), subset=None)
    if refine["gen_epochs"]:
        later = later.replace(epochs=refine["gen_epochs"],
                              warmup_epochs=recipe.warmup_epochs * refine["gen_epochs"] / recipe.epochs)
    return [first] + [later.replace(seed=recipe.seed + g) for g in range(1, refine["gens"] + 1)]


def with_train(data: ImageData, images: torch.Tensor, labels: torch.Tensor) -> ImageData:
    return ImageData(data.name, data.classes, Split(images.contiguous(), labels), data.test, data.source, data.format)


def generation_data(recipe: Recipe, refine: dict[str, Any], data: ImageData) -> tuple[ImageData, ImageData]:
    """(generation 0's data, the refinements' data): the recipe's subset, then the weak split."""
    train = data.train
    if recipe.subset is not None:
        idx = class_balanced_subset(train.labels, recipe.subset, recipe.seed)
        data = with_train(data, train.images[idx], train.labels[idx])
        train = data.train
    if not refine["weak"]:
        return data, data
    idx = class_balanced_subset(train.labels, refine["weak"] * data.num_classes, recipe.seed)
    first = with_train(data, train.images[idx], train.labels[idx])
    unlabelled = with_train(data, train.images, torch.full_like(train.labels, -1))
    return first, unlabelled


def generation_entry(g: int, gen_recipe: Recipe, result: dict[str, Any]) -> dict[str, Any]:
    return {"generation": g, "test_acc": result["test_acc"], "best_test_acc": result["best_test_acc"],
            "epochs": result["epochs"], "seconds": result["seconds"],
            "train_images_per_second": result["train_images_per_second"],
            "tricks": [n for n, _ in gen_recipe.tricks], "folder": f"gen{g}"}


def train_generations(recipe: Recipe, refine: dict[str, Any], out: Path, data: ImageData, device: torch.device, *,
                      callbacks: Callable[[EpochStats], list[Callback]],
                      on_start: Callable[[dict], None], resume: bool = False) -> dict[str, Any]:
    """Generation 0, then `gens` refinements, each into `out/gen<N>`; writes the top result.json.

    `resume`: continue the stopped run in `out` (see the module docstring); its top `seconds` is then
    the sum of the generations' training seconds (their stopped parts included), not the wall time.
    """
    plan = generation_plan(recipe, refine)
    first_data, later_data = generation_data(recipe, refine, data)
    config = {**recipe.to_dict(), "generations": len(plan)}
    if resume:
        ckpt.check_folder_config(out, config)  # before anything in the folder changes
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "config.json", json.dumps(config, indent=2) + "\n")
    start, generations, teacher = time.perf_counter(), [], None
    resuming = resume  # until the first generation that has not finished
    for g, gen_recipe in enumerate(plan):
        gen_out, gen_data = out / f"gen{g}", first_data if g == 0 else later_data
        if resuming:
            finished = ckpt.finished_result(gen_out)
            if finished is not None:
                teacher = trained_model(gen_recipe, gen_data.num_classes, gen_data.channels, gen_out / "model.pth",
                                        device)
                if gen_recipe.compile:  # as CompileModel compiled it
                    teacher.compile()
                generations.append(generation_entry(g, gen_recipe, finished))
                continue
            resuming = False
            gen_resume = any((gen_out / n).exists() for n in (ckpt.CHECKPOINT, ckpt.PREVIOUS))
            if not gen_resume and gen_out.exists():  # stopped before its first checkpoint: it starts afresh
                ckpt.remove_temporaries(gen_out)
        else:
            gen_resume = False
        extra: list[Callback] = []
        if g == 0 and refine["early_stop"]:
            extra.append(StopAfter(refine["early_stop"]))
        if g > 0:
            extra.append(LabelRefinery(teacher, temperature=refine["temperature"], loss=refine["loss"]))
        info = {"generation": g, "generations": len(plan) - 1}
        result, teacher = fit_one(gen_recipe, gen_out, gen_data, device, extra_cbs=extra, callbacks=callbacks,
                                  on_start=on_start, info=info, checkpoint=True, resume=gen_resume)
        generations.append(generation_entry(g, gen_recipe, result))
    seconds = sum(g["seconds"] for g in generations) if resume else time.perf_counter() - start
    result = {
        "recipe": recipe.recipe,
        "test_acc": generations[-1]["test_acc"],
        "best_test_acc": max(g["best_test_acc"] for g in generations),
        "generation_test_acc": [g["test_acc"] for g in generations],
        "generations": generations,
        "epochs": sum(g["epochs"] for g in generations),
        "seconds": seconds,
        "train_images_per_second": sum(g["train_images_per_second"] for g in generations) / len(generations),
        "seed": recipe.seed,
        "dataset": data.name,
        "device": str(device),
        "versions": versions(),
    }
    write_atomic(out / "result.json", json.dumps(result, indent=2) + "\n")
    return {**result, "out": str(out)}
