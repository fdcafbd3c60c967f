"""`bench perf --device cuda`'s measurements, run on the CPU at toy sizes: the same code the GPU runs."""
from __future__ import annotations

import pytest
import torch
from fixtures import write_toy_folder

from bench.gpu_perf import GpuSizes, _steady, markdown, run_gpu_perf
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
    c = perf["concurrency"]["runs"]
    assert set(c) == {"2"} and c["2"]["aggregate_images_per_second"] > 0
    p = perf["parity"]
    assert len(p["bf16_test_acc"]) == len(p["fp32_test_acc"]) == 1 and p["interval95"] is None
    assert p["difference"] == 0.0  # fp32 against fp32, same seeds, deterministic on the CPU
    md = markdown(perf)
    assert "recipe / plain loop" in md and "2 runs at once" in md


def test_a_failing_measuring_process_is_one_line_not_a_hang(tmp_path, monkeypatch):
    from bench.gpu_perf import parity
    from tricks.errors import TrainingError

    monkeypatch.setenv("TRICKS_CACHE", str(tmp_path / "cache"))
    folder = write_toy_folder(tmp_path / "toy", n_train=32, n_test=16)
    sizes = GpuSizes(parity_epochs=1, parity_seeds=1, dataset="folder", bs=16)  # bf16 on the CPU is refused
    with pytest.raises(TrainingError, match=r"a measuring process failed: ConfigError: precision=bf16 autocasts"):
        parity(("folder", str(folder)), sizes, "cpu", print)
