"""Replay the ablation table: train every (row, seed) not yet in the results store, storing each at once.

The store is the truth: a job is done when the store holds its (row, budget, seed, code version),
so a replay killed at any moment is started again and runs only what is missing. A run folder left
by a killed attempt is deleted and that run redone from scratch. Jobs train in-process
(`recipes.run.train`, no subprocess per row); the dataset is loaded once per process. `workers>1`
runs a 'spawn' process pool, each worker storing its own results; `ray_address` sends the jobs to a
Ray cluster instead (`bench/ray_cluster.py`). One replay at a time may use a results folder (a lock
file, released by the OS when the process dies).
"""
from __future__ import annotations

import csv
import fcntl
import os
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from bench.store import Store, code_version, dataset_checksum, short_version
from tricks.data import ImageData, load_dataset
from tricks.errors import ConfigError, RunFolderError, TricksError

LOCK_NAME = "replay.lock"
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


def run_folder(results_dir: Path, row_id: str, budget: str, seed: int, version: str) -> Path:
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


def epoch_accuracies(out: Path, result: dict[str, Any]) -> list[float]:
    """Per-epoch test accuracy from the run folder's metrics.csv (the last generation's for refine runs)."""
    if "generations" in result:
        out = out / result["generations"][-1]["folder"]
    with open(out / "metrics.csv", newline="") as f:
        return [float(r["test_acc"]) for r in csv.DictReader(f)]


def train_job(job: Job) -> dict[str, Any]:
    """Train one job into its run folder under `job.results_dir`; returns its record (not stored)."""
    from bench.table import row_recipe
    from recipes.run import train

    recipe = row_recipe(job.row, job.budget, job.seed, data=job.data, dataset=job.dataset, device=job.device)
    images, checksum = loaded(recipe.dataset, recipe.data)  # a row may name its own dataset
    out = run_folder(job.results_dir, job.row.id, job.budget, job.seed, job.version)
    if out.exists():  # left by a killed attempt: the store does not hold it, so it is redone from scratch
        shutil.rmtree(out)
    start = time.perf_counter()
    result = train(recipe, out, data=images)
    gens = result.get("generation_test_acc")
    return {
        "row_id": job.row.id, "recipe": job.row.stored_recipe, "budget": job.budget, "seed": job.seed,
        "code_version": job.version, "dataset_checksum": checksum, "epoch_acc": epoch_accuracies(out, result),
        "test_acc": float(result["test_acc"]), "best_test_acc": float(result["best_test_acc"]),
        "generation_acc": None if gens is None else [float(a) for a in gens],
        "wall_seconds": time.perf_counter() - start,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_job(job: Job) -> dict[str, Any]:
    """Train one job into its run folder and store its record; returns the record."""
    record = train_job(job)
    Store(job.results_dir).add(record)
    return record


def _attempt(job: Job) -> tuple[Job, dict[str, Any] | None, str | None]:
    """(job, record, None) when it ran, (job, None, the error's one line) when it raised a TricksError."""
    try:
        return job, run_job(job), None
    except TricksError as e:
        return job, None, " ".join(str(e).split())


def _exit_with_parent(parent: int) -> None:
    """In a pool worker: exit when the replay process is gone (a killed replay leaves no orphans training)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(threads: int, parent: int) -> None:
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the replay process, which ends the pool
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _lock(results_dir: Path):
    """Hold `<results_dir>/replay.lock` (flock) for this replay; another replay there gets a RunFolderError."""
    results_dir.mkdir(parents=True, exist_ok=True)
    f = open(results_dir / LOCK_NAME, "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunFolderError(f"another replay is running on results folder '{results_dir}'; "
                             "wait for it to finish or give another --results folder") from None
    return f


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def replay(rows: list, *, budget: str, seeds: int, workers: int, results_dir: Path, data: str | None,
           dataset: str = "cifar10", device: str = "auto", ray_address: str | None = None,
           progress: Callable[[str], None] = lambda line: None) -> dict[str, int]:
    """Run every (row, seed 0..seeds-1) the store does not hold for this budget and code; returns counts.

    With `ray_address` the jobs run as tasks of that Ray cluster (`bench.ray_cluster`) instead of
    `workers` local processes.

    Counts are of (row, seed) jobs: 'done_before' (already stored), 'ran' (trained and stored now),
    'skipped_inexpressible' (rows the notes' setting cannot be expressed for), 'failed' (raised a
    TricksError: reported through `progress`, not stored, so tried again by the next replay).
    """
    from bench.table import BUDGETS

    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget '{budget}'; choose one of {', '.join(BUDGETS)}")
    if seeds < 1 or workers < 1:
        raise ConfigError(f"seeds and workers must be at least 1, got seeds={seeds}, workers={workers}")
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(f"row ids must be unique, got {', '.join(dup)} more than once")
    results_dir = Path(results_dir)
    lock = _lock(results_dir)
    try:
        store, version = Store(results_dir), code_version()
        counts = {"done_before": 0, "ran": 0, "skipped_inexpressible": 0, "failed": 0}
        jobs = []
        for row in rows:
            for seed in range(seeds):
                if row.status == "inexpressible":
                    counts["skipped_inexpressible"] += 1
                elif store.done(row.id, row.stored_recipe, budget, seed, version):
                    counts["done_before"] += 1
                else:
                    jobs.append(Job(row, budget, seed, results_dir, None if data is None else str(data),
                                    dataset, device, version))
        progress(f"{len(jobs)} runs to do ({counts['done_before']} done before, "
                 f"{counts['skipped_inexpressible']} inexpressible skipped), budget {budget}, code {version}")
        if ray_address is not None and jobs:
            from bench.ray_cluster import ray_outcomes

            outcomes = ray_outcomes(jobs, ray_address)
        else:
            outcomes = _outcomes(jobs, workers)
        for i, (job, record, error) in enumerate(outcomes, 1):
            name = f"[{i}/{len(jobs)}] {job.row.id} seed {job.seed}"
            if error is None:
                counts["ran"] += 1
                progress(f"{name}: test_acc {record['test_acc']:.2f} ({record['wall_seconds']:.0f} s)")
            else:
                counts["failed"] += 1
                progress(f"{name}: failed: {error}")
        return counts
    finally:
        lock.close()


def _outcomes(jobs: list[Job], workers: int):
    """The jobs' outcomes as they finish: in this process for one worker, else from a spawn pool."""
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield _attempt(job)
        return
    import multiprocessing

    n = min(workers, len(jobs))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(n, initializer=_init_worker, initargs=(max(1, cores() // workers), os.getpid())) as pool:
        yield from pool.imap_unordered(_attempt, jobs)
