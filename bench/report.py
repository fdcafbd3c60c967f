"""The bench report: the notes' numbers beside the measured ones, per section, and a verdict per conclusion.

`write_report(results_dir, rows, conclusions, budget, results_file)` reads the records of the local
results store (`<results_dir>/results.sqlite`, when there is one) and of the results file kept in the
repository (`bench/results/full.jsonl`, full-budget runs; see `bench.results_file`), merged, and
writes `<results_dir>/report.md` and one chart per section, `<results_dir>/report-<section>.png`: per
row, its measured difference from the section baseline as a dot with its 95% interval, and the noted
difference as an 'x', on a scale of points. `headline_markdown` gives the README's table of the
full-budget runs and `replace_between_markers` puts it between the README's markers.

Definitions (all accuracies in %, differences in points):

- Records used: those of `budget`; with `budget=None`, the largest budget in `bench.budgets.BUDGETS`
  that the records hold (so the repository's full-budget runs, when there are any). Only records of
  the row's current recipe count, and only those trained on one dataset: the dataset checksum of the
  budget's record finished last (`report_data`); runs on other data are counted as left out, never
  averaged in. For each (row, seed) only the record finished last counts (a replay
  after a code change replaces the old numbers as it goes; on equal `finished_at`, the later record).
- Provenance: the report lists each (code version, dataset checksum, budget, GPU) group of the records
  used with its run count. The newest code version is that of the record finished last; a row with a
  record of another code version is marked 'older code'.
- measured: mean ± sample standard deviation (ddof 1) over seeds of each run's final `test_acc`
  (for refine rows the last generation's); n is the number of seeds.
- noted value of a row: the single number ('single'), the mean of the runs ('runs'), the last
  generation's number ('generations'). The headline's "mean |measured - noted|" averages over the
  section's rows that have both. Noted Δ = noted value of the row - noted value of its baseline.
- difference: mean(row) - mean(other) with a 95% Welch interval (`bench.stats.welch`; with n < 2 on
  either side there is no interval, 'n<2'). Δ vs baseline is this difference against the row's `baseline` row.
- verdict of a conclusion (row vs versus, interval [lo, hi] of row - versus):
  no interval (a side unmeasured or n < 2): 'cannot tell';
  expect 'better': 'supports' if lo > 0, 'contradicts' if hi < 0, else 'cannot tell';
  expect 'worse': 'supports' if hi < 0, 'contradicts' if lo > 0, else 'cannot tell';
  expect 'same' (an equivalence test with margin SAME_MARGIN = 0.5 points): 'supports' if
  -0.5 <= lo and hi <= 0.5, 'contradicts' if hi < -0.5 or lo > 0.5 (a difference larger than the
  margin is certain), else 'cannot tell'. A row's verdicts are those of the conclusions whose `row` it
  is (the claim is about it), with the other side named when it is not the row's baseline.
"""
from __future__ import annotations

import io
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.gap import BASE_ROW, VARIANTS, variant_row
from bench.record import finished, merge
from bench.results_file import DEFAULT_PATH, read_checked
from bench.slices import SLICE_SECONDS, latest_slice, runs_per_slice
from bench.stats import mean_std, welch
from bench.store import DB_NAME, Store
from tricks.errors import ConfigError, RunFolderError
from tricks.files import write_atomic

START, END = "<!-- full-budget:start -->", "<!-- full-budget:end -->"
GAP_MARKERS = ("<!-- baseline-gap:start -->", "<!-- baseline-gap:end -->")  # optional in a README
SLICE_MARKERS = ("<!-- gpu-slice:start -->", "<!-- gpu-slice:end -->")  # optional in a README
GAP_COMMAND = "bench gap --budget full --seeds 2 --data cifar10-jpeg.tar.gz"  # on a GPU; gpu_session.sh's gap stage
SAME_MARGIN = 0.5  # points: 'same' is supported when the whole 95% interval lies within ±SAME_MARGIN


def verdict(expect: str, interval: tuple[float, float] | None) -> str:
    """'supports' / 'contradicts' / 'cannot tell' by the rule in the module docstring."""
    if expect not in ("better", "worse", "same"):
        raise ConfigError(f"expect must be better, worse or same, got {expect!r}")
    if interval is None:
        return "cannot tell"
    lo, hi = interval
    if expect == "same":
        if -SAME_MARGIN <= lo and hi <= SAME_MARGIN:
            return "supports"
        return "contradicts" if hi < -SAME_MARGIN or lo > SAME_MARGIN else "cannot tell"
    if lo > 0:
        return "supports" if expect == "better" else "contradicts"
    if hi < 0:
        return "supports" if expect == "worse" else "contradicts"
    return "cannot tell"


def noted_value(row: Any) -> float | None:
    """The noted number a measured mean is compared with (see the module docstring)."""
    if not row.noted:
        return None
    if row.kind == "generations":
        return row.noted[-1]
    return statistics.fmean(row.noted)


def choose_budget(records: list[dict], budget: str | None) -> str | None:
    from bench.budgets import BUDGETS

    if budget is not None:
        if budget not in BUDGETS:
            raise ConfigError(f"unknown budget '{budget}'; choose one of {', '.join(BUDGETS)}")
        return budget
    held = {r["budget"] for r in records}
    return next((b for b in reversed(BUDGETS) if b in held), None)


def latest(records: list[dict]) -> dict[str, list[dict]]:
    """row id -> its records, per seed the one finished last (on a tie the later one), in seed order."""
    by_key: dict[tuple, dict] = {}
    for r in records:
        k = (r["row_id"], r["seed"])
        if k not in by_key or finished(r) >= finished(by_key[k]):
            by_key[k] = r
    out: dict[str, list[dict]] = defaultdict(list)
    for (row_id, _), r in sorted(by_key.items()):
        out[row_id].append(r)
    return out


def load_checked(results_dir: Path, results_file: Path = DEFAULT_PATH) -> tuple[list[dict], dict[str, list[str]]]:
    """(the sound records of the local store (when `results_dir` holds one) merged with the results file's,
    {store or file path: one reason per record skipped there}): a record that fails `bench.record.problem` is
    left out and counted, never a crash.

    Neither a store nor a line in the file is a one-line RunFolderError.
    """
    results_dir = Path(results_dir)
    has_store = (results_dir / DB_NAME).is_file()
    held, skipped_in_file = read_checked(results_file)
    if not has_store and not held and not skipped_in_file:
        raise RunFolderError(f"no results in '{results_dir}' (no {DB_NAME}); run `bench replay --results "
                             f"{results_dir}` first, or give the results folder it wrote ('{results_file}' holds "
                             "no runs either)")
    stored, skipped_in_store = Store(results_dir).records_checked() if has_store else ([], [])
    skipped = {str(where): reasons for where, reasons in ((results_dir / DB_NAME, skipped_in_store),
                                                          (results_file, skipped_in_file)) if reasons}
    return merge(stored, held), skipped


def load_records(results_dir: Path, results_file: Path = DEFAULT_PATH) -> list[dict]:
    """The sound records of the store and the file, merged (`load_checked` without what it skipped)."""
    return load_checked(results_dir, results_file)[0]


def skipped_line(skipped: dict[str, list[str]]) -> str | None:
    """The report's one line on the records left out for failing the record check: the count, per place the
    count and the first reason; None when none was."""
    if not skipped:
        return None
    n = sum(len(reasons) for reasons in skipped.values())
    places = "; ".join(f"{len(reasons)} in {where} (first: {reasons[0]})" for where, reasons in skipped.items())
    runs = f"{n} stored run that fails" if n == 1 else f"{n} stored runs that fail"
    return f"Skipped: {runs} the record check (bench/record.py), left out of every number here: {places}."


def report_data(records: list[dict], budget: str | None) -> str | None:
    """The dataset checksum a report shows: that of the `budget` record finished last (numbers trained on
    other data are never averaged with them; the report counts what it leaves out); on equal `finished_at`
    (whole seconds), the later record."""
    of_budget = [r for r in records if r["budget"] == budget]
    return max(reversed(of_budget), key=finished)["dataset_checksum"] if of_budget else None


def used_records(records: list[dict], rows: list, budget: str | None,
                 checksum: str | None = None) -> dict[str, list[dict]]:
    """row id -> the records that count for it (module docstring: budget, current recipe, latest per seed),
    only those trained on the data `checksum` names (None: `report_data`'s)."""
    by_id = {r.id: r for r in rows}
    checksum = checksum or report_data(records, budget)
    return latest([r for r in records if r["budget"] == budget and r["row_id"] in by_id
                   and r["recipe"] == by_id[r["row_id"]].stored_recipe and r["dataset_checksum"] == checksum])


def fmt_diff(d: float, interval: tuple[float, float] | None) -> str:
    if interval is None:
        return f"{d:+.2f} (n<2)"
    return f"{d:+.2f} [{interval[0]:+.2f}, {interval[1]:+.2f}]"


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(cell(c) for c in line) + " |" for line in lines]


def measured_cell(row: Any, recs: list[dict]) -> str:
    if row.status == "inexpressible":
        return f"inexpressible: {row.why}" if row.why else "inexpressible"
    if not recs:
        return "not run"
    m, s = mean_std([r["test_acc"] for r in recs])
    text = f"{m:.2f} ± {s:.2f} (n={len(recs)})" if s is not None else f"{m:.2f} (n=1)"
    gens = [r["generation_acc"] for r in recs if r["generation_acc"]]
    if gens:
        k = min(len(g) for g in gens)
        text += "; generations " + "/".join(f"{statistics.fmean(g[i] for g in gens):.2f}" for i in range(k))
    return text


def recipe_cell(row: Any) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in row.options.items())
    return f"{row.recipe} ({extra})" if extra else row.recipe



def gpu_label(record: dict) -> str:
    """The GPU a record ran on: its name, 'none (CPU)', or 'not recorded' (local store records)."""
    if "gpu" not in record:
        return "not recorded"
    return record["gpu"] or "none (CPU)"


def newest_version(kept: list[dict]) -> str | None:
    """The code version of the record finished last."""
    return max(kept, key=finished)["code_version"] if kept else None


def provenance(kept: list[dict], newest: str | None) -> list[str]:
    """One markdown list line per (code version, dataset checksum, budget, GPU) group, with its run count."""
    groups = Counter((r["code_version"], r["dataset_checksum"], r["budget"], gpu_label(r)) for r in kept)
    return [f"- code {v}{'' if v == newest else ' (older code)'}, data {c}, budget {b}, GPU {g}: "
            f"{n} run{'s' if n != 1 else ''}" for (v, c, b, g), n in sorted(groups.items())]


class Measures:
    """The numbers of one report: accuracies per row, differences, noted differences, verdicts."""

    def __init__(self, rows: list, conclusions: list, by_row: dict[str, list[dict]]):
        self.by_id = {r.id: r for r in rows}
        for c in conclusions:
            for rid in (c.row, c.versus):
                if rid not in self.by_id:
                    raise ConfigError(f"conclusion '{c.id}' names row '{rid}', which is not among the rows given")
        self.conclusions = conclusions
        self.by_row = by_row
        self.acc = {r.id: [rec["test_acc"] for rec in by_row.get(r.id, [])] if r.status != "inexpressible" else []
                    for r in rows}
        self.kept = [rec for r in rows for rec in by_row.get(r.id, [])]
        self.newest = newest_version(self.kept)
        self.verdicts = {c.id: verdict(c.expect, d[1] if (d := self.diff(c.row, c.versus)) else None)
                         for c in conclusions}

    def diff(self, a: str, b: str) -> tuple[float, tuple[float, float] | None] | None:
        """Welch difference of row a - row b, None when either is not measured."""
        if not self.acc.get(a) or not self.acc.get(b):
            return None
        return welch(self.acc[a], self.acc[b])

    def baseline_cell(self, row: Any) -> str:
        if row.baseline is None or row.baseline == row.id:
            return "baseline" if row.baseline == row.id else "-"
        d = self.diff(row.id, row.baseline)
        return fmt_diff(*d) if d else "-"

    def noted_diff(self, row: Any) -> float | None:
        """noted value of the row - noted value of its baseline; None when either has none."""
        base = self.by_id.get(row.baseline) if row.baseline else None
        a, b = noted_value(row), noted_value(base) if base else None
        return None if a is None or b is None else a - b

    def noted_diff_cell(self, row: Any) -> str:
        d = self.noted_diff(row)
        return "-" if d is None or row.baseline == row.id else f"{d:+.2f}"

    def verdict_cell(self, row: Any) -> str:
        return "; ".join(f"{c.id}: {self.verdicts[c.id]}" + (f" (vs {c.versus})" if c.versus != row.baseline else "")
                         for c in self.conclusions if c.row == row.id) or "-"

    def older(self, row: Any) -> list[str]:
        """The code versions other than the newest among the row's records."""
        return sorted({r["code_version"] for r in self.by_row.get(row.id, [])} - {self.newest})

    def remark(self, row: Any) -> str:
        old = self.older(row)
        parts = [row.why] if row.why and row.status != "inexpressible" else []
        return "; ".join(parts + ([f"older code {', '.join(old)}"] if old else []))

    def chart_points(self, rows: list) -> list[tuple[str, float | None, tuple[float, float] | None, float | None]]:
        """Per row (label, measured Δ, its 95% interval or None, noted Δ) against its baseline; the baseline at 0."""
        out = []
        for r in rows:
            label = r.id[len(r.section) + 1:] if r.id.startswith(r.section + ".") else r.id
            label += " (baseline)" if r.baseline == r.id else " (older code)" if self.older(r) else ""
            if r.baseline == r.id:
                out.append((label, 0.0 if self.acc.get(r.id) else None, None,
                            0.0 if noted_value(r) is not None else None))
                continue
            d = self.diff(r.id, r.baseline) if r.baseline else None
            out.append((label, d[0] if d else None, d[1] if d else None, self.noted_diff(r)))
        return out


def section_chart(section: str, points: list[tuple], path: Path) -> None:
    """One line per row: measured Δ from the baseline (dot, 95% interval bar) and noted Δ ('x'), in points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 1.2 + 0.32 * len(points)))
    ys = list(range(len(points)))[::-1]  # first row on top
    first = {"measured": True, "noted": True}
    for y, (_, d, interval, noted) in zip(ys, points):
        if d is not None:
            xerr = [[d - interval[0]], [interval[1] - d]] if interval else None
            ax.errorbar([d], [y], xerr=xerr, fmt="o", color="tab:blue", capsize=3,
                        label="measured Δ, 95% interval" if first.pop("measured", False) else None)
        if noted is not None:
            ax.plot([noted], [y], "x", color="tab:red", markersize=8,
                    label="noted Δ" if first.pop("noted", False) else None)
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_yticks(ys, [p[0] for p in points], fontsize=8)
    ax.set_ylim(-0.7, len(points) - 0.3)
    ax.set(xlabel="difference from the section baseline (points of test accuracy)",
           title=f"{section}: difference from the baseline, measured vs noted")
    ax.grid(axis="x", alpha=0.3)
    if len(first) < 2:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def write_report(results_dir: Path, rows: list, conclusions: list, budget: str | None = None,
                 results_file: Path = DEFAULT_PATH) -> Path:
    """Write report.md and report-<section>.png into `results_dir`; returns report.md's path."""
    results_dir = Path(results_dir)
    records, skipped = load_checked(results_dir, results_file)
    budget = choose_budget(records, budget)
    m = Measures(rows, conclusions, used_records(records, rows, budget))
    sections: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        sections[r.section].append(r)

    out = ["# Bench report: the notes' numbers replayed", ""]
    if budget is None:
        out += ["No results stored yet: run `bench replay` first.", ""]
    if skipped:
        out += [skipped_line(skipped), ""]
    versions = sorted({r["code_version"] for r in m.kept})
    checksums = sorted({r["dataset_checksum"] for r in m.kept})
    out += [(f"Budget: **{budget or '-'}**; {len(m.kept)} runs; code "
             f"{', '.join(versions) or '-'}; data {', '.join(checksums) or '-'}."), ""]
    if m.kept:
        out += ["The numbers come from (code version, dataset checksum, budget, GPU: runs):", ""]
        out += provenance(m.kept, m.newest) + [""]
        if len(versions) > 1:
            out += [f"Rows marked 'older code' hold runs of a code version other than the newest, {m.newest}.", ""]
    other = [r for r in records if r["budget"] == budget and r["dataset_checksum"] not in checksums]
    if other:
        data = sorted({r["dataset_checksum"] for r in other})
        out += [f"Left out: {len(other)} {budget}-budget runs trained on other data ({', '.join(data)}); the numbers "
                "here are those of one dataset only.", ""]
    out += [("Accuracy is test top-1 in %; measured is mean ± std over seeds (n); Δ is in points with a 95% "
             f"Welch interval; a 'same' conclusion is supported when the interval lies within ±{SAME_MARGIN} points."),
            "", "## Headline", ""]
    head = []
    for section, srows in sections.items():
        gaps = [abs(statistics.fmean(m.acc[r.id]) - noted_value(r)) for r in srows
                if m.acc[r.id] and noted_value(r) is not None]
        sv = [m.verdicts[c.id] for c in conclusions if c.section == section]
        head.append([section, str(len(srows)), str(sum(1 for r in srows if m.acc[r.id])),
                     f"{statistics.fmean(gaps):.2f}" if gaps else "-",
                     str(sv.count("supports")), str(sv.count("contradicts")), str(sv.count("cannot tell"))])
    out += table(["section", "rows", "measured", "mean \\|measured - noted\\|", "supports", "contradicts",
                  "cannot tell"], head)
    for section, srows in sections.items():
        out += ["", f"## {section}", ""]
        lines = []
        for r in srows:
            noted = "[no result]" if r.status == "unmeasured" or not r.noted else "/".join(f"{v:.2f}" for v in r.noted)
            lines.append([r.id, recipe_cell(r), noted, measured_cell(r, m.by_row.get(r.id, [])), m.baseline_cell(r),
                          m.noted_diff_cell(r), m.verdict_cell(r), m.remark(r)])
        out += table(["row", "recipe", "noted", "measured", "Δ vs baseline", "noted Δ", "verdicts", "remark"], lines)
        chart = results_dir / f"report-{section}.png"
        section_chart(section, m.chart_points(srows), chart)
        out += ["", f"![{section}: difference from the baseline, measured vs noted]({chart.name})"]
        scon = [c for c in conclusions if c.section == section]
        if scon:
            clines = []
            for c in scon:
                dv = m.diff(c.row, c.versus)
                clines.append([c.text, c.row, c.versus, c.expect, fmt_diff(*dv) if dv else "not measured",
                               m.verdicts[c.id]])
            out += ["", "Conclusions:", ""]
            out += table(["the notes say", "row", "versus", "expected", "measured Δ", "verdict"], clines)
    if budget is not None and BASE_ROW in m.by_id:
        out += ["", "## Why the baseline sits where it does: the S9 baseline three ways (`bench gap`)", ""]
        out += [gap_markdown(records, rows, budget).rstrip("\n")]
    path = results_dir / "report.md"
    write_atomic(path, "\n".join(out) + "\n")
    return path


def headline_markdown(records: list[dict], rows: list, conclusions: list, budget: str = "full") -> str:
    """The README's table of the `budget` records: one line per row that has runs, then their provenance."""
    m = Measures(rows, conclusions, used_records(records, rows, budget))
    if not m.kept:
        return f"No {budget}-budget runs recorded yet.\n"
    lines = []
    for r in rows:
        recs = m.by_row.get(r.id)
        if not recs:
            continue
        mean, std = mean_std(m.acc[r.id])
        old = m.older(r)
        lines.append([r.id + (f" (older code {', '.join(old)})" if old else ""), str(len(recs)),
                      ", ".join(sorted({gpu_label(rec) for rec in recs})),
                      "/".join(f"{v:.2f}" for v in r.noted) or "-",
                      f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}",
                      m.baseline_cell(r), m.noted_diff_cell(r), m.verdict_cell(r)])
    out = table(["row", "seeds", "GPU", "noted", "measured mean ± std", "measured Δ vs baseline [95%]",
                 "noted Δ", "verdicts"], lines)
    out += ["", f"{len(m.kept)} {budget}-budget runs; the numbers come from:", ""] + provenance(m.kept, m.newest)
    return "\n".join(out) + "\n"


def gap_runs(records: list[dict], rows: list, budget: str) -> dict[str, list[dict]]:
    """variant name (`bench.gap.VARIANTS`) -> its records that count: of `budget`, the variant's row id and recipe,
    trained on the report's data (`report_data`), per seed the one finished last."""
    base = next((r for r in rows if r.id == BASE_ROW), None)
    if base is None:
        return {v.name: [] for v in VARIANTS}
    checksum = report_data(records, budget)
    mine = {}
    for v in VARIANTS:
        row = variant_row(base, v)
        mine[v.name] = (row.id, [r for r in records if r["budget"] == budget and r["row_id"] == row.id
                                 and r["recipe"] == row.stored_recipe and r["dataset_checksum"] == checksum])
    version = gap_version([recs for _, recs in mine.values()])
    return {name: latest([r for r in recs if r["code_version"] == version]).get(row_id, [])
            for name, (row_id, recs) in mine.items()}


def gap_version(runs: list[list[dict]]) -> str | None:
    """The one code version the gap compares its ways at (never the default of one trainer against fp32 runs of
    another): the newest, by its latest run, that every way has a run of; else the newest of any run."""
    newest_first = sorted((r for recs in runs for r in recs), key=lambda r: r["finished_at"], reverse=True)
    for r in newest_first:
        if all(any(x["code_version"] == r["code_version"] for x in recs) for recs in runs):
            return r["code_version"]
    return newest_first[0]["code_version"] if newest_first else None


def gap_sentence(runs: dict[str, list[dict]]) -> str:
    """What the gap runs say (issue 19 section 1): 'not measured yet' with fewer than 2 seeds a side; 'the fast path
    costs accuracy' when fp32 eager or the plain loop is higher than the default beyond the 95% interval; 'the gap
    is the data's' when every interval holds 0; else that the default is the higher."""
    default, others = VARIANTS[0].name, [v.name for v in VARIANTS[1:]]
    if any(len(runs[name]) < 2 for name in runs):
        return (f"Not measured yet: each way needs 2 seeds at least; on a GPU `{GAP_COMMAND}` trains them (the `gap` "
                "stage of `bench/gpu_session.sh`).")
    acc = {name: [r["test_acc"] for r in recs] for name, recs in runs.items()}
    diffs = {name: welch(acc[name], acc[default]) for name in others}
    higher = [n for n, (_, (lo, _)) in diffs.items() if lo > 0]
    lower = [n for n, (_, (_, hi)) in diffs.items() if hi < 0]
    said = lambda names: " and ".join(f"{n} ({fmt_diff(*diffs[n])})" for n in names)
    if higher:
        return (f"The fast path costs accuracy: {said(higher)} above the default beyond the 95% interval; find why "
                "before more rows (issue 19).")
    if not lower:
        return (f"The gap is the data's: the default, {' and '.join(others)} agree within seed noise "
                f"({said(others)}; every 95% interval holds 0), so the fast path costs no accuracy here.")
    return (f"The default is above {said(lower)} beyond the 95% interval: the fast path costs no accuracy, and the "
            "ways differ by more than seed noise.")


def gap_markdown(records: list[dict], rows: list, budget: str = "full") -> str:
    """The baseline-gap table: each way of training the S9 baseline (`bench.gap.VARIANTS`) with its seeds, mean ±
    std and difference from the default with its 95% Welch interval, the sentence of `gap_sentence`, and where the
    numbers come from."""
    runs = gap_runs(records, rows, budget)
    default = [r["test_acc"] for r in runs[VARIANTS[0].name]]
    lines = []
    for v in VARIANTS:
        acc = [r["test_acc"] for r in runs[v.name]]
        mean, std = mean_std(acc) if acc else (None, None)
        shown = "-" if mean is None else f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"
        diff = "default" if v is VARIANTS[0] else fmt_diff(*welch(acc, default)) if acc and default else "-"
        lines.append([v.name, v.what, str(len(acc)), shown, diff])
    out = table(["way", "what ran", "seeds", "test acc mean ± std", "Δ vs default [95%]"], lines)
    out += ["", gap_sentence(runs)]
    kept = [r for recs in runs.values() for r in recs]
    if kept:
        out += ["", f"{len(kept)} {budget}-budget runs; the numbers come from:", ""]
        out += provenance(kept, newest_version(kept))
    return "\n".join(out) + "\n"


def slice_markdown(entries: list[dict], rows: list, log: str = "bench/results/slices.jsonl") -> str:
    """The latest full-budget line of the GPU slice log (`bench.slices`) in words, and how many full-budget runs a
    15-minute slice finishes at its speed."""
    from bench.budgets import TRAIN_SET_IMAGES, row_recipe  # bench.budgets imports the recipes: only when needed

    entry = latest_slice(entries)
    if entry is None:
        return f"No full-budget GPU slice logged yet in `{log}`.\n"
    stages = ", ".join(f"{name} {f['seconds']:.0f} s" + (f" ({f['runs']} runs)" if f["runs"] else "")
                       for name, f in entry["stages"].items())
    ips = entry["images_per_second"]
    text = (f"Latest slice ({entry['date']}, {entry['gpu'] or 'no GPU'}, {entry['seconds_given']:.0f} s given): "
            f"{stages}; {entry['runs_finished']} runs finished; "
            + (f"{ips:,.0f} train img/s in all." if ips is not None else "no run with a measured speed."))
    base = next((r for r in rows if r.id == BASE_ROW), None)
    if base is None or ips is None:  # a table of one's own without the S9 baseline: no run length to divide by
        return text + "\n"
    recipe = row_recipe(base, "full", 0)
    run_images = recipe.epochs * (TRAIN_SET_IMAGES[recipe.dataset] // recipe.bs * recipe.bs)
    n = runs_per_slice(entry, run_images)
    if n is not None:
        text += (f" At that speed a {SLICE_SECONDS / 60:.0f}-minute slice finishes about {n} full-budget runs "
                 f"({recipe.epochs} epochs of {run_images // recipe.epochs:,} images each).")
    return text + "\n"


def readme_parts(path: Path, markers: tuple[str, str] = (START, END)) -> tuple[str, str]:
    """(the text of `path` up to and with its start marker line, the text from its end marker line on; START and
    END by default); a one-line ConfigError when it cannot be read, is not UTF-8, or lacks the markers. Checked
    before a report writes anything."""
    start, end = markers
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path} ({e.strerror}); give a file with the lines {start} and {end}") from None
    try:
        lines = raw.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r}); the README must be "
                          "UTF-8 text: convert it (e.g. iconv -t UTF-8) and give it again") from None
    starts = [i for i, line in enumerate(lines) if line.strip() == start]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        what = "the full-budget table" if markers == (START, END) else "what the report writes there"
        raise ConfigError(f"{path} needs one line {start} and after it one line {end}, around {what}")
    return "".join(lines[:starts[0] + 1]), "".join(lines[ends[0]:])


def has_markers(path: Path, markers: tuple[str, str]) -> bool:
    """Whether `path` holds either line of `markers` (then `readme_parts` must find both, in order)."""
    text = Path(path).read_bytes().decode("utf-8", errors="replace")
    return any(line.strip() in markers for line in text.splitlines())


def replace_between_markers(path: Path, text: str, markers: tuple[str, str] = (START, END)) -> None:
    """Replace the lines between the marker lines of `path` (START and END by default) by `text` (atomically;
    nothing else changes).

    A `path` that is a symbolic link stays one: the file it points to is written."""
    head, tail = readme_parts(path, markers)
    write_atomic(Path(path).resolve(), head + "\n" + text.rstrip("\n") + "\n\n" + tail)  # keeps the file's mode
