"""The repository's results file: one JSON line per run, appended under a lock, read back strictly, merged."""
from __future__ import annotations

import json
import multiprocessing

import pytest

from bench.results_file import DEFAULT_PATH, REQUIRED, append, merge, read
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


@pytest.mark.parametrize("content, message", [
    ('{"row_id": "x"\n', "line 2: not JSON (Expecting ',' delimiter); fix or remove that line"),
    ("[1, 2]\n", "line 2: the record is a JSON list, not an object; fix or remove that line"),
    ('{"row_id": "S9.x"}\n', "line 2: the record lacks the key(s) recipe, options, budget, seed, "),
    ('{"row_id": "S9.x", "test_a',
     "line 2: not JSON (Unterminated string starting at) (the last line has no newline: a writer stopped mid-line?)"),
])
def test_read_refuses_a_bad_line_with_one_line_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "full.jsonl"
    path.write_text(json.dumps(record()) + "\n" + content)
    with pytest.raises(ConfigError) as info:
        read(path)
    text = str(info.value)
    assert text.startswith(f"results file {path}, ") and message in text and "\n" not in text


def test_read_refuses_a_time_that_is_not_iso_and_values_of_the_wrong_type(tmp_path):
    path = tmp_path / "full.jsonl"
    path.write_text(json.dumps(record(finished="yesterday")) + "\n")
    with pytest.raises(ConfigError, match="line 1: the record has finished_at 'yesterday', not an ISO 8601 time"):
        read(path)
    path.write_text(json.dumps(record()) + "\n" + json.dumps(record(seed="0", test_acc=True)) + "\n")
    with pytest.raises(ConfigError, match="line 2: the record has a value of the wrong type for seed, test_acc;"):
        read(path)
    with pytest.raises(ValueError, match="wrong type for epoch_acc"):
        append(path, record(epoch_acc="90.0"))


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
