"""The reference runtime on loopback: ``LocalCluster`` + ``Client`` against the in-process
reference (``TaskGraph.execute``).

What is checked: every named workload at >= 10,000 tasks gives exactly the outputs of the
in-process execution (every output compared), with the ``compact`` encoding and, smaller, with
``pickle``; graphs submitted one after another on one cluster; a task error reaches
``Client.compute`` as its own exception type with the worker's traceback as ``__cause__``, and
the cluster stays usable; spans cover every role and all eight stages; addresses are loopback
TCP; the cluster's processes are gone after ``close`` and when their parent dies.

Most tests share one 2-worker cluster per module (``conftest.cluster``). No test asserts on
wall time; waits are bounded by timeouts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from harness.workloads import WORKLOADS, Workload, build
from scheduler import Client, LocalCluster, Stage
from scheduler.graph.lowgraph import TaskGraph
from scheduler.graph.task import Ref, Task
from scheduler.runtime.client import RemoteTraceback
from tests.conftest import cluster_env

pytestmark = pytest.mark.cluster

ADDRESS = re.compile(r"^tcp://127\.0\.0\.1:(\d+)$")
TIMEOUT = 120.0  # seconds any one graph may take before a test fails (a hang guard only)


# --- task functions (module level: workers import them by reference) -----------------------

def inc(x: int) -> int:
    return x + 1


def fail_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError(f"stagecost test: refusing input {x}")
    return x * 2


def total(parts: list[int]) -> int:
    return sum(parts)


def slow_inc(x: int) -> int:
    time.sleep(0.01)
    return x + 1


# --- helpers -------------------------------------------------------------------------------

def at_least(name: str, n: int) -> Workload:
    """Workload ``name`` with at least ``n`` real tasks (sizes are requests)."""
    request = n
    while True:
        w = build(name, request)
        if w.n_tasks >= n:
            return w
        request = int(request * 1.05) + 1


def failing_graph(width: int = 300) -> TaskGraph:
    """``x_i = inc(i)``, ``y_i = fail_on_seven(x_i)`` (fails for i = 6), ``total`` of all y."""
    dsk: dict[object, Task] = {}
    for i in range(width):
        dsk[("x", i)] = Task(inc, i)
        dsk[("y", i)] = Task(fail_on_seven, Ref(("x", i)))
    dsk["total"] = Task(total, [Ref(("y", i)) for i in range(width)])
    return TaskGraph.from_dict(dsk)


def wait_until_released(client: Client, timeout: float = 20.0) -> dict[str, object]:
    """Poll the scheduler until it holds no graph (releases are asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        info = client.info()
        if info["graphs"] == 0 or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


def assert_same_results(client: Client, w: Workload, encoding: str) -> None:
    graph = w.lower()
    expected = graph.execute(w.outputs)
    got = client.compute(graph, w.outputs, encoding=encoding, timeout=TIMEOUT)
    assert len(got) == len(w.outputs) == len(expected)
    mismatched = [k for k in w.outputs if got[k] != expected[k]]
    assert not mismatched, (f"{w.name} ({encoding}): {len(mismatched)} of {len(w.outputs)} "
                            f"outputs differ, e.g. {mismatched[0]!r}: "
                            f"{got[mismatched[0]]!r} != {expected[mismatched[0]]!r}")
    assert got == expected


# --- results -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(WORKLOADS))
def test_workload_compact_matches_in_process_execution(client: Client, name: str) -> None:
    w = at_least(name, 10_000)
    assert w.n_tasks >= 10_000
    assert_same_results(client, w, "compact")


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_workload_pickle_matches_in_process_execution(client: Client, name: str) -> None:
    assert_same_results(client, at_least(name, 2_000), "pickle")


def test_layer_graph_is_lowered_on_the_client_and_gives_the_same_results(
        client: Client) -> None:
    w = build("reduction", 5_000)
    assert w.layers is not None
    got = client.compute(w.layers, w.outputs, timeout=TIMEOUT)
    assert got == w.lower().execute(w.outputs)


def test_several_graphs_one_after_another_on_one_cluster(client: Client) -> None:
    sequence = ["elementwise", "shuffle", "elementwise", "random-dag", "chain", "reduction",
                "fanout", "elementwise"]
    for i, name in enumerate(sequence):
        w = build(name, 3_000 + 100 * i)
        assert_same_results(client, w, "compact" if i % 3 else "pickle")
    # results nobody wants any more are released by the scheduler
    info = wait_until_released(client)
    assert info["graphs"] == 0 and info["tasks"] == 0, info


def test_same_keys_can_be_submitted_again_after_a_graph_finished(client: Client) -> None:
    w = build("elementwise", 2_000)
    graph = w.lower()
    first = client.compute(graph, w.outputs, timeout=TIMEOUT)
    second = client.compute(graph, w.outputs, timeout=TIMEOUT)
    assert first == second == graph.execute(w.outputs)


def test_duplicate_and_partial_outputs(client: Client) -> None:
    w = build("chain", 2_000)
    graph = w.lower()
    picked = [w.outputs[3], w.outputs[0], w.outputs[3]]
    got = client.compute(graph, picked, timeout=TIMEOUT)
    assert got == {k: graph.execute([k])[k] for k in picked}


# --- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["compact", "pickle"])
def test_task_error_reaches_compute_with_the_remote_traceback(client: Client,
                                                              encoding: str) -> None:
    graph = failing_graph()
    with pytest.raises(ValueError, match="refusing input 7") as info:
        client.compute(graph, ["total", ("x", 0)], encoding=encoding, timeout=TIMEOUT)
    err = info.value
    assert type(err) is ValueError
    assert str(err) == "stagecost test: refusing input 7"
    cause = err.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "Traceback" in cause.text
    assert "fail_on_seven" in cause.text           # the worker-side frame of the function
    assert "ValueError: stagecost test: refusing input 7" in cause.text
    assert "fail_on_seven" in str(cause)           # shown when the error is printed

    # the cluster stays usable: the next graph (with the same keys, too) runs normally
    assert_same_results(client, build("random-dag", 5_000), encoding)
    good = TaskGraph.from_dict({**{("x", i): Task(inc, i) for i in range(10)},
                                "total": Task(total, [Ref(("x", i)) for i in range(10)])})
    assert client.compute(good, ["total"], timeout=TIMEOUT) == {"total": sum(range(1, 11))}
    info2 = wait_until_released(client)
    assert info2["graphs"] == 0, info2


def test_task_error_in_a_big_graph_does_not_stop_the_next_one(client: Client) -> None:
    w = at_least("elementwise", 10_000)
    dsk = {("bad", 0): Task(fail_on_seven, 7)}
    bad = TaskGraph.from_dict(dsk)
    with pytest.raises(ValueError):
        client.compute(bad, [("bad", 0)], timeout=TIMEOUT)
    assert_same_results(client, w, "compact")


@pytest.mark.parametrize("encoding", ["compact", "layers"])
def test_task_progress_counts_finished_tasks_of_a_one_output_graph(client: Client,
                                                                   encoding: str) -> None:
    """A reduction has one output: the outputs' progress stays 0/1 until the end, the
    scheduler's counts of finished tasks move (300 tasks of 10 ms on 2 workers: >= 1.5 s,
    several progress intervals). A graph of fast tasks runs first, so the workers' batches
    are sized for fast tasks (up to 1,024 at a time): the slow tasks' results must still be
    reported while their batch runs."""
    from scheduler.graph.layers import LayerGraph, Materialized

    warm = build("elementwise", 20_000)
    client.compute(warm.lower(), warm.outputs, timeout=TIMEOUT)
    width = 300
    dsk: dict[object, Task] = {("x", i): Task(slow_inc, i) for i in range(width)}
    dsk["total"] = Task(total, [Ref(("x", i)) for i in range(width)])
    graph = TaskGraph.from_dict(dsk)
    seen: list[tuple[int, int]] = []  # both callbacks run on the client's loop thread
    outputs: list[tuple[int, int]] = []
    if encoding == "layers":
        layers = LayerGraph([Materialized("x", {k: v for k, v in dsk.items() if k != "total"}),
                             Materialized("total", {"total": dsk["total"]})])
        run = client.run(layers, encoding="layers", output_layers=["total"],
                         progress=lambda d, t: outputs.append((d, t)),
                         task_progress=lambda d, t: seen.append((d, t)), timeout=TIMEOUT)
    else:
        run = client.run(graph, ["total"], progress=lambda d, t: outputs.append((d, t)),
                         task_progress=lambda d, t: seen.append((d, t)), timeout=TIMEOUT)
    assert run.results == {"total": sum(range(1, width + 1))}
    assert outputs == [(1, 1)]
    assert seen, "no count of finished tasks arrived during a run of >= 1.5 s"
    assert {t for _, t in seen} == {width + 1}
    done = [d for d, _ in seen]
    assert done == sorted(done) and len(set(done)) == len(done)  # sent only when it moved
    assert done[0] > 0 and done[-1] <= width + 1
    assert any(d < width for d in done)  # some arrived while leaves were still running


def test_compute_with_no_outputs_returns_an_empty_dict(client: Client) -> None:
    graph = TaskGraph.from_dict({"lonely": Task(inc, 1)})
    assert client.compute(graph, [], timeout=5) == {}


# --- spans ---------------------------------------------------------------------------------

def test_spans_cover_every_role_and_all_eight_stages(client: Client) -> None:
    client.spans(drain=True)  # start from an empty record everywhere
    # 10,000 independent roots: more than one worker takes at once, so both run some
    w = at_least("elementwise", 20_000)
    assert w.layers is not None
    # generate (lowering on the client) ... execute
    assert client.compute(w.layers, w.outputs, timeout=TIMEOUT) == w.lower().execute(
        w.outputs)
    # generate + optimize (culling) of an imported Dask-style graph
    dsk = {"a": (inc, 1), "b": (inc, "a"), "unused": (inc, 100)}
    assert client.get(dsk, "b") == 3
    spans = client.spans(drain=True)

    roles = {r.role for r in spans}
    assert {"client", "scheduler", "worker-0", "worker-1"} <= roles, roles
    assert {Stage(r.stage) for r in spans} == set(Stage)
    assert all(r.end_ns >= r.start_ns for r in spans)
    by_stage_role = {(Stage(r.stage), r.role) for r in spans}
    for stage in (Stage.generate, Stage.optimize, Stage.serialize):
        assert (stage, "client") in by_stage_role, stage
    for stage in (Stage.communicate, Stage.update_graph, Stage.schedule, Stage.dispatch):
        assert (stage, "scheduler") in by_stage_role, stage
    for worker in ("worker-0", "worker-1"):
        assert (Stage.dispatch, worker) in by_stage_role
        ran = sum(r.tasks for r in spans if r.role == worker and r.stage == Stage.execute)
        assert ran > 0, f"{worker} ran no task of a 20,000-task elementwise graph"
    serialized = [r for r in spans if r.stage == Stage.serialize]
    assert all(r.nbytes > 0 for r in serialized)
    # drained: nothing of those graphs is reported twice
    again = client.spans(drain=True)
    assert not [r for r in again if r.stage in (Stage.serialize, Stage.update_graph)]


def test_independent_chains_run_on_both_workers(client: Client) -> None:
    client.spans(drain=True)
    w = build("chain", 10_000)  # 100 independent chains of 100 tasks
    assert w.params["width"] == 100
    assert_same_results(client, w, "compact")
    spans = client.spans(drain=True)
    ran = {worker: sum(r.tasks for r in spans if r.role == worker and r.stage == Stage.execute)
           for worker in ("worker-0", "worker-1")}
    assert min(ran.values()) > 0, ran


# --- addresses and processes ---------------------------------------------------------------

def test_addresses_are_loopback_tcp(cluster: LocalCluster, client: Client) -> None:
    for address in (cluster.address, client.address, client.info()["address"]):
        m = ADDRESS.match(str(address))
        assert m, address
        assert 0 < int(m.group(1)) < 65536
    assert cluster.address == client.address
    assert len(client.peers) == 2
    for address in client.peers.values():
        assert ADDRESS.match(address), address
    assert len(set(client.peers.values()) | {cluster.address}) == 3
    assert client.info()["workers"] == 2


def _identities(pids: dict[str, int]) -> dict[int, float]:
    return {pid: psutil.Process(pid).create_time() for pid in pids.values()}


def _alive(pid: int, created: float) -> bool:
    """The process we started is still running (a zombie or a reused pid does not count)."""
    try:
        p = psutil.Process(pid)
        return p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_local_cluster_processes_are_gone_after_close() -> None:
    cluster = LocalCluster(n_workers=2, env=cluster_env())
    try:
        pids = cluster.pids
        assert set(pids) == {"scheduler", "worker-0", "worker-1"}
        identities = _identities(pids)
        assert all(_alive(pid, t) for pid, t in identities.items())
        with Client(cluster, timeout=60) as c:
            w = build("fanout", 1_000)
            assert c.compute(w.lower(), w.outputs, timeout=TIMEOUT) == w.lower().execute(
                w.outputs)
    finally:
        cluster.close()
    assert not [pid for pid, t in identities.items() if _alive(pid, t)]
    # they shut down when asked (exit code 0), rather than being terminated by close()
    codes = [p.returncode for p in [cluster.scheduler, *cluster.workers] if p is not None]
    assert codes == [0, 0, 0]
    cluster.close()  # idempotent


_ORPHANING_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from scheduler import LocalCluster
    cluster = LocalCluster(n_workers=2)
    print(json.dumps(cluster.pids), flush=True)
    time.sleep(300)
""")


def test_cluster_processes_end_when_their_parent_dies() -> None:
    env = {**os.environ, **cluster_env()}
    parent = subprocess.Popen([sys.executable, "-c", _ORPHANING_SCRIPT],
                              stdout=subprocess.PIPE, text=True, env=env)
    identities: dict[int, float] = {}
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        pids = json.loads(line)
        assert set(pids) == {"scheduler", "worker-0", "worker-1"}
        for pid in pids.values():
            p = psutil.Process(pid)
            assert p.ppid() == parent.pid
            identities[pid] = p.create_time()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 30
        while any(_alive(pid, t) for pid, t in identities.items()) and (
                time.monotonic() < deadline):
            time.sleep(0.1)
        assert not [pid for pid, t in identities.items() if _alive(pid, t)]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
        for pid, t in identities.items():  # only ours, and only if the test failed
            if _alive(pid, t):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_a_worker_that_is_never_welcomed_says_so_and_exits(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """A scheduler address that takes the connection but never answers: the worker names
    the address and the wait instead of printing an empty error."""
    import socket
    import threading

    from scheduler.runtime import worker as worker_mod

    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def take() -> None:
        silent.settimeout(5)
        with contextlib.suppress(OSError):
            held.append(silent.accept()[0])
        stop.wait(10)

    t = threading.Thread(target=take, daemon=True)
    t.start()
    monkeypatch.setattr(worker_mod, "_WELCOME_S", 0.5)
    address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
    try:
        with pytest.raises(SystemExit) as exit_info:
            worker_mod.main([address])
    finally:
        stop.set()
        t.join(10)
        for s in held:
            s.close()
        silent.close()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"the scheduler at {address} did not welcome this worker within 0.5 s" in err
