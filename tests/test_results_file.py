"""The repository's results file: one JSON line per run, appended under a lock, read back strictly, merged."""
from __future__ import annotations

import json
import multiprocessing

import pytest

from bench.record import RunRecord, merge
from bench.results_file import DEFAULT_PATH, FIELDS, REQUIRED, append, read, read_checked
from tricks.errors import ConfigError


def record(row_id="S9.baseline", seed=0, acc=94.0, finished="2024-05-01T10:00:00+00:00", **extra) -> dict:
    return {"row_id": row_id, "recipe": "baseline", "options": {}, "budget": "full", "seed": seed,
            "code_version": "0.1.0+abc", "dataset_checksum": "d" * 24, "epoch_acc": [90.0, acc], "test_acc": acc,
            "best_test_acc": acc, "generation_acc": None, "wall_seconds": 3600.0, "train_images_per_second": 9000.0,
            "finished_at": finished, "device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "torch": "2.4.0",
            "workers": 2, **extra}


def test_default_path_is_the_repository_file():
    assert DEFAULT_PATH.parts[-3:] == ("bench", "results", "full.jsonl")
    assert set(record()) == set(REQUIRED)


def test_append_writes_one_sorted_line_and_read_gives_it_back(tmp_path):
    path = tmp_path / "new" / "folder" / "full.jsonl"  # the folders are created
    a, b = record(seed=0), record(seed=1, acc=94.5)
    append(path, a)
    append(path, b)
    lines = path.read_text().split("\n")
    assert lines == [json.dumps(a, sort_keys=True), json.dumps(b, sort_keys=True), ""]
    assert lines[0].startswith('{"best_test_acc": 94.0, "budget": "full", ')
    assert read(path) == [a, b]


def test_append_refuses_a_record_without_a_required_key(tmp_path):
    path = tmp_path / "full.jsonl"
    bad = record()
    del bad["gpu"]
    with pytest.raises(ValueError, match="lacks the key\\(s\\) gpu;"):
        append(path, bad)
    assert not path.exists()


def _writer(path: str, worker: int) -> None:
    for i in range(10):  # lines of ~5 kB, more than a pipe's atomic write, so a missing lock would show
        append(path, record(row_id=f"S9.w{worker}", seed=i, epoch_acc=[float(i)] * 600))


def test_four_processes_append_at_once(tmp_path):
    path = tmp_path / "full.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 40 and all(json.loads(line)["epoch_acc"] == [json.loads(line)["seed"] * 1.0] * 600
                                    for line in lines)
    assert sorted((r["row_id"], r["seed"]) for r in read(path)) == [(f"S9.w{w}", i) for w in range(4) for i in range(10)]


def test_read_missing_file_blank_lines_and_a_valid_last_line_without_newline(tmp_path):
    assert read(tmp_path / "absent.jsonl") == []
    path = tmp_path / "full.jsonl"
    a, b = record(seed=0), record(seed=1)
    path.write_text("\n" + json.dumps(a) + "\n   \n\n" + json.dumps(b))
    assert read(path) == [a, b]
    append(path, record(seed=2))  # the cut last line gets its newline first
    assert [r["seed"] for r in read(path)] == [0, 1, 2]


@pytest.mark.parametrize("content, reason", [
    ('{"row_id": "x"\n', "line 2: is not JSON (Expecting ',' delimiter)"),
    ("[1, 2]\n", "line 2: the record is a JSON list, not an object"),
    ('{"row_id": "S9.x"}\n', "line 2: the record lacks the key(s) recipe, budget, seed, code_version, "
     "dataset_checksum, epoch_acc, test_acc, best_test_acc, generation_acc, wall_seconds, finished_at, options, "
     "train_images_per_second, device, gpu, torch, workers"),
    ('{"row_id": "S9.x", "test_a', "line 2: is not JSON (Unterminated string starting at) (the last line has no "
                                 "newline: a writer stopped mid-line?)"),
    (json.dumps(record(seed=1)).replace("94.0", "NaN", 1) + "\n", "line 2: holds NaN, which is not a number a record "
                                                                   "can keep"),
    ("[" * 100_000 + "]" * 100_000 + "\n", "line 2: is nested too deep to read"),
    (b"\xff\xfe{\x00}\x00\n", "line 2: is not UTF-8"),
])
def test_read_skips_a_bad_line_with_its_line_and_reason_and_keeps_the_others(tmp_path, content, reason):
    path = tmp_path / "full.jsonl"
    tail = content if isinstance(content, bytes) else content.encode()
    path.write_bytes((json.dumps(record()) + "\n").encode() + tail + (json.dumps(record(seed=2)) + "\n").encode()
                     * ("last line" not in reason))
    records, skipped = read_checked(path)
    assert skipped == [reason]
    assert [r["seed"] for r in records] == [0, 2][:1 + ("last line" not in reason)]
    assert read(path) == records


def test_read_skips_a_time_that_is_not_iso_and_values_of_the_wrong_type_or_range(tmp_path):
    path = tmp_path / "full.jsonl"
    lines = [record(finished="yesterday"), record(), record(seed="0", test_acc=True), record(test_acc=100.5),
             record(epoch_acc=[90.0, -1.0]), record(generation_acc="93.0"), record(workers=0), record(gpu=["a"]),
             record(wall_seconds=1e309 * 0)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))  # json.dumps writes NaN for the last
    assert read_checked(path) == ([record()], [
        "line 1: the record has finished_at 'yesterday', not an ISO 8601 time",
        "line 3: the record has seed '0', not an integer in 0..9223372036854775807; test_acc True, not an accuracy in "
        "0..100",
        "line 4: the record has test_acc 100.5, not an accuracy in 0..100",
        "line 5: the record has epoch_acc [90.0, -1.0], not a list of accuracies in 0..100",
        "line 6: the record has generation_acc '93.0', not a list of accuracies in 0..100",
        "line 7: the record has workers 0, not an integer >= 1",
        "line 8: the record has gpu ['a'], not a non-empty text",
        "line 9: holds NaN, which is not a number a record can keep"])
    with pytest.raises(ValueError, match="epoch_acc '90.0', not a list of accuracies"):
        append(path, record(epoch_acc="90.0"))
    with pytest.raises(ValueError, match="test_acc inf, not an accuracy"):
        append(path, record(test_acc=float("inf")))


def test_a_file_that_cannot_be_read_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=f"results file {tmp_path} cannot be read \\(Is a directory\\)"):
        read(tmp_path)


def test_merge_keeps_the_latest_finished_per_key_in_stable_order():
    old = record(seed=0, acc=90.0, finished="2024-05-01T10:00:00+00:00")
    new = record(seed=0, acc=91.0, finished="2024-05-01T12:00:00+02:00")  # 10:00 UTC: a tie with `old`
    newer = record(seed=0, acc=92.0, finished="2024-05-01T10:30:00")  # no zone: UTC, so the latest
    other_seed = record(seed=1, acc=93.0)
    other_data = record(seed=0, acc=94.0, dataset_checksum="e" * 24)  # another key
    other_code = record(seed=0, acc=95.0, code_version="0.1.0+def")  # another key
    # on a tie the later given wins
    assert merge([old, other_seed], [new]) == [new, other_seed]
    assert merge([old, other_seed, newer], [new, other_data, other_code]) == [newer, other_seed, other_data, other_code]
    assert merge([newer], [old]) == [newer]
    assert merge() == [] and merge([], []) == []


def test_the_committed_file_read_and_written_again_is_the_same_bytes(tmp_path):
    committed = DEFAULT_PATH.read_bytes()
    records, skipped = read_checked(DEFAULT_PATH)
    assert skipped == [] and len(records) == committed.count(b"\n") == 4
    assert b"".join(RunRecord.from_row(r, FIELDS).line() for r in records) == committed
    copy = tmp_path / "full.jsonl"
    for r in records:
        append(copy, r)
    assert copy.read_bytes() == committed


def test_one_record_type_serves_the_store_and_the_file(tmp_path):
    from bench.record import KEY, MACHINE_FIELDS, RESULT_FIELDS
    from bench.store import COLUMNS, Store

    assert tuple(COLUMNS) == tuple(RESULT_FIELDS) and tuple(FIELDS) == (*RESULT_FIELDS, *MACHINE_FIELDS)
    store = Store(tmp_path / "results")
    held = read(DEFAULT_PATH)
    for r in held:
        store.add({k: r[k] for k in COLUMNS})
    assert store.records() == [{k: r[k] for k in RESULT_FIELDS} for r in held]
    assert [RunRecord.from_row(r).key for r in store.records()] == [tuple(r[k] for k in KEY) for r in held]
