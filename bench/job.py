"""One replay job: a (row, budget, seed) trained into its run folder and its record kept.

`train_job` trains a `Job` in this process (`recipes.run.train`; a folder left by a stopped attempt is
resumed from its checkpoint, or redone when it has none) and returns its record; `keep_record` stores
it (the SQLite store; a full-budget one also in the results file). `bench.replay` runs jobs in local
processes, `bench.ray_cluster` as Ray tasks (the replay and `bench.decide` import it for a Ray address):
both run jobs through this module, which imports neither.
A `Deadline` callback abandons a job at the replay's deadline, after its epoch's checkpoint.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastai.callback.core import Callback

from bench import results_file
from bench.store import COLUMNS, Store, dataset_checksum, short_version
from tricks.data import ImageData, load_dataset
from tricks.errors import DiskFullError, TricksError, one_line

_LOADED: dict[tuple[str, str | None], tuple[ImageData, str]] = {}  # (dataset, data) -> (data, checksum)


@dataclass(frozen=True)
class Job:
    """One (row, seed) to train, with everything a worker process needs."""

    row: Any  # bench.table.Row
    budget: str
    seed: int
    results_dir: Path
    data: str | None
    dataset: str
    device: str
    version: str
    workers: int = 1  # runs training at once where this one trains (recorded with the result)
    deadline: float | None = None  # `_now()` at which a job still training stops (abandoned)
    results_file: Path | None = None  # where a full-budget record is also appended (bench.results_file)
    compile_mode: str | None = None  # overrides the recipe's torch.compile mode (None: the recipe's, auto)


def cores() -> int:
    """The CPU cores this process may run on (its affinity), which a replay's workers share."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def job_folder(results_dir: Path, row_id: str, budget: str, seed: int, version: str) -> Path:
    """`<results_dir>/runs/<row_id>-<budget>-s<seed>-<first 8 hex of the source hash>`."""
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", row_id)
    return Path(results_dir) / "runs" / f"{slug}-{budget}-s{seed}-{short_version(version)}"


def loaded(dataset: str, data: str | None) -> tuple[ImageData, str]:
    """The dataset and its checksum, loaded once per process."""
    key = (dataset, None if data is None else str(data))
    if key not in _LOADED:
        images = load_dataset(dataset, data)
        _LOADED[key] = (images, dataset_checksum(images))
    return _LOADED[key]


def epoch_accuracies(out: Path) -> list[float]:
    """Per-epoch test accuracy from the metrics.csv of the run's last fit (`recipes.run_folder`)."""
    from recipes.run_folder import METRICS, last_fit_folder

    with open(last_fit_folder(out) / METRICS, newline="") as f:
        return [float(r["test_acc"]) for r in csv.DictReader(f)]


def _now() -> float:
    """The clock of deadlines (wall time: a deadline is shared by processes)."""
    return time.time()


class Abandoned(TricksError):
    """A job still training at the replay's deadline (`until`): stopped after its epoch's checkpoint."""


class Deadline(Callback):
    """Stop the fit at the end of the first epoch that ends after `deadline` (a time.time()), once the
    checkpoint of that epoch is written (`recipes.checkpoint.Checkpoint`, order 200)."""

    order = 210

    def __init__(self, deadline: float):
        self.deadline = deadline

    def after_epoch(self):
        if _now() >= self.deadline and self.epoch + 1 < self.n_epoch:
            raise Abandoned(f"stopped at the deadline after epoch {self.epoch + 1} of {self.n_epoch}; "
                            "the next replay on this results folder resumes it")


def _resumable(out: Path, fits: int) -> bool:
    """Whether a run folder left by a stopped attempt can be resumed (else it is redone from scratch)."""
    from recipes.run_folder import check_resumable

    try:
        check_resumable(out, fits=fits)
    except TricksError:
        return False
    return True


# the speed settings (`recipes.speed`) every record states as it ran (`speed_of`; `bench.gap`'s plain runs too)
SPEED_SETTINGS = ("channels_last", "precision", "compile", "compile_mode", "compile_step", "eval_bs")


def speed_of(out: Path) -> dict[str, Any]:
    """The speed settings the run in `out` trained with (its config.json; the top one for refine runs)."""
    from recipes.run_folder import saved_config

    config = saved_config(out)
    return {k: config.get(k) for k in SPEED_SETTINGS}


def train_job(job: Job) -> dict[str, Any]:
    """Train one job into its run folder under `job.results_dir`; returns its record (not stored)."""
    import torch

    from bench.budgets import row_recipe
    from recipes.generations import fit_count
    from recipes.run import train

    recipe = row_recipe(job.row, job.budget, job.seed, data=job.data, dataset=job.dataset, device=job.device)
    if job.compile_mode is not None:  # a speed setting: the results key stays the row's
        recipe = recipe.replace(compile_mode=job.compile_mode)
    images, checksum = loaded(recipe.dataset, recipe.data)  # a row may name its own dataset
    out = job_folder(job.results_dir, job.row.id, job.budget, job.seed, job.version)
    resume = out.exists() and _resumable(out, fit_count(recipe))
    if out.exists() and not resume:  # left by a killed attempt before its first checkpoint
        shutil.rmtree(out)
    extra = (lambda stats: [Deadline(job.deadline)]) if job.deadline is not None else (lambda stats: [])
    start = time.perf_counter()
    result = train(recipe, out, data=images, callbacks=extra, resume=resume)
    gens = result.get("generation_test_acc")
    device = str(result.get("device", job.device))
    return {
        "row_id": job.row.id, "recipe": job.row.stored_recipe, "budget": job.budget, "seed": job.seed,
        "code_version": job.version, "dataset_checksum": checksum, "epoch_acc": epoch_accuracies(out),
        "test_acc": float(result["test_acc"]), "best_test_acc": float(result["best_test_acc"]),
        "generation_acc": None if gens is None else [float(a) for a in gens],
        "wall_seconds": time.perf_counter() - start,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # kept in the results file only (the SQLite store holds the columns above)
        "options": dict(job.row.options), "train_images_per_second": float(result.get("train_images_per_second", 0.0)),
        "device": device, "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
        "torch": torch.__version__, "workers": job.workers, "resumed": resume, "speed": speed_of(out),
        "epochs": len(epoch_accuracies(out)),
    }


def run_job(job: Job) -> dict[str, Any]:
    """Train one job into its run folder and store its record (and append a full-budget one to the results
    file); returns the record."""
    record = train_job(job)
    keep_record(job, record)
    return record


def keep_record(job: Job, record: dict[str, Any]) -> None:
    """Store a finished run's record; a full-budget one also goes to the results file."""
    Store(job.results_dir).add({k: v for k, v in record.items() if k in COLUMNS})
    if job.budget == "full" and job.results_file is not None:
        results_file.append(job.results_file, record)


def _attempt(job: Job) -> tuple[Job, dict[str, Any] | None, str | None]:
    """(job, record, None) when it ran, (job, None, the error's one line) when it raised a TricksError
    (an `Abandoned` job's line starts with 'abandoned:')."""
    try:
        return job, run_job(job), None
    except Abandoned as e:
        return job, None, "abandoned: " + one_line(e)
    except DiskFullError:  # every later job would fail the same way: the replay stops with the one line
        raise
    except TricksError as e:
        return job, None, one_line(e)
    except Exception as e:  # a bug or a device error in one run must not stop the others: reported as failed
        return job, None, f"{type(e).__name__}: {one_line(e)}"
