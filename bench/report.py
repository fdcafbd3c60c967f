"""The bench report: the notes' numbers beside the measured ones, per section, and a verdict per conclusion.

`write_report(results_dir, rows, conclusions, budget)` reads the results store and writes
`<results_dir>/report.md` and one chart per section, `<results_dir>/report-<section>.png` (noted vs
measured bars; error bars are the standard deviation over runs / seeds).

Definitions (all accuracies in %, differences in points):

- Records used: those of `budget`; with `budget=None`, the largest budget in `bench.table.BUDGETS`
  that the store holds. For each (row, seed) only the newest record counts (a replay after a code
  change replaces the old numbers as it goes).
- measured: mean ± sample standard deviation (ddof 1) over seeds of each run's final `test_acc`
  (for refine rows the last generation's); n is the number of seeds.
- noted value of a row: the single number ('single'), the mean of the runs ('runs'), the last
  generation's number ('generations'). The headline's "mean |measured - noted|" averages over the
  section's rows that have both.
- difference: mean(row) - mean(other) with a 95% Welch interval
  d ± q · sqrt(s1²/n1 + s2²/n2), q = the 0.975 quantile of Student's t at the Welch-Satterthwaite
  df = (s1²/n1 + s2²/n2)² / ((s1²/n1)²/(n1-1) + (s2²/n2)²/(n2-1)). With both variances 0 the
  interval is [d, d]. With n < 2 on either side there is no interval ('n<2').
  q comes from `scipy.stats.t.ppf` when scipy is importable (it is a dependency of fastai); else
  from `T_TABLE` (exact to 6 decimals for df 1..30, at df rounded down, which widens the interval)
  and the normal quantile 1.959964 beyond df 30.
- verdict of a conclusion (row vs versus, interval [lo, hi] of row - versus):
  no interval (a side unmeasured or n < 2): 'cannot tell';
  expect 'better': 'supports' if lo > 0, 'contradicts' if hi < 0, else 'cannot tell';
  expect 'worse': 'supports' if hi < 0, 'contradicts' if lo > 0, else 'cannot tell';
  expect 'same' (an equivalence test with margin SAME_MARGIN = 0.5 points): 'supports' if
  -0.5 <= lo and hi <= 0.5, 'contradicts' if hi < -0.5 or lo > 0.5 (a difference larger than the
  margin is certain), else 'cannot tell'.
"""
from __future__ import annotations

import io
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.store import DB_NAME, Store
from tricks.errors import ConfigError, RunFolderError
from tricks.files import write_atomic

SAME_MARGIN = 0.5  # points: 'same' is supported when the whole 95% interval lies within ±SAME_MARGIN
LEVEL = 0.95
NORMAL_Q = 1.959964
T_TABLE = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
           2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
           2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)


def t_quantile(df: float, use_scipy: bool = True) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (see the module docstring)."""
    if use_scipy:
        try:
            from scipy.stats import t
        except ImportError:
            pass
        else:
            return float(t.ppf(0.5 + LEVEL / 2, df))
    k = math.floor(df)
    return T_TABLE[max(k, 1) - 1] if k <= len(T_TABLE) else NORMAL_Q


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample std), std None for one value."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def welch(a: list[float], b: list[float]) -> tuple[float, tuple[float, float] | None]:
    """(mean(a) - mean(b), its 95% Welch interval or None when n < 2 on either side)."""
    d = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return d, None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return d, (d, d)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    q = t_quantile(df)
    return d, (d - q * se, d + q * se)


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
    from bench.table import BUDGETS

    if budget is not None:
        if budget not in BUDGETS:
            raise ConfigError(f"unknown budget '{budget}'; choose one of {', '.join(BUDGETS)}")
        return budget
    held = {r["budget"] for r in records}
    return next((b for b in reversed(BUDGETS) if b in held), None)


def latest(records: list[dict]) -> dict[str, list[dict]]:
    """row id -> its records, the newest per seed, in seed order (records come oldest first)."""
    by_key = {(r["row_id"], r["seed"]): r for r in records}
    out: dict[str, list[dict]] = defaultdict(list)
    for (row_id, _), r in sorted(by_key.items()):
        out[row_id].append(r)
    return out


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


def section_chart(section: str, rows: list[Any], acc: dict[str, list[float]], path: Path) -> None:
    """Grouped bars per row: noted (std of several runs) and measured mean (std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.id[len(section) + 1:] if r.id.startswith(section + ".") else r.id for r in rows]
    noted, noted_err, meas, meas_err = [], [], [], []
    for r in rows:
        nv = noted_value(r)
        noted.append(math.nan if nv is None else nv)
        noted_err.append(statistics.stdev(r.noted) if r.kind == "runs" and len(r.noted) > 1 else 0.0)
        m, s = mean_std(acc[r.id]) if acc.get(r.id) else (math.nan, None)
        meas.append(m)
        meas_err.append(s or 0.0)
    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(rows) + 2), 5.0))
    ax.bar([i - 0.2 for i in x], noted, 0.4, yerr=noted_err, capsize=3, label="noted")
    ax.bar([i + 0.2 for i in x], meas, 0.4, yerr=meas_err, capsize=3, label="measured")
    values = [v for v in noted + meas if not math.isnan(v)]
    if values:
        ax.set_ylim(max(0.0, min(values) - 3), min(100.0, max(values) + 2))
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="test accuracy (%)", title=f"{section}: noted vs measured")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def write_report(results_dir: Path, rows: list, conclusions: list, budget: str | None = None) -> Path:
    """Write report.md and report-<section>.png into `results_dir`; returns report.md's path."""
    results_dir = Path(results_dir)
    if not (results_dir / DB_NAME).is_file():
        raise RunFolderError(f"no results in '{results_dir}' (no {DB_NAME}); run `bench replay --results "
                             f"{results_dir}` first, or give the results folder it wrote")
    all_records = Store(results_dir).records()
    budget = choose_budget(all_records, budget)
    by_id = {r.id: r for r in rows}
    # runs of this budget and of each row's current recipe (a row edited in the table since is not mixed in)
    used = [r for r in all_records if r["budget"] == budget and r["row_id"] in by_id
            and r["recipe"] == by_id[r["row_id"]].stored_recipe]
    by_row = latest(used)
    acc = {r.id: [rec["test_acc"] for rec in by_row.get(r.id, [])] if r.status != "inexpressible" else []
           for r in rows}
    sections: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        sections[r.section].append(r)

    def diff(a: str, b: str) -> tuple[float, tuple[float, float] | None] | None:
        if not acc.get(a) or not acc.get(b):
            return None
        return welch(acc[a], acc[b])

    verdicts = {}
    for c in conclusions:
        for rid in (c.row, c.versus):
            if rid not in by_id:
                raise ConfigError(f"conclusion '{c.id}' names row '{rid}', which is not among the rows given")
        dv = diff(c.row, c.versus)
        verdicts[c.id] = verdict(c.expect, dv[1] if dv else None)

    kept = [rec for recs in by_row.values() for rec in recs if rec["row_id"] in by_id]
    out = ["# Bench report: the notes' numbers replayed", ""]
    if budget is None:
        out += ["No results stored yet: run `bench replay` first.", ""]
    versions = sorted({r["code_version"] for r in kept})
    checksums = sorted({r["dataset_checksum"] for r in kept})
    out += [(f"Budget: **{budget or '-'}**; {len(kept)} runs; code "
             f"{', '.join(versions) or '-'}; data {', '.join(checksums) or '-'}."), "",
            ("Accuracy is test top-1 in %; measured is mean ± std over seeds (n); Δ is in points with a 95% "
             f"Welch interval; a 'same' conclusion is supported when the interval lies within ±{SAME_MARGIN} points."),
            "", "## Headline", ""]
    head = []
    for section, srows in sections.items():
        gaps = [abs(statistics.fmean(acc[r.id]) - noted_value(r)) for r in srows
                if acc[r.id] and noted_value(r) is not None]
        sv = [verdicts[c.id] for c in conclusions if c.section == section]
        head.append([section, str(len(srows)), str(sum(1 for r in srows if acc[r.id])),
                     f"{statistics.fmean(gaps):.2f}" if gaps else "-",
                     str(sv.count("supports")), str(sv.count("contradicts")), str(sv.count("cannot tell"))])
    out += table(["section", "rows", "measured", "mean \\|measured - noted\\|", "supports", "contradicts",
                  "cannot tell"], head)
    for section, srows in sections.items():
        out += ["", f"## {section}", ""]
        lines = []
        for r in srows:
            if r.baseline is None or r.baseline == r.id:
                dcell = "baseline" if r.baseline == r.id else "-"
            else:
                dv = diff(r.id, r.baseline)
                dcell = fmt_diff(*dv) if dv else "-"
            noted = "[no result]" if r.status == "unmeasured" or not r.noted else "/".join(f"{v:.2f}" for v in r.noted)
            lines.append([r.id, recipe_cell(r), noted, measured_cell(r, by_row.get(r.id, [])), dcell,
                          r.why if r.status != "inexpressible" else ""])
        out += table(["row", "recipe", "noted", "measured", "Δ vs baseline", "remark"], lines)
        chart = results_dir / f"report-{section}.png"
        section_chart(section, srows, acc, chart)
        out += ["", f"![{section}: noted vs measured]({chart.name})"]
        scon = [c for c in conclusions if c.section == section]
        if scon:
            clines = []
            for c in scon:
                dv = diff(c.row, c.versus)
                clines.append([c.text, c.row, c.versus, c.expect, fmt_diff(*dv) if dv else "not measured",
                               verdicts[c.id]])
            out += ["", "Conclusions:", ""]
            out += table(["the notes say", "row", "versus", "expected", "measured Δ", "verdict"], clines)
    path = results_dir / "report.md"
    write_atomic(path, "\n".join(out) + "\n")
    return path
