"""Train one `Recipe` into a run folder: a run is a plan of fits (`recipes.generations.fit_plan`), and one
path trains every plan, a plain recipe's one fit and a refinery's generations alike (`run_plan`).

The run folder's layout, its claim and its checks are `recipes.run_folder`'s. Nothing is written into a folder
that already holds files, except by `--resume` (`resume=True`), which continues the run a folder holds from its
checkpoints (`recipes.checkpoint`: written at the start of each fit and after every epoch, removed once the fit
has finished). A training loss that becomes NaN or inf stops the fit with a `TrainingError`
(`recipes.nan_guard`); config.json, metrics.csv and the checkpoint stay.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fastai.callback.core import Callback

from recipes.build import check_device, check_speed, resolve_device, trained_model
from recipes.distributed import DistributedEnv, ddp_callbacks
from recipes.fit import fit_one, versions
from recipes.generations import Fit, fit_callbacks, fit_count, fit_plan
from recipes.recipe import Recipe
from recipes.run_folder import (MODEL, check_folder_config, claimed, finished_result, fit_folder, fit_folder_name,
                                has_checkpoint, remove_temporaries, start_run, write_config, write_result)
from recipes.speed import resolve_speed
from recipes.stats import EpochStats
from tricks.data import ImageData, load_dataset
from tricks.errors import ConfigError


def train(recipe: Recipe, out: str | os.PathLike | None = None, *, data: ImageData | None = None,
          callbacks: Callable[[EpochStats], list[Callback]] = lambda stats: [],
          on_start: Callable[[dict], None] = lambda info: None, resume: bool = False) -> dict[str, Any]:
    """Train `recipe`, write its run folder, and return `result.json`'s content.

    With a `refine` term, the plan's fits (generation 0 and each refinement) each get a sub-folder `gen<N>`
    (`recipes.run_folder`) and the top `result.json` lists every generation's accuracy.
    `callbacks(stats)` adds display callbacks; `on_start(info)` hears the resolved setup before each
    fit starts. `data` skips loading (tests and the bench pass data they hold already).
    Started by torchrun on several processes, it trains one model with DistributedDataParallel
    (`recipes.distributed`): rank 0 alone checks `out`, writes it and hears `callbacks`/`on_start`.

    On one process, the fit writes `checkpoint.pth` after every epoch (with `refine`, each generation
    into its own `gen<N>`), and `resume=True` continues the stopped run in `out` from it
    (`recipes.checkpoint`; `run_plan` for several fits); a run that has finished already is not
    trained again: its result.json is returned with `already_finished`.
    """
    env = DistributedEnv.from_environ()
    fits = fit_count(recipe)
    if env.enabled and fits > 1:
        raise ConfigError("refine is not supported on several processes (torchrun) yet: its generations train "
                          "one after the other in one process; run it without torchrun")
    if resume:
        if env.enabled:
            raise ConfigError("--resume runs on one process: a torchrun run writes no checkpoint to resume; "
                              "run it without torchrun")
        if out is None:
            raise ConfigError("--resume needs --out: the folder of the run to continue")
    device = env.device(check_device(resolve_device(recipe.device)))
    check_speed(recipe, device)
    recipe, speed_notes = resolve_speed(recipe, device)  # config.json holds what runs, not "auto"
    out, finished = start_run(out, recipe, resume=resume, fits=fits, main=env.is_main)
    if finished is not None:
        return {**finished, "out": str(out), "already_finished": True}
    if not env.is_main:
        callbacks, on_start = (lambda stats: []), (lambda info: None)
    env.init(device)
    stack = contextlib.ExitStack()
    try:
        if env.is_main:  # the folder is this run's before anything is written into it
            stack.enter_context(claimed(out, recipe, resume=resume))
        if data is None:  # each machine's first process fills the data cache, then the others read it
            data = env.local_first(lambda: load_dataset(recipe.dataset, recipe.data))
        extra, info = (ddp_callbacks(env), {"processes": env.world}) if env.enabled else ([], {})
        if speed_notes:
            info["speed_notes"] = speed_notes
        plan = fit_plan(recipe, data)
        result = run_plan(recipe, plan, out, device, extra_cbs=extra, callbacks=callbacks, on_start=on_start,
                          info=info, checkpoint=not env.enabled, resume=resume)
    finally:
        stack.close()
        env.shutdown()
    return {**result, "out": str(out)}


def run_plan(recipe: Recipe, plan: list[Fit], out: Path, device: torch.device, *, extra_cbs: list[Callback],
             callbacks: Callable[[EpochStats], list[Callback]], on_start: Callable[[dict], None],
             info: dict[str, Any], checkpoint: bool, resume: bool) -> dict[str, Any]:
    """Train each fit of `plan` into its folder, the model of each the teacher of the next; returns the run's
    result.json (written by the one fit, or here over several).

    `resume`: a finished fit (its result.json) is not trained again: its `model.pth` is loaded into a model built
    as its own was (the model surgery of its tricks, channels_last, compile), the next fit's teacher; the first
    unfinished one resumes from its checkpoint (or starts afresh without one) and the later ones train as usual.
    Every fit starts with `set_seed(seed)`, so a skipped fit changes no random state the next one sees: the
    resumed run ends with the weights of a run never stopped. Its `seconds` is then the sum of the fits' training
    seconds (their stopped parts included), not the wall time.
    """
    config = run_config(recipe, plan)
    if config is not None:  # the run folder's own config.json, checked before anything in the folder changes
        if resume:
            check_folder_config(out, config)
        else:
            out.mkdir(parents=True, exist_ok=True)
            write_config(out, config)
    start, results, teacher, resuming = time.perf_counter(), [], None, resume
    for i, fit in enumerate(plan):
        folder, fit_resume = fit_folder(out, i, len(plan)), False
        if resuming:  # until the first fit that has not finished
            finished = finished_result(folder)
            if finished is not None:
                teacher = finished_model(fit.recipe, fit.data, folder, device) if i + 1 < len(plan) else None
                results.append(finished)
                continue
            resuming, fit_resume = False, has_checkpoint(folder)
            if not fit_resume and folder.exists():  # stopped before its first checkpoint: it starts afresh
                remove_temporaries(folder)
        result, teacher = fit_one(fit.recipe, folder, fit.data, device,
                                  extra_cbs=[*extra_cbs, *fit_callbacks(fit, teacher)], callbacks=callbacks,
                                  on_start=on_start, info={**info, **fit.info}, checkpoint=checkpoint,
                                  resume=fit_resume)
        results.append(result)
    if config is None:  # one fit: its result.json is the run's
        return results[0]
    seconds = sum(r["seconds"] for r in results) if resume else time.perf_counter() - start
    result = run_result(recipe, plan, results, seconds)
    write_result(out, result)
    return result


def run_config(recipe: Recipe, plan: list[Fit]) -> dict[str, Any] | None:
    """The run folder's own config.json for a plan of several fits (None: the one fit writes its own)."""
    return None if len(plan) == 1 else {**recipe.to_dict(), "generations": len(plan)}


def generation_entry(g: int, fit: Fit, result: dict[str, Any]) -> dict[str, Any]:
    return {"generation": g, "test_acc": result["test_acc"], "best_test_acc": result["best_test_acc"],
            "epochs": result["epochs"], "seconds": result["seconds"],
            "train_images_per_second": result["train_images_per_second"],
            "tricks": [n for n, _ in fit.recipe.tricks], "folder": fit_folder_name(g)}


def run_result(recipe: Recipe, plan: list[Fit], results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The result.json of a run of several fits: each fit's entry, and the last one's accuracy as the run's."""
    generations = [generation_entry(g, fit, r) for g, (fit, r) in enumerate(zip(plan, results))]
    return {
        "recipe": recipe.recipe,
        "test_acc": generations[-1]["test_acc"],
        "best_test_acc": max(g["best_test_acc"] for g in generations),
        "generation_test_acc": [g["test_acc"] for g in generations],
        "generations": generations,
        "epochs": sum(g["epochs"] for g in generations),
        "seconds": seconds,
        "train_images_per_second": sum(g["train_images_per_second"] for g in generations) / len(generations),
        "seed": recipe.seed,
        "dataset": results[-1]["dataset"],
        "device": results[-1]["device"],
        "versions": versions(),
    }


def finished_model(recipe: Recipe, data: ImageData, folder: Path, device: torch.device) -> torch.nn.Module:
    """The model a finished fit trained, from its model.pth, as it ran (compiled as CompileModel compiled it)."""
    model = trained_model(recipe, data.num_classes, data.channels, folder / MODEL, device)
    if recipe.compile:
        model.compile()
    return model
