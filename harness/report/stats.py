"""Small statistics for reports: growth exponents, a rank test and a confidence interval.

Rules of this module:

- Pure functions on sequences of numbers; no pandas, no I/O, no randomness.
- Undefined answers are NaN, never an exception and never 0: an exponent needs two distinct
  positive sizes with positive times; a rank test needs at least one value on each side; a
  ratio interval needs positive values and enough repeats to reach its confidence level.
- The rank test is scipy's two-sided Mann-Whitney U: exact while a side has at most 8 values
  (with ties, a permutation test over every split of the pooled sample, ties by mid-ranks,
  while there are at most ``EXACT_SPLITS_LIMIT`` splits), else the normal approximation with
  tie and continuity corrections. All of them are deterministic.
- The interval for a ratio B/A is the distribution-free one that goes with that test
  (Hodges-Lehmann/Moses, on log times): of the ``nA * nB`` pairwise ratios ``b / a``, drop
  the ``k`` smallest and ``k`` largest, where ``k`` is the most that the exact null
  distribution of U allows at the level. It assumes B is A scaled by a factor; it exists
  only when the repeats are enough for the test to reach that level at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as _st

__all__ = ["EXACT_SPLITS_LIMIT", "fit_exponent", "mann_whitney_p", "min_two_sided_p",
           "ratio_interval", "repeats_needed", "u_null_cdf"]

EXACT_SPLITS_LIMIT = 9_999
"""With ties, up to this many splits of the pooled sample are all enumerated (exact)."""

_INTERVAL_PAIRS_LIMIT = 1_000_000
"""Above this many pairs (1,000 repeats a side) the ratio interval is not computed."""


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


def min_two_sided_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p-value the exact rank test can give for these sample sizes
    (every B value beyond every A value): ``2 / C(nA + nB, nA)``.

    With 3 vs 3 it is 0.1 and with 5 vs 5 0.0079, so at level 0.01 a test on 3 vs 3 or 4 vs 4
    repeats can never be significant; callers use this to say "not enough repeats".
    """
    if n_a < 1 or n_b < 1:
        return 1.0
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a))


def repeats_needed(alpha: float, n_a: int = 0, n_b: int = 0) -> int:
    """The fewest repeats ``k`` such that the rank test can reach ``alpha`` once each side has
    at least ``k`` (sides that have more keep theirs): with no counts given, the fewest per
    side for two equal sides (5 at 0.01, 7 at 0.002)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    k = 1
    while min_two_sided_p(max(n_a, k), max(n_b, k)) >= alpha:
        k += 1
    return k


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value that ``a`` and ``b`` come from the same distribution (Mann-Whitney U,
    see the module rules).

    NaN values are dropped; NaN is returned when either side is then empty. All values equal
    gives 1.0.
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    if x.size == 0 or y.size == 0:
        return math.nan
    if np.unique(np.concatenate([x, y])).size == 1:
        return 1.0
    pooled = np.concatenate([x, y])
    ties = np.unique(pooled).size < pooled.size
    if ties and math.comb(x.size + y.size, x.size) <= EXACT_SPLITS_LIMIT:
        method: object = _st.PermutationMethod(n_resamples=EXACT_SPLITS_LIMIT)
    else:  # scipy's exact null distribution of U without ties (a side of <= 8), else normal
        method = "auto"
    res = _st.mannwhitneyu(x, y, alternative="two-sided", method=method)
    return float(min(1.0, res.pvalue))


def u_null_cdf(n_a: int, n_b: int) -> np.ndarray:
    """``P(U <= u)`` for u = 0 .. nA*nB under the null hypothesis (no ties): the coefficients
    of the Gaussian binomial ``[nA + nB choose nA]`` in q, divided by ``C(nA + nB, nA)``."""
    if n_a < 1 or n_b < 1:
        raise ValueError(f"sample sizes must be >= 1, got {n_a} and {n_b}")
    # prod_{i=1..nA} (1 - q^(nB+i)) / (1 - q^i), as integer polynomials (exact division)
    size = n_a * n_b + 1
    poly = np.zeros(size, dtype=object)
    poly[0] = 1
    for i in range(1, n_a + 1):
        shift = n_b + i
        num = poly.copy()
        num[shift:] = num[shift:] - poly[:size - shift]
        # divide by (1 - q^i): out[j] = num[j] + out[j - i]
        for j in range(i, size):
            num[j] += num[j - i]
        poly = num
    counts = np.array([int(c) for c in poly], dtype=float)
    return np.cumsum(counts) / math.comb(n_a + n_b, n_a)


def ratio_interval(a: Sequence[float], b: Sequence[float],
                   alpha: float) -> tuple[float, float]:
    """A ``1 - alpha`` confidence interval for the factor from ``a`` to ``b`` (B/A), see the
    module rules. (NaN, NaN) when a value is NaN or <= 0, when either side is empty or has
    more than 1,000 values, or when the repeats cannot reach ``alpha`` (the interval would
    be unbounded)."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0 or x.size * y.size > _INTERVAL_PAIRS_LIMIT:
        return math.nan, math.nan
    if not (np.all(x > 0) and np.all(y > 0)):  # also false for NaN
        return math.nan, math.nan
    cdf = u_null_cdf(x.size, y.size)
    k = int(np.searchsorted(cdf, alpha / 2.0, side="right"))  # P(U <= k - 1) <= alpha / 2
    if k < 1:
        return math.nan, math.nan
    diffs = np.sort((np.log(y)[None, :] - np.log(x)[:, None]).ravel())
    return float(np.exp(diffs[k - 1])), float(np.exp(diffs[diffs.size - k]))
