"""The results store: records round-trip, concurrent writers lose and double nothing, SIGKILL leaves it whole."""
from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time

import pytest

from bench.store import COLUMNS, Store, code_version, dataset_checksum, short_version, source_hash
from fixtures import toy_data, write_cifar10
from tricks.errors import ConfigError, RunFolderError


def record(row_id: str = "S9.baseline", seed: int = 0, budget: str = "smoke", version: str = "0.1.0+abc",
           acc: float = 90.0, generations: list[float] | None = None, recipe: str = "baseline") -> dict:
    return {"row_id": row_id, "recipe": recipe, "budget": budget, "seed": seed, "code_version": version,
            "dataset_checksum": "d" * 24, "epoch_acc": [acc - 1.5, acc], "test_acc": acc, "best_test_acc": acc,
            "generation_acc": generations, "wall_seconds": 1.25, "finished_at": "2024-01-01T00:00:00+00:00"}


def test_add_done_records_round_trip(tmp_path):
    store = Store(tmp_path / "results")
    assert (tmp_path / "results" / "results.sqlite").is_file() and store.records() == []
    assert not store.done("S9.baseline", "baseline", "smoke", 0, "0.1.0+abc")
    store.add(record())
    store.add(record(row_id="S9.best", budget="short", acc=93.5, generations=[91.0, 92.25, 93.5]))
    store.add(record(acc=50.0))  # same key: ignored, the first stays
    assert store.done("S9.baseline", "baseline", "smoke", 0, "0.1.0+abc")
    assert not store.done("S9.baseline", "baseline", "smoke", 1, "0.1.0+abc")
    assert not store.done("S9.baseline", "baseline", "smoke", 0, "0.1.0+other")
    assert not store.done("S9.baseline", "baseline", "short", 0, "0.1.0+abc")
    assert store.records() == [record(), record(row_id="S9.best", budget="short", acc=93.5,
                                                generations=[91.0, 92.25, 93.5])]
    assert [r["row_id"] for r in store.records("short")] == ["S9.best"]
    assert Store(tmp_path / "results").records("smoke") == [record()]  # a second Store sees the same file
    with sqlite3.connect(tmp_path / "results" / "results.sqlite") as con:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_add_refuses_a_record_with_missing_or_unknown_keys(tmp_path):
    store = Store(tmp_path)
    bad = record()
    del bad["test_acc"]
    with pytest.raises(ConfigError, match="missing: test_acc, unknown: none"):
        store.add(bad)
    with pytest.raises(ConfigError, match="unknown: colour"):
        store.add({**record(), "colour": "red"})
    assert store.records() == []


def test_a_file_that_is_not_a_database_is_one_line_run_folder_error(tmp_path):
    (tmp_path / "results.sqlite").write_bytes(b"not a database at all " * 100)
    with pytest.raises(RunFolderError, match="results database .* move it aside") as e:
        Store(tmp_path)
    assert "\n" not in str(e.value)


def _writer(results_dir, worker: int, n: int, start) -> None:
    store = Store(results_dir)
    start.wait()
    for i in range(n):
        store.add(record(row_id=f"w{worker}.{i}", seed=i))
        store.add(record(row_id=f"shared.{i}", seed=i))  # every worker writes these too


def test_concurrent_writers_lose_no_row_and_store_none_twice(tmp_path):
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(tmp_path, w, 25, start)) for w in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    keys = [(r["row_id"], r["seed"]) for r in Store(tmp_path).records()]
    expected = {(f"w{w}.{i}", i) for w in range(4) for i in range(25)} | {(f"shared.{i}", i) for i in range(25)}
    assert len(keys) == len(set(keys)) == 125 and set(keys) == expected


def _endless_writer(results_dir, conn) -> None:
    store = Store(results_dir)
    for i in range(10**9):
        store.add(record(row_id=f"r{i}", seed=i))
        conn.send(i)  # sent only after the commit


def test_a_writer_killed_mid_way_leaves_a_readable_database_with_every_committed_row(tmp_path):
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_endless_writer, args=(tmp_path, send))
    proc.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (recv.poll(0.05) and recv.recv() >= 30):
        pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    committed = []
    while recv.poll(0):
        committed.append(recv.recv())
    with sqlite3.connect(tmp_path / "results.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = {r["row_id"] for r in Store(tmp_path).records()}
    assert len(stored) >= 30 and {f"r{i}" for i in committed} <= stored
    assert stored == {f"r{i}" for i in range(len(stored))}  # one at a time, in order: no gaps


def test_code_version_hashes_sorted_sources_and_changes_with_them(tmp_path):
    version = code_version()
    assert version.count("+") == 1 and len(version.split("+")[1]) == 12 and version == code_version()
    assert short_version(version) == version.split("+")[1][:8]
    for pkg in ("tricks", "recipes", "bench"):
        (tmp_path / pkg / "sub").mkdir(parents=True)
        (tmp_path / pkg / "a.py").write_text(f"A = '{pkg}'\n")
    (tmp_path / "tricks" / "sub" / "b.py").write_text("B = 1\n")
    (tmp_path / "bench" / "budgets.py").write_text("T = 1\n")
    (tmp_path / "tricks" / "notes.txt").write_text("not source")
    before = source_hash(tmp_path)
    (tmp_path / "tricks" / "notes.txt").write_text("still not source")
    (tmp_path / "tricks" / "__pycache__").mkdir()
    (tmp_path / "tricks" / "__pycache__" / "a.py").write_text("cache")
    (tmp_path / "bench" / "a.py").write_text("A = 'report, CLI: no number changes'\n")
    assert source_hash(tmp_path) == before
    (tmp_path / "tricks" / "sub" / "b.py").write_text("B = 2\n")
    changed = source_hash(tmp_path)
    assert changed != before
    (tmp_path / "bench" / "budgets.py").write_text("T = 2\n")  # budgets decide what trains
    assert source_hash(tmp_path) != changed
    assert code_version(tmp_path).endswith("+" + source_hash(tmp_path))


def test_the_recipe_is_part_of_the_key(tmp_path):
    store = Store(tmp_path)
    store.add(record())
    assert store.done("S9.baseline", "baseline", "smoke", 0, "0.1.0+abc")
    assert not store.done("S9.baseline", "baseline+mixup", "smoke", 0, "0.1.0+abc")  # the row was edited
    store.add(record(recipe="baseline+mixup", acc=12.5))
    assert [(r["recipe"], r["test_acc"]) for r in store.records()] == [("baseline", record()["test_acc"]),
                                                                        ("baseline+mixup", 12.5)]


def test_dataset_checksum_follows_the_content_not_the_files_place_or_times(tmp_path):
    import shutil

    from tricks.data import load_dataset

    write_cifar10(tmp_path / "cifar-10-batches-py")
    data = load_dataset("cifar10", tmp_path / "cifar-10-batches-py", cache_dir=tmp_path / "cache", download=False)
    first = dataset_checksum(data)
    assert first == dataset_checksum(data) and len(first) == len("tensors-") + 24
    shutil.copytree(tmp_path / "cifar-10-batches-py", tmp_path / "copy" / "cifar-10-batches-py")
    os.utime(tmp_path / "copy" / "cifar-10-batches-py" / "test_batch", ns=(1, 1))
    moved = load_dataset("cifar10", tmp_path / "copy" / "cifar-10-batches-py", cache_dir=tmp_path / "cache2",
                         download=False)
    assert dataset_checksum(moved) == first  # another place, other times, the same images
    write_cifar10(tmp_path / "other" / "cifar-10-batches-py", seed=1)
    other = load_dataset("cifar10", tmp_path / "other" / "cifar-10-batches-py", cache_dir=tmp_path / "cache3",
                         download=False)
    assert dataset_checksum(other) != first
    toy = dataset_checksum(toy_data())
    assert toy.startswith("tensors-") and toy == dataset_checksum(toy_data()) != dataset_checksum(toy_data(seed=1))


def test_columns_are_the_interface_record_keys():
    assert tuple(COLUMNS) == ("row_id", "recipe", "budget", "seed", "code_version", "dataset_checksum", "epoch_acc",
                              "test_acc", "best_test_acc", "generation_acc", "wall_seconds", "finished_at")


@pytest.mark.parametrize("old_key", ["row_id, recipe, budget, seed, code_version",  # before the data's checksum
                                     "row_id, budget, seed, code_version"])  # the first store's, before the recipe
def test_a_store_of_an_old_key_is_migrated_and_the_data_is_part_of_a_runs_key(tmp_path, old_key):
    import json
    import sqlite3

    from bench.store import KEY

    old = ("CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, "
           + ", ".join(f"{k} {v}" for k, v in COLUMNS.items()) + f", UNIQUE ({old_key}))")
    (tmp_path / "r").mkdir()
    con = sqlite3.connect(tmp_path / "r" / "results.sqlite")
    con.execute(old)
    r = record()
    con.execute(f"INSERT INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                [json.dumps(r[k]) if k in ("epoch_acc", "generation_acc") and r[k] is not None else r[k] for k in COLUMNS])
    con.commit()
    con.close()
    store = Store(tmp_path / "r")
    assert [x["test_acc"] for x in store.records()] == [r["test_acc"]]  # kept
    store.add({**r, "dataset_checksum": "e" * 24, "test_acc": 50.0})  # the same run on other data: another run
    assert sorted(x["test_acc"] for x in store.records()) == sorted([r["test_acc"], 50.0])
    key = (r["row_id"], r["recipe"], r["budget"], r["seed"], r["code_version"])
    assert store.done(*key) and store.done(*key, "e" * 24) and not store.done(*key, "f" * 24)
    assert KEY[-1] == "dataset_checksum"
