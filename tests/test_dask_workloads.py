"""The realistic workloads (``harness.dask_workloads``) give the same results on every
backend, and compute what their names say, checked against Dask and pandas themselves.

Small sizes: each workload's graph at about 150 tasks. The reference cluster is started once
for the module. The p2p variants need distributed's workers: they run on a distributed
``LocalCluster`` in the slow tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness.backends.base import RunOptions
from harness.backends.dask_backends import SyncBackend
from harness.backends.reference import ReferenceBackend
from harness.dask_work import as_dask_work, count_tasks, optimized_graph
from harness.dask_workloads import (
    DASK_WORKLOADS,
    KEYS_PER_PARTITION,
    TOLERANCE,
    frame_partition,
    size_for,
    workload_at,
)
from harness.workloads import Workload, build

SIZE = 150
TASKS = [n for n, s in DASK_WORKLOADS.items() if not s.only_on]
P2P = [n for n, s in DASK_WORKLOADS.items() if s.only_on]


def same(a: Any, b: Any) -> bool:
    """Equal values: arrays element by element (NaN equal to NaN), frames with their index,
    columns and dtypes."""
    if isinstance(a, pd.DataFrame | pd.Series):
        check = pd.testing.assert_frame_equal if isinstance(a, pd.DataFrame) else \
            pd.testing.assert_series_equal
        try:
            check(a, b)
        except AssertionError:
            return False
        return True
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and bool(
        np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


@pytest.fixture(scope="module")
def reference() -> Iterator[ReferenceBackend]:
    with ReferenceBackend(RunOptions(record=False, timeout=120)) as backend:
        yield backend  # type: ignore[misc]


@pytest.fixture(scope="module")
def workloads() -> dict[str, Workload]:
    return {name: build(name, SIZE) for name in TASKS}


@pytest.mark.cluster
@pytest.mark.parametrize("name", TASKS)
def test_each_workload_gives_the_same_results_on_the_reference_and_dask_sync(
        name: str, reference: ReferenceBackend, workloads: dict[str, Workload]) -> None:
    w = workloads[name]
    ref = reference.run_once(w).extra["results"]
    sync = SyncBackend(RunOptions(record=False)).run_once(w).extra["results"]
    assert len(ref) == len(sync) > 0
    assert all(same(a, b) for a, b in zip(ref, sync, strict=True))
    # and both are what Dask's own sync scheduler computes for the graph Dask runs
    from dask.local import get_sync

    assert w.dask is not None
    dsk, keys = optimized_graph(w.dask())
    assert all(same(a, b) for a, b in zip(ref, get_sync(dsk, keys), strict=True))


def _whole_frame(p: int) -> pd.DataFrame:
    return pd.concat([frame_partition(i, p) for i in range(p)], ignore_index=True)


def test_groupby_is_a_grouped_aggregation_equal_to_pandas(
        workloads: dict[str, Workload]) -> None:
    w = workloads["groupby-tasks"]
    parts = SyncBackend(RunOptions(record=False)).run_once(w).extra["results"]
    got = pd.concat(parts).sort_index()
    whole = _whole_frame(w.params["p"])
    want = whole.groupby("k").agg({"v": "sum", "w": "mean", "row": "count"}).sort_index()
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert len(parts) == w.params["p"]  # split_out: one output partition per input one


def test_set_index_sorts_by_the_key_within_the_given_divisions(
        workloads: dict[str, Workload]) -> None:
    w = workloads["set-index-tasks"]
    p = w.params["p"]
    parts = SyncBackend(RunOptions(record=False)).run_once(w).extra["results"]
    got = pd.concat(parts)
    assert got.index.is_monotonic_increasing
    want = _whole_frame(p).set_index("k").sort_index()
    pd.testing.assert_frame_equal(got.sort_values(["k", "row"]),
                                  want.sort_values(["k", "row"]), check_dtype=False)
    assert got.index.max() < KEYS_PER_PARTITION * p


def test_merge_is_the_inner_join_pandas_gives(workloads: dict[str, Workload]) -> None:
    w = workloads["merge-tasks"]
    p = w.params["p"]
    parts = SyncBackend(RunOptions(record=False)).run_once(w).extra["results"]
    got = pd.concat(parts, ignore_index=True)
    right = pd.concat([frame_partition(i, p, seed=1) for i in range(p)], ignore_index=True)
    right = right.rename(columns={"v": "v2", "w": "w2", "row": "row2"})
    want = _whole_frame(p).merge(right, on="k", how="inner")
    cols = ["k", "row", "row2"]
    pd.testing.assert_frame_equal(got.sort_values(cols).reset_index(drop=True),
                                  want[got.columns].sort_values(cols).reset_index(drop=True),
                                  check_dtype=False)


def _canonical(values: list[Any]) -> Any:
    """Dataframe partitions as one frame in a fixed order; array blocks as they are."""
    if isinstance(values[0], pd.DataFrame):
        whole = pd.concat(values).reset_index()
        return whole.sort_values(list(whole.columns)).reset_index(drop=True)
    return values


@pytest.mark.slow
@pytest.mark.cluster
def test_the_p2p_variants_on_distributed_equal_the_tasks_variants_on_dask_sync() -> None:
    from harness.backends.dask_backends import DistributedBackend

    with DistributedBackend(RunOptions(record=False, timeout=240)) as dist:
        for name in P2P:
            tasks_name = "rechunk" if name == "rechunk-p2p" else name.replace("-p2p", "-tasks")
            tasks = build(tasks_name, SIZE)
            p2p = _canonical(dist.run_once(workload_at(name, tasks.params["p"], SIZE)).extra[
                "results"])
            want = _canonical(SyncBackend(RunOptions(record=False)).run_once(
                tasks).extra["results"])
            if isinstance(want, pd.DataFrame):
                pd.testing.assert_frame_equal(p2p, want, check_dtype=False)
            else:
                assert len(p2p) == len(want)
                assert all(same(a, b) for a, b in zip(p2p, want, strict=True)), name


# --- sizing --------------------------------------------------------------------------------

def assert_sized(count: Any, n: int, p: int, c: int) -> None:
    """``(p, c)`` is what the sizing rule promises for request ``n``: ``c == count(p)``,
    within ``TOLERANCE`` of ``n``, or else no neighbouring size is closer to ``n``."""
    assert c == count(p)
    if abs(c - n) <= TOLERANCE * n:
        return
    for q in (p - 1, p + 1):
        if q >= 1:
            assert abs(c - n) <= abs(count(q) - n), (p, c, q, count(q))


@pytest.mark.parametrize("n", [10, 1_000, 99_999, 1_000_000])
@pytest.mark.parametrize("shape", ["linear", "cubic", "steps", "p log p"])
def test_size_for_finds_the_size_closest_to_the_request(shape: str, n: int) -> None:
    """Counts growing like the workloads' do (a cubic one: matrix products; steps: a staged
    shuffle padding its partitions), each count asked for once."""
    def grow(p: int) -> int:
        if shape == "linear":
            return 3 * p + 2
        if shape == "cubic":
            return round(1.4 * p ** 3)
        if shape == "steps":
            return 8 * p + 4 * math.ceil(math.sqrt(p)) ** 2
        return round(p * math.log2(p + 1)) + 1

    asked: list[int] = []

    def count(p: int) -> int:
        asked.append(p)
        return grow(p)

    p, c = size_for(count, n)
    assert len(asked) == len(set(asked))
    assert_sized(grow, n, p, c)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DASK_WORKLOADS))
def test_each_workload_is_sized_within_the_tolerance_or_to_the_closer_neighbour(
        name: str) -> None:
    """At 10,000 tasks, the real count of the graph Dask runs (as ``build`` reports it)."""
    n = 10_000
    w = build(name, n)

    def count(q: int) -> int:
        return count_tasks(as_dask_work(DASK_WORKLOADS[name].make(q, n), name))

    assert w.n_tasks == len(optimized_graph(w.dask())[0])
    assert_sized(count, n, w.params["p"], w.n_tasks)
