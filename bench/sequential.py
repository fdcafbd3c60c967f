"""Sequential decisions on the difference of two rows' accuracies: repeated confidence intervals.

`bench decide` adds seeds to two rows while a conclusion ('row is better / worse / the same as versus')
is open, and looks at the data after every seed. A fixed-n t-interval recomputed after each look would
claim a difference far more often than its 5%; this module holds the error rate over all the looks with
a group-sequential design (Jennison & Turnbull, "Group Sequential Methods with Applications to Clinical
Trials", 2000, ch. 9 "Repeated confidence intervals"):

- Looks: look k uses the first k seeds (by seed number) of each row, k = 2 .. max_seeds (a balanced
  two-sample design; k - 1 looks at most). A row that has more seeds (a baseline shared by several
  conclusions) gives this conclusion only its first k. The verdict is that of the first look at which
  a stopping rule holds, so it depends only on the stored seeds, never on the order they arrived in.
- Boundaries: two-sided alpha spending (Lan & DeMets 1983, Biometrika 70:659) with the O'Brien-Fleming
  type spending function alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)), information fraction
  t_k = k / max_seeds. The z boundaries c_1 .. c_K solve
  P(|Z_1| < c_1, ..., |Z_{j-1}| < c_{j-1}, |Z_j| >= c_j) = alpha(t_j) - alpha(t_{j-1}) under no difference,
  Z_j = S_j / sqrt(I_j) with independent normal increments of the score S (the recursive numerical
  integration of Armitage, McPherson & Rowe 1969, J. R. Stat. Soc. A 132:235, on a grid, Simpson's rule).
- Unknown variance: the boundary of look k is carried over to Student's t at that look's Welch
  degrees of freedom with the same nominal level, q_k = t.ppf(Phi(c_k), df_k) (Jennison & Turnbull
  §11.4 the 'significance level approach'); the interval is d_k ± q_k · se_k with the Welch se.
- Intervals and verdicts: 'better' / 'worse' use the 95% repeated intervals (alpha = 0.05, two-sided):
  confirmed when the interval excludes 0 on the expected side, contradicted when it excludes 0 on the
  other. 'same' is an equivalence test, two one-sided tests at alpha each (Schuirmann 1987, J.
  Pharmacokinet. Biopharm. 15:657), so it uses the 90% repeated intervals (2 alpha): confirmed when the
  interval lies within ±margin, contradicted when it lies wholly outside it.
- After look max_seeds with no rule met: 'undecided', with that look's interval.
- Calibration: carried over to t, the boundaries of alpha = 0.05 claim a difference that is not there in
  5.06% of 200,000 simulated conclusions (8 seeds, equal standard deviations): the early looks spend
  less than planned and the late ones more. The boundaries therefore spend SPENT_ALPHA = 0.0475, which
  holds the rate at 4.76% (tests/test_bench_decide.py measures it again on every run).

Written by hand: scipy has no group-sequential boundaries, and `confseq` (PyPI) is a C++/Boost source
distribution without wheels for this Python; its confidence sequences need a known variance bound that
accuracies over seeds do not give. scipy supplies the normal and t distributions and the root finder.
Every function takes numpy arrays with the seeds on the last axis, so the tests run thousands of
simulated conclusions at once.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm
from scipy.stats import t as student_t

from tricks.errors import ConfigError

ALPHA = 0.05  # the error rate held
SPENT_ALPHA = 0.0475  # what the boundaries spend so that the t approximation holds ALPHA (module docstring)
MARGIN = 0.5  # points: the report's SAME_MARGIN
MAX_SEEDS = 8
FIRST_LOOK = 2  # seeds per row before the first look (a variance needs two)
GRID = 401  # points of the numerical integration (odd, for Simpson's rule)
VERDICTS = ("confirmed", "contradicted", "undecided", "open")


def spent(alpha: float, fraction: np.ndarray | float) -> np.ndarray:
    """O'Brien-Fleming type alpha spending (Lan & DeMets): 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)), 0 at t = 0."""
    fraction = np.asarray(fraction, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(fraction > 0, 2 - 2 * norm.cdf(norm.ppf(1 - alpha / 2) / np.sqrt(fraction)), 0.0)


def _simpson_weights(n: int, width: float) -> np.ndarray:
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return w * width / (3 * (n - 1))


@functools.lru_cache(maxsize=None)
def z_boundaries(max_seeds: int = MAX_SEEDS, alpha: float = ALPHA) -> tuple[float, ...]:
    """The two-sided z boundaries c_k of the looks at k = 2 .. max_seeds seeds per row (module docstring)."""
    if max_seeds < FIRST_LOOK:
        raise ConfigError(f"--max-seeds must be at least {FIRST_LOOK} (a variance needs two seeds), got {max_seeds}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie between 0 and 1, got {alpha}")
    info = np.arange(FIRST_LOOK, max_seeds + 1, dtype=float)  # information grows with the seeds per row
    fractions = info / max_seeds
    targets = np.diff(np.concatenate([[0.0], spent(alpha, fractions)]))
    bounds: list[float] = []
    grid = density = None  # the score's sub-density on the continuation region of the looks so far
    for k, (i_k, target) in enumerate(zip(info, targets)):
        if k == 0:
            c = float(norm.isf(target / 2))
        else:
            step = math.sqrt(i_k - info[k - 1])
            weights = _simpson_weights(len(grid), grid[-1] - grid[0]) * density

            def crossing(c: float) -> float:  # P(continue so far, then |Z_k| >= c) - target
                b = c * math.sqrt(i_k)
                stay = norm.cdf((b - grid) / step) - norm.cdf((-b - grid) / step)
                return float(weights @ (1 - stay)) - target

            c = brentq(crossing, 1e-3, 40.0, xtol=1e-10)
        bounds.append(c)
        b = c * math.sqrt(i_k)
        new_grid = np.linspace(-b, b, GRID)
        if k == 0:
            density = norm.pdf(new_grid / math.sqrt(i_k)) / math.sqrt(i_k)
        else:
            kernel = norm.pdf((new_grid[:, None] - grid[None, :]) / step) / step
            density = kernel @ weights
        grid = new_grid
    return tuple(bounds)


def level(expect: str, alpha: float = SPENT_ALPHA) -> float:
    """The two-sided error rate of the repeated intervals a conclusion uses: alpha, or 2 alpha for 'same'."""
    return 2 * alpha if expect == "same" else alpha


def welch_parts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean(a) - mean(b), Welch standard error, Welch-Satterthwaite df) over the last axis (bench.report's
    formula, for arrays: the report's `welch` gives only the 95% interval of one pair)."""
    na, nb = a.shape[-1], b.shape[-1]
    va, vb = a.var(axis=-1, ddof=1) / na, b.var(axis=-1, ddof=1) / nb
    se = np.sqrt(va + vb)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(se > 0, (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1)), np.inf)
    return a.mean(axis=-1) - b.mean(axis=-1), se, df


def t_boundary(z: float, df: np.ndarray) -> np.ndarray:
    """The t quantile with the nominal level of the z boundary `z`: t.ppf(Phi(z), df)."""
    return student_t.ppf(norm.cdf(z), df)


def rule(expect: str, lo: np.ndarray, hi: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(confirmed, contradicted) of intervals [lo, hi] of row - versus (module docstring)."""
    if expect == "better":
        return lo > 0, hi < 0
    if expect == "worse":
        return hi < 0, lo > 0
    if expect == "same":
        return (lo >= -margin) & (hi <= margin), (hi < -margin) | (lo > margin)
    raise ConfigError(f"expect must be better, worse or same, got {expect!r}")


def decide(row: np.ndarray, versus: np.ndarray, expect: str, *, max_seeds: int = MAX_SEEDS,
           margin: float = MARGIN, alpha: float = SPENT_ALPHA) -> dict[str, np.ndarray]:
    """The sequential verdict of conclusions with the accuracies `row` (..., n1) and `versus` (..., n2), seeds
    in seed order on the last axis; leading axes are independent conclusions.

    Returns arrays: 'verdict' (indices into VERDICTS: 'open' when no rule holds yet and fewer than
    max_seeds seeds were looked at), 'seeds' (the look's seeds per row, 0 before the first look), 'diff',
    'lo', 'hi' (the interval of the look that decided, or of the last look), 'q' (its t boundary).
    """
    if margin <= 0:
        raise ConfigError(f"--margin must be a positive number of points, got {margin}")
    row, versus = np.asarray(row, dtype=float), np.asarray(versus, dtype=float)
    shape = np.broadcast_shapes(row.shape[:-1], versus.shape[:-1])
    bounds = z_boundaries(max_seeds, level(expect, alpha))
    out = {"verdict": np.full(shape, VERDICTS.index("open")), "seeds": np.zeros(shape, dtype=int),
           "diff": np.full(shape, np.nan), "lo": np.full(shape, np.nan), "hi": np.full(shape, np.nan),
           "q": np.full(shape, np.nan)}
    looks = min(row.shape[-1], versus.shape[-1], max_seeds)
    stopped = np.zeros(shape, dtype=bool)
    for n in range(FIRST_LOOK, looks + 1):
        d, se, df = welch_parts(row[..., :n], versus[..., :n])
        q = t_boundary(bounds[n - FIRST_LOOK], df)
        lo, hi = d - q * se, d + q * se
        confirmed, contradicted = rule(expect, lo, hi, margin)
        now = ~stopped
        for key, value in (("diff", d), ("lo", lo), ("hi", hi), ("q", q)):
            out[key] = np.where(now, np.broadcast_to(value, shape), out[key])
        out["seeds"] = np.where(now, n, out["seeds"])
        verdict = np.where(confirmed, 0, np.where(contradicted, 1, 2 if n == max_seeds else 3))
        out["verdict"] = np.where(now, verdict, out["verdict"])
        stopped |= now & (confirmed | contradicted)
    return out


def decision_probability(expect: str, diff: float, sd: float, seeds: int, *, max_seeds: int = MAX_SEEDS,
                         margin: float = MARGIN, alpha: float = SPENT_ALPHA) -> float:
    """The chance that a conclusion is decided at its look with `seeds` per row, if the true difference is
    `diff` and each row's seed standard deviation `sd` (normal approximation of that look alone)."""
    if seeds < FIRST_LOOK or seeds > max_seeds:
        return 0.0
    se = max(sd, 1e-6) * math.sqrt(2 / seeds)
    df = 2 * seeds - 2
    q = float(t_boundary(z_boundaries(max_seeds, level(expect, alpha))[seeds - FIRST_LOOK], np.float64(df)))
    half = q * se
    above = lambda x: float(norm.sf((x - diff) / se))  # P(d > x) for the look's estimate d ~ N(diff, se)
    if expect in ("better", "worse"):
        return above(half) + 1 - above(-half)
    inside = max(0.0, above(-margin + half) - above(margin - half)) if half < margin else 0.0
    return inside + above(margin + half) + 1 - above(-margin - half)
