"""Fan a replay's jobs out over a Ray cluster: `bench replay --ray ADDRESS`.

Each (row, seed) job is one Ray task asking for one CPU, and one GPU when the replay's device is
`cuda...`. The task trains into a temporary folder on its node and returns its record and the files
of its run folder; this process writes the files into the results folder and then stores the record,
so the SQLite store keeps a single writer and the nodes need no shared disk. A task that dies or a
replay that is killed stores nothing for the unfinished jobs, so the next replay redoes exactly those.

The nodes run this checkout's `tricks`, `recipes` and `bench` (sent as Ray `py_modules`, so every
task has the same code version as this process); they need torch, fastai, timm and rich installed,
and `--data` must be a path readable on every node (or leave it out and set $TRICKS_DATA there).
Ray's own scheduler does the fan-out (`ray.remote`, `ray.wait`); only the file hand-back is ours.
"""
from __future__ import annotations

import dataclasses
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.job import Job, job_folder, keep_record, train_job
from tricks.errors import ConfigError, TricksError
from tricks.files import write_atomic

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tricks", "recipes", "bench")
CONNECT_TIMEOUT_S = 10.0


def check_address(address: str) -> None:
    """`HOST:PORT` of a reachable Ray head (GCS port), or 'auto'; else a ConfigError in one line."""
    if address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--ray '{address}' is not an address; give the Ray head's HOST:PORT, e.g. 127.0.0.1:6379")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ConfigError(f"no Ray head answers at '{address}' ({e.strerror or e}); start one with "
                          "`ray start --head --port PORT` and give its HOST:PORT") from None


def connect(address: str) -> Any:
    """Import ray and join the cluster at `address` with this checkout's packages; returns the ray module."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs the ray package; install it with pip install 'fastai-tricks[ray]'") from None
    check_address(address)
    ray.init(address=address, runtime_env={"py_modules": [str(ROOT / p) for p in PACKAGES]},
             log_to_driver=False, logging_level="ERROR", configure_logging=False)
    return ray


def remote_attempt(job: Job) -> tuple[dict[str, Any] | None, dict[str, bytes], str | None]:
    """In a Ray task: (record, run-folder files by relative path, None), or (None, {}, error line)."""
    import torch

    torch.set_num_threads(1)  # the task holds one CPU
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        local = dataclasses.replace(job, results_dir=Path(tmp))
        try:
            record = train_job(local)
        except TricksError as e:
            return None, {}, " ".join(str(e).split())
        folder = job_folder(local.results_dir, job.row.id, job.budget, job.seed, job.version)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    return record, files, None


def keep(job: Job, record: dict[str, Any], files: dict[str, bytes]) -> None:
    """Write a finished task's run folder into the results folder, then store its record."""
    out = job_folder(job.results_dir, job.row.id, job.budget, job.seed, job.version)
    if out.exists():  # left by a replay killed between the files and the record
        shutil.rmtree(out)
    for rel, data in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    keep_record(job, record)


def ray_outcomes(jobs: list[Job], address: str) -> Iterator[tuple[Job, dict[str, Any] | None, str | None]]:
    """The jobs' outcomes as their tasks finish on the cluster, each kept before it is yielded."""
    ray = connect(address)
    try:
        task = ray.remote(remote_attempt)
        pending = {task.options(num_cpus=1, num_gpus=1 if job.device.startswith("cuda") else 0).remote(job): job
                   for job in jobs}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ref)
            try:
                record, files, error = ray.get(ref)
            except ray.exceptions.RayError as e:
                yield job, None, "the Ray task failed: " + " ".join(str(e).split())[:300]
                continue
            if record is not None:
                keep(job, record, files)
            yield job, record, error
    finally:
        ray.shutdown()  # ends this job on the cluster: its unfinished tasks are cancelled
