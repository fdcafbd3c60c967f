"""The statistics of the bench's reports: mean and sample std, the difference of two means with its 95% Welch
interval, and the Student t quantile behind it. `bench.report` and `bench.perf` and `bench.gpu_perf` use them.

- mean_std: mean ± sample standard deviation (ddof 1); no std for one value.
- welch(a, b): d = mean(a) - mean(b) with the 95% Welch interval d ± q · sqrt(s1²/n1 + s2²/n2), q = the 0.975
  quantile of Student's t at the Welch-Satterthwaite df = (s1²/n1 + s2²/n2)² / ((s1²/n1)²/(n1-1) +
  (s2²/n2)²/(n2-1)). With both variances 0 the interval is [d, d]. With n < 2 on either side there is none.
- q comes from `scipy.stats.t.ppf` when scipy is importable (it is a dependency of fastai); else from `T_TABLE`
  (exact to 6 decimals for df 1..30, at df rounded down, which widens the interval) and the normal quantile
  1.959964 beyond df 30. The interval is written by hand so that it holds without scipy too (the table).
"""
from __future__ import annotations

import math
import statistics

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
