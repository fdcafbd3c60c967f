"""`bench replay --ray`: the jobs run as tasks of a real local Ray head on 127.0.0.1 and land in the store once."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from fixtures import row, write_cifar10

from bench.cli import main
from bench.job import job_folder
from bench.replay import replay
from bench.store import Store, code_version

RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with 2 CPUs (its temp folder short: Ray's socket paths must stay under 108 bytes)."""
    port, temp = free_port(), tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=180)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_replay_over_a_local_ray_head_stores_every_run_once(tmp_path, ray_head):
    data = tmp_path / "cifar-10-batches-py"
    write_cifar10(data, per_batch=14, n_test=70)
    rows = [row("S1.a"), row("S1.b", "baseline+mixup:alpha=0.3"), row("S1.c", "baseline+refine:gens=1",
                                                                        kind="generations"),
            row("S1.bad", "baseline+mixup:alpha=-1"), row("S1.x", status="inexpressible")]
    results = tmp_path / "results"
    counts = replay(rows, budget="smoke", seeds=2, workers=1, results_dir=results, data=str(data), device="cpu",
                    ray_address=ray_head)
    assert counts == {"done_before": 0, "ran": 6, "skipped_inexpressible": 2, "failed": 2, "abandoned": 0, "not_started": 0}
    records = Store(results).records()
    assert sorted((r["row_id"], r["seed"]) for r in records) == [(f"S1.{c}", s) for c in "abc" for s in (0, 1)]
    assert {r["code_version"] for r in records} == {code_version()}
    for r in records:  # the run folder came back from the task's node, whole
        out = job_folder(results, r["row_id"], "smoke", r["seed"], code_version())
        assert (out / "result.json").is_file() and (out / "config.json").is_file()
        if r["row_id"] == "S1.c":
            assert len(r["generation_acc"]) == 2 and (out / "gen1" / "model.pth").is_file()
        else:
            assert (out / "model.pth").is_file() and (out / "metrics.csv").is_file()
    again = replay(rows, budget="smoke", seeds=2, workers=1, results_dir=results, data=str(data), device="cpu",
                   ray_address=ray_head)
    assert again == {"done_before": 6, "ran": 0, "skipped_inexpressible": 2, "failed": 2, "abandoned": 0, "not_started": 0}
    assert len(Store(results).records()) == 6


def test_an_address_without_a_ray_head_is_one_line_exit_2(tmp_path, capsys):
    port = free_port()  # nothing listens there
    rc = main(["replay", "--rows", "S9.baseline", "--budget", "smoke", "--results", str(tmp_path / "r"),
               "--ray", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"bench: error: no Ray head answers at '127.0.0.1:{port}'") and "ray start --head" in err
    assert main(["replay", "--budget", "smoke", "--results", str(tmp_path / "r"), "--ray", "head-node"]) == 2
    assert "is not an address; give the Ray head's HOST:PORT" in capsys.readouterr().err
    assert Store(tmp_path / "r").records() == []
