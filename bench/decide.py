"""`bench decide`: run seeds only where a conclusion of the table is still open, stop when it is decided.

A conclusion (`row` is better / worse / the same as `versus`) is decided by the sequential test of
`bench.sequential` on the seeds of its two rows in the store (and in the results file, for the full
budget), per seed the record finished last whatever its code version, as `bench report` reads them:
'confirmed', 'contradicted', 'undecided' (max_seeds seeds per row looked at, no rule met), or 'open'
(more seeds can decide it). The loop: read the records, decide every selected conclusion, plan the
next runs, train them (`bench.job`, as `bench replay` does: local workers or a Ray cluster, `until` with
a run in flight stopped at its epoch's checkpoint and resumed by the next call), and again, until no
conclusion is open, the deadline has passed, or a round ran nothing. Everything is read back from the
store each round, so a killed `bench decide` goes on where it stopped.

Which run next (`plan`): for each open conclusion, its next look needs each row at `look` seeds (the
look after its last one); P = the chance that look decides it (`sequential.decision_probability`, with
the measured difference, else the notes' difference, else 0, and the seed standard deviation pooled over
the selected rows that have two seeds, else 1 point), and cost = the training seconds of the runs it
still lacks (a row's mean wall seconds, else its epochs, every refinery generation's, times the measured
seconds per epoch). A row's score is the sum of (P + 0.01) / cost over the open conclusions whose next
look needs it (a baseline serves all of its section's); the row with the highest score runs next, one
seed at a time (the smallest seed number it lacks), the next `workers` of them at once.

`simulate` replaces training with draws from a normal distribution per row (a TOML spec: a table per
row glob with `mean`, `sd` and optional `seconds`), nothing stored: the same decisions and plan, instantly.
"""
from __future__ import annotations

import fnmatch
import math
import statistics
import time
import tomllib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bench import sequential
from bench.table import Conclusion, Row
from tricks.errors import ConfigError

NOT_STARTED = "not started: "  # a job the deadline left unstarted (not a failure)
EPSILON = 0.01  # added to every decision chance, so that cost still orders conclusions nothing can decide yet
DEFAULT_SD = 1.0  # points: the seed standard deviation assumed before any row has two seeds


@dataclass(frozen=True)
class Status:
    """Where one conclusion stands."""

    conclusion: Conclusion
    verdict: str  # one of sequential.VERDICTS
    seeds: int  # seeds per row the verdict looked at (0: no look yet)
    diff: float | None  # measured row - versus at that look
    interval: tuple[float, float] | None  # its repeated confidence interval
    level: float  # the interval's coverage, 0.95 or 0.90 ('same')
    seconds: float  # training seconds of the runs the look used

    @property
    def open(self) -> bool:
        return self.verdict == "open"


def select_conclusions(conclusions: list[Conclusion], globs: list[str]) -> list[Conclusion]:
    """The conclusions whose id matches one of `globs` (fnmatch, case-insensitive; none given: all)."""
    if not globs:
        return list(conclusions)
    patterns = [g.strip().lower() for glob in globs for g in glob.split(",") if g.strip()]
    chosen = [c for c in conclusions if any(fnmatch.fnmatchcase(c.id.lower(), p) for p in patterns)]
    if not chosen:
        raise ConfigError(f"no conclusion id matches {' '.join(globs)}; conclusion ids look like S9.mixup-helps, "
                          "e.g. 'S9.*' (`bench list` names the rows, the table's [[conclusion]] entries the ids)")
    return chosen


def accuracies(records: list[dict]) -> dict[str, list[tuple[int, float, float]]]:
    """row id -> [(seed, test_acc, wall_seconds)] in seed order, from records already one per (row, seed)."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    for r in sorted(records, key=lambda r: (r["row_id"], r["seed"])):
        out.setdefault(r["row_id"], []).append((int(r["seed"]), float(r["test_acc"]), float(r["wall_seconds"])))
    return out


def status(c: Conclusion, runs: dict[str, list[tuple[int, float, float]]], *, max_seeds: int,
           margin: float) -> Status:
    """The sequential verdict of `c` on the runs held (`accuracies`)."""
    a, b = runs.get(c.row, []), runs.get(c.versus, [])
    out = sequential.decide(np.array([acc for _, acc, _ in a]), np.array([acc for _, acc, _ in b]), c.expect,
                            max_seeds=max_seeds, margin=margin)
    seeds = int(out["seeds"])
    verdict = sequential.VERDICTS[int(out["verdict"])]
    if min(len(a), len(b)) >= max_seeds and verdict == "open":
        verdict = "undecided"
    interval = None if seeds == 0 else (float(out["lo"]), float(out["hi"]))
    seconds = sum(s for _, _, s in a[:seeds]) + sum(s for _, _, s in b[:seeds])
    return Status(c, verdict, seeds, None if seeds == 0 else float(out["diff"]), interval,
                  1 - sequential.level(c.expect, sequential.ALPHA), seconds)


def pooled_sd(runs: dict[str, list[tuple[int, float, float]]]) -> float:
    """The seed standard deviation pooled over the rows with at least two seeds (DEFAULT_SD when none)."""
    parts = [(len(v) - 1, statistics.variance([acc for _, acc, _ in v])) for v in runs.values() if len(v) >= 2]
    dof = sum(n for n, _ in parts)
    return math.sqrt(sum(n * var for n, var in parts) / dof) if dof else DEFAULT_SD


def expected_diff(c: Conclusion, runs: dict, rows: dict[str, Row]) -> float:
    """The measured difference of means, else the notes' (the mean of each row's noted numbers), else 0."""
    a, b = runs.get(c.row), runs.get(c.versus)
    if a and b:
        return statistics.fmean(x for _, x, _ in a) - statistics.fmean(x for _, x, _ in b)
    na, nb = rows[c.row].noted, rows[c.versus].noted
    return (statistics.fmean(na) - statistics.fmean(nb)) if na and nb else 0.0


def next_look(s: Status) -> int:
    return max(sequential.FIRST_LOOK, s.seeds + 1)


def plan(statuses: list[Status], runs: dict, rows: dict[str, Row], seconds: Callable[[str], float], *,
         count: int, max_seeds: int, margin: float, exclude: frozenset[str] = frozenset()) -> list[str]:
    """The next `count` runs as row ids (a row may come more than once), best first (module docstring).

    A row planned once counts as holding one more run for the next pick; `exclude`: rows not to run (they failed)."""
    held = {rid: len(runs.get(rid, [])) for rid in rows}
    sd = pooled_sd(runs)
    chance = {s.conclusion.id: sequential.decision_probability(
        s.conclusion.expect, expected_diff(s.conclusion, runs, rows), sd, next_look(s), max_seeds=max_seeds,
        margin=margin) for s in statuses if s.open}
    out: list[str] = []
    for _ in range(count):
        score: dict[str, float] = {}
        for s in statuses:
            if not s.open:
                continue
            look = next_look(s)
            lacking = {rid: look - held[rid] for rid in (s.conclusion.row, s.conclusion.versus) if held[rid] < look}
            if not lacking:
                continue  # its look waits only for runs in flight
            cost = sum(n * seconds(rid) for rid, n in lacking.items())
            for rid in set(lacking) - exclude:
                score[rid] = score.get(rid, 0.0) + (chance[s.conclusion.id] + EPSILON) / max(cost, 1e-9)
        if not score:
            break
        order = list(rows)
        best = max(score, key=lambda rid: (score[rid], -order.index(rid)))
        out.append(best)
        held[best] += 1
    return out


class Seconds:
    """A row's training seconds: the mean of its runs', else its epochs times the measured seconds per epoch
    (every refinery generation counts), else its epochs (`epochs_of`)."""

    def __init__(self, runs: dict, epochs_of: Callable[[str], float]):
        self.runs, self.epochs_of = runs, epochs_of
        per_epoch = [statistics.fmean(s for _, _, s in v) / max(epochs_of(rid), 1.0) for rid, v in runs.items() if v]
        self.per_epoch = statistics.fmean(per_epoch) if per_epoch else 1.0

    def __call__(self, rid: str) -> float:
        held = self.runs.get(rid)
        if held:
            return statistics.fmean(s for _, _, s in held)
        return self.per_epoch * max(self.epochs_of(rid), 1.0)


def next_seed(rid: str, runs: dict, taken: set[tuple[str, int]]) -> int:
    """The smallest seed number `rid` has no run of and that is not being started already."""
    have = {seed for seed, _, _ in runs.get(rid, [])}
    seed = 0
    while seed in have or (rid, seed) in taken:
        seed += 1
    return seed


# ------------------------------------------------------------------------------------------ simulation
@dataclass(frozen=True)
class Simulated:
    mean: float
    sd: float
    seconds: float


def load_simulation(path: str | Path, rows: list[Row]) -> dict[str, Simulated]:
    """row id -> its simulated distribution, from a TOML file of tables named by row globs (first match wins)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--simulate {path} does not exist; give a TOML file with a table per row glob, e.g. "
                          "[\"S9.*\"] mean = 92.0, sd = 0.3") from None
    except (OSError, UnicodeDecodeError) as e:  # a folder, an unreadable file, bytes that are not UTF-8
        why = e.strerror if isinstance(e, OSError) else e.reason
        raise ConfigError(f"--simulate {path} cannot be read ({type(e).__name__}: {why}); give a UTF-8 TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--simulate {path} is not valid TOML: {e}") from None
    specs = []
    for glob, entry in doc.items():
        if not isinstance(entry, dict) or set(entry) - {"mean", "sd", "seconds"} or not {"mean", "sd"} <= set(entry):
            raise ConfigError(f"--simulate {path}: ['{glob}'] must be a table of mean, sd and optional seconds")
        values = [entry["mean"], entry["sd"], entry.get("seconds", 1.0)]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values) \
                or values[1] < 0 or values[2] <= 0:
            raise ConfigError(f"--simulate {path}: ['{glob}'] needs numbers, sd >= 0 and seconds > 0")
        specs.append((glob.lower(), Simulated(*map(float, values))))
    out = {}
    for row in rows:
        match = next((s for g, s in specs if fnmatch.fnmatchcase(row.id.lower(), g)), None)
        if match is not None:
            out[row.id] = match
    return out


def simulated_record(row: Row, seed: int, spec: Simulated, budget: str) -> dict:
    """One simulated run: test_acc drawn from N(mean, sd), seeded by (row id, seed)."""
    rng = np.random.default_rng([zlib.crc32(row.id.encode()), seed])
    return {"row_id": row.id, "recipe": row.stored_recipe, "budget": budget, "seed": seed,
            "test_acc": float(rng.normal(spec.mean, spec.sd)), "wall_seconds": spec.seconds,
            "finished_at": "simulated"}


# ------------------------------------------------------------------------------------------ the loop
@dataclass
class Outcome:
    statuses: list[Status]
    ran: int = 0
    failed: int = 0
    abandoned: int = 0
    planned: list[tuple[str, int]] | None = None  # a dry run's next runs


def involved_rows(chosen: list[Conclusion], rows: list[Row]) -> dict[str, Row]:
    ids = {rid for c in chosen for rid in (c.row, c.versus)}
    return {r.id: r for r in rows if r.id in ids}


def run_decide(chosen: list[Conclusion], rows: list[Row], *, load: Callable[[], list[dict]],
               train: Callable[[list[tuple[Row, int]]], list[tuple[dict | None, str | None]]] | None,
               epochs_of: Callable[[str], float], workers: int = 1, max_seeds: int = sequential.MAX_SEEDS,
               margin: float = sequential.MARGIN, deadline: float | None = None, dry_run: bool = False,
               dry_count: int = 8, progress: Callable[[str], None] = lambda line: None,
               now: Callable[[], float] = time.time) -> Outcome:
    """Decide `chosen` (module docstring). `load()` gives the records that count, one per (row, seed);
    `train(jobs)` runs (row, seed) jobs and gives (record, error) for each; with `dry_run` nothing is
    trained and `planned` holds the next `dry_count` runs."""
    if max_seeds < sequential.FIRST_LOOK:
        raise ConfigError(f"--max-seeds must be at least {sequential.FIRST_LOOK}, got {max_seeds}")
    by_id = involved_rows(chosen, rows)
    outcome = Outcome([])
    failed: set[str] = set()  # rows that failed in this call are not tried again until the next one
    while True:
        runs = accuracies([r for r in load() if r["row_id"] in by_id])
        outcome.statuses = [status(c, runs, max_seeds=max_seeds, margin=margin) for c in chosen]
        seconds = Seconds(runs, epochs_of)
        todo = plan(outcome.statuses, runs, by_id, seconds, count=dry_count if dry_run else workers,
                    max_seeds=max_seeds, margin=margin, exclude=frozenset(failed))
        taken: set[tuple[str, int]] = set()
        jobs = []
        for rid in todo:
            seed = next_seed(rid, runs, taken)
            taken.add((rid, seed))
            jobs.append((by_id[rid], seed))
        if dry_run:
            outcome.planned = [(row.id, seed) for row, seed in jobs]
            return outcome
        if not jobs:
            return outcome
        if deadline is not None:
            jobs = [(row, seed) for row, seed in jobs if now() + seconds(row.id) <= deadline] if now() < deadline \
                else []
            if not jobs:
                progress("the deadline leaves no time for the next run; `bench decide` again goes on")
                return outcome
        ran_now = 0
        for (row, seed), (record, error) in zip(jobs, train(jobs)):
            if error is None:
                ran_now += 1
                progress(f"{row.id} seed {seed}: test_acc {record['test_acc']:.2f} ({record['wall_seconds']:.0f} s)")
            elif error.startswith(("abandoned: ", NOT_STARTED)):
                outcome.abandoned += error.startswith("abandoned: ")
                progress(f"{row.id} seed {seed}: {error}")
            else:
                failed.add(row.id)
                outcome.failed += 1
                progress(f"{row.id} seed {seed}: failed: {error}")
        outcome.ran += ran_now
        if ran_now == 0:
            return outcome


def verdict_lines(statuses: list[Status]) -> list[list[str]]:
    """One line per conclusion: id, the notes' words, expected, difference [interval] (level), verdict, seeds,
    training seconds."""
    out = []
    for s in statuses:
        c = s.conclusion
        if s.interval is None:
            measured = f"no look yet ({sequential.FIRST_LOOK} seeds per row needed)"
        else:
            measured = f"{s.diff:+.2f} [{s.interval[0]:+.2f}, {s.interval[1]:+.2f}] ({100 * s.level:.0f}%)"
        expected = f"{c.expect} {'as' if c.expect == 'same' else 'than'} {c.versus}"
        out.append([c.id, c.text, expected, measured, s.verdict, str(s.seeds), f"{s.seconds:.0f}"])
    return out


VERDICT_HEADER = ["conclusion", "the notes say", "expected", "measured Δ [repeated interval]", "verdict",
                  "seeds per row", "training s"]


def verdict_markdown(statuses: list[Status], *, budget: str, max_seeds: int, margin: float) -> str:
    from bench.report import table

    counts = {v: sum(s.verdict == v for s in statuses) for v in sequential.VERDICTS}
    lines = [f"# bench decide: {len(statuses)} conclusions, budget {budget}", "",
             f"Sequential test of `bench/sequential.py` (at most {max_seeds} seeds per row, 'same' within "
             f"±{margin:g} points); " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".", ""]
    if budget == "smoke":
        lines += ["Smoke-budget numbers (one batch per row) say only that the rows run: they are not conclusions.",
                  ""]
    return "\n".join(lines + table(VERDICT_HEADER, verdict_lines(statuses))) + "\n"


# ------------------------------------------------------------------------------------------ the command
def decide_table(rows: list[Row], conclusions: list[Conclusion], globs: list[str], *, budget: str,
                 results_dir: Path, results_path: Path | None, data: str | None, dataset: str = "cifar10",
                 device: str = "auto", workers: int = 1, ray_address: str | None = None,
                 until: float | None = None, max_seeds: int = sequential.MAX_SEEDS,
                 margin: float = sequential.MARGIN, dry_run: bool = False, simulate: str | None = None,
                 progress: Callable[[str], None] = lambda line: None) -> tuple[Outcome, str]:
    """`bench decide`: the outcome and the verdict table's markdown, also written to `<results_dir>/decide.md`
    (not for a dry run or a simulation)."""
    from bench.budgets import BUDGETS

    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget '{budget}'; choose one of {', '.join(BUDGETS)}")
    if until is not None and until <= 0:
        raise ConfigError(f"--until must be a positive number of seconds, got {until:g}")
    if margin <= 0 or not math.isfinite(margin):
        raise ConfigError(f"--margin must be a positive number of points, got {margin:g}")
    chosen = select_conclusions(conclusions, globs)
    by_id = involved_rows(chosen, rows)
    if simulate is not None:
        outcome = _simulate(chosen, rows, by_id, simulate, budget=budget, workers=workers, max_seeds=max_seeds,
                            margin=margin, dry_run=dry_run, progress=progress)
        return outcome, verdict_markdown(outcome.statuses, budget=budget, max_seeds=max_seeds, margin=margin)
    from bench import job as job_module
    from bench import replay as replay_module

    results_dir = Path(results_dir)
    deadline = None if until is None else job_module._now() + until
    checksums = {} if dry_run else {rid: replay_module._data_checksum(row, data, dataset) for rid, row in by_id.items()}
    load = lambda: _records(results_dir, results_path, by_id, budget, checksums)
    epochs_of = lambda rid: _epochs(by_id[rid], budget, data, dataset, device)
    if dry_run:
        outcome = run_decide(chosen, rows, load=load, train=None, epochs_of=epochs_of, workers=workers,
                             max_seeds=max_seeds, margin=margin, dry_run=True)
        return outcome, verdict_markdown(outcome.statuses, budget=budget, max_seeds=max_seeds, margin=margin)
    lock = replay_module._lock(results_dir)
    try:
        version = _code_version()

        def train(jobs: list[tuple[Row, int]]) -> list[tuple[dict | None, str | None]]:
            made = [job_module.Job(row, budget, seed, results_dir, None if data is None else str(data), dataset,
                                   device, version, workers=workers, deadline=deadline, results_file=results_path)
                    for row, seed in jobs]
            if ray_address is not None:
                from bench.ray_cluster import ray_outcomes

                outcomes = ray_outcomes(made, ray_address)
            else:
                outcomes = replay_module._outcomes(made, workers, deadline, {"not_started": 0}, predict=False)
            got = {(job.row.id, job.seed): (record, error) for job, record, error in outcomes}
            return [got.get((row.id, seed), (None, NOT_STARTED + "the deadline")) for row, seed in jobs]

        outcome = run_decide(chosen, rows, load=load, train=train, epochs_of=epochs_of, workers=workers,
                             max_seeds=max_seeds, margin=margin, deadline=deadline, progress=progress,
                             now=job_module._now)
    finally:
        lock.close()
    text = verdict_markdown(outcome.statuses, budget=budget, max_seeds=max_seeds, margin=margin)
    from tricks.files import write_atomic

    write_atomic(results_dir / "decide.md", text)
    return outcome, text


def _code_version() -> str:
    from bench.store import code_version

    return code_version()


def _records(results_dir: Path, results_path: Path | None, by_id: dict[str, Row], budget: str,
             checksums: dict[str, str | None]) -> list[dict]:
    """The records that count, one per (row, seed) (the one finished last): of `budget`, the row's current
    recipe, trained on the data of `checksums` (a dry run, with none: the data of the budget's record finished
    last, as `bench report` takes it)."""
    from bench.report import latest, report_data
    from bench.record import merge
    from bench.results_file import read
    from bench.store import DB_NAME, Store

    stored = Store(results_dir).records(budget) if (Path(results_dir) / DB_NAME).is_file() else []
    held = read(results_path) if results_path is not None and budget == "full" else []
    records = [r for r in merge(stored, held) if r["budget"] == budget and r["row_id"] in by_id
               and r["recipe"] == by_id[r["row_id"]].stored_recipe]
    fallback = report_data(records, budget)
    records = [r for r in records if r["dataset_checksum"] == (checksums.get(r["row_id"]) or fallback)]
    return [rec for recs in latest(records).values() for rec in recs]


def _epochs(row: Row, budget: str, data: str | None, dataset: str, device: str) -> float:
    """The epochs a row trains under `budget`, every refinery generation's (1 when it cannot be built)."""
    from bench.budgets import fit_epochs, row_recipe
    from tricks.errors import TricksError

    try:
        return float(sum(fit_epochs(row_recipe(row, budget, 0, data=data, dataset=dataset, device=device))))
    except TricksError:
        return 1.0


def _simulate(chosen: list[Conclusion], rows: list[Row], by_id: dict[str, Row], spec_path: str, *, budget: str,
              workers: int, max_seeds: int, margin: float, dry_run: bool, progress: Callable[[str], None]) -> Outcome:
    specs = load_simulation(spec_path, list(by_id.values()))
    missing = [rid for rid in by_id if rid not in specs]
    if missing:
        raise ConfigError(f"--simulate {spec_path} gives no distribution for row {missing[0]}; add a table whose "
                          f"glob matches it, e.g. [\"{missing[0]}\"] mean = 90.0, sd = 0.3")
    records: list[dict] = []

    def train(jobs: list[tuple[Row, int]]) -> list[tuple[dict | None, str | None]]:
        made = [simulated_record(row, seed, specs[row.id], budget) for row, seed in jobs]
        records.extend(made)
        return [(r, None) for r in made]

    return run_decide(chosen, rows, load=lambda: records, train=train, epochs_of=lambda rid: 1.0,
                      workers=workers, max_seeds=max_seeds, margin=margin, dry_run=dry_run, progress=progress)
