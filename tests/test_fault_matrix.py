"""The fault matrix: workers SIGKILLed or SIGSTOPped at chosen moments of real workloads, each
result checked against Dask's sync scheduler, each run bounded in time.

Moments: *early* (as soon as the scheduler holds the graph), *mid-way* (when the scheduler
has counted about half the tasks finished), *during gather* (the holder of the outputs dies
as the client starts to fetch them), and *the only copy* (the worker holding the one result
that later tasks need dies before they read it). Workloads: the harness's elementwise,
reduction and shuffle (sent as layers), and real Dask array and bag graphs through
``client.get``. Faults: one worker of three killed (a replacement started), two of three
killed, all killed and a new one started with ``stagecost worker``, one stopped for longer
than the heartbeat timeout and then resumed; and a cluster left with no worker, where the
run must end with an error that says so.

The default run keeps a quick subset; ``-m slow`` runs the whole matrix. Expected values come
from Dask's sync scheduler: Dask collections computed with ``scheduler="sync"``, and the
harness's graphs converted to Dask's task tuples and run with ``dask.get``.

Rules: as in ``tests/test_faults.py``, whose helpers this module uses: every process is
started here and signalled by PID, every wait is bounded, nothing asserts wall time.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest
from dask.utils import apply

from harness.workloads import build
from scheduler import Client, LocalCluster
from scheduler.graph.layers import LayerGraph, Reduction, blockwise
from scheduler.graph.lowgraph import TaskGraph
from scheduler.graph.task import IndexSlot, Ref, Task
from tests.concurrency import leftovers, quiet_audit
from tests.test_faults import (
    Background,
    cluster_env,
    live_workers,
    slow_source,
    total,
    wait_for,
    wait_released,
    worker_id,
)

pytestmark = pytest.mark.cluster

BOUND = 120.0  # seconds a faulted run may take before the test fails (a hang guard)


# --- task functions (module level: workers import them by reference) ------------------------

def slow_block(block: np.ndarray, delay: float) -> np.ndarray:
    time.sleep(delay)
    return block * 2 + 1


def slow_item(x: int, delay: float) -> int:
    time.sleep(delay)
    return x * 3


def plus(x: int, i: int) -> int:
    return x + i


# --- the expected values: Dask's sync scheduler ---------------------------------------------

def _to_dask(spec: Any) -> Any:
    """One of our specs (``Task`` with ``Ref``s) as Dask's legacy task tuple."""
    if isinstance(spec, Ref):
        return spec.key
    if isinstance(spec, Task):
        args = [_to_dask(a) for a in spec.args]
        if spec.kwargs:
            return (apply, spec.func, args, (dict, [[k, _to_dask(v)] for k, v in
                                                   spec.kwargs.items()]))
        return (spec.func, *args)
    if isinstance(spec, list):
        return [_to_dask(a) for a in spec]
    if isinstance(spec, dict):
        return (dict, [[k, _to_dask(v)] for k, v in spec.items()])
    return spec


@functools.cache
def workload(name: str, n: int) -> tuple[LayerGraph, list[Any], dict[Any, Any]]:
    """A harness workload as layers (``slow-reduction``: a reduction whose sources sleep
    0.5 ms, long enough at a few thousand tasks to be hit mid-way), its outputs, and their
    values from ``dask.get`` (which takes about 0.5 ms per task: cached)."""
    if name == "slow-reduction":
        layers = LayerGraph([blockwise("slow-src", (n,), slow_source, IndexSlot(0), 0.0005),
                             Reduction("slow-total", "slow-src", total, split_every=8)])
        outputs: list[Any] = [("slow-total", 0)]
    else:
        w = build(name, n)
        assert w.layers is not None
        layers, outputs = w.layers, w.outputs
    dsk = {k: _to_dask(v) for k, v in layers.lower().to_dict().items()}
    values = dask.get(dsk, outputs)
    return layers, outputs, dict(zip(outputs, values, strict=True))


def test_the_dask_conversion_gives_the_reference_values() -> None:
    """The expected values are Dask's: the converted graph run by ``dask.get`` equals our own
    in-process evaluation (so neither side is checked against itself)."""
    for name in ("elementwise", "reduction", "shuffle"):
        layers, outputs, expected = workload(name, 2000)
        assert layers.lower().execute(outputs) == expected


# --- clusters and faults --------------------------------------------------------------------

@pytest.fixture(scope="module")
def matrix_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=3, record=False, env=cluster_env()) as c:
        yield c


@pytest.fixture
def cluster3(matrix_cluster: LocalCluster) -> LocalCluster:
    """The module's cluster with exactly three live workers and no graph left."""
    for _ in range(3 - len(live_workers(matrix_cluster))):
        matrix_cluster.add_worker()
    with Client(matrix_cluster, name="fixture", record=False, timeout=60) as c:
        wait_for(lambda: c.info()["workers"] == 3, 60, "three live workers")
        wait_released(c, 60)
    return matrix_cluster


def kill(procs: list[subprocess.Popen[Any]]) -> None:
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait(10)


class Moment:
    """Calls ``fault()`` once, at the moment named: ``early`` (the first count of finished
    tasks) or ``mid`` (half of them counted finished), and never once all are: ``hit`` says
    whether it came while the graph was running."""

    def __init__(self, when: str, fault: Callable[[], None]) -> None:
        self.when, self.fault, self.hit = when, fault, False

    def progress(self, done: int, total_: int) -> None:  # the client's loop thread
        if not self.hit and done < total_ and (self.when == "early" or done >= total_ // 2):
            self.hit = True
            self.fault()


def run_with_fault(client: Client, graph: LayerGraph | TaskGraph, outputs: list[Any],
                   moment: Moment, encoding: str | None = None) -> dict[Any, Any]:
    """Run ``graph`` with ``moment`` watching its progress; fails when the fault came too
    late to test anything."""
    run = Background(client.run, graph, outputs, encoding=encoding, timeout=BOUND,
                     task_progress=moment.progress)
    results = run.result(BOUND + 30).results
    assert moment.hit, "the graph finished before the fault: nothing was tested"
    return results


def start_with_fault(client: Client, graph: LayerGraph, outputs: list[Any], moment: Moment,
                     what: str) -> Background:
    """Start ``graph`` (layers) with ``moment`` watching it and return once the fault came;
    fails when the graph finished first (``what`` names the fault for that message)."""
    run = Background(client.run, graph, outputs, encoding="layers", timeout=BOUND,
                     task_progress=moment.progress)
    wait_for(lambda: moment.hit or run.done(), BOUND, "half the graph")
    assert moment.hit, f"the graph finished before {what}"
    return run


# --- one of three killed, at each moment, on each workload -----------------------------------

def _kill_one_and_replace(cluster: LocalCluster) -> Callable[[], None]:
    def fault() -> None:
        kill([live_workers(cluster)[0]])
        cluster.add_worker()
    return fault


@pytest.mark.parametrize(("name", "n", "when"), [
    ("slow-reduction", 6000, "mid"),
    pytest.param("reduction", 100_000, "mid", marks=pytest.mark.slow),
    pytest.param("elementwise", 50_000, "early", marks=pytest.mark.slow),
    pytest.param("elementwise", 50_000, "mid", marks=pytest.mark.slow),
    pytest.param("reduction", 100_000, "early", marks=pytest.mark.slow),
    pytest.param("shuffle", 30_000, "early", marks=pytest.mark.slow),
    pytest.param("shuffle", 30_000, "mid", marks=pytest.mark.slow),
])
def test_one_of_three_workers_killed(cluster3: LocalCluster, name: str, n: int,
                                     when: str) -> None:
    """A harness workload sent as layers; one of the three workers is SIGKILLed at the moment
    named and a replacement started. Every output equals Dask's. The graph is kept once
    done: reports the scheduler dropped as stale were answered with releases, so every
    worker holds only results the scheduler places there (the audit's ``untracked`` is 0,
    only the outputs are held); once it is released nothing is left anywhere."""
    layers, outputs, expected = workload(name, n)
    with Client(cluster3, record=False, timeout=60) as client:
        moment = Moment(when, _kill_one_and_replace(cluster3))
        run = Background(client.run, layers, outputs, encoding="layers", timeout=BOUND,
                         release=False, task_progress=moment.progress)
        res = run.result(BOUND + 30)
        assert moment.hit, "the graph finished before the fault: nothing was tested"
        assert res.results == expected
        deadline = time.monotonic() + 10  # releases may still be on their way
        while True:
            audit = client.audit()
            untracked = {n: w["untracked"] for n, w in audit["workers"].items()}
            if not any(untracked.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert not any(untracked.values()) and audit["results"] == len(outputs), audit
        client.release_soon(res.graph_id)
        audit = quiet_audit(client)
    assert leftovers(audit) == 0, audit


def test_holder_of_the_outputs_killed_during_gather(cluster3: LocalCluster) -> None:
    """Elementwise, 3,000 tasks: the graph is done and the client starts fetching its outputs;
    the first worker it asks is SIGKILLed just before the request. The client gets every
    output anyway (the scheduler recomputes what that worker held and tells it where)."""
    layers, outputs, expected = workload("elementwise", 3000)
    with Client(cluster3, record=False, timeout=60) as client:
        fetch = client._fetch
        killed: list[int] = []

        async def fetch_after_killing(worker: int, ids: list[int]) -> Any:
            if not killed:
                victim = next(p for p in live_workers(cluster3)
                              if worker_id(client, p.pid) == worker)
                kill([victim])
                killed.append(victim.pid)
            return await fetch(worker, ids)

        client._fetch = fetch_after_killing  # type: ignore[method-assign]
        got = client.compute(layers, outputs, encoding="layers", timeout=BOUND)
    assert killed and got == expected


def test_worker_holding_the_only_copy_of_a_dependency_killed(cluster3: LocalCluster) -> None:
    """``src`` is computed and held by one worker only; that worker is SIGKILLed; then 300
    tasks that read ``src`` are submitted. The scheduler computes ``src`` again (its result
    was lost before anybody read it) and every task gets the right value."""
    with Client(cluster3, record=False, timeout=60) as client:
        src = client.submit(slow_source, 7, 0.0, key="only-copy-src")
        assert src.result(BOUND) == 7
        holder = client.holders(src.graph_id)
        [wid] = set(holder.values())
        kill([p for p in live_workers(cluster3) if worker_id(client, p.pid) == wid])
        dsk: dict[Any, Task] = {("uses", i): Task(plus, Ref("only-copy-src"), i)
                                for i in range(300)}
        graph = TaskGraph.from_dict(dsk, external=["only-copy-src"])
        got = client.compute(graph, list(dsk), timeout=BOUND)
        src.release()
    want = dask.get({"only-copy-src": (slow_source, 7, 0.0),
                     **{k: (plus, "only-copy-src", k[1]) for k in dsk}}, list(dsk))
    assert tuple(got[k] for k in dsk) == want


# --- real Dask graphs through client.get -----------------------------------------------------

def test_dask_array_with_a_worker_killed_mid_way(cluster3: LocalCluster) -> None:
    """A Dask array of 2,000 blocks (each sleeping 1 ms), mapped, summed by a tree and
    sampled, run with ``dask.compute(..., scheduler=client.get)``; a worker is SIGKILLed
    while it runs. The results equal Dask's sync scheduler's."""
    y = da.arange(200_000, chunks=100).map_blocks(slow_block, 0.001, dtype=int)
    parts = (y.sum(split_every=8), y[::700])
    want = dask.compute(*parts, scheduler="sync")
    with Client(cluster3, record=False, timeout=60) as client:
        got = _get_with_kill(client, cluster3,
                             lambda: dask.compute(*parts, scheduler=client.get))
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.slow
def test_dask_bag_groupby_with_a_worker_killed_mid_way(cluster3: LocalCluster) -> None:
    """A Dask bag of 400 partitions (items sleeping 0.2 ms), grouped with a task shuffle and
    folded; a worker is SIGKILLed mid-way. The result equals Dask's sync scheduler's."""
    b = db.from_sequence(range(8000), npartitions=400).map(slow_item, 0.0002)
    grouped = b.groupby(lambda v: v % 13, shuffle="tasks").map(
        lambda kv: (kv[0], sorted(kv[1]))).compute
    want = sorted(grouped(scheduler="sync"))
    with Client(cluster3, record=False, timeout=60) as client:
        got = _get_with_kill(client, cluster3, lambda: grouped(scheduler=client.get))
    assert sorted(got) == want


def _get_with_kill(client: Client, cluster: LocalCluster, compute: Callable[[], Any]) -> Any:
    """Run ``compute`` (which calls ``client.get``) while a watcher SIGKILLs one worker when
    the scheduler has finished a third of its tasks, and starts a replacement."""
    run = Background(compute)
    with Client(cluster, name="watcher", record=False, timeout=60) as watcher:
        wait_for(lambda: watcher.info()["tasks"] > 0 or run.done(), BOUND, "the graph")
        seen = watcher.info()["tasks"]
        assert seen > 0, "the graph finished before it was seen"
        time.sleep(0.3)  # the graph is running: part of it is done
        assert not run.done(), "the graph finished before the fault"
        kill([live_workers(cluster)[0]])
        cluster.add_worker()
    return run.result(BOUND)


# --- several workers -----------------------------------------------------------------------

@pytest.mark.slow
def test_two_of_three_workers_killed_mid_way(cluster3: LocalCluster) -> None:
    """The 100,000-task reduction; two of the three workers are SIGKILLed at once mid-way and
    no replacement is started: the survivor finishes alone. Correct."""
    layers, outputs, expected = workload("reduction", 100_000)

    def fault() -> None:
        kill(live_workers(cluster3)[:2])

    with Client(cluster3, record=False, timeout=60) as client:
        got = run_with_fault(client, layers, outputs, Moment("mid", fault), "layers")
    assert got == expected


@pytest.mark.slow
def test_all_workers_killed_then_one_started_with_the_cli() -> None:
    """Every worker is SIGKILLed mid-way through the reduction; the graph waits (nothing can
    run), then a worker started with ``stagecost worker ADDRESS`` joins and the graph
    completes on it, correct. The new worker is ours: killed by PID at the end."""
    layers, outputs, expected = workload("reduction", 100_000)
    extra: list[subprocess.Popen[Any]] = []
    with LocalCluster(n_workers=3, record=False, env=cluster_env()) as cluster, \
            Client(cluster, record=False, timeout=60) as client:
        try:
            def fault() -> None:
                kill(live_workers(cluster))

            run = start_with_fault(client, layers, outputs, Moment("mid", fault),
                                   "the workers were killed")
            wait_for(lambda: client.info()["workers"] == 0, 30, "every worker gone")
            assert not run.done()
            extra.append(subprocess.Popen(
                [sys.executable, "-m", "harness.cli", "worker", cluster.address,
                 "--no-record"], env={**os.environ, **cluster_env()}))
            got = run.result(BOUND).results
        finally:
            for p in extra:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
    assert got == expected


@pytest.mark.slow
def test_worker_stopped_past_the_heartbeat_timeout_then_resumed() -> None:
    """``heartbeat_timeout=3``: one of three workers is SIGSTOPped mid-way through a reduction
    of 12,000 sources that sleep 0.5 ms, and SIGCONTed once the scheduler has removed it
    (its tasks and results gone to the others). Resumed, it finds its connection closed and
    exits by itself. Correct."""
    layers, outputs, expected = workload("slow-reduction", 12_000)
    with LocalCluster(n_workers=3, record=False, heartbeat_timeout=3,
                      env=cluster_env()) as cluster, \
            Client(cluster, record=False, timeout=60) as client:
        stopped = cluster.workers[0]

        def fault() -> None:
            os.kill(stopped.pid, signal.SIGSTOP)

        try:
            run = start_with_fault(client, layers, outputs, Moment("mid", fault),
                                   "the worker was stopped")
            wait_for(lambda: client.info()["workers"] == 2, 30, "the silent worker removed")
            os.kill(stopped.pid, signal.SIGCONT)
            got = run.result(BOUND).results
            stopped.wait(30)  # exits by itself: its scheduler connection was closed
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped.pid, signal.SIGCONT)
            if stopped.poll() is None:
                stopped.kill()
                stopped.wait(10)
    assert got == expected


def test_a_graph_that_cannot_finish_says_why() -> None:
    """Every worker of a cluster is SIGKILLed while a graph runs and none comes back: the
    client's wait ends at its timeout with an error that says the cluster has no workers
    left (not a bare timeout)."""
    layers = LayerGraph([blockwise("nowk-src", (2000,), slow_source, IndexSlot(0), 0.002),
                         Reduction("nowk-total", "nowk-src", total, split_every=8)])
    with LocalCluster(n_workers=2, record=False, env=cluster_env()) as cluster, \
            Client(cluster, record=False, timeout=60) as client:
        moment = Moment("early", lambda: kill(live_workers(cluster)))
        with pytest.raises(TimeoutError, match="0 workers"):
            client.run(layers, [("nowk-total", 0)], timeout=8, task_progress=moment.progress)
        assert moment.hit
