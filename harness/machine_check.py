"""How busy the machine was during a run, besides the run itself.

A rank test tells noise from a shift, but not a slower program from a busier machine: on a
machine shared with other work, the same code run twice can differ by 3x when something else
started in between. So the runner keeps two facts about every measured repeat in
``runs.csv``:

- ``calibration_s``: a fixed, CPU-bound piece of Python (``calibrate``, a few milliseconds,
  outside the run's own time) timed right before the repeat;
- ``other_load``: the CPU the *other* processes of the machine used while the repeat ran, in
  cores (``LoadProbe``: all CPU time the kernel counted, ``/proc/stat``, minus that of this
  process and its children, over the repeat's wall time; empty where there is no
  ``/proc/stat``).

``compare`` tests A's against B's the way it tests a stage (``machine_change``) and withholds
a verdict of worse or better when the machine changed: the calibration got slower or faster
beyond the factor, or the other processes' load differed by ``LOAD_STEP`` cores or more.

Rules: pure functions apart from ``calibrate`` and ``LoadProbe`` (which read clocks and
``/proc``); the calibration work is the same in every version of stagecost, so calibrations
of runs made by different commits compare.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CALIBRATION_LOOPS", "LOAD_STEP", "LoadChange", "LoadProbe", "MachineChange",
           "calibrate", "load_change", "machine_change"]

CALIBRATION_LOOPS = 50_000
"""Iterations of the calibration loop (a few milliseconds of one core)."""

LOAD_STEP = 0.25
"""Other processes' load (cores) that differs this much between two runs is a change of the
machine (a quarter of a core: on 2 cores, an eighth of the machine)."""


def _busy_seconds() -> float | None:
    """CPU seconds the kernel has counted as busy on all CPUs since boot (``/proc/stat``:
    user, nice, system, irq, softirq, steal), or None where unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process (to the nanosecond) and its living children (a cluster's
    processes; the kernel counts theirs in ticks, 10 ms)."""
    import psutil

    total = time.process_time()
    for proc in psutil.Process().children(recursive=True):
        try:
            t = proc.cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        total += t.user + t.system
    return total


class LoadProbe:
    """``start()`` before a run, ``stop()`` after it: the cores other processes used
    meanwhile (None without ``/proc/stat``); ``own_s`` is then the CPU seconds this process
    and its children used (the run's own work, which a busy machine slows down far less than
    it slows the wall time). Costs a read of ``/proc`` per process of the run's tree at each
    end, outside the run's own time."""

    def __init__(self) -> None:
        self._start: tuple[float | None, float, float] | None = None
        self.own_s: float | None = None

    def start(self) -> None:
        self._start = (_busy_seconds(), _own_seconds(), time.perf_counter())
        self.own_s = None

    def stop(self) -> float | None:
        if self._start is None:
            return None
        busy0, own0, t0 = self._start
        own = _own_seconds() - own0
        self.own_s = max(0.0, own)
        busy = _busy_seconds()
        wall = time.perf_counter() - t0
        if busy is None or busy0 is None or wall <= 0:
            return None
        others = (busy - busy0) - own
        # the kernel counts in ticks: over a short run the estimate jumps by whole ticks
        return min(max(0.0, others / wall), float(os.cpu_count() or 1))


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


@dataclass(frozen=True)
class LoadChange:
    """The other processes' load (cores) during run A's repeats and B's compared."""

    median_a: float
    median_b: float
    p_value: float
    changed: bool

    def describe(self) -> str:
        return (f"other processes used {self.median_b:.2f} cores during B against "
                f"{self.median_a:.2f} during A (medians, p = {self.p_value:.2g})")


def load_change(a: Sequence[float], b: Sequence[float], alpha: float,
                step: float = LOAD_STEP) -> LoadChange | None:
    """Compare the other processes' load of two runs: changed when the rank test says so at
    ``alpha`` and the medians differ by ``step`` cores or more; None without loads."""
    from harness.report.stats import mann_whitney_p, min_two_sided_p

    a = [float(x) for x in a if x == x]
    b = [float(x) for x in b if x == x]
    if not a or not b:
        return None
    med_a, med_b = float(np.median(a)), float(np.median(b))
    testable = min_two_sided_p(len(a), len(b)) < alpha
    p = mann_whitney_p(a, b) if testable else math.nan
    changed = testable and p < alpha and abs(med_b - med_a) >= step
    return LoadChange(med_a, med_b, p, changed)
