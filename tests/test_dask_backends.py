"""Dask side by side: equivalent graphs, stage tables, results equal to the reference.

Graph tests build Dask graphs without running a scheduler; local-scheduler tests run Dask's
threads/processes/sync schedulers in this process (a pool of 2 processes for
dask-processes); ``cluster`` tests start one distributed ``LocalCluster`` (2 single-threaded
worker processes on loopback) per module and close it. Sizes are small; nothing asserts on
wall time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("distributed")

from harness.backends import dask_plugins as plug  # noqa: E402
from harness.backends.base import Backend, RunOptions  # noqa: E402
from harness.backends.dask_backends import (  # noqa: E402
    DistributedBackend,
    ProcessesBackend,
    SyncBackend,
    ThreadsBackend,
)
from harness.backends.dask_graphs import (  # noqa: E402
    canonical,
    dask_collection,
    expected_shape,
    graph_shape,
    materialize,
)
from harness.measure import stage_rows, time_to_first_task  # noqa: E402
from harness.workloads import WORKLOADS, Workload, build, partition  # noqa: E402
from scheduler.stages import Stage  # noqa: E402

NAMES = list(WORKLOADS)
SIZE = 1000
"""Requested tasks for graph and local-scheduler tests."""
SMALL = 500
"""Requested tasks where a run costs more (process pool, distributed)."""


def reference_values(w: Workload) -> Any:
    ref = w.lower().execute(w.outputs)
    return canonical(w, [ref[k] for k in w.outputs])


# --- graphs --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_dask_graph_has_the_documented_shape(name: str) -> None:
    w = build(name, SIZE)
    dsk, keys = materialize(dask_collection(w).collection, optimize=False)
    assert graph_shape(dsk) == expected_shape(w)
    assert len(keys) == len(w.outputs)


@pytest.mark.parametrize("name", NAMES)
def test_documented_differences_from_the_reference(name: str) -> None:
    w = build(name, SIZE)
    g = w.lower()
    n, edges = expected_shape(w)
    if name == "reduction":  # Dask's per-block chunk sums
        assert (n - g.n, edges - g.n_edges) == (w.params["blocks"], w.params["blocks"])
    elif name == "shuffle":  # getitem tasks per (partition, branch)
        assert n > g.n
    else:
        assert (n, edges) == (g.n, g.n_edges)


def _single_input_tree_nodes(w: Workload) -> int:
    """Reduction tree nodes with one input that is itself a tree node (Dask fuses them)."""
    g = w.lower()
    return sum(int((g.groups[i].indptr[1:] - g.groups[i].indptr[:-1] == 1).sum())
               for i in range(2, len(g.groups)))


@pytest.mark.parametrize("name", NAMES)
def test_what_dask_runs_after_its_optimisation(name: str) -> None:
    w = build(name, SIZE)
    coll = dask_collection(w).collection
    unopt = graph_shape(materialize(coll, optimize=False)[0])
    n, edges = graph_shape(materialize(coll, optimize=True)[0])
    g = w.lower()
    if name == "elementwise":
        assert (n, edges) == (w.params["blocks"], 0)
    elif name == "chain":
        assert (n, edges) == (w.params["width"], 0)
    elif name == "reduction":
        single = _single_input_tree_nodes(w)
        assert (n, edges) == (g.n - single, g.n_edges - single)
    else:  # linear fusion only removes tasks (its count may vary with the hash seed)
        assert n <= unopt[0] and edges <= unopt[1]


@pytest.mark.parametrize("partitions", [5, 33, 50])
def test_shuffle_shape_and_results_when_stages_are_padded(partitions: int) -> None:
    w = dataclasses.replace(build("shuffle", 100),
                            params={"partitions": partitions, "max_branch": 32})
    dsk, keys = materialize(dask_collection(w).collection, optimize=False)
    assert graph_shape(dsk) == expected_shape(w)
    from dask.local import get_sync

    got = canonical(w, get_sync(dsk, keys))
    items = [x for i in range(partitions) for x in partition(i, partitions)]
    assert sorted(x for xs in got.values() for x in xs) == sorted(items)


@pytest.mark.parametrize("name", NAMES)
def test_dask_graph_computes_the_reference_results(name: str) -> None:
    from dask.local import get_sync

    w = build(name, SMALL)
    dsk, keys = materialize(dask_collection(w).collection)
    assert canonical(w, get_sync(dsk, keys)) == reference_values(w)


# --- the timing machinery ------------------------------------------------------------------

class FakeNs:
    """A clock that advances 10 ns per reading, or by ``jump`` when told."""

    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        self.now += 10
        return self.now


@pytest.fixture
def fake_ns(monkeypatch: pytest.MonkeyPatch) -> FakeNs:
    clock = FakeNs()
    monkeypatch.setattr(plug, "_perf_ns", clock)
    return clock


def busy(rows: list[tuple[Any, ...]]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for stage, role, start, end, *_ in rows:
        out[(role, stage)] = out.get((role, stage), 0) + end - start
    return out


def test_frames_are_exclusive_and_coalesced(fake_ns: FakeNs) -> None:
    clock = plug.StageClock("scheduler", gap_ns=1_000, window_ns=10_000)
    inner = plug.timed(clock, "schedule", lambda: fake_ns.__setattr__("now", fake_ns.now + 300),
                       tasks=1)
    outer = plug.timed(clock, "execute", lambda: [inner(), inner()])
    outer()
    outer()
    fake_ns.now += 5_000  # beyond the gap: a new span
    inner()
    rows, _ = clock.drain()
    assert busy(rows) == {("scheduler", "execute"): 2 * 30, ("scheduler", "schedule"): 5 * 310}
    assert sum(r[4] for r in rows if r[0] == "schedule") == 5
    assert [r[0] for r in rows] == ["execute", "schedule", "schedule"]


def test_idle_frames_count_for_nothing(fake_ns: FakeNs) -> None:
    clock = plug.StageClock("scheduler")
    wait = plug.timed(clock, None, lambda: fake_ns.__setattr__("now", fake_ns.now + 10_000))
    with clock.frame("schedule"):
        wait()
    assert busy(clock.drain()[0]) == {("scheduler", "schedule"): 20}


def test_coroutines_count_their_steps_not_their_waits(fake_ns: FakeNs) -> None:
    clock = plug.StageClock("worker-0")

    async def work() -> int:
        fake_ns.now += 100
        await asyncio.sleep(0)  # suspended: the fake clock jumps meanwhile
        fake_ns.now += 100
        return 7

    wrapped = plug.timed_async(clock, "execute", work, messages=1)

    async def main() -> int:
        task = asyncio.ensure_future(wrapped())
        await asyncio.sleep(0)
        fake_ns.now += 1_000_000
        return await task

    assert asyncio.run(main()) == 7
    rows, _ = clock.drain()
    assert busy(rows) == {("worker-0", "execute"): 2 * 110}
    assert sum(r[6] for r in rows) == 1


def test_rejected_threads_record_nothing() -> None:
    main = threading.get_ident()
    clock = plug.StageClock("scheduler", accept=lambda t: t.ident == main)
    f = plug.timed(clock, "execute", lambda: 1)
    t = threading.Thread(target=f)
    t.start()
    t.join()
    assert clock.drain()[0] == []
    assert f() == 1
    assert len(clock.drain()[0]) == 1


class Holder:
    value = "class"


def test_patches_are_undone_in_reverse() -> None:
    import dask.utils

    p = plug.Patches()
    obj = Holder()
    table = {"a": 1}
    original = dask.utils.ensure_dict
    p.setattr(obj, "value", "instance")
    p.setattr(Holder, "value", "patched")
    p.setitem(table, "a", 2)
    p.setitem(table, "b", 3)
    assert p.rebind(original, lambda f: plug.timed(plug.StageClock("x"), "update_graph", f)) > 1
    assert dask.utils.ensure_dict is not original
    p.restore()
    assert dask.utils.ensure_dict is original
    assert (Holder.value, obj.value, table) == ("class", "class", {"a": 1})


def test_a_timed_codec_pickles_as_the_plain_function() -> None:
    codec = plug.TimedCodec(pickle.dumps, plug.StageClock("scheduler"), "dispatch")
    assert pickle.loads(pickle.dumps(codec)) is pickle.dumps
    assert pickle.loads(codec([1, 2])) == [1, 2]


# --- backends --------------------------------------------------------------------------------

LOCAL = {"dask-sync": SyncBackend, "dask-threads": ThreadsBackend,
         "dask-processes": ProcessesBackend}


@pytest.fixture(scope="module", params=list(LOCAL))
def local_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    with LOCAL[request.param](RunOptions(workers=2, threads=1)) as backend:
        yield backend


def _size(backend: Backend) -> int:
    return SMALL if backend.name == "dask-processes" else SIZE


def check_stage_table(backend: Backend, workload: Workload, m: Any,
                      recorded: set[Stage]) -> None:
    rows = stage_rows(m, {}, workload.n_tasks, backend.applicable)
    stages = {r["stage"] for r in rows}
    assert stages == {s.name for s in Stage}
    for stage in Stage:
        mine = [r for r in rows if r["stage"] == stage.name]
        if stage in backend.applicable:
            assert all(r["applicable"] for r in mine)
        else:
            assert len(mine) == 1
            assert (mine[0]["role"], mine[0]["applicable"], mine[0]["seconds"]) == (
                "all", False, None)
        if stage in recorded:
            assert sum(r["seconds"] for r in mine) > 0, stage.name
    ttft = time_to_first_task(m)
    assert ttft is not None and 0 < ttft <= (m.t_end_ns - m.t0_ns) / 1e9


def test_local_stage_table(local_backend: Backend) -> None:
    w = build("reduction", SMALL)
    m = local_backend.run_once(w)
    recorded = {Stage.generate, Stage.optimize, Stage.update_graph, Stage.schedule,
                Stage.execute}
    if local_backend.name == "dask-processes":
        assert local_backend.applicable == frozenset(Stage) - {Stage.serialize,
                                                               Stage.communicate}
        recorded.add(Stage.dispatch)
    else:
        assert local_backend.applicable == frozenset(Stage) - {
            Stage.serialize, Stage.communicate, Stage.dispatch}
    check_stage_table(local_backend, w, m, recorded)
    # blockwise fusion folds the chunk sums back into the sources (see dask_graphs)
    assert m.tasks_run == w.n_tasks - _single_input_tree_nodes(w)
    roles = {r.role for r in m.spans}
    assert {"client", "scheduler", "worker-0"} <= roles
    if local_backend.name == "dask-sync":  # one thread: exclusive busy time fits in wall
        assert sum(r.end_ns - r.start_ns for r in m.spans) <= m.t_end_ns - m.t0_ns


@pytest.mark.parametrize("name", NAMES)
def test_local_results_equal_reference(local_backend: Backend, name: str) -> None:
    w = build(name, _size(local_backend))
    m = local_backend.run_once(w)
    assert canonical(w, m.extra["results"]) == reference_values(w)


def test_local_recording_off() -> None:
    with SyncBackend(RunOptions(record=False)) as backend:
        w = build("chain", SMALL)
        m = backend.run_once(w)
    assert m.spans == [] and m.tasks_run is None
    assert canonical(w, m.extra["results"]) == reference_values(w)


def test_local_hooks_are_removed_after_a_run() -> None:
    import dask._expr
    import dask.local

    before = (dask.local.order, dask.local.finish_task, dask.local.batch_execute_tasks,
              vars(dask._expr.HLGExpr)["_optimized_dsk"])
    with ThreadsBackend(RunOptions()) as backend:
        backend.run_once(build("elementwise", 100))
    assert before == (dask.local.order, dask.local.finish_task,
                      dask.local.batch_execute_tasks,
                      vars(dask._expr.HLGExpr)["_optimized_dsk"])


def test_process_pool_pids(local_backend: Backend) -> None:
    pids = local_backend.pids()
    assert pids["client"] == pids["scheduler"]
    if local_backend.name == "dask-processes":
        assert {"worker-0", "worker-1"} <= set(pids)


# --- dask-distributed -------------------------------------------------------------------------

@pytest.mark.cluster
def test_distributed_close_restores_this_process() -> None:
    import dask._expr
    import dask.order
    import distributed.client
    import distributed.scheduler

    before = (dask.order.order, distributed.scheduler._materialize_graph,
              distributed.client.serialize, vars(dask._expr.HLGExpr)["_optimized_dsk"])
    with DistributedBackend(RunOptions(workers=1, threads=1)) as backend:
        assert dask.order.order is not before[0]  # installed (the scheduler lives here)
        backend.run_once(build("chain", 100))
    assert before == (dask.order.order, distributed.scheduler._materialize_graph,
                      distributed.client.serialize,
                      vars(dask._expr.HLGExpr)["_optimized_dsk"])


@pytest.fixture(scope="module")
def distributed_backend() -> Iterator[DistributedBackend]:
    backend = DistributedBackend(RunOptions(workers=2, threads=1, timeout=240))
    with backend:
        yield backend


@pytest.mark.cluster
def test_distributed_stage_table(distributed_backend: DistributedBackend) -> None:
    w = build("reduction", SMALL)
    distributed_backend.run_once(w)  # the first run pays imports on the workers
    m = distributed_backend.run_once(w)
    check_stage_table(distributed_backend, w, m, set(Stage))
    roles = {r.role for r in m.spans}
    assert {"client", "scheduler", "worker-0", "worker-1"} <= roles
    comm = [r for r in m.spans if r.stage == Stage.communicate]
    assert len(comm) == 1 and m.nbytes is not None and comm[0].nbytes == m.nbytes > 0
    assert m.tasks_run == w.n_tasks - _single_input_tree_nodes(w)
    assert set(m.peak_rss) == {"scheduler", "worker-0", "worker-1"}  # the runner adds client
    assert all(v > 10 * 2**20 for v in m.peak_rss.values())


@pytest.mark.cluster
@pytest.mark.parametrize("name", NAMES)
def test_distributed_results_equal_reference(distributed_backend: DistributedBackend,
                                             name: str) -> None:
    w = build(name, SMALL)
    m = distributed_backend.run_once(w)
    assert canonical(w, m.extra["results"]) == reference_values(w)
    assert m.notes == []


@pytest.mark.cluster
def test_distributed_pids(distributed_backend: DistributedBackend) -> None:
    import os

    pids = distributed_backend.pids()
    assert pids["scheduler"] == os.getpid()  # LocalCluster runs its scheduler here
    assert {"worker-0", "worker-1"} <= set(pids)
    assert len({pids["worker-0"], pids["worker-1"], os.getpid()}) == 3
    assert distributed_backend.describe()["scheduler_in_client_process"] is True


@pytest.mark.cluster
def test_distributed_counts_finished_tasks_from_the_scheduler(
        distributed_backend: DistributedBackend) -> None:
    """The finished-task count (what long runs show while their few outputs are pending):
    40 naps of 50 ms and one task over them, on 2 workers of 1 thread; polled every 0.1 s.
    The total stays 41, the count never goes back, and it moves while naps still run."""
    import time

    import dask

    client = distributed_backend.client
    before = client.run_on_scheduler(plug.scheduler_task_progress)[0]
    naps = [dask.delayed(time.sleep)(0.05, dask_key_name=f"stagecost-nap-{i}")
            for i in range(40)]
    future = client.compute(dask.delayed(len)(naps))
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + 60
    while not future.done() and time.monotonic() < deadline:
        distributed_backend._tell_tasks(lambda d, t: seen.append((d, t)), before)
        time.sleep(0.1)
    assert future.result(timeout=60) == 40
    del future
    assert seen, "no count while 2 s of naps ran on 2 threads"
    assert {t for _, t in seen} == {41}
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] <= 41
    assert any(0 < d < 40 for d in done)


@pytest.mark.cluster
def test_a_slow_count_query_does_not_space_out_progress(
        distributed_backend: DistributedBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dask's scheduler answers the count query only between its handlers (seconds, during
    a big update_graph). That wait is not the watcher's own work: with a query that takes
    0.5 s, progress still comes about every second (32 naps of 0.25 s on 2 threads: ~4 s)."""
    import time

    import dask

    calls: list[float] = []

    def slow_query(tasks: Any, sent_before: int) -> None:
        calls.append(time.monotonic())
        time.sleep(0.5)

    class Progress:
        def __call__(self, done: int, total: int) -> None:
            pass

        def tasks(self, done: int, total: int) -> None:
            pass

    monkeypatch.setattr(distributed_backend, "_tell_tasks", slow_query)
    naps = [dask.delayed(time.sleep)(0.25, dask_key_name=f"stagecost-slow-nap-{i}")
            for i in range(32)]
    futures = distributed_backend.client.compute(naps)
    distributed_backend._gather(futures, Progress(), 0)
    del futures
    assert len(calls) >= 2, calls
