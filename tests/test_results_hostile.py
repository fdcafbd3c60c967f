"""Issue 23.4: stored runs of the wrong type or shape never crash the report and are never lost unseen.

A record in the SQLite store damaged by hand (direct SQL updates) or a line of the results file that is
NaN, Infinity or nested too deep is skipped and counted in one line of report.md, while the sound records
are reported as before; a store that holds a view, a trigger or another table is refused in one line; a
write that the database does not keep fails loudly; `--readme` keeps a symbolic link a link.
"""
from __future__ import annotations

import json
import sqlite3

import pytest

from bench import cli, results_file
from bench.report import START, END, load_checked, replace_between_markers, write_report
from bench.store import DB_NAME, Store
from bench.table import Conclusion, Row
from tricks.errors import RunFolderError

ROWS = [Row(id="S1.base", section="S1", recipe="baseline", options={}, noted=(90.0,), kind="single",
            status="measured", why="", baseline="S1.base"),
        Row(id="S1.hi", section="S1", recipe="baseline+hi", options={}, noted=(92.0,), kind="single",
            status="measured", why="", baseline="S1.base")]
CONCLUSIONS = [Conclusion(id="hi-better", section="S1", text="hi is better", row="S1.hi", versus="S1.base",
                          expect="better")]


def rec(row_id: str, seed: int, acc: float, budget: str = "short") -> dict:
    return {"row_id": row_id, "recipe": "baseline" if row_id == "S1.base" else "baseline+hi", "budget": budget,
            "seed": seed, "code_version": "0.1.0+aaaa", "dataset_checksum": "c" * 24, "epoch_acc": [acc - 1, acc],
            "test_acc": acc, "best_test_acc": acc, "generation_acc": None, "wall_seconds": 1.0,
            "finished_at": "2024-01-01T00:00:00+00:00"}


def frec(row_id: str, seed: int, acc: float) -> dict:
    return {**rec(row_id, seed, acc, budget="full"), "options": {}, "train_images_per_second": 9000.0,
            "device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "torch": "2.4.0", "workers": 2}


def store_of(folder, n_base: int = 3, n_hi: int = 3) -> Store:
    store = Store(folder)
    for seed in range(n_base):
        store.add(rec("S1.base", seed, 90.0 + seed / 10))
    for seed in range(n_hi):
        store.add(rec("S1.hi", seed, 93.0 + seed / 10))
    return store


def damage(folder, *updates: str) -> None:
    """Run SQL on the store behind the bench's back, as a user with the sqlite3 shell would."""
    con = sqlite3.connect(folder / DB_NAME)
    try:
        for sql in updates:
            con.execute(sql)
        con.commit()
    finally:
        con.close()


def skipped_line(text: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith("Skipped: ")]
    return line


# ---- the store: damaged values are skipped and counted --------------------------------------------------------

WRONG_VALUES = [  # (SQL SET clause on one run, the reason the report gives for it)
    ("epoch_acc = '[90.0,'", "epoch_acc is not JSON (Expecting value)"),
    ("finished_at = 'yesterday'", "the record has finished_at 'yesterday', not an ISO 8601 time"),
    ("test_acc = 'abc'", "the record has test_acc 'abc', not an accuracy in 0..100"),
    ("generation_acc = '\"93.0\"'", "the record has generation_acc '93.0', not a list of accuracies in 0..100"),
    ("epoch_acc = '[NaN]'", "epoch_acc holds NaN, which is not a number a record can keep"),
    ("best_test_acc = 9e999", "the record has best_test_acc inf, not an accuracy in 0..100"),
    ("epoch_acc = '" + "[" * 50_000 + "]" * 50_000 + "'", "epoch_acc is nested too deep to read"),
    ("row_id = CAST(x'ff' AS TEXT)", "the record has row_id b'\\xff', not a non-empty text"),
    ("seed = -1", "the record has seed -1, not an integer in 0..9223372036854775807"),
    ("wall_seconds = -5.0", "the record has wall_seconds -5.0, not a finite number >= 0"),
]


@pytest.mark.parametrize("assignment, reason", WRONG_VALUES, ids=[w[0].split(" =")[0] + str(i)
                                                                   for i, w in enumerate(WRONG_VALUES)])
def test_a_damaged_stored_value_is_skipped_and_counted(tmp_path, assignment, reason):
    store_of(tmp_path)
    damage(tmp_path, f"UPDATE runs SET {assignment} WHERE id = 2")
    records, skipped = Store(tmp_path).records_checked()
    assert skipped == [f"id 2: {reason}"]
    assert [(r["row_id"], r["seed"]) for r in records] == [("S1.base", 0), ("S1.base", 2), ("S1.hi", 0),
                                                           ("S1.hi", 1), ("S1.hi", 2)]
    text = write_report(tmp_path, ROWS, CONCLUSIONS, budget="short", results_file=tmp_path / "absent.jsonl").read_text()
    assert "Budget: **short**; 5 runs;" in text
    assert skipped_line(text) == ("Skipped: 1 stored run that fails the record check (bench/record.py), left out of "
                                  f"every number here: 1 in {tmp_path / DB_NAME} (first: id 2: {reason}).")


def test_several_damaged_runs_in_store_and_file_are_counted_in_one_line(tmp_path):
    store_of(tmp_path)
    damage(tmp_path, "UPDATE runs SET test_acc = 'abc' WHERE id = 1", "UPDATE runs SET finished_at = '' WHERE id = 4",
           "UPDATE runs SET epoch_acc = 'not json' WHERE id = 6")
    path = tmp_path / "full.jsonl"
    for seed in range(3):
        results_file.append(path, frec("S1.base", seed, 94.0 + seed / 10))
    with open(path, "a") as f:
        f.write(json.dumps(frec("S1.hi", 0, 95.0)).replace("95.0", "NaN", 1) + "\n")
        f.write(json.dumps(frec("S1.hi", 1, 95.0)).replace("95.0", "Infinity", 1) + "\n")
        f.write("[" * 100_000 + "]" * 100_000 + "\n")
        f.write(json.dumps({**frec("S1.hi", 2, 95.0), "generation_acc": "95.0"}) + "\n")
    results_file.append(path, frec("S1.hi", 3, 95.2))  # after the damaged lines: still read
    records, skipped = load_checked(tmp_path, path)
    assert skipped == {
        str(tmp_path / DB_NAME): ["id 1: the record has test_acc 'abc', not an accuracy in 0..100",
                                  "id 4: the record has finished_at '', not an ISO 8601 time",
                                  "id 6: epoch_acc is not JSON (Expecting value)"],
        str(path): ["line 4: holds NaN, which is not a number a record can keep",
                    "line 5: holds Infinity, which is not a number a record can keep",
                    "line 6: is nested too deep to read",
                    "line 7: the record has generation_acc '95.0', not a list of accuracies in 0..100"]}
    assert len(records) == 3 + 4  # 3 sound in the store, 4 in the file
    text = write_report(tmp_path, ROWS, CONCLUSIONS, results_file=path).read_text()
    assert "Budget: **full**; 4 runs;" in text
    assert skipped_line(text) == (
        "Skipped: 7 stored runs that fail the record check (bench/record.py), left out of every number here: "
        f"3 in {tmp_path / DB_NAME} (first: id 1: the record has test_acc 'abc', not an accuracy in 0..100); "
        f"4 in {path} (first: line 4: holds NaN, which is not a number a record can keep).")
    assert path.read_text().count("\n") == 8  # the file is read, never rewritten


def test_a_report_of_only_damaged_runs_still_renders(tmp_path):
    path = tmp_path / "full.jsonl"
    path.write_text('{"row_id": NaN}\n')
    text = write_report(tmp_path / "clean", ROWS, CONCLUSIONS, results_file=path).read_text()
    assert "No results stored yet" in text and skipped_line(text).startswith("Skipped: 1 stored run that fails")


# ---- the store's schema: what is not the bench's is refused ---------------------------------------------------

@pytest.mark.parametrize("sql, foreign", [
    (["ALTER TABLE runs RENAME TO runs_data", "CREATE VIEW runs AS SELECT * FROM runs_data"],
     "table runs_data, index sqlite_autoindex_runs_data_1, view runs"),
    (["CREATE TRIGGER drop_new AFTER INSERT ON runs BEGIN DELETE FROM runs WHERE id = new.id; END"],
     "trigger drop_new"),
    (["CREATE TABLE notes (text TEXT)"], "table notes"),
    (["CREATE INDEX by_acc ON runs (test_acc)"], "index by_acc"),
    (["ALTER TABLE runs ADD COLUMN colour TEXT"], "table runs (not the bench's columns and key)"),
])
def test_a_store_that_is_not_the_benchs_is_refused_in_one_line(tmp_path, sql, foreign):
    store_of(tmp_path, 1, 1)
    damage(tmp_path, *sql)
    before = (tmp_path / DB_NAME).read_bytes()
    with pytest.raises(RunFolderError) as e:
        Store(tmp_path)
    assert str(e.value) == (f"results database '{tmp_path / DB_NAME}' is not the bench's store: it holds {foreign} "
                            "beyond the bench's table runs; move it aside or give another --results folder")
    assert (tmp_path / DB_NAME).read_bytes() == before


def test_a_write_the_database_does_not_keep_fails_loudly(tmp_path):
    store = store_of(tmp_path, 1, 0)
    damage(tmp_path, "CREATE TRIGGER drop_new AFTER INSERT ON runs BEGIN DELETE FROM runs WHERE id = new.id; END")
    with pytest.raises(RunFolderError, match=f"results database '{tmp_path / DB_NAME}' does not hold the run S1.hi "
                                             "seed 0 just written"):
        store.add(rec("S1.hi", 0, 93.0))
    damage(tmp_path, "DROP TRIGGER drop_new")
    assert [r["row_id"] for r in Store(tmp_path).records()] == ["S1.base"]


def test_replay_on_a_store_with_a_trigger_claims_no_run(tmp_path, capsys):
    store_of(tmp_path / "results", 1, 0)
    damage(tmp_path / "results", "CREATE TRIGGER drop_new AFTER INSERT ON runs BEGIN DELETE FROM runs; END")
    code = cli.main(["replay", "--rows", "S1.*", "--budget", "smoke", "--device", "cpu", "--results",
                     str(tmp_path / "results")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == (f"bench: error: results database '{tmp_path / 'results' / DB_NAME}' is not the bench's store: it "
                   "holds trigger drop_new beyond the bench's table runs; move it aside or give another --results "
                   "folder\n")


# ---- --readme -------------------------------------------------------------------------------------------------

README = f"# Title\n\nbefore\n{START}\nold table\n{END}\nafter\n"


def test_a_readme_symlink_stays_a_link_and_its_target_is_written(tmp_path):
    target = tmp_path / "docs" / "README.md"
    target.parent.mkdir()
    target.write_text(README)
    target.chmod(0o640)
    link = tmp_path / "README.md"
    link.symlink_to("docs/README.md")
    replace_between_markers(link, "| new |\n")
    assert link.is_symlink() and str(link.readlink()) == "docs/README.md"
    assert target.read_text() == f"# Title\n\nbefore\n{START}\n\n| new |\n\n{END}\nafter\n"
    assert target.stat().st_mode & 0o777 == 0o640


def test_cli_readme_symlink_stays_a_link(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("bench.table.load_table", lambda table=None: (ROWS, CONCLUSIONS))
    path = tmp_path / "full.jsonl"
    for seed in range(2):
        results_file.append(path, frec("S1.base", seed, 94.0 + seed))
    target = tmp_path / "real.md"
    target.write_text(README)
    (tmp_path / "link.md").symlink_to(target)
    code = cli.main(["report", "--results", str(tmp_path / "r"), "--results-file", str(path), "--readme",
                     str(tmp_path / "link.md")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "link.md").is_symlink() and (tmp_path / "link.md").readlink() == target
    assert "| S1.base | 2 | NVIDIA H100 80GB HBM3 | 90.00 | 94.50 ± 0.71 |" in target.read_text()


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_a_readme_not_in_utf8_is_one_line_and_left_as_it_is(tmp_path, monkeypatch, capsys, encoding):
    monkeypatch.setattr("bench.table.load_table", lambda table=None: (ROWS, CONCLUSIONS))
    path = tmp_path / "full.jsonl"
    results_file.append(path, frec("S1.base", 0, 94.0))
    readme = tmp_path / "README.md"
    raw = README.replace("Title", "Titré").encode(encoding)
    readme.write_bytes(raw)
    code = cli.main(["report", "--results", str(tmp_path / "r"), "--results-file", str(path), "--readme", str(readme)])
    err = capsys.readouterr().err
    byte = {"utf-16": "0: b'\\xff'", "latin-1": "6: b'\\xe9'"}[encoding]
    assert code == 2 and err == (f"bench: error: {readme} is not UTF-8 (byte {byte}); the README must be UTF-8 text: "
                                 "convert it (e.g. iconv -t UTF-8) and give it again\n")
    assert readme.read_bytes() == raw and not (tmp_path / "r").exists()  # checked before the report is written


def test_an_append_the_file_does_not_keep_fails_loudly(tmp_path, monkeypatch):
    path = tmp_path / "full.jsonl"
    results_file.append(path, frec("S1.base", 0, 94.0))
    results_file.append(path, frec("S1.base", 0, 94.0))  # the same line twice: it is there, no error
    monkeypatch.setattr(results_file, "_append_line", lambda path, line: False)  # a write whose line is lost
    with pytest.raises(RunFolderError) as e:
        results_file.append(path, frec("S1.hi", 1, 95.0))
    assert str(e.value) == (f"results file {path} does not hold the run S1.hi seed 1 just appended; give a regular "
                            "file that keeps what is written")
