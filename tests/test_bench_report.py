"""The bench report over a store filled by hand: exact means, Welch intervals, every verdict, the files."""
from __future__ import annotations

import math
import statistics

import pytest
from scipy.stats import t

from bench.report import SAME_MARGIN, T_TABLE, t_quantile, verdict, welch, write_report
from bench.store import Store
from bench.table import Conclusion, Row
from tricks.errors import ConfigError, RunFolderError

BASE = [90.4, 90.5, 90.6]
SEEDS = {  # row id -> final test_acc per seed
    "S1.base": BASE,
    "S1.hi": [93.0, 93.2, 93.4],
    "S1.lo": [85.0, 85.5, 86.0],
    "S1.wide": [89.0, 90.5, 92.0],
    "S1.near": [90.45, 90.55, 90.65],
    "S1.single": [92.0],
    "S1.nobase": [91.0, 91.5],
    "S1.gens": [92.2, 92.4],
    "S2.base": [80.0, 81.0],
    "S2.other": [82.0, 82.0],
}
GENS = {0: [90.1, 91.1, 92.2], 1: [90.3, 91.3, 92.4]}


def row(rid: str, noted=(), kind="single", status="measured", why="", baseline: str | None = "S1.base",
        options=None) -> Row:
    return Row(id=rid, section=rid.split(".")[0], recipe=f"baseline+{rid.split('.')[1]}", options=options or {},
               noted=tuple(noted), kind=kind, status=status, why=why, baseline=baseline)


ROWS = [
    row("S1.base", (90.0,), baseline="S1.base"),
    row("S1.hi", (93.0, 93.5), kind="runs"),
    row("S1.lo", (86.0,), options={"epochs": 400}),
    row("S1.wide", (91.0,)),
    row("S1.near", (90.5,), why="the notes' eta is a guess"),
    row("S1.single", (92.5,)),
    row("S1.nobase", (), status="unmeasured"),
    row("S1.gens", (90.0, 91.0, 92.0), kind="generations"),
    row("S1.notrun", (88.0,), baseline=None),
    row("S1.inexp", (89.0,), status="inexpressible", why="opencv preprocessing"),
    row("S2.base", (80.5,), baseline="S2.base"),
    row("S2.other", (83.0,), baseline="S2.base"),
]


BY_ID = {r.id: r for r in ROWS}


def con(cid: str, r: str, versus: str, expect: str) -> Conclusion:
    return Conclusion(id=cid, section=r.split(".")[0], text=f"notes on {cid}", row=r, versus=versus, expect=expect)


CONCLUSIONS = [
    con("better-supports", "S1.hi", "S1.base", "better"),
    con("better-contradicts", "S1.lo", "S1.base", "better"),
    con("better-cannot", "S1.wide", "S1.base", "better"),
    con("worse-supports", "S1.lo", "S1.base", "worse"),
    con("worse-contradicts", "S1.hi", "S1.base", "worse"),
    con("same-supports", "S1.near", "S1.base", "same"),
    con("same-contradicts", "S1.hi", "S1.base", "same"),
    con("same-cannot", "S1.wide", "S1.base", "same"),
    con("n1", "S1.single", "S1.base", "better"),
    con("notrun", "S1.notrun", "S1.base", "worse"),
    con("s2", "S2.other", "S2.base", "better"),
]


def rec(row_id: str, seed: int, acc: float, budget: str = "short", version: str = "0.1.0+aaaa", gens=None) -> dict:
    return {"row_id": row_id, "recipe": BY_ID[row_id].stored_recipe if row_id in BY_ID else row_id, "budget": budget, "seed": seed, "code_version": version,
            "dataset_checksum": "c" * 24, "epoch_acc": [acc], "test_acc": acc, "best_test_acc": acc,
            "generation_acc": gens, "wall_seconds": 1.0, "finished_at": "2024-01-01T00:00:00+00:00"}


@pytest.fixture
def results(tmp_path):
    store = Store(tmp_path)
    store.add(rec("S1.base", 0, 10.0, version="0.0.9+old"))  # replaced by the newer record of seed 0 below
    for rid, accs in SEEDS.items():
        for seed, acc in enumerate(accs):
            store.add(rec(rid, seed, acc, gens=GENS[seed] if rid == "S1.gens" else None))
    store.add(rec("S1.base", 0, 50.0, budget="smoke"))  # another budget: not used
    store.add(rec("S9.elsewhere", 0, 50.0))  # a row not given: not used
    store.add({**rec("S1.hi", 5, 10.0), "recipe": "baseline+hi:edited"})  # the row's recipe since edited: not used
    return tmp_path


def interval(a, b):
    """The closed form of the module docstring, with scipy's t quantile."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    d, half = statistics.fmean(a) - statistics.fmean(b), t.ppf(0.975, df) * math.sqrt(va + vb)
    return d, (d - half, d + half)


def test_welch_interval_is_the_closed_form():
    for name in ("S1.hi", "S1.lo", "S1.wide", "S1.near"):
        d, (lo, hi) = welch(SEEDS[name], BASE)
        d0, (lo0, hi0) = interval(SEEDS[name], BASE)
        assert d == d0 and lo == pytest.approx(lo0, abs=1e-12) and hi == pytest.approx(hi0, abs=1e-12)
    # near vs base: equal variances 0.01, n=3 each -> df = 4 exactly
    d, (lo, hi) = welch(SEEDS["S1.near"], BASE)
    half = t.ppf(0.975, 4) * math.sqrt(0.01 / 3 + 0.01 / 3)
    assert lo == pytest.approx(0.05 - half, abs=1e-9) and hi == pytest.approx(0.05 + half, abs=1e-9)
    assert welch([92.0], BASE) == (pytest.approx(92.0 - 90.5), None)
    assert welch([1.0, 1.0], [0.5, 0.5]) == (0.5, (0.5, 0.5))


def test_t_quantile_table_matches_scipy_and_falls_back_to_the_normal():
    for df in range(1, 31):
        assert t_quantile(df, use_scipy=False) == pytest.approx(t.ppf(0.975, df), abs=5e-7)
        assert t_quantile(df) == t.ppf(0.975, df)
    assert t_quantile(2.94, use_scipy=False) == T_TABLE[1]  # rounded down: wider
    assert t_quantile(31, use_scipy=False) == t_quantile(500.5, use_scipy=False) == 1.959964


def test_verdict_rules():
    assert verdict("better", (0.1, 2.0)) == "supports" and verdict("better", (-2.0, -0.1)) == "contradicts"
    assert verdict("better", (-0.1, 2.0)) == "cannot tell" and verdict("better", None) == "cannot tell"
    assert verdict("worse", (-2.0, -0.1)) == "supports" and verdict("worse", (0.1, 2.0)) == "contradicts"
    assert verdict("worse", (-2.0, 0.0)) == "cannot tell"
    assert verdict("same", (-SAME_MARGIN, SAME_MARGIN)) == "supports"
    assert verdict("same", (-0.6, 0.2)) == "cannot tell" and verdict("same", (0.2, 0.6)) == "cannot tell"
    assert verdict("same", (0.51, 3.0)) == "contradicts" and verdict("same", (-3.0, -0.51)) == "contradicts"
    with pytest.raises(ConfigError, match="expect must be better, worse or same"):
        verdict("higher", (0.0, 1.0))


def section_lines(text: str, section: str) -> list[str]:
    part = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in part.splitlines() if line.startswith("| ")]


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def test_report_tables_numbers_verdicts_and_files(results):
    path = write_report(results, ROWS, CONCLUSIONS)  # budget None: the largest held, 'short'
    assert path == results / "report.md"
    text = path.read_text()
    assert "Budget: **short**; 24 runs; code 0.1.0+aaaa; data " + "c" * 24 + "." in text
    rows = {cells(line)[0]: cells(line) for line in section_lines(text, "S1") if cells(line)[0].startswith("S1.")}
    assert rows["S1.base"][1:5] == ["baseline+base", "90.00", "90.50 ± 0.10 (n=3)", "baseline"]
    assert rows["S1.hi"][2:4] == ["93.00/93.50", "93.20 ± 0.20 (n=3)"]
    assert rows["S1.lo"][1] == "baseline+lo (epochs=400)" and rows["S1.lo"][3] == "85.50 ± 0.50 (n=3)"
    for name in ("S1.hi", "S1.lo", "S1.wide", "S1.near"):
        d, (lo, hi) = interval(SEEDS[name], BASE)
        assert rows[name][4] == f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    assert rows["S1.near"][5] == "the notes' eta is a guess"
    assert rows["S1.single"][3:5] == ["92.00 (n=1)", "+1.50 (n<2)"]
    assert rows["S1.nobase"][2:4] == ["[no result]", "91.25 ± 0.35 (n=2)"]
    assert rows["S1.gens"][2:4] == ["90.00/91.00/92.00", "92.30 ± 0.14 (n=2); generations 90.20/91.20/92.30"]
    assert rows["S1.notrun"][3:5] == ["not run", "-"]
    assert rows["S1.inexp"][3:6] == ["inexpressible: opencv preprocessing", "-", ""]

    got = {}
    for line in section_lines(text, "S1") + section_lines(text, "S2"):
        c = cells(line)
        if c[0].startswith("notes on "):
            got[c[0][len("notes on "):]] = (c[4], c[5])
    assert {k: v[1] for k, v in got.items()} == {
        "better-supports": "supports", "better-contradicts": "contradicts", "better-cannot": "cannot tell",
        "worse-supports": "supports", "worse-contradicts": "contradicts", "same-supports": "supports",
        "same-contradicts": "contradicts", "same-cannot": "cannot tell", "n1": "cannot tell",
        "notrun": "cannot tell", "s2": "cannot tell"}
    assert got["notrun"][0] == "not measured" and got["n1"][0] == "+1.50 (n<2)"
    d, (lo, hi) = interval(SEEDS["S1.near"], BASE)
    assert got["same-supports"][0] == f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]"

    head = {cells(line)[0]: cells(line)[1:] for line in text.split("## Headline\n", 1)[1].split("\n## ")[0].splitlines()
            if line.startswith("| S")}
    gaps = [0.5, abs(93.2 - 93.25), 0.5, 0.5, 0.05, 0.5, abs(92.3 - 92.0)]  # base, hi, lo, wide, near, single, gens
    assert head["S1"] == ["10", "8", f"{statistics.fmean(gaps):.2f}", "3", "3", "4"]
    assert head["S2"] == ["2", "2", f"{statistics.fmean([0.0, 1.0]):.2f}", "0", "0", "1"]
    for section in ("S1", "S2"):
        png = results / f"report-{section}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png.name})" in text


def test_report_of_a_chosen_budget_and_of_an_empty_store(results, tmp_path_factory):
    text = write_report(results, ROWS, CONCLUSIONS, budget="smoke").read_text()
    assert "Budget: **smoke**; 1 runs" in text
    base = next(cells(line) for line in section_lines(text, "S1") if line.startswith("| S1.base "))
    assert base[3] == "50.00 (n=1)"
    with pytest.raises(ConfigError, match="unknown budget 'huge'"):
        write_report(results, ROWS, CONCLUSIONS, budget="huge")
    with pytest.raises(ConfigError, match="names row 'S7.x'"):
        write_report(results, ROWS, [con("bad", "S7.x", "S1.base", "better")])
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(RunFolderError, match="no results in .* run `bench replay --results"):
        write_report(empty, ROWS, CONCLUSIONS)
    Store(empty)
    text = write_report(empty, ROWS, CONCLUSIONS).read_text()
    assert "No results stored yet" in text and "| S1.hi | baseline+hi | 93.00/93.50 | not run | - |" in text
