"""The bench report over a store filled by hand: exact means, Welch intervals, every verdict, the files."""
from __future__ import annotations

import math
import statistics

import pytest
from scipy.stats import t

from bench import cli, results_file
from bench.report import (END, SAME_MARGIN, START, Measures, fmt_diff, headline_markdown, load_records,
                          replace_between_markers, report_data, used_records, verdict, write_report)
from bench.stats import T_TABLE, t_quantile, welch
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
NO_FILE = "absent.jsonl"  # the repository's bench/results/full.jsonl is not read by these tests
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


def test_report_data_is_the_last_finished_and_the_later_record_on_a_tie():
    rec = lambda checksum, at, budget="smoke": {"budget": budget, "dataset_checksum": checksum, "finished_at": at}
    t0, t1 = "2026-11-30T03:00:00+00:00", "2026-11-30T03:00:01+00:00"
    assert report_data([rec("a", t1), rec("b", t0)], "smoke") == "a"
    assert report_data([rec("a", t0), rec("b", t0)], "smoke") == "b"  # same second: the later one
    assert report_data([rec("a", t0), rec("b", t1, "short")], "smoke") == "a"
    assert report_data([rec("a", t0)], "full") is None


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
    path = write_report(results, ROWS, CONCLUSIONS, results_file=results / NO_FILE)  # budget None: the largest held, 'short'
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
    assert rows["S1.near"][7] == "the notes' eta is a guess"  # remark: last, after noted Δ and verdicts
    assert rows["S1.single"][3:5] == ["92.00 (n=1)", "+1.50 (n<2)"]
    assert rows["S1.nobase"][2:4] == ["[no result]", "91.25 ± 0.35 (n=2)"]
    assert rows["S1.gens"][2:4] == ["90.00/91.00/92.00", "92.30 ± 0.14 (n=2); generations 90.20/91.20/92.30"]
    assert rows["S1.notrun"][3:5] == ["not run", "-"]
    assert rows["S1.inexp"][3:5] + rows["S1.inexp"][7:] == ["inexpressible: opencv preprocessing", "-", ""]

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
    text = write_report(results, ROWS, CONCLUSIONS, budget="smoke", results_file=results / NO_FILE).read_text()
    assert "Budget: **smoke**; 1 runs" in text
    base = next(cells(line) for line in section_lines(text, "S1") if line.startswith("| S1.base "))
    assert base[3] == "50.00 (n=1)"
    with pytest.raises(ConfigError, match="unknown budget 'huge'"):
        write_report(results, ROWS, CONCLUSIONS, budget="huge", results_file=results / NO_FILE)
    with pytest.raises(ConfigError, match="names row 'S7.x'"):
        write_report(results, ROWS, [con("bad", "S7.x", "S1.base", "better")], results_file=results / NO_FILE)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(RunFolderError, match="no results in .* run `bench replay --results"):
        write_report(empty, ROWS, CONCLUSIONS, results_file=empty / NO_FILE)
    Store(empty)
    text = write_report(empty, ROWS, CONCLUSIONS, results_file=empty / NO_FILE).read_text()
    assert "No results stored yet" in text and "| S1.hi | baseline+hi | 93.00/93.50 | not run | - |" in text


# ---- the repository's results file (full budget) merged with the local store ----------------------------------

H100 = "NVIDIA H100 80GB HBM3"
NEW, OLD = "0.1.0+aaaa", "0.0.9+old"
DATA = "c" * 24


def frec(row_id: str, seed: int, acc: float, version: str = NEW, gpu: str | None = H100,
         finished: str = "2024-01-01T00:00:00+00:00") -> dict:
    """A results-file record: `rec` of the full budget with the keys the store does not have."""
    return {**rec(row_id, seed, acc, budget="full", version=version), "options": BY_ID[row_id].options,
            "finished_at": finished, "train_images_per_second": 9000.0, "device": "cuda" if gpu else "cpu",
            "gpu": gpu, "torch": "2.4.0", "workers": 2}


FULL = [
    frec("S1.base", 0, 10.0, finished="2023-12-01T00:00:00+00:00"),  # the same run again, later: replaced
    frec("S1.base", 0, 94.0), frec("S1.base", 1, 94.2), frec("S1.base", 2, 94.4),
    frec("S1.hi", 0, 95.0), frec("S1.hi", 1, 95.4, version=OLD, finished="2023-06-01T00:00:00+00:00"),
    frec("S1.lo", 0, 91.0), frec("S1.lo", 1, 91.2), frec("S1.lo", 2, 91.4, gpu=None),
]
# hi - base: d = 95.2 - 94.2 = 1; s²/n = 0.08/2 and 0.04/3; df = (0.16/3)² / ((0.04/3)²/2 + 0.04²/1) = 32/19
HI_Q = 5.1762316285465175  # scipy.stats.t.ppf(0.975, 32 / 19)
HI_HALF = HI_Q * math.sqrt(0.16 / 3)  # 1.1954
# lo - base: d = 91.2 - 94.2 = -3; equal variances 0.04, n 3 and 3: df = 4, half = 2.776445 * sqrt(0.08 / 3)
LO_HALF = 2.7764451051977987 * math.sqrt(0.08 / 3)  # 0.4534


@pytest.fixture
def full_file(tmp_path):
    path = tmp_path / "repo" / "full.jsonl"
    for r in FULL:
        results_file.append(path, r)
    return path


def test_the_hand_computed_intervals_are_welchs():
    assert HI_Q == pytest.approx(t.ppf(0.975, 32 / 19), abs=1e-12) and LO_HALF == pytest.approx(
        t.ppf(0.975, 4) * math.sqrt(0.08 / 3), abs=1e-12)
    d, (lo, hi) = welch([95.0, 95.4], [94.0, 94.2, 94.4])
    assert d == pytest.approx(1.0) and (lo, hi) == (pytest.approx(1 - HI_HALF), pytest.approx(1 + HI_HALF))
    assert fmt_diff(d, (lo, hi)) == "+1.00 [-0.20, +2.20]"
    d, (lo, hi) = welch([91.0, 91.2, 91.4], [94.0, 94.2, 94.4])
    assert (lo, hi) == (pytest.approx(-3 - LO_HALF), pytest.approx(-3 + LO_HALF))
    assert fmt_diff(d, (lo, hi)) == "-3.00 [-3.45, -2.55]"


def test_report_renders_from_the_file_alone(tmp_path, full_file):
    folder = tmp_path / "no-results-here"  # a clean clone: no local results folder
    text = write_report(folder, ROWS, CONCLUSIONS, results_file=full_file).read_text()
    assert f"Budget: **full**; 8 runs; code {OLD}, {NEW}; data {DATA}." in text
    assert "\n".join([
        f"- code {OLD} (older code), data {DATA}, budget full, GPU {H100}: 1 run",
        f"- code {NEW}, data {DATA}, budget full, GPU {H100}: 6 runs",
        f"- code {NEW}, data {DATA}, budget full, GPU none (CPU): 1 run"]) in text
    assert f"Rows marked 'older code' hold runs of a code version other than the newest, {NEW}." in text
    rows = {cells(line)[0]: cells(line) for line in section_lines(text, "S1") if cells(line)[0].startswith("S1.")}
    assert rows["S1.base"][3:] == ["94.20 ± 0.20 (n=3)", "baseline", "-", "-", ""]
    assert rows["S1.hi"][3:] == ["95.20 ± 0.28 (n=2)", "+1.00 [-0.20, +2.20]", "+3.25",
                                 "better-supports: cannot tell; worse-contradicts: cannot tell; "
                                 "same-contradicts: cannot tell", f"older code {OLD}"]
    assert rows["S1.lo"][3:] == ["91.20 ± 0.20 (n=3)", "-3.00 [-3.45, -2.55]", "-4.00",
                                 "better-contradicts: contradicts; worse-supports: supports", ""]
    assert rows["S1.near"][3:] == ["not run", "-", "+0.50", "same-supports: cannot tell",
                                   "the notes' eta is a guess"]
    assert rows["S1.notrun"][4:7] == ["-", "-", "notrun: cannot tell (vs S1.base)"]
    png = folder / "report-S1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](report-S1.png)" in text


def test_store_and_file_are_merged_and_the_budget_chosen(results, full_file):
    text = write_report(results, ROWS, CONCLUSIONS, results_file=full_file).read_text()  # largest budget held
    assert "Budget: **full**; 8 runs" in text
    short = write_report(results, ROWS, CONCLUSIONS, budget="short", results_file=full_file).read_text()
    assert "Budget: **short**; 24 runs; code 0.1.0+aaaa" in short
    assert f"- code {NEW}, data {DATA}, budget short, GPU not recorded: 24 runs" in short
    # a full run in the local store that the file lacks is used too; the same run in both counts once
    Store(results).add({k: v for k, v in frec("S1.hi", 2, 95.6).items() if k in rec("S1.hi", 0, 0.0)})
    Store(results).add({k: v for k, v in frec("S1.lo", 0, 91.0).items() if k in rec("S1.lo", 0, 0.0)})
    records = load_records(results, full_file)
    assert len([r for r in records if r["budget"] == "full"]) == 9  # 8 in the file (one replaced) + S1.hi seed 2
    text = write_report(results, ROWS, CONCLUSIONS, results_file=full_file).read_text()
    assert "Budget: **full**; 9 runs" in text and "GPU not recorded: 1 run" in text


def test_chart_points_are_the_differences_in_points(full_file):
    m = Measures(ROWS, CONCLUSIONS, used_records(results_file.read(full_file), ROWS, "full"))
    points = m.chart_points([r for r in ROWS if r.section == "S1"])
    assert points == [
        ("base (baseline)", 0.0, None, 0.0),
        ("hi (older code)", pytest.approx(1.0), (pytest.approx(1 - HI_HALF), pytest.approx(1 + HI_HALF)), 3.25),
        ("lo", pytest.approx(-3.0), (pytest.approx(-3 - LO_HALF), pytest.approx(-3 + LO_HALF)), -4.0),
        ("wide", None, None, 1.0), ("near", None, None, 0.5), ("single", None, None, 2.5),
        ("nobase", None, None, None), ("gens", None, None, 2.0), ("notrun", None, None, None),
        ("inexp", None, None, -1.0)]
    one_seed = Measures(ROWS, CONCLUSIONS, used_records(FULL[1:5], ROWS, "full"))  # hi: n=1, no interval
    assert one_seed.chart_points([BY_ID["S1.hi"]]) == [("hi", pytest.approx(0.8), None, 3.25)]


HEADLINE = f"""\
| row | seeds | GPU | noted | measured mean ± std | measured Δ vs baseline [95%] | noted Δ | verdicts |
|---|---|---|---|---|---|---|---|
| S1.base | 3 | {H100} | 90.00 | 94.20 ± 0.20 | baseline | - | - |
| S1.hi (older code {OLD}) | 2 | {H100} | 93.00/93.50 | 95.20 ± 0.28 | +1.00 [-0.20, +2.20] | +3.25 | \
better-supports: cannot tell; worse-contradicts: cannot tell; same-contradicts: cannot tell |
| S1.lo | 3 | {H100}, none (CPU) | 86.00 | 91.20 ± 0.20 | -3.00 [-3.45, -2.55] | -4.00 | \
better-contradicts: contradicts; worse-supports: supports |

8 full-budget runs; the numbers come from:

- code {OLD} (older code), data {DATA}, budget full, GPU {H100}: 1 run
- code {NEW}, data {DATA}, budget full, GPU {H100}: 6 runs
- code {NEW}, data {DATA}, budget full, GPU none (CPU): 1 run
"""


def test_headline_markdown_is_the_readme_table(full_file):
    records = results_file.read(full_file)
    assert headline_markdown(records, ROWS, CONCLUSIONS) == HEADLINE
    assert headline_markdown([rec("S1.base", 0, 90.0)], ROWS, CONCLUSIONS) == "No full-budget runs recorded yet.\n"


README = ("# title\n\nsome text  \nwith trailing spaces, ünïcode and\ttabs\n\n"
          f"{START}\nold table\n| a | b |\n{END}\n\nmore text, no final newline")


def test_replace_between_markers_changes_nothing_else(tmp_path):
    path = tmp_path / "README.md"
    path.write_bytes(README.encode())
    path.chmod(0o644)
    replace_between_markers(path, "| new | table |\n")
    before, after = README.split(START + "\n")[0], README.split(END)[1]
    assert path.read_bytes() == (before + START + "\n\n| new | table |\n\n" + END + after).encode()
    assert path.stat().st_mode & 0o777 == 0o644
    replace_between_markers(path, "| new | table |")  # again: the same bytes
    assert path.read_bytes() == (before + START + "\n\n| new | table |\n\n" + END + after).encode()
    for broken in (README.replace(END, ""), README.replace(START, ""), f"{END}\n{START}\n",
                   README + f"\n{START}\n{END}\n"):
        path.write_text(broken)
        with pytest.raises(ConfigError) as info:
            replace_between_markers(path, "x")
        assert str(info.value) == (f"{path} needs one line {START} and after it one line {END}, "
                                   "around the full-budget table")
        assert path.read_text() == broken
    with pytest.raises(ConfigError, match="cannot read .*absent.md"):
        replace_between_markers(tmp_path / "absent.md", "x")


# ---- `bench report` -----------------------------------------------------------------------------------------

@pytest.fixture
def bench(capsys, monkeypatch):
    """`bench ARGS` through bench.cli.main on this file's table -> (exit code, stderr)."""
    monkeypatch.setattr("bench.table.load_table", lambda table=None: (ROWS, CONCLUSIONS))

    def run(*argv: str) -> tuple[int, str]:
        code = cli.main(list(argv))
        return code, capsys.readouterr().err
    return run


def test_cli_bad_results_line_is_skipped_and_counted_in_the_report(tmp_path, bench):
    bad = tmp_path / "full.jsonl"
    results_file.append(bad, frec("S1.base", 0, 94.0))
    with open(bad, "a") as f:
        f.write('{"row_id": "S9.baseline", "test_acc": 9')  # a writer killed mid-line
    code, err = bench("report", "--results", str(tmp_path / "none"), "--results-file", str(bad))
    assert code == 0 and err == ""
    text = (tmp_path / "none" / "report.md").read_text()
    assert "Budget: **full**; 1 runs" in text
    assert (f"Skipped: 1 stored run that fails the record check (bench/record.py), left out of every number here: "
            f"1 in {bad} (first: line 2: is not JSON (Expecting ',' delimiter) (the last line has no newline: a writer "
            "stopped mid-line?)).\n") in text
    code, err = bench("report", "--results", str(tmp_path / "none2"), "--results-file", str(tmp_path / "no.jsonl"))
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"bench: error: no results in '{tmp_path / 'none2'}'")


def test_cli_report_and_readme_from_the_file_alone(tmp_path, full_file, bench):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    folder = tmp_path / "clean-clone"
    code, err = bench("report", "--results", str(folder), "--results-file", str(full_file), "--readme", str(readme))
    assert code == 0, err
    assert [p.name for p in sorted(folder.iterdir())] == ["report-S1.png", "report-S2.png", "report.md"]
    assert readme.read_text() == README.split(START)[0] + START + "\n\n" + HEADLINE + "\n" + END + README.split(END)[1]
    readme.write_text("no markers\n")
    code, err = bench("report", "--results", str(folder), "--results-file", str(full_file), "--readme", str(readme))
    assert code == 2 and err == (f"bench: error: {readme} needs one line {START} and after it one line {END}, "
                                 "around the full-budget table\n")
