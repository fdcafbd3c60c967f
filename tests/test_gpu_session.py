"""`bench/gpu_session.sh` dry-run on the CPU at the smoke budget (issue 18 section 5): the GPU slice's own script,
its stages on a tiny CIFAR-10 folder, with the lines it logs and the files it leaves checked."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from fixtures import write_cifar10

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "bench" / "results"


def session(tmp_path: Path, seconds: int, stages: str, *args: str,
            **env: str) -> tuple[subprocess.CompletedProcess, str]:
    """`bash bench/gpu_session.sh SECONDS STAGES ARGS...` with BUDGET=smoke DEVICE=cpu WHEELS=none on a tiny
    cifar-10-batches-py folder (70 + 70 images), every path in `tmp_path`, no GPU visible; (process, session.log)."""
    data = tmp_path / "cifar-10-batches-py"
    if not data.exists():
        write_cifar10(data, per_batch=14, n_test=70)
    settings = {"BUDGET": "smoke", "DEVICE": "cpu", "WHEELS": "none", "PY": sys.executable, "DATA": str(data),
                "OUT": str(tmp_path / "out"), "RESULTS": str(tmp_path / "results"), "MPS_DIR": str(tmp_path / "mps"),
                "TRICKS_CACHE": str(tmp_path / "cache"), "MPS_CONTROL": "no-such-mps-control",
                "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run(["bash", "bench/gpu_session.sh", str(seconds), stages, *args], cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, **settings}, timeout=300)
    return proc, (tmp_path / "out" / "session.log").read_text()


def test_the_gpu_slice_dry_runs_on_the_cpu_at_the_smoke_budget(tmp_path):
    committed_before = sorted(COMMITTED.iterdir())
    proc, log = session(tmp_path, 400, "setup,concurrency,syncdebug,replay,decide", "S9.baseline", "1",
                        "S9.mixup-helps")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    # setup: no nvidia-smi is no failure; the data decoded once
    assert re.search(r"\] setup: .+\n", log) and re.search(r"cuda False, .*\(70\+70 images, [0-9.]+ s\)", log)
    # concurrency: the GPU measurement's own code at toy sizes (`bench perf --quick`), with the time it may take
    perf = json.loads((out / "perf-cuda-concurrency.json").read_text())
    assert perf["device"] == "cpu" and perf["gpu"] is None and perf["sizes"]["bs"] == 16
    [setting] = perf["concurrency"]
    assert setting["mps"] is False and set(setting["runs"]) == {"1", "2"} and setting["not_measured"] == []
    assert setting["best_processes"] in (1, 2)
    assert f"concurrency: without MPS only: {setting['best_processes']} at once" in log
    # no MPS daemon: one line, and the concurrency is measured once
    assert "mps: cannot start: no no-such-mps-control on this machine; runs at once time-slice the GPU" in log
    assert log.count("] perf: concurrency") == 1
    # the sync-debug stage needs CUDA: one line
    assert "syncdebug: skipped: no CUDA GPU here (torch.cuda.is_available() is False)" in log
    # the replay picks its runs at once itself (one on the CPU) and trains the row
    replay = (out / "replay.log").read_text().splitlines()
    assert replay[0].startswith("1 runs to do (0 done before, 0 inexpressible skipped), budget smoke, code ")
    assert "at once" not in replay[0]
    assert re.search(r"^\[1/1\] S9\.baseline seed 0: test_acc [0-9.]+ \([0-9]+ s\)$", "\n".join(replay), re.M)
    # decide: the conclusion's rows get their seeds, a verdict table
    assert "| S9.mixup-helps | mixup helps | better than S9.baseline |" in (out / "decide.md").read_text()
    assert re.search(r"\] done; [0-9]+ lines in bench/results/full.jsonl$", log.strip())
    # a dry run commits nothing: no concurrency file for a GPU, no full-budget line
    assert sorted(COMMITTED.iterdir()) == committed_before and not list(out.glob("perf-cuda-concurrency-*.json"))


FAKE_MPS_CONTROL = """#!/usr/bin/env bash
# a stand-in for nvidia-cuda-mps-control: -d makes the control pipe, 'quit' on stdin removes it
if [ "$1" = -d ]; then
  echo "-d $CUDA_MPS_PIPE_DIRECTORY" >> "$CALLS"; mkfifo "$CUDA_MPS_PIPE_DIRECTORY/control"; exit 0
fi
read -r command; echo "$command" >> "$CALLS"
[ "$command" = quit ] && rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"
"""


def test_the_concurrency_runs_again_under_an_mps_daemon_stopped_unless_faster(tmp_path):
    fake = tmp_path / "fake-mps-control"
    fake.write_text(FAKE_MPS_CONTROL)
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    proc, log = session(tmp_path, 400, "concurrency", MPS_CONTROL=str(fake), CALLS=str(calls))
    assert proc.returncode == 0, proc.stderr
    pipes = tmp_path / "mps" / "pipe"
    assert calls.read_text().splitlines() == [f"-d {pipes}", "quit"]
    assert f"mps: daemon started (pipes in {pipes})" in log and "perf: concurrency with MPS" in log
    # the second measurement ran as the daemon's clients would: it records MPS
    [setting] = json.loads((tmp_path / "out" / "perf-cuda-concurrency.json").read_text())["concurrency"]
    assert setting["mps"] is True
    # off a GPU nothing is merged, so no 'faster with MPS' verdict: the daemon is stopped before the replay
    assert "concurrency: with MPS only: " in log and "mps: daemon stopped (no measurement says it is faster)" in log
    assert not (pipes / "control").exists()
    # a daemon an earlier call left running (that call killed): stopped before anything runs
    os.mkfifo(pipes / "control")
    proc, log = session(tmp_path, 30, "syncdebug", MPS_CONTROL=str(fake), CALLS=str(calls))
    assert proc.returncode == 0, proc.stderr
    assert calls.read_text().splitlines() == [f"-d {pipes}", "quit", "quit"] and not (pipes / "control").exists()
    assert "mps: the daemon an earlier call left running is stopped (this call measures without it first)" in log
