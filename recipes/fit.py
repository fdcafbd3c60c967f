"""One fit into one folder: what `recipes.run.run_plan` calls for each fit of a run's plan.

`fit_one` trains one `Recipe` on loaded data into `out` (config.json, metrics.csv after every epoch,
model.pth, result.json, curves.png, as `recipes.run_folder` names them; checkpoints by `recipes.checkpoint`)
and returns result.json's content with the trained model.
"""
from __future__ import annotations

import contextlib
import csv
import io
import platform
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from fastai.callback.core import Callback

from recipes import checkpoint as ckpt
from recipes.build import build_fit, build_learner, lr_schedule
from recipes.distributed import is_main_process
from recipes.nan_guard import StopOnNonFinite
from recipes.recipe import Recipe
from recipes.run_folder import METRICS, finish_fit, remove_temporaries, write_config
from recipes.speed import seed_everything
from recipes.stats import EpochStats
from tricks.data import ImageData
from tricks.files import write_atomic

METRICS_COLUMNS = ("epoch", "train_loss", "test_loss", "test_acc", "lr", "seconds")
PACKAGES = ("fastai-tricks", "torch", "torchvision", "fastai", "timm", "rich", "numpy")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def metrics_csv(records: Iterable[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in METRICS_COLUMNS})
    return buf.getvalue()


def curves_png(records: list[dict], lrs: list[float], steps_per_epoch: int) -> bytes:
    """Loss, accuracy and lr against epochs, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in records], "o-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [r["test_acc"] for r in records], "o-")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    ax_lr.plot([i / steps_per_epoch for i in range(len(lrs))], lrs)
    ax_lr.set(xlabel="epoch", ylabel="lr", title="learning rate", yscale="log")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def fit_one(recipe: Recipe, out: Path, data: ImageData, device: torch.device, *, extra_cbs: list[Callback],
            callbacks: Callable[[EpochStats], list[Callback]], on_start: Callable[[dict], None],
            info: dict[str, Any], checkpoint: bool = False, resume: bool = False,
            make_model: Callable[[], torch.nn.Module] | None = None) -> tuple[dict[str, Any], torch.nn.Module]:
    """One fit into one run folder; returns (result.json's content, the trained model).

    `checkpoint`: write `checkpoint.pth` (one process only); `resume`: continue from the folder's
    checkpoint, whose config must be this run's (`recipes.checkpoint`). `make_model`: builds the model
    in place of the recipe's (after seeding, as the recipe's is; `bench perf --overhead`'s tiny model).
    """
    seed_everything(recipe.seed, device)
    dls, model, tricks = build_fit(recipe, data, device, make_model)  # the model surgery checked
    resolved = recipe.replace(dataset=data.name, data=data.source, device=str(device))
    main = is_main_process()  # on several processes only rank 0 writes (recipes.distributed)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    config = {**resolved.to_dict(), "classes": list(data.classes), "mean": dls.train.mean.tolist(),
              "std": dls.train.std.tolist(),
              "num_classes": data.num_classes, "channels": data.channels,
              "image_size": list(data.size), "train_images": dls.train.n, "test_images": dls.valid.n,
              "parameters": sum(p.numel() for p in model.parameters()), **info}
    state, started = None, {}
    if resume:  # everything is checked before anything in the folder changes
        state, note, damaged = ckpt.load_for_resume(out)
        ckpt.check_config(state, config, out)
        if damaged is not None:
            ckpt.set_aside(damaged)
        remove_temporaries(out)
        started = {"resume": {"epoch": int(state["epoch"]), "note": note}}
    elif main:
        write_config(out, config)
    have = set(data.test.labels.unique().tolist())
    missing = [c for i, c in enumerate(data.classes) if i not in have]
    notes = {"test_missing_classes": missing} if missing else {}  # their accuracy cannot be measured
    on_start({**config, "out": str(out), **started, **notes})

    writer = lambda record: write_atomic(out / METRICS, metrics_csv(stats.records))
    stats = EpochStats(listeners=(writer,) if main else ())
    guard = StopOnNonFinite(out)  # a NaN/inf loss stops the fit with a TrainingError; the folder stays as written
    saver = ckpt.Checkpoint(out, config, resume=state) if checkpoint and main else None
    learn = build_learner(recipe, dls, model, cbs=[*extra_cbs, stats, guard, *callbacks(stats),
                                                   *([saver] if saver else [])], tricks=tricks)

    start = time.perf_counter()
    with saver.signals() if saver else contextlib.nullcontext():
        learn.fit(recipe.epochs)
    seconds = saver.seconds if saver else time.perf_counter() - start

    records = stats.records
    result = {
        "recipe": recipe.recipe,
        "test_acc": records[-1]["test_acc"],
        "best_test_acc": max(r["test_acc"] for r in records),
        "epochs": len(records),
        "seconds": seconds,
        "train_images_per_second": stats.images_per_second,
        "seed": recipe.seed,
        "dataset": data.name,
        "device": str(device),
        "versions": versions(),
        **info,
        **notes,
    }
    if main:  # the fit has finished: model.pth and result.json hold it, its checkpoints go
        lrs = lr_schedule(learn).lrs  # one per training batch (of this process's shard)
        finish_fit(out, lambda f: torch.save(model.state_dict(), f), result, curves_png(records, lrs, len(lrs) // len(records)),
                   checkpoints=saver is not None)
    return result, model
