"""Several clients on one cluster at once (``tests/concurrency.py`` holds the jobs): shared
keys give every client its answer, equal to Dask's synchronous scheduler's; a client that
releases or dies leaves nothing behind. After every test the cluster must be back to idle:
no task on the scheduler and no result on any worker (``nothing_left_behind``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from scheduler import Client, LocalCluster
from scheduler.graph.lowgraph import TaskGraph
from scheduler.graph.task import Ref, Task
from tests.concurrency import leftovers, quiet_audit, run_clients, stamp
from tests.conftest import cluster_env
from tests.test_faults import Background


def inc(x: int) -> int:
    return x + 1


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=2, nthreads=2, env=cluster_env()) as c:
        yield c


@pytest.fixture()
def auditor(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster, name="auditor", timeout=60) as c:
        yield c


@pytest.fixture(autouse=True)
def nothing_left_behind(auditor: Client) -> Iterator[None]:
    """The cluster is idle before the test and back to idle after it: the scheduler keeps no
    task or graph and no worker holds any result."""
    assert leftovers(quiet_audit(auditor)) == 0
    yield
    audit = quiet_audit(auditor)
    assert leftovers(audit) == 0 and audit["graphs"] == 0, audit
    assert all(w["untracked"] == 0 for w in audit["workers"].values()), audit


def assert_all_correct(outcomes: list) -> None:
    bad = [o for o in outcomes if not o.correct]
    assert not bad, bad


def test_four_clients_computing_the_same_workload(cluster: LocalCluster) -> None:
    """Four clients compute the reference ``elementwise`` workload (2000 tasks, the same keys)
    at the same moment: all four get Dask's answer."""
    assert_all_correct(run_clients(cluster.address, ["elementwise"] * 4))


def test_eight_clients_with_overlapping_and_disjoint_graphs(cluster: LocalCluster) -> None:
    """Eight clients: reference workloads sharing a source layer (elementwise, reduction), two
    with names of their own (chain, shuffle), the same Dask array twice and two Dask arrays of
    their own through ``client.get``. Every answer equals Dask's synchronous scheduler's."""
    jobs = ["elementwise", "reduction", "chain", "shuffle", "dask-array", "dask-array",
            "dask-array-1", "dask-array-2"]
    assert_all_correct(run_clients(cluster.address, jobs))


def test_one_client_used_from_two_threads(cluster: LocalCluster) -> None:
    assert_all_correct(run_clients(cluster.address, ["elementwise", "elementwise"],
                                   one_client=True))


@pytest.mark.slow
def test_client_processes_computing_the_same_dask_array(cluster: LocalCluster) -> None:
    assert_all_correct(run_clients(cluster.address, ["dask-array"] * 4, processes=True))


def test_a_key_released_by_one_client_is_kept_for_another(cluster: LocalCluster,
                                                          auditor: Client) -> None:
    """Client A submits ``shared-slow`` (1 s) as a Future; client B computes a graph defining
    ``shared-slow`` too (another task: A's came first and wins) and ``b-uses = inc`` of it.
    A releases its Future while the task runs: B still gets ``b-uses`` from A's task, which
    ran once."""
    with Client(cluster, name="a", timeout=60) as a, Client(cluster, name="b", timeout=60) as b:
        fut = a.submit(stamp, 41, 1.0, key="shared-slow")
        graph = TaskGraph.from_dict({"shared-slow": Task(stamp, 1000, 0.0),
                                     "b-uses": Task(inc, Ref("shared-slow"))})
        deadline = time.monotonic() + 30
        while auditor.audit()["tasks"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        run = Background(b.compute, graph, ["b-uses", "shared-slow"], timeout=60)
        time.sleep(0.2)
        fut.release()
        assert run.result(60) == {"b-uses": 42, "shared-slow": 41}


def test_a_client_killed_mid_compute_leaves_nothing_behind(cluster: LocalCluster,
                                                          auditor: Client) -> None:
    """A client process computes 400 tasks of 20 ms, each an output (so results pile up on
    the workers). Once workers hold some of them, it is killed (SIGKILL, by its PID). The
    scheduler forgets its graph, workers free every result, and tasks that were running
    when it died free theirs when they finish: the cluster is back to idle (checked by
    ``nothing_left_behind``), and it still computes for others."""
    env = {**os.environ, **cluster_env()}
    proc = subprocess.Popen([sys.executable, "-m", "tests.concurrency", "client",
                             cluster.address, "slow:400:0.02"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            audit = auditor.audit()
            if sum(w["held"] for w in audit["workers"].values()) >= 20:
                break
            assert proc.poll() is None, "the client finished before it could be killed"
            assert time.monotonic() < deadline, f"no results piled up: {audit}"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    audit = quiet_audit(auditor)
    assert leftovers(audit) == 0, audit
    assert_all_correct(run_clients(cluster.address, ["elementwise"]))
