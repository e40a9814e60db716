"""How fast the machine was during a run: a fixed piece of work timed before every repeat.

A rank test tells noise from a shift, but not a slower program from a busier machine: on a
machine shared with other work, the same code run twice can differ by 3x when something else
started in between. So the runner times a fixed, CPU-bound piece of Python (``calibrate``,
a few milliseconds, outside the run's own time) right before each measured repeat and keeps it
as ``calibration_s`` in ``runs.csv``; ``compare`` tests the two runs' calibrations the way it
tests a stage (``machine_change``), and when the machine itself got faster or slower beyond
the factor, a verdict of worse or better is withheld: it could be the machine's.

Rules: pure functions apart from ``calibrate`` (which reads the clock); the work is the same
in every version of stagecost, so calibrations of runs made by different commits compare.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CALIBRATION_LOOPS", "MachineChange", "calibrate", "machine_change"]

CALIBRATION_LOOPS = 50_000
"""Iterations of the calibration loop (a few milliseconds of one core)."""


def calibrate(loops: int = CALIBRATION_LOOPS) -> float:
    """Seconds this process takes for ``loops`` iterations of a fixed arithmetic loop."""
    start = time.perf_counter()
    acc = 0
    for i in range(loops):
        acc = (acc + i * i) % 1_000_003
    return time.perf_counter() - start


@dataclass(frozen=True)
class MachineChange:
    """The calibrations of run A and run B compared: ``ratio`` = median(B) / median(A)
    (above 1: the machine was slower during B), ``p_value`` of the rank test (NaN when the
    repeats are too few to test), ``changed`` when significant at ``alpha`` and beyond the
    factor either way."""

    median_a: float
    median_b: float
    ratio: float
    p_value: float
    changed: bool

    def describe(self) -> str:
        way = "slower" if self.ratio > 1 else "faster"
        return (f"the machine itself ran {self.ratio:.2f}x {way} during B (a fixed "
                f"calibration loop: median {self.median_a * 1e3:.2f} ms in A, "
                f"{self.median_b * 1e3:.2f} ms in B, p = {self.p_value:.2g})")


def machine_change(a: Sequence[float], b: Sequence[float], factor: float,
                   alpha: float) -> MachineChange | None:
    """Compare the calibrations of two runs; None when either has none (runs written before
    calibrations were kept)."""
    from harness.report.stats import mann_whitney_p, min_two_sided_p

    a = [float(x) for x in a if x == x and x > 0]
    b = [float(x) for x in b if x == x and x > 0]
    if not a or not b:
        return None
    med_a, med_b = float(np.median(a)), float(np.median(b))
    ratio = med_b / med_a
    testable = min_two_sided_p(len(a), len(b)) < alpha
    p = mann_whitney_p(a, b) if testable else math.nan
    changed = testable and p < alpha and (ratio > factor or ratio < 1.0 / factor)
    return MachineChange(med_a, med_b, ratio, p, changed)
