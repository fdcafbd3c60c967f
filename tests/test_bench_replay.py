"""Replay: a killed replay resumes without redoing finished runs; the pool stores every run once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.job import job_folder
from bench.replay import replay
from bench.store import Store, code_version
from bench.table import Row
from fixtures import row, write_cifar10, write_cifar100

TESTS = Path(__file__).resolve().parent


def kill_rows() -> list[Row]:
    return [row("S1.a"), row("S1.b", "baseline+mixup:alpha=0.3"), row("S1.c", "baseline+lsmooth"),
            row("S1.d", "baseline+refine:gens=1", kind="generations"), row("S1.e", "baseline+onehot"),
            row("S1.f", "baseline+finalbn", epochs=100, warmup_epochs=5), row("S1.x", status="inexpressible")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tiny(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, per_batch=14, n_test=70)  # 7 a class: smoke takes 64 of each split
    return folder


def keys(results: Path) -> list[tuple[str, int]]:
    return sorted((r["row_id"], r["seed"]) for r in Store(results).records())


def start_replay(results: Path, data: Path, workers: int = 1) -> subprocess.Popen:
    code = (f"import json, sys; sys.path.insert(0, {str(TESTS)!r}); import test_bench_replay as t; "
            "from bench.replay import replay; "
            f"print(json.dumps(replay(t.kill_rows(), budget='smoke', seeds=1, workers={workers}, "
            f"results_dir={str(results)!r}, data={str(data)!r}, device='cpu')))")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_killed_replay_resumes_and_redoes_nothing_it_finished(tmp_path, tiny):
    results = tmp_path / "results"
    proc = start_replay(results, tiny)
    deadline, stored = time.monotonic() + 120, []
    while time.monotonic() < deadline and proc.poll() is None:
        if (results / "results.sqlite").exists():
            stored = keys(results)
            if stored:
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"the replay ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    stored = keys(results)
    assert 1 <= len(stored) < 6
    again = start_replay(results, tiny)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    counts = json.loads(out.strip().splitlines()[-1])
    assert counts == {"done_before": len(stored), "ran": 6 - len(stored), "skipped_inexpressible": 1, "failed": 0, "abandoned": 0, "not_started": 0}
    records = Store(results).records()
    assert sorted((r["row_id"], r["seed"]) for r in records) == [(f"S1.{c}", 0) for c in "abcdef"]
    assert {r["code_version"] for r in records} == {code_version()}
    options = '{"epochs": 100, "warmup_epochs": 5}'
    assert [r["recipe"] for r in records if r["row_id"] == "S1.f"] == [f"baseline+finalbn {options}"]
    folders = sorted(p.name for p in (results / "runs").iterdir())
    assert folders == sorted(job_folder(results, f"S1.{c}", "smoke", 0, code_version()).name for c in "abcdef")
    refine = next(r for r in records if r["row_id"] == "S1.d")
    assert len(refine["generation_acc"]) == 2 and refine["test_acc"] == refine["generation_acc"][-1]
    assert refine["epoch_acc"][-1] == refine["test_acc"]
    assert all(len(r["epoch_acc"]) >= 1 and r["epoch_acc"][-1] == r["test_acc"] for r in records)


def test_replay_in_process_counts_failures_and_redoes_a_stale_run_folder(tmp_path, tiny):
    results = tmp_path / "results"
    rows = [row("S2.a"), row("S2.bad", "baseline+mixup:alpha=-1"), row("S2.x", status="inexpressible")]
    stale = job_folder(results, "S2.a", "smoke", 1, code_version())
    stale.mkdir(parents=True)
    (stale / "metrics.csv").write_text("left by a killed run\n")
    lines: list[str] = []
    counts = replay(rows, budget="smoke", seeds=2, workers=1, results_dir=results, data=str(tiny), device="cpu",
                    progress=lines.append)
    assert counts == {"done_before": 0, "ran": 2, "skipped_inexpressible": 2, "failed": 2, "abandoned": 0, "not_started": 0}
    assert keys(results) == [("S2.a", 0), ("S2.a", 1)]
    assert "metrics.csv" in os.listdir(stale) and "left by" not in (stale / "metrics.csv").read_text()
    assert lines[0].startswith("4 runs to do (0 done before, 2 inexpressible skipped), budget smoke")
    assert sum(": failed: " in line and "S2.bad" in line for line in lines) == 2
    again = replay(rows, budget="smoke", seeds=2, workers=1, results_dir=results, data=str(tiny), device="cpu")
    assert again == {"done_before": 2, "ran": 0, "skipped_inexpressible": 2, "failed": 2, "abandoned": 0, "not_started": 0}


def test_replay_with_two_workers_stores_every_run_once(tmp_path, tiny, monkeypatch):
    results = tmp_path / "results"
    write_cifar100(tmp_path / "shelf" / "cifar100", n_train=100, n_test=100)
    monkeypatch.setenv("TRICKS_DATA", str(tmp_path / "shelf"))  # where a row naming its own dataset finds it
    rows = [row("S3.a"), row("S3.b", "baseline+onehot"), row("S3.c100", dataset="cifar100")]
    counts = replay(rows, budget="smoke", seeds=1, workers=2, results_dir=results, data=str(tiny), device="cpu")
    assert counts == {"done_before": 0, "ran": 3, "skipped_inexpressible": 0, "failed": 0, "abandoned": 0, "not_started": 0}
    assert keys(results) == [("S3.a", 0), ("S3.b", 0), ("S3.c100", 0)]
    checksums = {r["row_id"]: r["dataset_checksum"] for r in Store(results).records()}
    assert checksums["S3.a"] == checksums["S3.b"] != checksums["S3.c100"]
    config = json.loads((job_folder(results, "S3.c100", "smoke", 0, code_version()) / "config.json").read_text())
    assert config["num_classes"] == 100


def test_priority_puts_the_argued_s9_rows_first_then_sections_downwards():
    from bench.replay import PRIORITY, priority

    rows = [row("S1.a"), row("S10.a"), row("S9.x"), row("S8.a"), row("S9.lastgamma.off"), row("S9.baseline"),
            row("S2.a"), row("S9.y"), row("S8.b")]
    assert [r.id for r in priority(rows)] == ["S9.baseline", "S9.lastgamma.off", "S9.x", "S9.y", "S8.a", "S8.b",
                                              "S2.a", "S1.a", "S10.a"]
    assert PRIORITY[:4] == ("S9.baseline", "S9.mixup.a0.3", "S9.finalbn", "S9.lastgamma.off")


def test_until_abandons_at_the_deadline_and_the_next_replay_resumes_into_the_results_file(tmp_path, tiny,
                                                                                          monkeypatch):
    import bench.job
    from bench import results_file

    calls = []

    def clock():  # the deadline is set (1), the first job may start (2), then its first epoch ends past it (3, ...)
        calls.append(1)
        return time.time() + (0 if len(calls) <= 2 else 10_000)

    monkeypatch.setattr(bench.job, "_now", clock)
    results, path = tmp_path / "results", tmp_path / "full.jsonl"
    short = dict(epochs=3, warmup_epochs=1, subset=64, test_subset=64)
    rows = [row("S9.baseline", **short), row("S9.finalbn", "baseline+finalbn", **short)]
    lines: list[str] = []
    counts = replay(rows, budget="full", seeds=1, workers=1, results_dir=results, data=str(tiny), device="cpu",
                    until=600, results_path=path, progress=lines.append)
    monkeypatch.undo()
    # the first job starts (nothing predicts it yet), stops after its first epoch; the deadline has passed for the next
    assert counts == {"done_before": 0, "ran": 0, "skipped_inexpressible": 0, "failed": 0, "abandoned": 1,
                      "not_started": 1}
    assert any("S9.baseline seed 0: abandoned: stopped at the deadline after epoch 1 of 3" in line for line in lines)
    folder = job_folder(results, "S9.baseline", "full", 0, code_version())
    assert (folder / "checkpoint.pth").exists() and not (folder / "model.pth").exists()
    assert not path.exists() and keys(results) == []
    counts = replay(rows, budget="full", seeds=1, workers=1, results_dir=results, data=str(tiny), device="cpu",
                    results_path=path)
    assert counts == {"done_before": 0, "ran": 2, "skipped_inexpressible": 0, "failed": 0, "abandoned": 0,
                      "not_started": 0}
    records = results_file.read(path)
    assert [(r["row_id"], r["resumed"], r["epochs"], r["workers"], r["gpu"]) for r in records] == [
        ("S9.baseline", True, 3, 1, None), ("S9.finalbn", False, 3, 1, None)]
    assert all(r["budget"] == "full" and r["code_version"] == code_version() and r["device"] == "cpu" for r in records)
    assert records[0]["speed"] == {"channels_last": True, "precision": "fp32", "compile": False,
                                   "compile_mode": "default", "compile_step": False, "eval_bs": 1000}
    # a run in the results file trained on this data counts as done, also with a fresh results folder
    again = replay(rows, budget="full", seeds=1, workers=1, results_dir=tmp_path / "fresh", data=str(tiny),
                   device="cpu", results_path=path)
    assert again["done_before"] == 2 and again["ran"] == 0
    # ... but not when the data differ (another checksum)
    other = tmp_path / "other" / "cifar-10-batches-py"
    write_cifar10(other, per_batch=14, n_test=70, seed=1)
    assert replay(rows[:1], budget="full", seeds=1, workers=1, results_dir=tmp_path / "fresh2", data=str(other),
                  device="cpu", results_path=path)["ran"] == 1


@pytest.mark.parametrize("until, shown", [(-1, "-1"), (float("nan"), "nan"), (float("inf"), "inf")])
def test_until_must_be_positive_and_finite(tmp_path, tiny, until, shown):
    from tricks.errors import ConfigError

    with pytest.raises(ConfigError, match=f"--until must be a positive number of seconds, got {shown}$"):
        replay([row("S1.a")], budget="smoke", seeds=1, workers=1, results_dir=tmp_path / "r", data=str(tiny),
               device="cpu", until=until)
    assert not (tmp_path / "r").exists()


def test_a_full_disk_stops_the_replay_instead_of_failing_each_job(tmp_path, tiny, monkeypatch):
    from bench import job as job_module
    from tricks.errors import DiskFullError

    def full(job):
        raise DiskFullError("no space left on device to write 'x/model.pth'")

    monkeypatch.setattr(job_module, "run_job", full)
    with pytest.raises(DiskFullError, match="no space left on device to write 'x/model.pth'"):
        replay([row("S1.a"), row("S1.b", "baseline+mixup:alpha=0.3")], budget="smoke", seeds=1, workers=1,
               results_dir=tmp_path / "r", data=str(tiny), device="cpu")


def test_other_data_trains_again_on_a_results_folder_and_the_report_never_mixes_them(tmp_path, tiny):
    from bench.report import write_report

    results = tmp_path / "results"
    rows = [row("S1.a")]
    assert replay(rows, budget="smoke", seeds=1, workers=1, results_dir=results, data=str(tiny), device="cpu")["ran"] == 1
    other = tmp_path / "other" / "cifar-10-batches-py"
    write_cifar10(other, per_batch=14, n_test=70, seed=3)
    again = replay(rows, budget="smoke", seeds=1, workers=1, results_dir=results, data=str(other), device="cpu")
    assert again["ran"] == 1 and again["done_before"] == 0
    records = Store(results).records()
    assert len(records) == 2 and len({r["dataset_checksum"] for r in records}) == 2
    report = write_report(results, rows, [], budget="smoke", results_file=tmp_path / "absent.jsonl").read_text()
    newest = records[-1]
    assert f"data {newest['dataset_checksum']}." in report and "1 runs;" in report
    assert f"Left out: 1 smoke-budget runs trained on other data ({records[0]['dataset_checksum']})" in report
    # the same data as before is done now
    assert replay(rows, budget="smoke", seeds=1, workers=1, results_dir=results, data=str(tiny),
                  device="cpu")["done_before"] == 1
