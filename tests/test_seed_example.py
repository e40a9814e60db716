"""The seed example, ``da.ones((5b,)*3, chunks=5).sum()`` (``ones-sum``): at small sizes the
reference's layers (lowered on the scheduler) give Dask's sync answer. The block tasks are
Dask's one for one; the tree differs in shape: Dask combines 2x2x2 neighbouring blocks per
level, the reference groups 8 consecutive blocks of the flattened index, so the task counts
are equal when the blocks per side are a power of two and within 1.5 % otherwise (9,142,860
against Dask's 9,143,238 for the 1000**3 array)."""

from __future__ import annotations

import dask
import dask.array as da
import pytest

from harness.workloads import build
from scheduler.runtime.inproc import InProcessCluster


def dask_sum(params: dict) -> tuple[float, int]:
    """Dask's answer for the workload's array, from its sync scheduler, and the task count of
    the graph it runs (after its default optimisation)."""
    arr = da.ones(tuple(params["shape"]), chunks=params["chunk"]).sum(
        split_every=params["split_every"])
    (optimized,) = dask.optimize(arr)
    return float(arr.compute(scheduler="sync")), len(dict(optimized.__dask_graph__()))


@pytest.mark.parametrize("n", [9, 80, 600, 1200, 5000])
def test_layers_on_the_scheduler_give_dasks_answer(n: int) -> None:
    w = build("ones-sum", n)
    expected, dask_tasks = dask_sum(w.params)
    assert expected == float(w.params["shape"][0] ** 3)
    got = InProcessCluster(2).run(w.layer_graph(), encoding="layers",
                                  output_layers=[w.output_layer], graph_id="seed").results
    assert got == {("total", 0): expected}
    b = w.params["blocks_per_side"]
    if b & (b - 1) == 0:
        assert w.n_tasks == dask_tasks
    else:
        assert abs(w.n_tasks - dask_tasks) <= 0.015 * dask_tasks
