"""`bench gap`: issue 19's gap-finding runs, the S9 baseline trained three ways side by side at one budget.

`VARIANTS`, each trained for seeds 0..SEEDS-1:

- default: the replay's own S9.baseline job (`bench.job.run_job`: `recipe run baseline` as it runs by default,
  bf16 autocast and compiled on CUDA); its records are the S9 table's baseline runs too.
- fp32-eager: the same job with `precision=fp32, compile=false` (`recipe run baseline --precision fp32
  --no-compile`), under the row id `S9.baseline@fp32-eager`.
- plain: `bench.perf.plain_fit`, the plain PyTorch reference loop of `bench perf` (same data, model, schedule) at
  fp32 eager, under the row id `S9.baseline@plain`; its record's `speed` says `"loop": "plain"`.

Why row ids with '@': a record's key (`bench.record.KEY`) starts with its row id, and the report, `bench decide`
and the S9 table take only records whose row id is a row of the table (`bench.report.used_records`), so the two
other variants never count as, nor get averaged into, S9.baseline's runs; the record type and the SQLite store
stay as they are. The variants' recipe is the row's with the options above (`variant_row`), so the record's
`recipe` says what ran, and every record's `speed` states its precision and compile mode.

What the results already hold (the store, and for the full budget `bench/results/full.jsonl`: the replay's
`done_check`) is skipped; each finished run is stored at once (`bench.job.keep_record`). Every run trains in its
folder under the results folder (`bench.job.job_folder`) and resumes there: a recipe run from its checkpoint
(`bench.job.train_job`), a plain run from the checkpoint `plain_fit` writes at the end of every epoch
(`bench.perf.load_plain_checkpoint`: to the bit the run never stopped); a folder with no whole checkpoint is
trained again from epoch 0. With `until` no run starts past the deadline, and a run still training then stops
after its epoch's checkpoint ('abandoned'; the next call on the same results folder resumes it). Before the
deadline a run starts unless the fp32 runs that finished predict it cannot end by then (their slowest seconds per
epoch, times its epochs; none finished: it starts), as the replay's runs do; `start_late` starts every run up to
the deadline (the replay's `--start-late`: for a call that another call on the same warm machine follows, so a
first call starts all six and the next one finishes them). Written by hand: the replay's pool trains recipe jobs
only.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from bench import job as job_module
from bench import results_file
from bench.job import Abandoned, Job, cores, job_folder, keep_record, loaded
from bench.table import Row
from tricks.errors import ConfigError, DiskFullError, TricksError, one_line

BASE_ROW = "S9.baseline"
CUDA_WORKERS = 6  # the six runs of issue 19 section 1 at once on one GPU
FP32_EAGER = {"precision": "fp32", "compile": False}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of training the baseline: its name, its loop ('recipe': `recipes.run.train`; 'plain':
    `bench.perf.plain_fit`) and the recipe options it adds to the row's."""

    name: str
    loop: str
    options: dict
    what: str  # how it runs, in words (the report's table)


VARIANTS = (Variant("default", "recipe", {}, "`recipe run baseline` as it runs by default (bf16, compiled on CUDA)"),
            Variant("fp32-eager", "recipe", FP32_EAGER, "`recipe run baseline --precision fp32 --no-compile`"),
            Variant("plain", "plain", FP32_EAGER, "the plain PyTorch loop of `bench perf`, fp32 eager"))


def variant_row(base: Row, variant: Variant) -> Row:
    """The row a variant's records carry: `base` itself for the default, else `<base id>@<variant name>` with the
    variant's options added to the row's."""
    if variant.name == VARIANTS[0].name:
        return base
    return dataclasses.replace(base, id=f"{base.id}@{variant.name}", options={**base.options, **variant.options})


@dataclasses.dataclass(frozen=True)
class GapJob:
    """One (variant, seed) to train: the variant's loop and the replay's `Job` of its row."""

    loop: str
    job: Job


def default_workers(device: str) -> int:
    """`CUDA_WORKERS` runs at once on a CUDA GPU, one elsewhere (a CPU run uses every core already)."""
    from recipes.build import resolve_device

    return CUDA_WORKERS if resolve_device(device).type == "cuda" else 1


def gap_jobs(base: Row, *, budget: str, seeds: int, results_dir: Path, data: str | None, dataset: str, device: str,
             workers: int, deadline: float | None, results_path: Path | None,
             done: Callable[[tuple], bool]) -> tuple[list[GapJob], int]:
    """(the jobs the results do not hold yet, variants in `VARIANTS` order and seeds within each; how many are
    held already)."""
    from bench.replay import _data_checksum
    from bench.store import code_version

    version, jobs, held = code_version(), [], 0
    checksum = _data_checksum(base, data, dataset)
    for variant in VARIANTS:
        row = variant_row(base, variant)
        for seed in range(seeds):
            if done((row.id, row.stored_recipe, budget, seed, version, checksum)):
                held += 1
                continue
            jobs.append(GapJob(variant.loop, Job(row, budget, seed, results_dir, data, dataset, device, version,
                                                 workers=workers, deadline=deadline, results_file=results_path)))
    return jobs, held


def train_plain(job: Job) -> dict[str, Any]:
    """Train `job`'s recipe with `bench.perf.plain_fit` in this process, in its folder under the results folder
    (resumed from its checkpoint; a folder with no whole checkpoint is trained again, as `bench.job.train_job`
    does); its record, with the fields a record of `bench.job.train_job` has (`speed` with `"loop": "plain"`).
    `bench.job.Abandoned` at `job.deadline`, after an epoch's checkpoint."""
    import torch

    from bench.budgets import row_recipe
    from bench.perf import plain_checkpoint_whole, plain_fit
    from recipes.build import resolve_device
    from recipes.speed import resolve_speed

    device = resolve_device(job.device)
    recipe = row_recipe(job.row, job.budget, job.seed, data=job.data, dataset=job.dataset, device=job.device)
    images, checksum = loaded(recipe.dataset, recipe.data)
    folder = job_folder(job.results_dir, job.row.id, job.budget, job.seed, job.version)
    if folder.exists() and not plain_checkpoint_whole(folder):  # left by a killed attempt before its first epoch
        shutil.rmtree(folder)
    start = time.perf_counter()
    fit = plain_fit(recipe, images, device, folder=folder, deadline=job.deadline)
    wall = time.perf_counter() - start
    ran, _ = resolve_speed(recipe, device)
    speed = {k: getattr(ran, k) for k in job_module.SPEED_SETTINGS}
    accs = [float(a) for a in fit["epoch_acc"]]
    return {
        "row_id": job.row.id, "recipe": job.row.stored_recipe, "budget": job.budget, "seed": job.seed,
        "code_version": job.version, "dataset_checksum": checksum, "epoch_acc": accs, "test_acc": accs[-1],
        "best_test_acc": max(accs), "generation_acc": None, "wall_seconds": wall,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": dict(job.row.options), "train_images_per_second": float(fit["train_images_per_second"]),
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "workers": job.workers, "resumed": fit["start_epoch"] > 0,
        "speed": {**speed, "loop": "plain"},
        "epochs": len(accs),
    }


def attempt(task: GapJob) -> tuple[GapJob, dict[str, Any] | None, str | None]:
    """(task, record, None) when it trained and was stored, (task, None, the error's one line) when it failed or
    was abandoned at the deadline (as `bench.job._attempt`, whose recipe runs it calls)."""
    if task.loop == "recipe":
        _, record, error = job_module._attempt(task.job)
        return task, record, error
    try:
        record = train_plain(task.job)
        keep_record(task.job, record)
        return task, record, None
    except Abandoned as e:
        return task, None, "abandoned: " + one_line(e)
    except DiskFullError:  # every later job would fail the same way
        raise
    except TricksError as e:
        return task, None, one_line(e)
    except Exception as e:  # a bug or a device error in one run must not stop the others: reported as failed
        return task, None, f"{type(e).__name__}: {one_line(e)}"


def seconds_per_epoch(record: dict) -> float | None:
    """A finished fp32 run's wall seconds per epoch (None for a resumed run, whose wall time is only its last
    part, or for another precision)."""
    if record.get("resumed") or (record.get("speed") or {}).get("precision") != "fp32":
        return None
    return record["wall_seconds"] / max(len(record["epoch_acc"]), 1)


def _epochs(job: Job) -> int:
    from bench.budgets import row_recipe

    return row_recipe(job.row, job.budget, job.seed, data=job.data, dataset=job.dataset, device=job.device).epochs


class Gate:
    """Whether a job may start now: none after the deadline; before it, with `start_late` every one, else each
    unless the fp32 runs seen so far predict it cannot end by then (module docstring). `known`: fp32 seconds per
    epoch seen so far."""

    def __init__(self, deadline: float | None, known: list[float], start_late: bool = False):
        self.deadline, self.known, self.start_late = deadline, list(known), start_late

    def learn(self, record: dict | None) -> None:
        per_epoch = seconds_per_epoch(record) if record is not None else None
        if per_epoch is not None:
            self.known.append(per_epoch)

    def decide(self, task: GapJob) -> str:
        """'start' or 'leave' (no time for it)."""
        if self.deadline is None:
            return "start"
        now = job_module._now()
        if now >= self.deadline:
            return "leave"
        if self.start_late or not self.known:
            return "start"
        return "start" if now + max(self.known) * _epochs(task.job) <= self.deadline else "leave"


def _outcomes(tasks: list[GapJob], workers: int, gate: Gate, counts: dict[str, int]):
    """The tasks' outcomes as they finish: in this process for one worker, else from `workers` spawned processes
    (the replay's worker setup); a task the gate leaves counts as 'not_started'."""
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            if gate.decide(task) != "start":
                counts["not_started"] += 1
                continue
            outcome = attempt(task)
            gate.learn(outcome[1])
            yield outcome
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from bench.replay import _init_worker

    pending = list(tasks)
    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(max(1, cores() // workers), os.getpid())) as pool:
        running: dict = {}
        broken = False
        while pending or running:
            while pending and len(running) < workers and not broken:
                task = pending.pop(0)
                if gate.decide(task) == "leave":
                    counts["not_started"] += 1
                else:
                    running[pool.submit(attempt, task)] = task
            if not running:  # a pool that broke
                counts["not_started"] += len(pending)
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                task = running.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool:  # a worker process died (a crash in native code): start no more
                    broken = True
                    outcome = (task, None, "its worker process died (see the log above)")
                gate.learn(outcome[1])
                yield outcome


def known_seconds(results_path: Path | None, budget: str) -> list[float]:
    """fp32 seconds per epoch of the gap's runs at `budget` already in the results file (any code version)."""
    names = {f"{BASE_ROW}@{v.name}" for v in VARIANTS}
    held = results_file.read(results_path) if results_path is not None else []
    return [s for r in held if r["budget"] == budget and r["row_id"] in names
            if (s := seconds_per_epoch(r)) is not None]


def gap(rows: list[Row], *, budget: str, seeds: int, workers: int | None, results_dir: Path, data: str | None,
        dataset: str = "cifar10", device: str = "auto", until: float | None = None, start_late: bool = False,
        results_path: Path | None = results_file.DEFAULT_PATH,
        progress: Callable[[str], None] = lambda line: None) -> dict[str, int]:
    """Train every (variant, seed 0..seeds-1) of the S9 baseline the results do not hold for this budget, code
    and data; returns counts of runs: 'done_before', 'ran', 'failed', 'abandoned', 'not_started' (as the replay's).

    `rows`: the ablation table's rows (the S9 baseline is taken from them). `until`: seconds from now, and
    `start_late` (module docstring). `results_path`: the results file a full-budget record is also appended to
    (None: none).
    """
    from bench.budgets import BUDGETS
    from bench.replay import _lock, done_check, tally
    from bench.store import Store, code_version

    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget '{budget}'; choose one of {', '.join(BUDGETS)}")
    workers = default_workers(device) if workers is None else workers
    if seeds < 1 or workers < 1:
        raise ConfigError(f"seeds and workers must be at least 1, got seeds={seeds}, workers={workers}")
    base = next((r for r in rows if r.id == BASE_ROW), None)
    if base is None or base.status == "inexpressible":
        raise ConfigError(f"the ablation table has no replayable row {BASE_ROW}; give the notes' table")
    deadline = None if until is None else job_module._now() + until
    results_dir = Path(results_dir)
    lock = _lock(results_dir)
    try:
        held_file = results_path if budget == "full" else None
        done = done_check(Store(results_dir), held_file, budget, code_version())
        tasks, held = gap_jobs(base, budget=budget, seeds=seeds, results_dir=results_dir,
                               data=None if data is None else str(data), dataset=dataset, device=device,
                               workers=workers, deadline=deadline, results_path=results_path, done=done)
        counts = {"done_before": held, "ran": 0, "failed": 0, "abandoned": 0, "not_started": 0}
        progress(f"{len(tasks)} gap runs to do ({held} done before), budget {budget}, {workers} at once"
                 + (f", until {until:g} s from now" if until else "")
                 + (", starting runs up to the deadline" if start_late and until else ""))
        gate = Gate(deadline, known_seconds(held_file, budget), start_late)
        tally(((task.job, record, error) for task, record, error in _outcomes(tasks, workers, gate, counts)),
              len(tasks), counts, progress)
        if counts["not_started"]:
            progress(f"{counts['not_started']} runs not started: too little time left (--start-late starts them up "
                     "to the deadline; a later call on this results folder resumes them)")
        return counts
    finally:
        lock.close()
