"""`bench list` and `recipe list` keep every id and number whole: tsv when piped, tables that fold, json."""
from __future__ import annotations

import json

import pytest

from bench.cli import main as bench_main
from bench.table import load_table
from recipes.cli import main as recipe_main


def noted(row) -> str:
    return "/".join(f"{v:.2f}" for v in row.noted) or "-"


def test_bench_list_piped_is_tsv_with_every_value_whole(capsys):
    rows, _ = load_table()
    assert bench_main(["list"]) == 0  # stdout is not a terminal here: tsv by default
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["id", "recipe", "options", "noted", "status", "why"]
    got = {f[0]: f for f in (line.split("\t") for line in lines[1:])}
    assert list(got) == [r.id for r in rows]
    for r in rows:
        assert got[r.id][3] == noted(r) and got[r.id][4] == r.status
        assert got[r.id][5] == (" ".join(r.why.split()) if r.status == "inexpressible" else "")


@pytest.mark.parametrize("columns", ["80", "160"])
def test_bench_list_table_at_any_width_cuts_no_id_or_accuracy(capsys, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    rows, _ = load_table()
    assert bench_main(["list", "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    for r in rows:
        assert r.id in out and noted(r) in out


def test_bench_list_json_round_trips(capsys):
    rows, _ = load_table()
    assert bench_main(["list", "--rows", "S9.*", "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [g["id"] for g in got] == [r.id for r in rows if r.id.startswith("S9.")]


def test_recipe_list_tsv_and_json_hold_every_trick(capsys):
    from tricks.registry import TRICKS

    assert recipe_main(["list"]) == 0
    tsv = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert sorted(f[1] for f in tsv if f[0] == "tricks") == sorted(TRICKS.names())
    assert recipe_main(["list", "--format", "json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in groups["tricks"]] == sorted(TRICKS.names()) and groups["recipes"][0]["name"] == "baseline"
