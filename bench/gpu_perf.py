"""`bench perf --device cuda`: the fast path on one GPU, measured, each figure beside its reference.

Four measurements, each chosen with `--only` (all by default), ResNet-20 v1, the `baseline` recipe at
batch 256 on the whole training split, with the speed settings `recipe run` resolves on the GPU
(`recipes.speed`: channels-last, bf16 autocast, torch.compile reduce-overhead, fused SGD):

1. `speed`: `recipe run` (the fastai Learner and its callbacks) against `bench.perf.plain_fit`, a
   hand-written loop doing the same work the same fast way, alternating sides, `repeats` fits each of
   `epochs` epochs. Training img/s counts the epochs after the first (the first compiles and records
   the CUDA graphs); the ratio is best recipe over best plain. Also: seconds per training epoch, the
   seconds to evaluate the test split (plain loop, after the first epoch), the seconds of the process's
   first epoch (the plain loop's: it compiles from nothing), and the 200-epoch wall time they predict:
   that first epoch + 199 x a steady epoch of `recipe run` (train + evaluate). A third side, `recipe run` with
   compile_step=true (the optimizer step compiled too, `tricks.compiled_step`), gives `compile_step_ratio`: its
   best img/s over the default's; `recipes.speed.CUDA_COMPILE_STEP` turns auto on only where it is above 1.
2. `concurrency`: N = 1, 2, 4, 8, 16 processes training `recipe run baseline` at once on the one GPU.
   Each process (the host's cores divided among them, as among the replay's workers) compiles and
   trains one epoch, then waits at a barrier; all then train `epochs` more
   epochs; aggregate img/s = N x epochs x images / (last end - release). The result records whether
   the processes ran as clients of a CUDA MPS daemon (`mps_running`): `bench/gpu_session.sh` measures
   once without the daemon and once with it, and each call merges its setting into the GPU's committed
   file (`concurrency_path`: bench/results/perf-cuda-concurrency-<gpu>.json), which `bench replay`
   reads for its number of runs at once (`bench.replay.default_workers`). With `until` (seconds), a count
   starts only while twice the last count's wall seconds fit in the time left (`next_count_fits`), so a
   measurement cut short keeps the counts it finished.
3. `parity`: test accuracy after `parity_epochs` epochs in bf16 and fp32, `seeds` seeds each (four
   processes at once), and the 95% Welch interval of bf16 - fp32.
4. `modes`: the plain loop's training img/s for each torch.compile mode in `MODES` (and eager), one
   process each, with its compile seconds (the first epoch's).

`--quick` (`QUICK`) runs the same code at toy sizes on any device: the CPU dry run of the GPU slice.

Written by hand: no library measures a fastai Learner against its own plain-loop equivalent on a GPU.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import stat
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from recipes.parse import parse_recipe
from tricks.files import write_atomic

MEASUREMENTS = ("speed", "concurrency", "parity", "modes")
# `speed`'s fits, alternated per repeat: the plain loop, `recipe run`, and `recipe run` with compile_step=true
SPEED_SIDES = ("plain", "recipe", "compile_step")
MODES = ("eager", "default", "reduce-overhead")
GOAL_IMAGES_PER_SECOND = 120_000  # issue 11, on one H100: an epoch in under 0.42 s
GOAL_EVAL_SECONDS = 0.05
GOAL_RUN_SECONDS = 120.0
GOAL_RATIO = 0.95


@dataclass(frozen=True)
class GpuSizes:
    epochs: int = 4  # per fit in `speed` (the first one warms up)
    repeats: int = 2
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    concurrency_epochs: int = 2  # after the barrier (the compile is shared through one Inductor cache)
    parity_epochs: int = 30
    parity_seeds: int = 2
    parity_precisions: tuple[str, str] = ("bf16", "fp32")  # (low, reference); tests on the CPU use fp32 twice
    mode_epochs: int = 3
    subset: int | None = None  # None: the whole training split
    test_subset: int | None = None
    dataset: str = "cifar10"
    bs: int = 256


# `--quick`: every measurement in seconds at toy sizes, on any device (the CPU dry run of bench/gpu_session.sh)
QUICK = GpuSizes(epochs=2, repeats=1, concurrency=(1, 2), concurrency_epochs=1, parity_epochs=1, parity_seeds=1,
                 mode_epochs=2, subset=64, test_subset=64, bs=16)
# where each GPU's concurrency measurement is committed (`concurrency_path`), read by `bench replay`
MEASURED = Path(__file__).parent / "results"
MPS_PIPE_DIRECTORY = "/tmp/nvidia-mps"  # the MPS daemon's default when CUDA_MPS_PIPE_DIRECTORY is not set


def gpu_sizes(device: str, *, quick: bool, dataset: str, parity_epochs: int) -> GpuSizes:
    """`bench perf --device D [--quick]`'s sizes: `QUICK` or the full ones (with `parity_epochs`); off CUDA the
    parity compares fp32 with itself (bf16 autocast is refused on the CPU)."""
    from dataclasses import replace

    from recipes.build import resolve_device

    sizes = replace(QUICK, dataset=dataset) if quick else GpuSizes(dataset=dataset, parity_epochs=parity_epochs)
    return sizes if resolve_device(device).type == "cuda" else replace(sizes, parity_precisions=("fp32", "fp32"))


def _recipe(text: str = "baseline", *, epochs: int, sizes: GpuSizes, device: str, **values: Any):
    return parse_recipe(text, epochs=epochs, device=device, subset=sizes.subset, test_subset=sizes.test_subset,
                        dataset=sizes.dataset, bs=sizes.bs, **values)


def _steady(train_seconds: list[float], images_per_epoch: int) -> float:
    """img/s over the epochs after the first."""
    rest = train_seconds[1:] or train_seconds
    return images_per_epoch * len(rest) / sum(rest)


def speed(data, sizes: GpuSizes, device: str, log: Callable[[str], None]) -> dict[str, Any]:
    from bench.perf import plain_fit, recipe_fit

    recipe = _recipe(epochs=sizes.epochs, sizes=sizes, device=device)
    dev = torch.device(device)
    plain, trainer, stepped = [], [], []  # stepped: `recipe run` with compile_step=true (recipes.speed)
    step_error = None  # the compile_step side's failure, when it failed (its fits are then left out)
    for r in range(sizes.repeats):
        for side in (SPEED_SIDES if r % 2 == 0 else SPEED_SIDES[::-1]):
            if side == "compile_step" and step_error is not None:  # failed once: not tried again
                continue
            if side == "plain":
                out = plain_fit(recipe, data, dev)
                plain.append({"images_per_second": _steady(out["train_seconds"], out["train_images"]),
                              "train_seconds": out["train_seconds"], "eval_seconds": out["eval_seconds"],
                              "test_acc": out["test_acc"]})
            else:
                try:
                    out = recipe_fit(recipe if side == "recipe" else recipe.replace(compile_step=True), data)
                except Exception as e:  # the compiled step, never run on a GPU before: its failure keeps the rest
                    if side == "recipe":
                        raise
                    step_error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                    log(f"speed: repeat {r + 1}, compile_step: failed: {step_error}")
                    continue
                records = out["records"]
                fits = trainer if side == "recipe" else stepped
                fits.append({"images_per_second": _steady([e["train_seconds"] for e in records],
                                                          records[-1]["train_images"]),
                             "train_seconds": [e["train_seconds"] for e in records],
                             "epoch_seconds": [e["seconds"] for e in records], "test_acc": out["test_acc"]})
            last = {"plain": plain, "recipe": trainer, "compile_step": stepped}[side][-1]
            log(f"speed: repeat {r + 1}, {side}: {last['images_per_second']:,.0f} train img/s")
    best_recipe = max(trainer, key=lambda t: t["images_per_second"])
    best_stepped = max(stepped, key=lambda t: t["images_per_second"]) if stepped else None
    step_ratio = best_stepped["images_per_second"] / best_recipe["images_per_second"] if stepped else None
    if step_ratio is None:
        log(f"speed: compile_step on / off: not measured ({step_error})")
    else:
        log(f"speed: compile_step on / off: {step_ratio:.3f} ({'faster' if step_ratio > 1 else 'not faster'} on)")
    best_plain = max(plain, key=lambda t: t["images_per_second"])
    epoch_s = data_images(recipe, data) / best_recipe["images_per_second"]
    eval_s = min(s for p in plain for s in p["eval_seconds"][1:] or p["eval_seconds"])
    first = cold_first_epoch({"plain": plain})
    steady_epoch = statistics.median(best_recipe["epoch_seconds"][1:] or best_recipe["epoch_seconds"])
    return {"recipe": trainer, "plain": plain, "ratio": best_recipe["images_per_second"] / best_plain["images_per_second"],
            "recipe_images_per_second": best_recipe["images_per_second"],
            "plain_images_per_second": best_plain["images_per_second"],
            "epoch_train_seconds": epoch_s, "eval_seconds": eval_s, "first_epoch_seconds": first,
            "steady_epoch_seconds": steady_epoch, "predicted_200_epoch_seconds": first + 199 * steady_epoch,
            "compile_step": stepped, "compile_step_ratio": step_ratio, "compile_step_error": step_error,
            "compile_step_images_per_second": best_stepped["images_per_second"] if stepped else None,
            "setup": f"baseline, batch {recipe.bs}, {sizes.epochs} epochs x {sizes.repeats} per side"}


def cold_first_epoch(speed_result: dict[str, Any]) -> float:
    """The first epoch of the process's first fit (the plain loop's, repeat 1): the only one that compiles
    from nothing (later fits in the process reuse the compiled code), training and evaluation seconds."""
    first = speed_result["plain"][0]
    return first["train_seconds"][0] + first["eval_seconds"][0]


def data_images(recipe, data) -> int:
    n = recipe.subset or len(data.train)
    return n // recipe.bs * recipe.bs


def _child(target, queue, *args) -> None:
    """Run `target(*args)` in a spawned process and put its result, or its error as one line, on `queue`."""
    try:
        queue.put(target(*args))
    except BaseException as e:  # the parent reports it; a child must never leave the parent waiting
        queue.put({"error": f"{type(e).__name__}: {' '.join(str(e).split())}"})


def _start(ctx, target, queue, *args):
    proc = ctx.Process(target=_child, args=(target, queue, *args))
    proc.start()
    return proc


def _collect(queue, procs, timeout: float) -> list[Any]:
    """One result per process; a child's error (or a child gone without a result) raises a TricksError."""
    import queue as queues

    from tricks.errors import TrainingError

    got, deadline = [], time.monotonic() + timeout
    while len(got) < len(procs):
        try:
            item = queue.get(timeout=5)
        except queues.Empty:
            if time.monotonic() > deadline or all(p.exitcode is not None for p in procs):
                raise TrainingError(f"{len(procs) - len(got)} of {len(procs)} measuring processes gave no result") from None
            continue
        if isinstance(item, dict) and "error" in item:
            for p in procs:
                p.kill()
            raise TrainingError(f"a measuring process failed: {item['error']}")
        got.append(item)
    for p in procs:
        p.join()
    return got


def _barrier_child(barrier, data_arg: tuple[str, str | None], epochs: int, sizes: GpuSizes,
                   device: str, threads: int) -> dict[str, float]:
    from fastai.callback.core import Callback

    torch.set_num_threads(threads)  # the host's cores shared among the runs, as the replay's workers share them

    from recipes.run import train
    from tricks.data import load_dataset

    class Wait(Callback):
        order = 99

        def after_epoch(self):
            if self.epoch == 0:
                torch.cuda.synchronize() if device.startswith("cuda") else None
                barrier.wait()
                self.released = time.time()

    data = load_dataset(*data_arg)
    wait = Wait()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="gpu-perf-") as tmp:
        result = train(_recipe(epochs=epochs + 1, sizes=sizes, device=device), Path(tmp) / "run", data=data,
                       callbacks=lambda stats: [wait])
    return {"released": wait.released, "ended": time.time(), "test_acc": result["test_acc"],
            "images": epochs * data_images(_recipe(epochs=2, sizes=sizes, device=device), data)}


def next_count_fits(last_seconds: float | None, left: float | None) -> bool:
    """Whether the next count of runs at once may start with `left` seconds to go (None: no limit): the last
    count's wall seconds (None: none measured yet) twice over must fit, as more processes take longer."""
    return left is None or last_seconds is None or 2 * last_seconds <= left


def concurrency(data_arg: tuple[str, str | None], sizes: GpuSizes, device: str, log,
                deadline: float | None = None) -> list[dict[str, Any]]:
    """One setting's measurement, as a list of one (the form `merge_concurrency` keeps several settings in):
    aggregate img/s for each N in `sizes.concurrency`, the fastest N, and whether MPS served the processes.
    `deadline` (`time.monotonic()`): the counts that `next_count_fits` leaves out are listed as not measured."""
    from bench.job import cores

    mps = mps_running()
    ctx = multiprocessing.get_context("spawn")
    out, last, not_measured = {}, None, []
    for i, n in enumerate(sizes.concurrency):
        left = None if deadline is None else deadline - time.monotonic()
        if not next_count_fits(last, left):
            not_measured = list(sizes.concurrency[i:])
            log(f"concurrency {', '.join(map(str, not_measured))} at once: not measured, {left:.0f} s left and "
                f"{sizes.concurrency[i - 1]} at once took {last:.0f} s")
            break
        started = time.monotonic()
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        procs = [_start(ctx, _barrier_child, queue, barrier, data_arg, sizes.concurrency_epochs, sizes, device,
                        max(1, cores() // n)) for _ in range(n)]
        results = _collect(queue, procs, 900)
        window = max(r["ended"] for r in results) - min(r["released"] for r in results)
        images = sum(r["images"] for r in results)
        out[str(n)] = {"processes": n, "aggregate_images_per_second": images / window, "window_seconds": window,
                       "per_process_images_per_second": images / window / n}
        log(f"concurrency {n}{' (MPS)' if mps else ''}: {images / window:,.0f} img/s aggregate "
            f"({images / window / n:,.0f} per process)")
        last = time.monotonic() - started
    best = max(out.values(), key=lambda v: v["aggregate_images_per_second"])
    return [{"mps": mps, "runs": out, "not_measured": not_measured, "best_processes": best["processes"],
             "best_images_per_second": best["aggregate_images_per_second"], "date": time.strftime("%Y-%m-%d"),
             "torch": torch.__version__, "sizes": asdict(sizes),
             "setup": f"baseline, {sizes.concurrency_epochs} epochs after a barrier, per process"}]


def mps_running(env: Mapping[str, str] = os.environ) -> bool:
    """Whether a CUDA MPS control daemon listens where this process's CUDA clients would look: its control pipe
    (`control`, a FIFO or socket) in $CUDA_MPS_PIPE_DIRECTORY (default /tmp/nvidia-mps). Written by hand:
    neither torch nor NVML says whether a process would run as an MPS client."""
    try:
        mode = os.stat(Path(env.get("CUDA_MPS_PIPE_DIRECTORY") or MPS_PIPE_DIRECTORY) / "control").st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def gpu_slug(gpu: str) -> str:
    """A GPU name as a file name part: 'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", gpu.lower().removeprefix("nvidia")).strip("-") or "gpu"


def concurrency_path(gpu: str, folder: Path = MEASURED) -> Path:
    return Path(folder) / f"perf-cuda-concurrency-{gpu_slug(gpu)}.json"


def merge_concurrency(earlier: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The settings of `new`, and those of `earlier` that `new` does not measure again (by `mps`); without MPS
    first."""
    measured = {bool(s.get("mps")) for s in new}
    return sorted([s for s in earlier if bool(s.get("mps")) not in measured] + new, key=lambda s: bool(s.get("mps")))


def faster_setting(settings: list[dict[str, Any]]) -> dict[str, Any]:
    """The setting (with or without MPS) whose best count trained the most images per second."""
    return max(settings, key=lambda s: s["best_images_per_second"])


def concurrency_verdict(settings: list[dict[str, Any]]) -> str:
    """One line, which `bench/gpu_session.sh` reads: 'concurrency: faster with MPS' or 'faster without MPS' when
    both settings are measured (the script keeps the daemon on only for the first), else the one setting's best."""
    def best(s: dict[str, Any]) -> str:
        return f"{s['best_processes']} at once, {s['best_images_per_second']:,.0f} img/s"

    if len(settings) == 1:
        s = settings[0]
        return f"concurrency: {'with' if s['mps'] else 'without'} MPS only: {best(s)}"
    fast = faster_setting(settings)
    slow = next(s for s in settings if s is not fast)
    return (f"concurrency: faster {'with' if fast['mps'] else 'without'} MPS ({best(fast)}; "
            f"{'with' if slow['mps'] else 'without'}: {best(slow)})")


def read_measurement(path: Path) -> dict[str, Any] | None:
    """A committed measurement file's JSON, or None when there is none or it cannot be read as one."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_gpu_perf(perf: dict[str, Any], results: Path, measured: Path = MEASURED,
                   merge: bool = True) -> dict[str, Any]:
    """perf-cuda.json and perf-cuda.md in `results`; a concurrency measurement on a GPU is also merged into that
    GPU's file in `measured` (`concurrency_path`), keeping the other MPS setting measured before, unless `merge`
    is False (a `--quick` measurement at toy sizes, which must never become the replay's runs at once). Returns
    `perf` with the merged settings (what the markdown shows)."""
    if merge and perf.get("concurrency") and perf["gpu"] is not None:
        path = concurrency_path(perf["gpu"], measured)
        earlier = read_measurement(path) or {}
        settings = merge_concurrency(earlier.get("concurrency", []) if earlier.get("gpu") == perf["gpu"] else [],
                                     perf["concurrency"])
        perf = {**perf, "concurrency": settings}
        committed = {k: perf[k] for k in ("device", "gpu", "torch", "sizes", "concurrency")}
        Path(measured).mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(committed, indent=2) + "\n")
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    write_atomic(results / "perf-cuda.json", json.dumps(perf, indent=2) + "\n")
    write_atomic(results / "perf-cuda.md", markdown(perf))
    return perf


def _parity_child(side: int, precision: str, seed: int, data_arg: tuple[str, str | None], sizes: GpuSizes,
                  device: str) -> tuple[int, str, int, float, float]:
    import tempfile
    from pathlib import Path

    from recipes.run import train
    from tricks.data import load_dataset

    data = load_dataset(*data_arg)
    with tempfile.TemporaryDirectory(prefix="gpu-parity-") as tmp:
        r = train(_recipe(epochs=sizes.parity_epochs, sizes=sizes, device=device, precision=precision, seed=seed),
                  Path(tmp) / "run", data=data)
    return side, precision, seed, r["test_acc"], r["seconds"]


def parity(data_arg: tuple[str, str | None], sizes: GpuSizes, device: str, log) -> dict[str, Any]:
    from bench.stats import welch

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    low, high = sizes.parity_precisions
    jobs = [(i, p, s) for i, p in enumerate((low, high)) for s in range(sizes.parity_seeds)]
    procs = [_start(ctx, _parity_child, queue, i, p, s, data_arg, sizes, device) for i, p, s in jobs]
    got = sorted(tuple(g) for g in _collect(queue, procs, 1800))
    acc = [[g[3] for g in got if g[0] == i] for i in (0, 1)]
    d, interval = welch(acc[0], acc[1])
    for _, prec, seed, a, sec in got:
        log(f"parity {prec} seed {seed}: {a:.2f}% after {sizes.parity_epochs} epochs ({sec:.0f} s)")
    return {"precisions": [low, high], "bf16_test_acc": acc[0], "fp32_test_acc": acc[1], "difference": d,
            "interval95": interval,
            "within_noise": interval is not None and interval[0] <= 0 <= interval[1],
            "setup": f"baseline, {sizes.parity_epochs} epochs, seeds 0..{sizes.parity_seeds - 1}, 4 runs at once"}


def _mode_child(mode: str, data_arg: tuple[str, str | None], sizes: GpuSizes, device: str) -> dict[str, Any]:
    from bench.perf import plain_fit
    from tricks.data import load_dataset

    data = load_dataset(*data_arg)
    values = {"compile": False} if mode == "eager" else {"compile": True, "compile_mode": mode}
    recipe = _recipe(epochs=sizes.mode_epochs, sizes=sizes, device=device, **values)
    out = plain_fit(recipe, data, torch.device(device))
    return {"mode": mode, "images_per_second": _steady(out["train_seconds"], out["train_images"]),
            "first_epoch_seconds": out["train_seconds"][0]}


def modes(data_arg: tuple[str, str | None], sizes: GpuSizes, device: str, log) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    out = {}
    for mode in MODES:  # one at a time: each alone on the GPU
        queue = ctx.Queue()
        out[mode] = _collect(queue, [_start(ctx, _mode_child, queue, mode, data_arg, sizes, device)], 900)[0]
        log(f"mode {mode}: {out[mode]['images_per_second']:,.0f} train img/s, first epoch "
            f"{out[mode]['first_epoch_seconds']:.1f} s")
    return {"modes": out, "fastest": max(out, key=lambda m: out[m]["images_per_second"])}


def gpu_name(device: str) -> str | None:
    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else None


def run_gpu_perf(data, data_arg: str | None, *, device: str = "cuda", only: tuple[str, ...] = MEASUREMENTS,
                 sizes: GpuSizes = GpuSizes(), log=print, until: float | None = None) -> dict[str, Any]:
    """The measurements named in `only`; the dict written to perf-cuda.json. `data` is the loaded dataset
    (`sizes.dataset` from `data_arg`, a path or None), which child processes load again from its cache.
    `until`: seconds from now by which the concurrency measurement starts no count it cannot finish."""
    out: dict[str, Any] = {"device": device, "gpu": gpu_name(device), "torch": torch.__version__,
                           "sizes": asdict(sizes)}
    start = time.perf_counter()
    deadline = None if until is None else time.monotonic() + until
    if "speed" in only:
        out["speed"] = speed(data, sizes, device, log)
    source = (sizes.dataset, data_arg)
    if "concurrency" in only:
        out["concurrency"] = concurrency(source, sizes, device, log, deadline)
    if "parity" in only:
        out["parity"] = parity(source, sizes, device, log)
    if "modes" in only:
        out["modes"] = modes(source, sizes, device, log)
    out["seconds"] = time.perf_counter() - start
    return out


def markdown(perf: dict[str, Any]) -> str:
    """The README's GPU table: each figure, its reference or goal, and the command."""
    lines = [f"# bench perf --device {perf['device']} ({perf['gpu'] or 'no GPU'}, torch {perf['torch']}, "
             f"{perf['seconds']:.0f} s)", "",
             "| measurement | measured | reference / goal |", "|---|---|---|"]
    s = perf.get("speed")
    if s:
        lines += [
            f"| `recipe run baseline` train img/s ({s['setup']}) | {s['recipe_images_per_second']:,.0f} | "
            f"goal >= {GOAL_IMAGES_PER_SECOND:,} |",
            f"| plain fast PyTorch loop, same work, train img/s | {s['plain_images_per_second']:,.0f} | - |",
            f"| recipe / plain loop | **{s['ratio']:.3f}** | goal >= {GOAL_RATIO} |",
            f"| `recipe run` with `--compile-step`, train img/s | {s['compile_step_images_per_second']:,.0f} | "
            f"{s['compile_step_ratio']:.3f}x without (auto turns it on only when > 1) |"
            if s.get("compile_step_ratio") is not None else
            f"| `recipe run` with `--compile-step` | failed: {s.get('compile_step_error')} | - |",
            f"| seconds per training epoch (50,000 images) | {s['epoch_train_seconds']:.3f} | goal < 0.42 |",
            f"| seconds to evaluate the test split | {s['eval_seconds']:.3f} | goal < {GOAL_EVAL_SECONDS} |",
            f"| first epoch of the process, compile from nothing included (s) | {cold_first_epoch(s):.1f} | - |",
            f"| 200 epochs predicted: that first epoch + 199 x a steady epoch incl. evaluation (s) | "
            f"{cold_first_epoch(s) + 199 * s['steady_epoch_seconds']:.0f} | goal < {GOAL_RUN_SECONDS:.0f} |"]
    for c in perf.get("concurrency") or []:
        base = c["runs"].get("1", {}).get("aggregate_images_per_second")
        setting = "with MPS" if c["mps"] else "without MPS"
        for n, v in c["runs"].items():
            rel = f"{v['aggregate_images_per_second'] / base:.2f}x one run" if base else "-"
            lines.append(f"| {n} runs at once, {setting}: aggregate train img/s | "
                         f"{v['aggregate_images_per_second']:,.0f} | {rel} |")
        for n in c.get("not_measured", []):
            lines.append(f"| {n} runs at once, {setting} | not measured (too little time left) | - |")
    if len(perf.get("concurrency") or []) > 1:
        fast = faster_setting(perf["concurrency"])
        lines.append(f"| faster setting (the replay keeps it) | {'with' if fast['mps'] else 'without'} MPS, "
                     f"{fast['best_processes']} at once | - |")
    p = perf.get("parity")
    if p:
        ci = f"[{p['interval95'][0]:+.2f}, {p['interval95'][1]:+.2f}]" if p["interval95"] else "(n<2)"
        lines.append(f"| bf16 - fp32 test accuracy ({p['setup']}): bf16 "
                     f"{' / '.join(f'{a:.2f}' for a in p['bf16_test_acc'])}, fp32 "
                     f"{' / '.join(f'{a:.2f}' for a in p['fp32_test_acc'])} | {p['difference']:+.2f} {ci} | "
                     f"within seed noise: {'yes' if p['within_noise'] else 'no'} |")
    m = perf.get("modes")
    if m:
        for mode, v in m["modes"].items():
            lines.append(f"| plain loop, compile mode {mode}: train img/s (first epoch s) | "
                         f"{v['images_per_second']:,.0f} ({v['first_epoch_seconds']:.1f}) | "
                         f"{'fastest' if mode == m['fastest'] else '-'} |")
    return "\n".join(lines) + "\n"
