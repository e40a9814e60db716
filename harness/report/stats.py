"""Small statistics for reports: growth exponents and a rank test, with numpy only.

Rules of this module:

- Pure functions on sequences of numbers; no pandas, no I/O, no randomness.
- Undefined answers are NaN, never an exception and never 0: an exponent needs two distinct
  positive sizes with positive times; a rank test needs at least one value on each side.
- The rank test is Mann-Whitney U, two-sided, exact (all splits of the pooled sample enumerated,
  ties by mid-ranks) while the number of splits is small, else the normal approximation with a
  tie correction and continuity correction. No scipy: it is not a dependency of stagecost.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["EXACT_SPLITS_LIMIT", "fit_exponent", "mann_whitney_p", "min_two_sided_p"]

EXACT_SPLITS_LIMIT = 20_000
"""Above this many splits of the pooled sample the rank test uses the normal approximation."""


def fit_exponent(n: Sequence[float], seconds: Sequence[float]) -> float:
    """Least-squares slope of log(seconds) against log(n): time grows like n**slope.

    Pairs whose seconds are NaN or <= 0, or whose n is <= 0, are left out (log undefined). Several
    values at one size each count. NaN when fewer than two distinct sizes remain.
    """
    x = np.asarray(n, dtype=float)
    y = np.asarray(seconds, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"fit_exponent needs as many sizes as times ({x.size} != {y.size})")
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = np.log(x[keep]), np.log(y[keep])
    if np.unique(x).size < 2:
        return math.nan
    xc = x - x.mean()
    return float(np.dot(xc, y - y.mean()) / np.dot(xc, xc))


def _midranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size, dtype=float)
    sorted_vals = values[order]
    i = 0
    while i < values.size:
        j = i
        while j + 1 < values.size and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def min_two_sided_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p-value the exact rank test can give for these sample sizes.

    With 3 vs 3 it is 0.1, so such a test can never reach 0.05; callers use this to decide
    whether a rank test can say anything at all.
    """
    if n_a < 1 or n_b < 1:
        return 1.0
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a))


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value that ``a`` and ``b`` come from the same distribution (Mann-Whitney U).

    NaN values are dropped; NaN is returned when either side is then empty. All values equal
    gives 1.0.
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    n_a, n_b = x.size, y.size
    if n_a == 0 or n_b == 0:
        return math.nan
    ranks = _midranks(np.concatenate([x, y]))
    n = n_a + n_b
    mean_rank_sum = n_a * (n + 1) / 2.0
    observed = abs(ranks[:n_a].sum() - mean_rank_sum)
    if math.comb(n, n_a) <= EXACT_SPLITS_LIMIT:
        # A split as extreme as the observed one, up to rounding of mid-ranks.
        tol = 1e-9 * max(1.0, observed)
        extreme = total = 0
        for idx in itertools.combinations(range(n), n_a):
            total += 1
            if abs(ranks[list(idx)].sum() - mean_rank_sum) >= observed - tol:
                extreme += 1
        return extreme / total
    _, counts = np.unique(ranks, return_counts=True)
    tie_term = float(np.sum(counts ** 3 - counts)) / (n * (n - 1))
    var = n_a * n_b / 12.0 * ((n + 1) - tie_term)
    if var <= 0:
        return 1.0
    z = max(0.0, observed - 0.5) / math.sqrt(var)
    return min(1.0, math.erfc(z / math.sqrt(2.0)))
