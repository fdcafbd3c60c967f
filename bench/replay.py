"""Replay the ablation table: train every (row, seed) not yet in the results, storing each at once.

The results are the truth: a job is done when the store or, for the full budget, the repository's results
file (`bench.results_file`, `bench/results/full.jsonl`) holds a run of its key (`bench.record.KEY`: row,
recipe, budget, seed, code version, dataset checksum; `done_check`, made once for both), so a replay killed
at any moment is started again and runs only what is missing. A run folder left by a stopped attempt is
resumed from its checkpoint (`recipes.checkpoint`) when it holds one, else deleted and redone. Jobs train in-process
(`recipes.run.train`, no subprocess per row); the dataset is loaded once per process. `workers>1`
runs that many 'spawn' processes (on a CUDA GPU they share the one device: by default as many as the
GPU's committed concurrency measurement found fastest, `default_workers`), each storing its own results;
`ray_address` sends the jobs to a Ray cluster instead (`bench/ray_cluster.py`). One replay at a time may
use a results folder (a lock file, released by the OS when the process dies).

Order and time: jobs run in `priority` order (`PRIORITY`: the S9 rows the notes argue most about
first, then S9's other rows, then S8, S7, ... S1, then the rest), each row's seeds together. With
`until` (seconds) no job starts once the time left is shorter than the finished jobs predict for it
(seconds per epoch of the jobs so far, times its epochs), and a job still training at the deadline
stops at the end of its epoch, after its checkpoint: it is 'abandoned', and the next replay on the same
results folder resumes it.
"""
from __future__ import annotations

import fcntl
import math
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from bench import job as job_module
from bench import results_file
from bench.job import Job, _attempt, cores, loaded
from bench.record import key_of
from bench.store import Store, code_version
from tricks.errors import ConfigError, RunFolderError, TricksError

LOCK_NAME = "replay.lock"
# runs at once on a GPU that no committed concurrency measurement names (`default_workers`): on one H200 four
# full-budget runs trained 104,490 img/s together against 42,382 for one (README "On one GPU")
CUDA_WORKERS = 4
PRIORITY = ("S9.baseline", "S9.mixup.a0.3", "S9.finalbn", "S9.lastgamma.off", "S9.v2.base",
            "S9.refine.mixup-first", "S9.refine.mixup-all")  # then S9's other rows, S8, S7, ... (`priority`)
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


def priority(rows: list) -> list:
    """`rows` in the order a time-limited replay takes them: `PRIORITY`'s rows, then S9's others, then the
    sections S8, S7, ... S1, then any other section (S10, S11, ...); the table's order within each."""
    first = {row_id: i for i, row_id in enumerate(PRIORITY)}

    def section_rank(section: str) -> tuple[int, int]:
        n = int(re.sub(r"\D", "", section) or 0)
        return (0, -n) if 1 <= n <= 9 else (1, n)

    def key(item: tuple[int, Any]) -> tuple:
        i, row = item
        return (0, first[row.id], 0, 0) if row.id in first else (1, *section_rank(row.section), i)

    return [row for _, row in sorted(enumerate(rows), key=key)]


def measured_workers(gpu: str, mps: bool, measurements: dict[str, dict]) -> tuple[int, str]:
    """(runs at once, why) on the GPU named `gpu`: the fastest count of the concurrency measurements
    (`measurements`: file name -> its JSON, as `bench perf --only concurrency` commits them) whose `gpu` is
    that name, among their settings without MPS and, when `mps` (an MPS daemon is running), with it;
    else `CUDA_WORKERS`, saying why."""
    named = {name: m for name, m in sorted(measurements.items()) if isinstance(m, dict) and m.get("gpu") == gpu}
    settings = [(name, s) for name, m in named.items() for s in m.get("concurrency") or []
                if isinstance(s, dict) and (mps or not s.get("mps"))
                and isinstance(s.get("best_processes"), int) and s["best_processes"] >= 1
                and isinstance(s.get("best_images_per_second"), (int, float))]
    if not settings:
        missing = (f"{', '.join(named)} measured it with MPS only, and no MPS daemon is running" if named
                   else f"no committed concurrency measurement names {gpu!r}")
        return CUDA_WORKERS, f"CUDA_WORKERS: {missing}"
    name, best = max(settings, key=lambda item: item[1]["best_images_per_second"])
    return best["best_processes"], (f"the fastest count in {name}, {'with' if best.get('mps') else 'without'} "
                                    f"MPS: {best['best_images_per_second']:,.0f} img/s")


def worker_choice(device: str) -> tuple[int, str | None]:
    """(runs at once, why): on a CUDA GPU `measured_workers` of its name, whether an MPS daemon is running and
    the committed measurements (`bench.gpu_perf.MEASURED`); one elsewhere (a CPU run uses every core already)."""
    from bench.gpu_perf import MEASURED, gpu_name, mps_running, read_measurement
    from recipes.build import resolve_device

    dev = resolve_device(device)
    if dev.type != "cuda":
        return 1, None
    files = {path.name: read_measurement(path) for path in sorted(MEASURED.glob("perf-cuda-concurrency-*.json"))}
    return measured_workers(gpu_name(str(dev)), mps_running(), files)


def default_workers(device: str) -> int:
    """Runs at once by default on `device` (`worker_choice`)."""
    return worker_choice(device)[0]


def replay(rows: list, *, budget: str, seeds: int, workers: int | None, results_dir: Path, data: str | None,
           dataset: str = "cifar10", device: str = "auto", ray_address: str | None = None,
           until: float | None = None, results_path: Path | None = results_file.DEFAULT_PATH,
           compile_mode: str | None = None, start_late: bool = False, progress: Callable[[str], None] = lambda line: None) -> dict[str, int]:
    """Run every (row, seed 0..seeds-1) the results do not hold for this budget, code and data; returns counts.

    Rows run in `priority` order. With `ray_address` the jobs run as tasks of that Ray cluster
    (`bench.ray_cluster`) instead of `workers` local processes (None: `default_workers(device)`).
    `until`: seconds from now after which no job starts and running ones stop (module docstring).
    `results_path`: the results file a full-budget record is also appended to (None: none).
    `compile_mode`: a torch.compile mode for every run instead of the recipe's (a speed setting; the
    record's `speed` says what ran). `start_late`: start runs until the deadline even when they cannot
    finish by then (a later replay on the same results folder, e.g. the next call on a machine that stays
    up, resumes them), instead of leaving them for lack of time.

    Counts are of (row, seed) jobs: 'done_before' (already stored), 'ran' (trained and stored now),
    'skipped_inexpressible' (rows the notes' setting cannot be expressed for), 'failed' (raised a
    TricksError: reported through `progress`, not stored, so tried again by the next replay),
    'abandoned' (stopped at the deadline, resumed by the next replay), 'not_started' (left for lack of time).
    """
    from bench.budgets import BUDGETS

    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget '{budget}'; choose one of {', '.join(BUDGETS)}")
    workers, why = worker_choice(device) if workers is None else (workers, None)
    if seeds < 1 or workers < 1:
        raise ConfigError(f"seeds and workers must be at least 1, got seeds={seeds}, workers={workers}")
    if until is not None and not (math.isfinite(until) and until > 0):
        raise ConfigError(f"--until must be a positive number of seconds, got {until:g}")
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(f"row ids must be unique, got {', '.join(dup)} more than once")
    deadline = None if until is None else job_module._now() + until
    results_dir = Path(results_dir)
    lock = _lock(results_dir)
    try:
        store, version = Store(results_dir), code_version()
        done = done_check(store, results_path if budget == "full" else None, budget, version)
        counts = {"done_before": 0, "ran": 0, "skipped_inexpressible": 0, "failed": 0, "abandoned": 0,
                  "not_started": 0}
        jobs = []
        for row in priority(rows):
            checksum = None if row.status == "inexpressible" else _data_checksum(row, data, dataset)
            for seed in range(seeds):
                if row.status == "inexpressible":
                    counts["skipped_inexpressible"] += 1
                elif done((row.id, row.stored_recipe, budget, seed, version, checksum)):
                    counts["done_before"] += 1
                else:
                    jobs.append(Job(row, budget, seed, results_dir, None if data is None else str(data),
                                    dataset, device, version, workers=workers, deadline=deadline,
                                    results_file=results_path, compile_mode=compile_mode))
        progress(f"{len(jobs)} runs to do ({counts['done_before']} done before, "
                 f"{counts['skipped_inexpressible']} inexpressible skipped), budget {budget}, code {version}"
                 + (f", {workers} at once ({why})" if why else f", {workers} at once" if workers > 1 else "")
                 + (f", until {until:g} s from now" if until else ""))
        if ray_address is not None and jobs:
            from bench.ray_cluster import ray_outcomes

            outcomes = ray_outcomes(jobs, ray_address)
        else:
            outcomes = _outcomes(jobs, workers, deadline, counts, predict=not start_late)
        tally(outcomes, len(jobs), counts, progress)
        if counts["not_started"]:
            progress(f"{counts['not_started']} runs not started: too little time left before the deadline")
        return counts
    finally:
        lock.close()


def tally(outcomes, total: int, counts: dict[str, int], progress: Callable[[str], None]) -> None:
    """Count each (job, record, error) outcome as it comes in 'ran', 'abandoned' (its error starts 'abandoned: ')
    or 'failed', and say one line for it: '[i/total] row seed s: ...'."""
    for i, (job, record, error) in enumerate(outcomes, 1):
        name = f"[{i}/{total}] {job.row.id} seed {job.seed}"
        if error is None:
            counts["ran"] += 1
            progress(f"{name}: test_acc {record['test_acc']:.2f} ({record['wall_seconds']:.0f} s)")
        elif error.startswith("abandoned: "):
            counts["abandoned"] += 1
            progress(f"{name}: {error}")
        else:
            counts["failed"] += 1
            progress(f"{name}: failed: {error}")


def _data_checksum(row, data: str | None, dataset: str) -> str | None:
    """The checksum of the data `row` trains on (`bench.job.loaded`; a row may name its own dataset), or
    None when it cannot be loaded here (the job then fails with the loader's one line)."""
    row_dataset = row.options.get("dataset", dataset)
    try:
        return loaded(row_dataset, data if row_dataset == dataset else None)[1]
    except TricksError:
        return None


def done_check(store: Store, path: Path | None, budget: str, version: str) -> Callable[[tuple], bool]:
    """Whether a run of a key (`bench.record.KEY`'s values; a checksum None: trained on any data) is held by
    `store` or by the results file `path` (None: none), this budget's and code version's runs read once."""
    held = {key_of(r) for r in results_file.read(path) if r["budget"] == budget
            and r["code_version"] == version} if path is not None else set()
    any_data = {k[:-1] for k in held}
    return lambda key: store.done(*key) or (key in held if key[-1] is not None else key[:-1] in any_data)


def _units(job: Job) -> float:
    """A job's length in training epochs (every generation's), for predicting its seconds."""
    from bench.budgets import fit_epochs, row_recipe

    try:
        return float(sum(fit_epochs(row_recipe(job.row, job.budget, job.seed, data=job.data, dataset=job.dataset,
                                               device=job.device))))
    except TricksError:
        return 1.0


def _outcomes(jobs: list[Job], workers: int, deadline: float | None, counts: dict[str, int], predict: bool = True):
    """`_local_outcomes` with one Inductor cache for this process and the workers it spawns, which inherit
    its environment (`bench.compile_cache.shared_compile_cache`): a run compiles what an earlier one did not."""
    if not jobs:
        return
    from bench.compile_cache import shared_compile_cache

    with shared_compile_cache():
        yield from _local_outcomes(jobs, workers, deadline, counts, predict)


def _local_outcomes(jobs: list[Job], workers: int, deadline: float | None, counts: dict[str, int],
                    predict: bool = True):
    """The jobs' outcomes as they finish: in this process for one worker, else from `workers` spawned
    processes. A job starts only while the time left is at least what the finished jobs predict for it
    (their seconds per epoch, the slowest of them, times its epochs); the rest count as 'not_started'."""
    per_unit: list[float] = []

    def fits(job: Job) -> bool:
        if deadline is None or not per_unit or not predict:
            return True
        return job_module._now() + max(per_unit) * _units(job) <= deadline

    def learn(job: Job, record: dict | None) -> None:
        if record is not None:
            per_unit.append(record["wall_seconds"] / max(_units(job), 1.0))

    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            if not fits(job) or (deadline is not None and job_module._now() >= deadline):
                counts["not_started"] += 1
                continue
            outcome = _attempt(job)
            learn(job, outcome[1])
            yield outcome
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    n = min(workers, len(jobs))
    ctx = multiprocessing.get_context("spawn")
    pending = list(jobs)
    while pending:  # a new pool when a worker process died (a crash in native code breaks the pool)
        with ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker,
                                 initargs=(max(1, cores() // workers), os.getpid())) as pool:
            running = {}
            broken = False
            while (pending and not broken) or running:
                while pending and not broken and len(running) < n:
                    job = pending.pop(0)
                    if not fits(job) or (deadline is not None and job_module._now() >= deadline):
                        counts["not_started"] += 1
                        continue
                    running[pool.submit(_attempt, job)] = job
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        broken = True
                        outcome = (job, None, "its worker process died (see the log above)")
                    learn(job, outcome[1])
                    yield outcome
