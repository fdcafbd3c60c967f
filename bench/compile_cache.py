"""One Inductor cache for every process of a bench: a second process of the same recipe compiles from it.

torch.compile keeps what it compiled in two caches on disk: the FX-graph cache (Inductor's generated
code, `torch._inductor.config.fx_graph_cache`) and the AOTAutograd cache (the forward and backward
graphs around it, `torch._functorch.config.enable_autograd_cache`). In torch 2.14 both are on by default
(each read once, at import, from `TORCHINDUCTOR_FX_GRAPH_CACHE` / `TORCHINDUCTOR_AUTOGRAD_CACHE` when
set), and both live under `torch._inductor.runtime.cache_dir_utils.cache_dir()`: `TORCHINDUCTOR_CACHE_DIR`,
else `<tempdir>/torchinductor_<user>`. `shared_compile_cache` makes the three explicit for the processes
a replay, `bench decide` or `bench perf` starts (spawned processes inherit `os.environ`): both caches on
and one folder, `$TRICKS_CACHE/inductor` (beside the decoded data, `tricks.data.sources.default_cache_dir`),
so that it outlives a results folder; a variable the user has set wins.

`bench perf --compile-cache` measures it (`run_compile_cache`): the same compiled recipe trains in fresh
processes one after the other, the first and second sharing one empty cache folder, a third (the control,
the machine's drift) with an empty folder of its own. Each process reports its compile seconds (its first
training step's seconds less its median step's) and the caches' own hit and miss counters
(`torch._dynamo.utils.counters`). The child is this module run as `python -m bench.compile_cache SPEC OUT`.
Written by hand: torch offers the caches, not a measurement of them across processes.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from fastai.callback.core import Callback

from tricks.data.sources import default_cache_dir
from tricks.errors import RunFolderError, TrainingError, one_line

CACHE_DIR = "TORCHINDUCTOR_CACHE_DIR"
SWITCHES = {"TORCHINDUCTOR_FX_GRAPH_CACHE": "1", "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}
COUNTERS = {"inductor": ("fxgraph_cache_hit", "fxgraph_cache_miss"),
            "aot_autograd": ("autograd_cache_hit", "autograd_cache_miss")}
CHILD_TIMEOUT_S = 600


def default_dir() -> Path:
    """`$TRICKS_CACHE/inductor` (`~/.cache/fastai-tricks/inductor` without it): the bench's one Inductor cache."""
    return default_cache_dir() / "inductor"


def shared_env(environ: dict[str, str] | os._Environ, default: Path | None = None) -> dict[str, str]:
    """The variables `environ` lacks for one shared cache: both caches on, `CACHE_DIR` at `default` (None:
    `default_dir()`). Those `environ` already has (the user's own settings) are left out."""
    wanted = {**SWITCHES, CACHE_DIR: str(Path(default or default_dir()).absolute())}
    return {name: value for name, value in wanted.items() if name not in environ}


@contextlib.contextmanager
def shared_compile_cache(default: Path | None = None) -> Iterator[Path]:
    """Within it, `os.environ` (which spawned processes inherit) names one Inductor cache (`shared_env`); the
    variables it added are taken away at the end. Yields the cache folder, made if missing."""
    added = shared_env(os.environ, default)
    folder = Path(added.get(CACHE_DIR) or os.environ[CACHE_DIR])
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"the compile cache '{folder}' cannot be made ({e.strerror or e}); set {CACHE_DIR} "
                             "or TRICKS_CACHE to a folder you can write to") from None
    os.environ.update(added)
    try:
        yield folder
    finally:
        for name in added:
            os.environ.pop(name, None)


@dataclass(frozen=True)
class CompileSizes:
    model: str = "resnet8"  # a registry model, or "tiny": `bench.overhead.tiny_model`
    steps: int = 8  # training batches of 8x8 noise (`bench.overhead.tiny_data`); the first compiles
    bs: int = 32
    control: bool = True  # a third process with an empty cache of its own


FULL = CompileSizes()
QUICK = CompileSizes(model="tiny", steps=6)


def compile_env(cache: Path, threads: int) -> dict[str, str]:
    """This process's environment with both caches on in `cache` (whatever the user set: the measurement
    needs an empty folder) and `threads` OpenMP threads."""
    return {**os.environ, **SWITCHES, CACHE_DIR: str(cache), "OMP_NUM_THREADS": str(threads)}


def run_child(sizes: CompileSizes, device: str, cache: Path, threads: int, work: Path) -> dict[str, Any]:
    """One fresh process training the compiled recipe on `device` with its Inductor cache in `cache`; what it
    reported, and its wall seconds from start to exit."""
    out = work / f"child-{len(list(work.glob('child-*')))}.json"
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "bench.compile_cache", json.dumps(asdict(sizes)), device,
                               str(out)], env=compile_env(cache, threads), capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise TrainingError(f"the compile-cache process ran past {CHILD_TIMEOUT_S} s and was stopped; give a "
                            "smaller size (--quick)") from None
    if done.returncode != 0:
        raise TrainingError(f"the compile-cache process exited with code {done.returncode}: "
                            f"{one_line(Exception(done.stderr)) if done.stderr.strip() else 'no message'}")
    return {**json.loads(out.read_text()), "process_seconds": time.perf_counter() - start}


def run_compile_cache(sizes: CompileSizes = FULL, device: str = "auto", threads: int | None = None,
                      log=print) -> dict[str, Any]:
    """The first and second process on one empty cache, then the control on an empty cache of its own."""
    import torch

    from recipes.build import resolve_device

    device, threads = str(resolve_device(device)), threads or torch.get_num_threads()
    processes = {}
    with tempfile.TemporaryDirectory(prefix="bench-compile-cache-") as tmp:
        work, shared = Path(tmp), Path(tmp) / "shared"
        for name, cache in (("first", shared), ("second", shared), ("control", work / "control")):
            if name == "control" and not sizes.control:
                continue
            processes[name] = run_child(sizes, device, cache, threads, work)
            log(f"{name}: compile {processes[name]['compile_seconds']:.2f} s, process "
                f"{processes[name]['process_seconds']:.1f} s, {counter_text(processes[name]['counters'])}")
    first, second = processes["first"]["compile_seconds"], processes["second"]["compile_seconds"]
    out = {"device": device, "threads": threads, "sizes": asdict(sizes), "torch": torch.__version__,
           "setup": f"`baseline` recipe, model {sizes.model}, compile=true (inductor), {sizes.steps} steps of batch "
                    f"{sizes.bs} on 8x8 noise, one fresh process each; compile = first step - median step",
           "processes": processes, "ratio": second / first}
    if "control" in processes:
        out["ratio_to_control"] = second / processes["control"]["compile_seconds"]
    return out


def counter_text(counters: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{name} {n}" for group in counters.values() for name, n in group.items())


def markdown(result: dict[str, Any]) -> str:
    """The table `bench perf --compile-cache` prints: each process's seconds and cache counters, the ratio."""
    lines = [f"compile cache ({result['device']}, {result['threads']} threads, torch {result['torch']}): "
             f"{result['setup']}", "",
             "| process | cache | compile s | first step s | median step s | process s | FX-graph hit/miss "
             "| AOTAutograd hit/miss |", "|---|---|---|---|---|---|---|---|"]
    caches = {"first": "shared, empty", "second": "shared, after the first", "control": "its own, empty"}
    for name, p in result["processes"].items():
        fx, aot = p["counters"]["inductor"], p["counters"]["aot_autograd"]
        lines.append(f"| {name} | {caches[name]} | {p['compile_seconds']:.2f} | {p['first_step_seconds']:.2f} | "
                     f"{p['median_step_seconds']:.3f} | {p['process_seconds']:.1f} | "
                     f"{fx['fxgraph_cache_hit']}/{fx['fxgraph_cache_miss']} | "
                     f"{aot['autograd_cache_hit']}/{aot['autograd_cache_miss']} |")
    lines += ["", f"ratio = second / first compile seconds = {result['ratio']:.3f}"]
    if "ratio_to_control" in result:
        lines.append(f"second / control = {result['ratio_to_control']:.3f}")
    return "\n".join(lines) + "\n"


class StepClock(Callback):
    """Each training step's seconds, from before_batch to after_batch (the first compiles the model)."""

    def __init__(self):
        self.seconds: list[float] = []

    def before_batch(self):
        self.start = time.perf_counter()

    def after_batch(self):
        if self.training:
            self.seconds.append(time.perf_counter() - self.start)


def child(sizes: CompileSizes, device_name: str) -> dict[str, Any]:
    """In the fresh process: `fit_one` of the compiled recipe for one epoch on `device_name` (its precision
    and compile mode as `recipe run` resolves them there); each training step's seconds."""
    import torch
    from torch._dynamo.utils import counters

    from bench.overhead import OverheadSizes, tiny_data, tiny_model
    from recipes.fit import fit_one
    from recipes.parse import parse_recipe
    from recipes.speed import resolve_speed

    device = torch.device(device_name)
    recipe = parse_recipe("baseline", epochs=1, bs=sizes.bs, eval_bs=sizes.bs, device=device_name, crop_pad=0,
                          flip=False, compile=True, **({} if sizes.model == "tiny" else {"model": sizes.model}))
    recipe = resolve_speed(recipe, device)[0]
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="bench-compile-cache-run-") as tmp:
        fit_one(recipe, Path(tmp) / "run", tiny_data(OverheadSizes(steps=sizes.steps, bs=sizes.bs)), device,
                extra_cbs=[], callbacks=lambda stats: [clock], on_start=lambda info: None, info={},
                make_model=tiny_model if sizes.model == "tiny" else None)
    first, median = clock.seconds[0], statistics.median(clock.seconds[1:])
    return {"first_step_seconds": first, "median_step_seconds": median, "compile_seconds": first - median,
            "steps": len(clock.seconds), "cache_dir": os.environ[CACHE_DIR],
            "counters": {group: {name: counters[group][name] for name in names} for group, names in COUNTERS.items()}}


if __name__ == "__main__":
    Path(sys.argv[3]).write_text(json.dumps(child(CompileSizes(**json.loads(sys.argv[1])), sys.argv[2])))
