"""One Inductor cache for the bench's processes (issue 18 section 4): the second process of the same compiled
recipe compiles from the first's cache, read on the caches' own counters; the replay's workers see the cache."""
from __future__ import annotations

import json
import os

import pytest

import bench.compile_cache
from bench import replay
from bench.cli import main
from bench.compile_cache import CACHE_DIR, CompileSizes, shared_compile_cache, shared_env

TINY = CompileSizes(model="tiny", steps=4, bs=8, control=False)  # two processes: about 25 s on 2 loaded cores
NAMES = (CACHE_DIR, "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE")


def test_the_second_process_compiles_from_the_firsts_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench.compile_cache, "QUICK", TINY)
    before = {name: os.environ.get(name) for name in NAMES}
    assert main(["perf", "--compile-cache", "--quick", "--device", "cpu", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "r" / "compile-cache.json").read_text())
    first, second = result["processes"]["first"], result["processes"]["second"]
    assert set(result["processes"]) == {"first", "second"}  # no control asked for
    assert first["cache_dir"] == second["cache_dir"] and first["steps"] == second["steps"] == TINY.steps
    fx, aot = first["counters"]["inductor"], first["counters"]["aot_autograd"]
    assert fx["fxgraph_cache_hit"] == aot["autograd_cache_hit"] == 0  # an empty cache: everything compiled
    assert fx["fxgraph_cache_miss"] >= 2 and aot["autograd_cache_miss"] >= 1  # the forward and the backward
    # every graph the first compiled, the second read from the cache, and compiled none
    assert second["counters"] == {"inductor": {"fxgraph_cache_hit": fx["fxgraph_cache_miss"], "fxgraph_cache_miss": 0},
                                  "aot_autograd": {"autograd_cache_hit": aot["autograd_cache_miss"],
                                                   "autograd_cache_miss": 0}}
    assert 0 < second["compile_seconds"] < first["compile_seconds"]
    assert result["ratio"] == second["compile_seconds"] / first["compile_seconds"]
    assert f"ratio = second / first compile seconds = {result['ratio']:.3f}" in out.splitlines()
    assert f"| second | shared, after the first | {second['compile_seconds']:.2f} |" in out
    assert {name: os.environ.get(name) for name in NAMES} == before  # the children's settings stayed theirs


def environment_of(job):
    """In place of `bench.job._attempt` in a replay worker: the cache variables that worker sees, as its error."""
    return job, None, json.dumps({name: os.environ.get(name) for name in NAMES})


@pytest.fixture
def no_cache_settings(monkeypatch, tmp_path):
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRICKS_CACHE", str(tmp_path / "tricks-cache"))


def test_the_replays_workers_share_one_cache_under_tricks_cache(no_cache_settings, tmp_path, monkeypatch):
    monkeypatch.setattr(replay, "_attempt", environment_of)
    outcomes = list(replay._outcomes(["job-a", "job-b"], 2, None, {"not_started": 0}, predict=False))
    assert sorted(job for job, _, _ in outcomes) == ["job-a", "job-b"]
    expected = {CACHE_DIR: str(tmp_path / "tricks-cache" / "inductor"), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
                "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}
    assert [json.loads(seen) for _, _, seen in outcomes] == [expected, expected]
    assert (tmp_path / "tricks-cache" / "inductor").is_dir()
    assert not any(name in os.environ for name in NAMES)  # taken away again once the replay is done


def test_a_users_own_settings_win(no_cache_settings, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR, str(tmp_path / "mine"))
    monkeypatch.setenv("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
    assert shared_env(os.environ) == {"TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}
    with shared_compile_cache() as folder:
        assert folder == tmp_path / "mine" and folder.is_dir()
        assert {name: os.environ[name] for name in NAMES} == {
            CACHE_DIR: str(tmp_path / "mine"), "TORCHINDUCTOR_FX_GRAPH_CACHE": "0", "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}
    assert os.environ[CACHE_DIR] == str(tmp_path / "mine") and "TORCHINDUCTOR_AUTOGRAD_CACHE" not in os.environ


def test_without_tricks_cache_the_cache_is_under_the_users_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("TRICKS_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert shared_env({}) == {CACHE_DIR: str(tmp_path / ".cache" / "fastai-tricks" / "inductor"),
                              "TORCHINDUCTOR_FX_GRAPH_CACHE": "1", "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}
    assert shared_env({}, tmp_path / "given")[CACHE_DIR] == str(tmp_path / "given")


def test_a_process_that_fails_is_one_line_naming_its_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench.compile_cache, "QUICK", CompileSizes(model="resnet-none", steps=3, bs=8, control=False))
    assert main(["perf", "--compile-cache", "--quick", "--device", "cpu", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error: the compile-cache process exited with code 1: "
                                               "tricks.errors.ConfigError: unknown model 'resnet-none'; did you mean")
    assert list((tmp_path / "r").iterdir()) == []  # no compile-cache.json of a measurement that did not finish
