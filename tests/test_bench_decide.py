"""`bench decide` (bench/decide.py, bench/sequential.py): the sequential test holds its error rates over
repeated looks, reaches the stated power within 8 seeds, the allocation spends fewer runs than running
every row to --max-seeds, and the command prints, writes and resumes its verdict table.

The rate tests simulate 20,000 conclusions each (numpy, all at once): a rate is then known to about
±0.3 points, so a bound near the nominal 5% is a statement about the method, not about one draw."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm

from bench import sequential
from bench.cli import main
from bench.decide import Status, pooled_sd, plan, run_decide, select_conclusions, status
from bench.table import Conclusion
from tests.fixtures import row, write_cifar10
from tests.test_bench_ray import ray_head  # noqa: F401 (the fixture: a Ray head on 127.0.0.1)

N = 20_000
SD = 0.3


def simulate(diff: float, expect: str, sd: float = SD, n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return sequential.decide(rng.normal(diff, sd, (n, 8)), rng.normal(0.0, sd, (n, 8)), expect)


def rate(out: dict, verdict: str) -> float:
    return float(np.mean(out["verdict"] == sequential.VERDICTS.index(verdict)))


def test_boundaries_spend_alpha_as_the_multivariate_normal_says():
    """The numerical integration's boundaries cross with exactly the spent alpha at each look: checked with
    scipy's multivariate normal (Genz), an independent computation, for 3 looks (max_seeds 4)."""
    c = np.array(sequential.z_boundaries(4, 0.05))
    info = np.array([2.0, 3.0, 4.0])
    cov = np.sqrt(np.minimum.outer(info, info) / np.maximum.outer(info, info))
    spent = sequential.spent(0.05, info / 4)
    assert c[0] == pytest.approx(norm.isf(spent[0] / 2), abs=1e-9)
    for k in (2, 3):
        mvn = multivariate_normal(np.zeros(k), cov[:k, :k], abseps=1e-7, releps=1e-7)
        stay = mvn.cdf(c[:k], lower_limit=-c[:k])
        assert 1 - stay == pytest.approx(spent[k - 1], abs=2e-5)
    assert sequential.spent(0.05, 1.0) == pytest.approx(0.05)  # all of alpha is spent at the last look


def test_obrien_fleming_boundaries_for_8_seeds():
    """The 7 looks at 2..8 seeds per row: the boundaries fall from strict to near the fixed-n 1.96."""
    c = sequential.z_boundaries(8, 0.05)
    assert [round(x, 3) for x in c] == [3.920, 3.208, 2.802, 2.539, 2.353, 2.213, 2.104]


def test_no_difference_claims_better_or_worse_at_most_5_percent():
    out = simulate(0.0, "better")
    claimed = rate(out, "confirmed") + rate(out, "contradicted")
    assert claimed <= 0.05
    assert claimed > 0.04  # the test is not needlessly conservative: it spends its 5%
    print(f"true 0: better or worse claimed in {100 * claimed:.2f}% of {N}")


def test_fixed_n_interval_after_every_seed_would_claim_too_often():
    """What the sequential boundaries prevent: the report's 95% Welch interval recomputed after every seed
    claims a difference that is not there far more often than 5%."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, SD, (N, 8)), rng.normal(0, SD, (N, 8))
    claimed = np.zeros(N, dtype=bool)
    for n in range(2, 9):
        d, se, df = sequential.welch_parts(a[:, :n], b[:, :n])
        q = sequential.student_t.ppf(0.975, df)
        claimed |= np.abs(d) > q * se
    assert claimed.mean() > 0.10


def test_half_a_point_is_confirmed_in_80_percent_with_fewer_runs_than_8_seeds():
    out = simulate(0.5, "better")
    runs = 2 * out["seeds"].mean()
    assert rate(out, "confirmed") >= 0.80
    assert rate(out, "contradicted") == 0.0
    assert runs < 16
    print(f"true +0.5, sd 0.3: confirmed {100 * rate(out, 'confirmed'):.1f}%, {runs:.2f} runs on average (8 fixed "
          "seeds: 16)")


def test_same_is_confirmed_without_a_difference_and_not_with_one_point():
    same = simulate(0.0, "same")
    far = simulate(1.0, "same")
    assert rate(same, "confirmed") >= 0.70
    assert rate(far, "confirmed") <= 0.05
    assert rate(far, "contradicted") >= 0.80
    print(f"same, true 0: confirmed {100 * rate(same, 'confirmed'):.1f}%; true 1.0: confirmed "
          f"{100 * rate(far, 'confirmed'):.2f}%, contradicted {100 * rate(far, 'contradicted'):.1f}%")


def test_same_at_the_margin_is_confirmed_at_most_5_percent():
    """Two one-sided tests at 5% each: a true difference on the margin passes as 'same' at most 5% of the time."""
    assert rate(simulate(0.5, "same"), "confirmed") <= 0.05


def test_worse_is_the_mirror_of_better():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.5, SD, (N, 8)), rng.normal(0.0, SD, (N, 8))
    better, worse = sequential.decide(a, b, "better"), sequential.decide(b, a, "worse")
    assert np.array_equal(better["verdict"], worse["verdict"])
    assert np.allclose(better["lo"], -worse["hi"])


def test_a_verdict_depends_only_on_the_first_seeds_of_each_row():
    """Seeds a row has beyond the look (a baseline that serves other conclusions) change nothing."""
    a = np.array([93.0, 93.2, 93.1, 92.9])
    b = np.array([92.0, 92.1, 91.9, 92.05])
    out = sequential.decide(a, b, "better")
    more = sequential.decide(a, np.concatenate([b, [95.0, 80.0, 99.0]]), "better")
    assert sequential.VERDICTS[int(out["verdict"])] == "confirmed"
    assert int(out["seeds"]) == int(more["seeds"]) == 3
    assert float(out["lo"]) == float(more["lo"])


def test_status_of_one_conclusion_with_exact_interval():
    """Two seeds a row: the interval is d ± q·se with q = t.ppf(Phi(c_1), Welch df)."""
    c = Conclusion("S1.x", "S1", "x helps", "S1.a", "S1.b", "better")
    runs = {"S1.a": [(0, 91.0, 10.0), (1, 92.0, 10.0)], "S1.b": [(0, 90.0, 5.0), (1, 90.5, 5.0)]}
    s = status(c, runs, max_seeds=8, margin=0.5)
    se = math.sqrt(0.5 / 2 + 0.125 / 2)
    df = (0.25 + 0.0625) ** 2 / (0.25 ** 2 + 0.0625 ** 2)
    q = sequential.student_t.ppf(norm.cdf(sequential.z_boundaries(8, sequential.SPENT_ALPHA)[0]), df)
    assert s.diff == pytest.approx(1.25)
    assert s.interval == pytest.approx((1.25 - q * se, 1.25 + q * se))
    assert (s.verdict, s.seeds, s.seconds, s.level) == ("open", 2, 30.0, 0.95)
    assert status(c, runs, max_seeds=2, margin=0.5).verdict == "undecided"


def section(diffs: dict[str, tuple[float, str]]):
    rows = [row("S1.base")] + [row(f"S1.{name}") for name in diffs]
    conclusions = [Conclusion(f"S1.c-{name}", "S1", f"{name} changes it", f"S1.{name}", "S1.base", expect)
                   for name, (_, expect) in diffs.items()]
    return rows, conclusions


def decide_simulated(rows, conclusions, means: dict[str, float], seed: int, seconds: dict[str, float] | None = None):
    rng = np.random.default_rng(seed)
    records = []

    def train(jobs):
        made = [{"row_id": r.id, "seed": s, "test_acc": float(rng.normal(means[r.id], SD)),
                 "wall_seconds": (seconds or {}).get(r.id, 1.0)} for r, s in jobs]
        records.extend(made)
        return [(m, None) for m in made]

    return run_decide(conclusions, rows, load=lambda: records, train=train, epochs_of=lambda rid: 1.0), records


def test_allocation_spends_fewer_runs_than_every_row_to_max_seeds():
    """A section of a baseline and 4 rows (true +0.5, +1.0, 0 for 'same', 0 for 'better'), 60 times: the
    allocation uses at most 0.85 of the runs of 8 seeds for every row (5 rows x 8 = 40; measured 0.82: the
    conclusion with no difference needs all 8 seeds of its row and of the baseline)."""
    diffs = {"half": (0.5, "better"), "one": (1.0, "better"), "none": (0.0, "same"), "null": (0.0, "better")}
    rows, conclusions = section(diffs)
    means = {"S1.base": 92.0, **{f"S1.{k}": 92.0 + d for k, (d, _) in diffs.items()}}
    totals, confirmed = [], 0
    for seed in range(60):
        outcome, records = decide_simulated(rows, conclusions, means, seed)
        assert not any(s.open for s in outcome.statuses)
        totals.append(len(records))
        confirmed += sum(s.verdict == "confirmed" for s in outcome.statuses[:2])
    factor = np.mean(totals) / 40
    assert factor <= 0.85
    assert confirmed / 120 >= 0.85
    print(f"allocation: {np.mean(totals):.1f} runs on average against 40 (factor {factor:.2f})")


def test_until_starts_no_run_that_cannot_finish_and_a_failing_row_is_not_retried():
    rows, conclusions = section({"a": (0.5, "better"), "b": (0.5, "better")})
    clock = [0.0]
    records, asked = [], []

    def train(jobs):
        out = []
        for r, s in jobs:
            asked.append(r.id)
            clock[0] += 10.0
            if r.id == "S1.b":
                out.append((None, "no data for this row"))
                continue
            rec = {"row_id": r.id, "seed": s, "test_acc": 92.0 + s / 10, "wall_seconds": 10.0}
            records.append(rec)
            out.append((rec, None))
        return out

    epochs = {"S1.a": 2.0}  # so the planner tries the cheaper S1.b first
    outcome = run_decide(conclusions, rows, load=lambda: records, train=train, epochs_of=lambda rid: epochs.get(rid, 1),
                         deadline=45.0, now=lambda: clock[0])
    # S1.b failed once and is left to the next call; S1.a, predicted at 2 epochs of 10 s, would end at 50 > 45
    assert asked == ["S1.base", "S1.base", "S1.b"]
    assert outcome.failed == 1 and outcome.ran == 2 and clock[0] == 30.0
    assert [s.verdict for s in outcome.statuses] == ["open", "open"]


def test_plan_prefers_the_cheap_conclusion_and_the_shared_baseline():
    rows, conclusions = section({"a": (0.5, "better"), "b": (0.5, "better")})
    statuses = [Status(c, "open", 0, None, None, 0.95, 0.0) for c in conclusions]
    by_id = {r.id: r for r in rows}
    cost = {"S1.base": 10.0, "S1.a": 10.0, "S1.b": 1000.0}.__getitem__
    assert plan(statuses, {}, by_id, cost, count=3, max_seeds=8, margin=0.5) == ["S1.base", "S1.base", "S1.a"]
    held = {"S1.base": [(0, 92.0, 10.0), (1, 92.2, 10.0)]}
    assert plan(statuses, held, by_id, cost, count=2, max_seeds=8, margin=0.5) == ["S1.a", "S1.a"]
    assert pooled_sd(held) == pytest.approx(math.sqrt(0.02))


def test_select_conclusions_by_glob():
    _, conclusions = section({"a": (0.5, "better"), "b": (0.5, "better")})
    assert [c.id for c in select_conclusions(conclusions, ["S1.c-a"])] == ["S1.c-a"]
    assert len(select_conclusions(conclusions, [])) == 2


SPEC = """
["S9.baseline"]
mean = 92.0
sd = 0.3
["S9.mixup.a0.3"]
mean = 93.0
sd = 0.3
seconds = 2.0
"""


def test_cli_simulate_prints_the_verdict_table(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    assert main(["decide", "S9.mixup-helps", "--simulate", str(spec), "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("| S9.mixup-helps"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:3] == ["mixup helps", "better than S9.baseline"]
    assert cells[4] == "confirmed"
    assert int(cells[6]) == int(cells[5]) * 3  # seconds: 1 s a baseline run, 2 s a mixup run
    assert not (tmp_path / "r").exists()  # a simulation stores nothing


@pytest.mark.parametrize("spec, why", [("folder", "(IsADirectoryError: Is a directory)"),
                                       ("latin1", "(UnicodeDecodeError: invalid continuation byte)")])
def test_cli_simulate_of_an_unreadable_spec_is_one_line(tmp_path, capsys, spec, why):
    path = tmp_path / spec
    if spec == "folder":
        path.mkdir()
    else:
        path.write_bytes('["S9.*"]\nmean = 92.0 # caf\u00e9\n'.encode("latin-1"))
    assert main(["decide", "S9.mixup-helps", "--simulate", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == f"bench: error: --simulate {path} cannot be read {why}; give a UTF-8 TOML file\n"


def test_cli_dry_run_lists_the_next_runs(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    assert main(["decide", "S9.mixup-helps", "--simulate", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "next runs: S9.baseline seed 0, S9.baseline seed 1, S9.mixup.a0.3 seed 0, S9.mixup.a0.3 seed 1" in out
    assert "| S9.mixup-helps | mixup helps | better than S9.baseline | no look yet" in out


@pytest.mark.parametrize("argv, message", [
    (["decide", "S99.*", "--dry-run"], "no conclusion id matches S99.*"),
    (["decide", "S9.mixup-helps", "--max-seeds", "1", "--dry-run"], "--max-seeds must be at least 2"),
    (["decide", "S9.mixup-helps", "--margin", "0", "--dry-run"], "--margin must be a positive number"),
    (["decide", "S9.mixup-helps", "--simulate", "/nonexistent/spec.toml"], "--simulate /nonexistent/spec.toml does"),
])
def test_cli_bad_input_is_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


TWO_ROWS = """
[[row]]
id = "S1.base"
section = "S1"
recipe = "baseline"
status = "unmeasured"
baseline = "S1.base"

[[row]]
id = "S1.mixup"
section = "S1"
recipe = "baseline+mixup:alpha=0.3"
status = "unmeasured"
baseline = "S1.base"

[[conclusion]]
id = "S1.mixup-helps"
section = "S1"
text = "mixup helps"
row = "S1.mixup"
versus = "S1.base"
expect = "better"
"""


def test_decide_runs_its_jobs_on_a_local_ray_head(tmp_path, ray_head, capsys):  # noqa: F811
    from bench.store import Store

    data = tmp_path / "cifar-10-batches-py"
    write_cifar10(data, per_batch=14, n_test=70)
    table = tmp_path / "table.toml"
    table.write_text(TWO_ROWS)
    results = tmp_path / "results"
    argv = ["decide", "--table", str(table), "--data", str(data), "--budget", "smoke", "--max-seeds", "2",
            "--device", "cpu", "--ray", ray_head, "--results", str(results)]
    assert main(argv) == 0
    assert "ran 4, failed 0" in capsys.readouterr().out
    assert sorted((r["row_id"], r["seed"]) for r in Store(results).records()) == [
        ("S1.base", 0), ("S1.base", 1), ("S1.mixup", 0), ("S1.mixup", 1)]


def test_dry_run_on_the_committed_full_budget_runs(tmp_path, capsys):
    """The 4 full-budget runs of the H200 slice (S9.baseline and S9.mixup.a0.3, 2 seeds each): mixup-helps is
    open at its first look, and the next runs are its third seeds and final BN's first two."""
    import json

    from bench.results_file import DEFAULT_PATH

    lines = [line for line in DEFAULT_PATH.read_text().splitlines()
             if json.loads(line)["code_version"] == "0.1.0+c8ddd2859def"
             and json.loads(line)["row_id"] in ("S9.baseline", "S9.mixup.a0.3")]
    assert len(lines) == 4
    held = tmp_path / "full.jsonl"
    held.write_text("\n".join(lines) + "\n")
    argv = ["decide", "S9.mixup-helps", "S9.finalbn-helps", "--budget", "full", "--dry-run", "--results-file",
            str(held), "--results", str(tmp_path / "results")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("| S9.mixup-helps"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3].startswith("+0.67 [") and cells[4:6] == ["open", "2"]
    planned = next(x for x in out.splitlines() if x.startswith("next runs: "))[len("next runs: "):].split(", ")
    assert sorted(planned) == ["S9.baseline seed 2", "S9.finalbn seed 0", "S9.finalbn seed 1", "S9.mixup.a0.3 seed 2"]
    assert not (tmp_path / "results").exists()  # a dry run writes nothing
