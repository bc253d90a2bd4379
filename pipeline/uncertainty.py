"""How sure a number is: intervals over training seeds and the paired test behind the report's best marks.

Two kinds of error sit beside every number of the report and are kept apart:
- over training seeds: the 95% Student-t interval of the mean, mean +- t_{0.975, n-1} s / sqrt(n), from the
  n seeds of params.yaml (none for one seed);
- of the evaluation itself: the metric's own standard error where it has one (the NLL's over held-out points,
  FID's jackknife over the generated images), else the spread of the data floor (the same metric between disjoint reference samples of the same size), a
  lower bound for an imperfect model, whose own sample set can spread more.
The best entry of a column is marked only where a one-sided paired t-test over seeds (the seeds pair the
entries: within a seed every sampler and method starts from the same noise) beats the runner-up, after
Holm's correction for the number of columns tested (Holm 1979), at level 0.05.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
ALPHA = 0.05


def seed_interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% Student-t interval over seeds); the half-width is nan for one seed. A nan
    value is not dropped: it makes both nan (the caller says which seeds it left out)."""
    values = np.asarray([math.nan if v is None else v for v in values], dtype=float)
    if len(values) == 0:
        return math.nan, math.nan
    if len(values) == 1:
        return float(values[0]), math.nan
    half = stats.t.ppf(0.5 + LEVEL / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


def paired_p_value(best: Sequence[float], other: Sequence[float], lower_is_better: bool) -> float:
    """One-sided paired t-test over seeds that `best` beats `other` (nan with fewer than two pairs, 0 when
    every pair differs by the same nonzero amount in best's favour)."""
    difference = np.asarray(other, dtype=float) - np.asarray(best, dtype=float)
    if not lower_is_better:
        difference = -difference
    difference = difference[np.isfinite(difference)]
    if len(difference) < 2:
        return math.nan
    if np.all(difference == difference[0]):
        return 0.0 if difference[0] > 0 else 1.0
    return float(stats.ttest_1samp(difference, 0.0, alternative="greater").pvalue)


def holm_significant(p_values: Sequence[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down correction: which of the p-values reject at family-wise level alpha (nan never does)."""
    finite = [(p, i) for i, p in enumerate(p_values) if np.isfinite(p)]
    significant = [False] * len(p_values)
    for rank, (p, i) in enumerate(sorted(finite)):
        if p > alpha / (len(finite) - rank):
            break
        significant[i] = True
    return significant
