"""`bench perf --device cuda`'s measurements, run on the CPU at toy sizes: the same code the GPU runs."""
from __future__ import annotations

import json
import os
import re

import pytest
import torch
from fixtures import write_cifar10, write_toy_folder

from bench.cli import main
from bench.gpu_perf import (GpuSizes, _steady, concurrency_path, concurrency_verdict, gpu_slug, markdown, mps_running,
                            next_count_fits, read_measurement, run_gpu_perf, write_gpu_perf)
from bench.replay import CUDA_WORKERS, measured_workers, worker_choice
from tricks.data import load_dataset


def test_steady_rate_leaves_out_the_first_epoch():
    assert _steady([10.0, 2.0, 2.0], 100) == 50.0  # 2 epochs x 100 images in 4 s
    assert _steady([4.0], 100) == 25.0


def test_gpu_perf_measures_on_any_device(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("TRICKS_CACHE", str(tmp_path / "cache"))
    folder = write_toy_folder(tmp_path / "toy", n_train=64, n_test=32)
    data = load_dataset("folder", str(folder))
    sizes = GpuSizes(epochs=2, repeats=1, concurrency=(2,), concurrency_epochs=1, parity_epochs=1, parity_seeds=1,
                     mode_epochs=2, dataset="folder", bs=16, parity_precisions=("fp32", "fp32"))
    lines = []
    perf = run_gpu_perf(data, str(folder), device="cpu", only=("speed", "concurrency", "parity"), sizes=sizes,
                        log=lines.append)
    s = perf["speed"]
    assert len(s["recipe"]) == len(s["plain"]) == 1 and s["ratio"] > 0
    assert s["predicted_200_epoch_seconds"] == pytest.approx(s["first_epoch_seconds"] + 199 * s["steady_epoch_seconds"])
    # the recipe and the plain loop train the same thing: same accuracy at the same seed on the CPU
    assert s["recipe"][0]["test_acc"] == s["plain"][0]["test_acc"]
    [setting] = perf["concurrency"]
    assert setting["mps"] is False and setting["best_processes"] == 2  # no MPS daemon on this machine
    c = setting["runs"]
    assert set(c) == {"2"} and c["2"]["aggregate_images_per_second"] == setting["best_images_per_second"] > 0
    p = perf["parity"]
    assert len(p["bf16_test_acc"]) == len(p["fp32_test_acc"]) == 1 and p["interval95"] is None
    assert p["difference"] == 0.0  # fp32 against fp32, same seeds, deterministic on the CPU
    md = markdown(perf)
    assert "recipe / plain loop" in md and "2 runs at once, without MPS" in md


def test_a_failing_measuring_process_is_one_line_not_a_hang(tmp_path, monkeypatch):
    from bench.gpu_perf import parity
    from tricks.errors import TrainingError

    monkeypatch.setenv("TRICKS_CACHE", str(tmp_path / "cache"))
    folder = write_toy_folder(tmp_path / "toy", n_train=32, n_test=16)
    sizes = GpuSizes(parity_epochs=1, parity_seeds=1, dataset="folder", bs=16)  # bf16 on the CPU is refused
    with pytest.raises(TrainingError, match=r"a measuring process failed: ConfigError: precision=bf16 autocasts"):
        parity(("folder", str(folder)), sizes, "cpu", print)


def test_an_mps_daemon_is_seen_by_its_control_pipe(tmp_path):
    pipes = tmp_path / "mps-pipe"
    pipes.mkdir()
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(pipes)}
    assert not mps_running(env)  # no daemon: CUDA clients run without MPS
    (pipes / "control").write_text("")
    assert not mps_running(env)  # a plain file is no daemon's pipe
    (pipes / "control").unlink()
    os.mkfifo(pipes / "control")
    assert mps_running(env)
    assert not mps_running({"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "elsewhere")})


def test_gpu_names_become_file_names():
    assert gpu_slug("NVIDIA H200") == "h200"
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert concurrency_path("NVIDIA H200").name == "perf-cuda-concurrency-h200.json"


def setting(mps: bool, rates: dict[int, float]) -> dict:
    """One concurrency setting as `bench perf --only concurrency` measures it: aggregate img/s per count."""
    best = max(rates, key=rates.get)
    return {"mps": mps, "runs": {str(n): {"processes": n, "aggregate_images_per_second": r} for n, r in rates.items()},
            "best_processes": best, "best_images_per_second": rates[best], "date": "2026-12-06", "setup": "test"}


def measured(gpu: str, *settings: dict) -> dict:
    return {"device": "cuda", "gpu": gpu, "torch": "2.11.0", "sizes": {}, "seconds": 60.0,
            "concurrency": list(settings)}


def test_two_calls_without_and_with_mps_merge_into_the_gpus_committed_file(tmp_path):
    committed = tmp_path / "bench-results"
    without = setting(False, {1: 40_000.0, 2: 70_000.0, 4: 100_000.0, 8: 95_000.0})
    write_gpu_perf(measured("NVIDIA H200", without), tmp_path / "call1", committed)
    with_mps = setting(True, {1: 40_000.0, 4: 120_000.0, 8: 150_000.0, 16: 140_000.0})
    perf = write_gpu_perf(measured("NVIDIA H200", with_mps), tmp_path / "call2", committed)
    file = read_measurement(committed / "perf-cuda-concurrency-h200.json")
    assert file["gpu"] == "NVIDIA H200" and file["concurrency"] == [without, with_mps] == perf["concurrency"]
    assert json.loads((tmp_path / "call2" / "perf-cuda.json").read_text())["concurrency"] == [without, with_mps]
    assert concurrency_verdict(perf["concurrency"]) == ("concurrency: faster with MPS (8 at once, 150,000 img/s; "
                                                        "without: 4 at once, 100,000 img/s)")
    md = (tmp_path / "call2" / "perf-cuda.md").read_text()
    assert "| 4 runs at once, without MPS: aggregate train img/s | 100,000 | 2.50x one run |" in md
    assert "| 8 runs at once, with MPS: aggregate train img/s | 150,000 | 3.75x one run |" in md
    assert "| faster setting (the replay keeps it) | with MPS, 8 at once | - |" in md
    # measured again without MPS: that setting is replaced, the MPS one kept
    again = setting(False, {1: 45_000.0, 2: 90_000.0})
    write_gpu_perf(measured("NVIDIA H200", again), tmp_path / "call3", committed)
    assert read_measurement(committed / "perf-cuda-concurrency-h200.json")["concurrency"] == [again, with_mps]


def test_a_measurement_off_the_gpu_is_not_committed(tmp_path):
    perf = {**measured(None, setting(False, {1: 100.0, 2: 150.0})), "device": "cpu"}
    write_gpu_perf(perf, tmp_path / "out", tmp_path / "committed")
    assert not (tmp_path / "committed").exists() and (tmp_path / "out" / "perf-cuda.json").exists()
    assert concurrency_verdict(perf["concurrency"]) == "concurrency: without MPS only: 2 at once, 150 img/s"


def test_a_quick_measurement_on_a_gpu_is_not_committed(tmp_path):
    perf = measured("NVIDIA H200", setting(False, {1: 900.0, 2: 1_500.0}))  # toy sizes (--quick) on a real GPU
    assert write_gpu_perf(perf, tmp_path / "out", tmp_path / "committed", merge=False) == perf
    assert not (tmp_path / "committed").exists() and (tmp_path / "out" / "perf-cuda.json").exists()


def test_a_failing_compile_step_side_keeps_the_speed_measurement(tmp_path, monkeypatch):
    import bench.perf

    torch.set_num_threads(1)
    monkeypatch.setenv("TRICKS_CACHE", str(tmp_path / "cache"))
    folder = write_toy_folder(tmp_path / "toy", n_train=32, n_test=16)
    data = load_dataset("folder", str(folder))
    real, tried = bench.perf.recipe_fit, []

    def recipe_fit(recipe, data):
        tried.append(recipe.compile_step)
        if recipe.compile_step:
            raise RuntimeError("CUDA graph capture\nfailed")
        return real(recipe, data)

    monkeypatch.setattr(bench.perf, "recipe_fit", recipe_fit)
    lines = []
    sizes = GpuSizes(epochs=2, repeats=2, dataset="folder", bs=16)
    perf = run_gpu_perf(data, str(folder), device="cpu", only=("speed",), sizes=sizes, log=lines.append)
    s = perf["speed"]
    assert tried == [None, True, None]  # (None: auto) the failed side is not tried again in the second repeat
    assert len(s["recipe"]) == len(s["plain"]) == 2 and s["ratio"] > 0 and s["compile_step"] == []
    assert s["compile_step_ratio"] is None and s["compile_step_error"] == "RuntimeError: CUDA graph capture failed"
    assert "speed: compile_step on / off: not measured (RuntimeError: CUDA graph capture failed)" in lines
    assert "| `recipe run` with `--compile-step` | failed: RuntimeError: CUDA graph capture failed | - |" in markdown(perf)


def test_replay_takes_its_runs_at_once_from_the_committed_measurement_of_its_gpu():
    files = {"perf-cuda-concurrency-h200.json": measured("NVIDIA H200", setting(False, {1: 4e4, 4: 1e5, 8: 9.5e4}),
                                                         setting(True, {1: 4e4, 8: 1.5e5, 16: 1.4e5})),
             "perf-cuda-concurrency-h100-80gb-hbm3.json": measured("NVIDIA H100 80GB HBM3",
                                                                   setting(True, {2: 6e4, 4: 8e4}))}
    assert measured_workers("NVIDIA H200", True, files) == (
        8, "the fastest count in perf-cuda-concurrency-h200.json, with MPS: 150,000 img/s")
    assert measured_workers("NVIDIA H200", False, files) == (  # no daemon: only the setting without MPS counts
        4, "the fastest count in perf-cuda-concurrency-h200.json, without MPS: 100,000 img/s")
    assert measured_workers("NVIDIA H100 80GB HBM3", True, files)[0] == 4
    assert measured_workers("NVIDIA H100 80GB HBM3", False, files) == (
        CUDA_WORKERS, "CUDA_WORKERS: perf-cuda-concurrency-h100-80gb-hbm3.json measured it with MPS only, and no MPS "
                      "daemon is running")
    assert measured_workers("NVIDIA A100-SXM4-40GB", False, files) == (
        CUDA_WORKERS, "CUDA_WORKERS: no committed concurrency measurement names 'NVIDIA A100-SXM4-40GB'")
    unreadable = {"perf-cuda-concurrency-h200.json": None}  # read_measurement of a file that is not JSON
    assert measured_workers("NVIDIA H200", False, unreadable)[0] == CUDA_WORKERS
    assert worker_choice("cpu") == (1, None)  # one run at a time on the CPU: it uses every core already


def test_a_count_of_runs_at_once_starts_only_while_twice_the_last_counts_time_fits():
    assert next_count_fits(None, 1.0)  # the first count always starts
    assert next_count_fits(30.0, None)  # no deadline
    assert next_count_fits(30.0, 60.0) and not next_count_fits(30.0, 59.9)


def test_bench_perf_quick_measures_the_concurrency_on_the_cpu_and_keeps_what_fit_before_until(tmp_path, monkeypatch,
                                                                                               capsys):
    monkeypatch.setenv("TRICKS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = tmp_path / "cifar-10-batches-py"
    write_cifar10(data, per_batch=14, n_test=70)
    rc = main(["perf", "--device", "cpu", "--quick", "--only", "concurrency", "--until", "1", "--data", str(data),
               "--results", str(tmp_path / "perf")])
    assert rc == 0
    perf = json.loads((tmp_path / "perf" / "perf-cuda.json").read_text())
    [setting] = perf["concurrency"]  # --quick: 1 and 2 at once; one at once takes more than half a second
    assert set(setting["runs"]) == {"1"} and setting["not_measured"] == [2] and setting["best_processes"] == 1
    out = capsys.readouterr().out
    assert re.search(r"concurrency 2 at once: not measured, -?[0-9]+ s left and 1 at once took [0-9]+ s", out)
    assert "| 2 runs at once, without MPS | not measured (too little time left) | - |" in out
    assert "concurrency: without MPS only: 1 at once, " in out
