"""Realistic workloads written with Dask's collection APIs, sized by task count.

Each is what a Dask user writes (arrays, dataframes), on small blocks of random data (seeded,
so every backend computes the same values): the cost measured is that of running the graph,
not of the arithmetic. Every backend runs the graph Dask generates and optimises; on the
reference system that graph is imported (``harness.backends.reference_dask``).

| name             | what it is (size parameter ``p``)                                          |
|------------------|-----------------------------------------------------------------------------|
| climatology      | monthly fields ``(12*years, 4p, 8)``, one chunk per month and 4-row band: the mean per month of the year (12 grouped means over time), and each field's anomaly from its month's mean |
| rechunk          | a ``(t, p, p)`` cube from one chunk per time step to one chunk per pixel time series (``method="tasks"``, Dask's rechunk planner) |
| rechunk-p2p      | the same with ``method="p2p"`` (distributed only)                           |
| matmul           | ``a @ b``, two ``(4p, 4p)`` matrices in 4x4 blocks (``p**3`` block products, summed by trees) |
| map-overlap      | a ``(4p, 4p)`` array in 4x4 blocks, a 3x3 stencil with ``map_overlap(depth=1, boundary="reflect")`` |
| set-index-tasks  | a dataframe of ``p`` partitions re-indexed by a random key column, ``shuffle_method="tasks"``, with known divisions |
| set-index-p2p    | the same with the p2p shuffle (distributed only)                            |
| groupby-tasks    | ``groupby(key).agg(sum, mean, count)`` with ``split_out=p``, tasks shuffle   |
| groupby-p2p      | the same with the p2p shuffle (distributed only)                            |
| merge-tasks      | an inner hash join of two ``p``-partition dataframes on a key, tasks shuffle |
| merge-p2p        | the same with the p2p shuffle (distributed only)                            |

Rules of this module:

- Sizing: the task count of a workload is that of the graph Dask runs for it (optimised,
  materialised). ``size_for`` finds the size parameter whose count is closest to the
  request by counting a few graphs: doubling from small sizes, then extrapolating with the
  local growth exponent and interpolating once the request is bracketed; the count
  reported is an exact count of the graph chosen. It is within ``TOLERANCE`` (3 %) of the
  request unless counts jump past it between neighbouring sizes (matrix products below
  10,000 tasks, staged shuffles): then it is the closer neighbour. Counting builds graphs
  up to the requested size, usually once at full size, outside measurement.
- ``groupby-tasks`` and ``set-index-tasks`` have the same task count at every size, by
  construction rather than by mistake: each is one task shuffle of ``p`` partitions with the
  same number of per-partition tasks around it: eight each, reading a partition, Dask's
  string-dtype conversion, and six steps of the groupby's chunk and final aggregation or of
  set_index's partition assignment and sort. Tests check both against pandas.
- Dask's p2p shuffle and rechunk need distributed's workers: ``not_applicable`` says so for
  any other backend, and the runner does not run those cells.
- Dask is imported only when a workload is built.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.dask_work import DaskWork, as_dask_work, count_tasks
from harness.workloads import Workload

__all__ = ["DASK_WORKLOADS", "TOLERANCE", "DaskSpec", "build_dask", "not_applicable",
           "size_for", "workload_at"]

ROWS = 8
"""Rows per dataframe partition."""
KEYS_PER_PARTITION = 4
"""Distinct key values per partition (a key column drawn from ``KEYS_PER_PARTITION * p``)."""
P2P_ONLY = ("dask-distributed",)
P2P_WHY = ("Dask's p2p shuffle runs on distributed's workers only; use the -tasks variant "
           "to compare with other backends")


@dataclass(frozen=True)
class DaskSpec:
    """A realistic workload: ``make(p, n)`` builds its collection for size parameter ``p``
    (``n``, the request, may pick secondary shape choices); ``shape(p, n)`` says what ``p``
    means for the report."""

    name: str
    summary: str
    make: Callable[[int, int], Any]
    shape: Callable[[int, int], dict[str, Any]]
    only_on: tuple[str, ...] = ()
    why: str = ""


# --- data ----------------------------------------------------------------------------------

def _rng(seed: int) -> Any:
    import dask.array as da

    return da.random.default_rng(seed)


def frame_partition(i: int, p: int, seed: int = 0) -> Any:
    """Partition ``i`` of a ``p``-partition dataframe: ``ROWS`` rows of a random integer
    key (``KEYS_PER_PARTITION * p`` values), two float columns and a row id."""
    import pandas as pd

    rng = np.random.default_rng((seed, i))
    return pd.DataFrame({"k": rng.integers(0, KEYS_PER_PARTITION * p, ROWS),
                         "v": rng.random(ROWS), "w": rng.random(ROWS),
                         "row": np.arange(i * ROWS, (i + 1) * ROWS)})


def _frame(p: int, seed: int = 0) -> Any:
    import dask.dataframe as dd

    meta = frame_partition(0, 1, seed).iloc[:0]
    return dd.from_map(frame_partition, range(p), p=p, seed=seed, meta=meta,
                       enforce_metadata=False)


# --- arrays --------------------------------------------------------------------------------

def _years(n: int) -> int:
    return 10 if n >= 10_000 else 2


def _climatology(p: int, n: int) -> Any:
    import dask.array as da

    t = 12 * _years(n)
    x = _rng(0).random((t, 4 * p, 8), chunks=(1, 4, 8))
    clim = da.stack([x[m::12].mean(axis=0) for m in range(12)])  # mean per month of year
    return x - clim[np.arange(t) % 12]


def _steps(n: int) -> int:
    return 32 if n >= 5_000 else 8


def _rechunk(method: str) -> Callable[[int, int], Any]:
    def make(p: int, n: int) -> Any:
        x = _rng(0).random((_steps(n), p, p), chunks=(1, p, p))
        return x.rechunk((_steps(n), 1, 1), method=method)

    return make


def _matmul(p: int, n: int) -> Any:
    from dask.array import PerformanceWarning

    a = _rng(0).random((4 * p, 4 * p), chunks=4)
    b = _rng(1).random((4 * p, 4 * p), chunks=4)
    with warnings.catch_warnings():  # "increasing the number of chunks": what we ask for
        warnings.simplefilter("ignore", PerformanceWarning)
        return a @ b


def stencil(block: np.ndarray) -> np.ndarray:
    """A 3x3 smoothing stencil (the interior of a block padded by one on each side)."""
    out = np.zeros_like(block)
    out[1:-1, 1:-1] = sum(block[1 + di:block.shape[0] - 1 + di, 1 + dj:block.shape[1] - 1 + dj]
                          for di in (-1, 0, 1) for dj in (-1, 0, 1)) / 9.0
    return out


def _map_overlap(p: int, n: int) -> Any:
    x = _rng(0).random((4 * p, 4 * p), chunks=4)
    return x.map_overlap(stencil, depth=1, boundary="reflect", dtype=x.dtype)


# --- dataframes ----------------------------------------------------------------------------

def _set_index(method: str) -> Callable[[int, int], Any]:
    def make(p: int, n: int) -> Any:
        # known divisions, as a user who knows the key's range passes them: no eager
        # quantile computation while the graph is built
        divisions = [int(d) for d in np.linspace(0, KEYS_PER_PARTITION * p, p + 1)]
        divisions[-1] = KEYS_PER_PARTITION * p  # the last division is inclusive
        return _frame(p).set_index("k", divisions=divisions, shuffle_method=method)

    return make


def _groupby(method: str) -> Callable[[int, int], Any]:
    def make(p: int, n: int) -> Any:
        return _frame(p).groupby("k").agg({"v": "sum", "w": "mean", "row": "count"},
                                          split_out=p, shuffle_method=method)

    return make


def _merge(method: str) -> Callable[[int, int], Any]:
    def make(p: int, n: int) -> Any:
        import dask.dataframe as dd

        left = _frame(p, seed=0)
        right = _frame(p, seed=1).rename(columns={"v": "v2", "w": "w2", "row": "row2"})
        return dd.merge(left, right, on="k", how="inner", shuffle_method=method,
                        npartitions=p)

    return make


def _blocks(p: int, n: int) -> dict[str, Any]:
    return {"p": p, "blocks_per_side": p, "block": [4, 4]}


def _partitions(p: int, n: int) -> dict[str, Any]:
    return {"p": p, "partitions": p, "rows_per_partition": ROWS}


DASK_WORKLOADS: dict[str, DaskSpec] = {s.name: s for s in [
    DaskSpec("climatology", "monthly anomalies from a grouped mean over time (dask.array)",
             _climatology, lambda p, n: {"p": p, "shape": [12 * _years(n), 4 * p, 8],
                                         "chunks": [1, 4, 8], "groups": 12}),
    DaskSpec("rechunk", "time slices to pixel time series, Dask's rechunk planner (tasks)",
             _rechunk("tasks"), lambda p, n: {"p": p, "shape": [_steps(n), p, p],
                                              "from_chunks": [1, p, p],
                                              "to_chunks": [_steps(n), 1, 1]}),
    DaskSpec("rechunk-p2p", "the same rechunk with distributed's p2p rechunk",
             _rechunk("p2p"), lambda p, n: {"p": p, "shape": [_steps(n), p, p],
                                            "from_chunks": [1, p, p],
                                            "to_chunks": [_steps(n), 1, 1]},
             P2P_ONLY, "Dask's p2p rechunk runs on distributed's workers only; use "
                       "'rechunk' to compare with other backends"),
    DaskSpec("matmul", "matrix product of two block matrices (dask.array a @ b)",
             _matmul, _blocks),
    DaskSpec("map-overlap", "3x3 stencil with map_overlap(depth=1, boundary='reflect')",
             _map_overlap, _blocks),
    DaskSpec("set-index-tasks", "dataframe set_index on a random key, tasks shuffle",
             _set_index("tasks"), _partitions),
    DaskSpec("set-index-p2p", "dataframe set_index on a random key, p2p shuffle",
             _set_index("p2p"), _partitions, P2P_ONLY, P2P_WHY),
    DaskSpec("groupby-tasks", "dataframe groupby-aggregate with split_out, tasks shuffle",
             _groupby("tasks"), _partitions),
    DaskSpec("groupby-p2p", "dataframe groupby-aggregate with split_out, p2p shuffle",
             _groupby("p2p"), _partitions, P2P_ONLY, P2P_WHY),
    DaskSpec("merge-tasks", "dataframe inner hash join on a key, tasks shuffle",
             _merge("tasks"), _partitions),
    DaskSpec("merge-p2p", "dataframe inner hash join on a key, p2p shuffle",
             _merge("p2p"), _partitions, P2P_ONLY, P2P_WHY),
]}


def not_applicable(name: str, backend: str) -> str | None:
    """Why workload ``name`` cannot run on ``backend`` (``None`` if it can)."""
    spec = DASK_WORKLOADS.get(name)
    if spec is None or not spec.only_on or backend in spec.only_on:
        return None
    return spec.why


# --- sizing --------------------------------------------------------------------------------

TOLERANCE = 0.03
"""``size_for`` stops at a count within this fraction of the request."""


def size_for(count: Callable[[int], int], n: int, *, max_counts: int = 8) -> tuple[int, int]:
    """``(p, count(p))`` with ``count(p)`` closest to ``n`` among the sizes tried.

    ``p`` doubles from 1 while the count is below ``n / 32`` (cheap graphs), then up to
    ``max_counts`` steps guess ``p``: with the growth exponent of the last two counts until
    the request is bracketed, then by interpolating between the closest counts below and
    above it. It stops at a count within ``TOLERANCE`` of ``n``, or when the bracket is
    two neighbouring sizes (counts jump where Dask stages a shuffle or plans a rechunk
    differently: then the closer neighbour is the answer). A request above every count
    reachable in ``max_counts`` steps gets the largest. ``count`` must grow with ``p``
    overall."""
    seen: dict[int, int] = {}

    def at(p: int) -> int:
        if p not in seen:
            seen[p] = count(p)
        return seen[p]

    def near(p: int) -> bool:
        return abs(at(p) - n) <= TOLERANCE * n

    p = 1
    while at(p) < n / 32:
        p *= 2
    prev = p // 2 if p > 1 else None
    for _ in range(max_counts):
        if near(p):
            break
        below = [q for q in seen if seen[q] < n]
        above = [q for q in seen if seen[q] > n]
        lo = max(below, default=None)
        hi = min(above, default=None)
        if lo is not None and hi is not None and lo < hi:
            if hi - lo <= 1:
                break
            # interpolate log p against log count inside the bracket, strictly inside it
            t = math.log(n / seen[lo]) / math.log(seen[hi] / seen[lo])
            guess = round(lo * (hi / lo) ** t)
            guess = min(max(guess, lo + 1), hi - 1)
        else:
            c = at(p)
            exponent = 1.0
            if prev is not None and at(prev) != c:
                exponent = min(max(math.log(c / at(prev)) / math.log(p / prev), 0.5), 3.0)
            guess = max(1, round(p * (n / c) ** (1 / exponent)))
        if guess in seen:
            break
        prev, p = p, guess
    best = min(seen, key=lambda q: (abs(seen[q] - n), q))
    return best, seen[best]


def _work_at(name: str, p: int, n: int) -> DaskWork:
    return as_dask_work(DASK_WORKLOADS[name].make(p, n), f"workload {name}")


def build_dask(name: str, n: int) -> Workload:
    """Realistic workload ``name`` sized to about ``n`` tasks (the count is exact)."""
    p, n_tasks = size_for(lambda q: count_tasks(_work_at(name, q, n)), n)
    return workload_at(name, p, n, n_tasks)


def workload_at(name: str, p: int, n: int, n_tasks: int | None = None) -> Workload:
    """Realistic workload ``name`` at size parameter ``p`` (``n``: the request it stands
    for, which may pick secondary shape choices); ``n_tasks`` is counted unless given."""
    spec = DASK_WORKLOADS[name]
    if n_tasks is None:
        n_tasks = count_tasks(_work_at(name, p, n))
    return Workload(name, n, spec.shape(p, n), None, [], n_tasks,
                    dask=lambda: _work_at(name, p, n))
