"""Faults on a real ``LocalCluster``: workers that die or stop answering, clients that vanish,
several clients at once.

Each test tells a story: a graph is running, something goes wrong (a worker process is
SIGKILLed or SIGSTOPped, a client's socket is aborted or its process killed), and the test
checks what the design promises: the result is still correct and complete, results that only
the lost worker held are computed again, a replacement worker is used, a vanished client's
tasks and memory are released, and other clients go on.

Rules: every process here is started by this module (``LocalCluster`` as a context manager,
or a client subprocess) and only those are signalled, by PID. Every wait is bounded; no test
asserts on wall time. Task functions live at module level: workers import them by reference
(``tests.test_faults.stamp``), so the workers get the repository on their ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from scheduler import Client, LocalCluster, Stage
from scheduler.graph.keys import Key
from scheduler.graph.layers import LayerGraph, Reduction, blockwise
from scheduler.graph.lowgraph import TaskGraph
from scheduler.graph.task import IndexSlot, Ref, Task
from tests.concurrency import leftovers, quiet_audit

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 180.0  # a hang guard for one graph, never a speed check


def cluster_env() -> dict[str, str]:
    """Workers (and client subprocesses) must import this module's task functions."""
    current = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([str(REPO), current] if current else [str(REPO)])}


# --- task functions (module level: workers import them by reference) -----------------------

def stamp(i: int, delay: float = 0.0) -> tuple[int, int]:
    """``(i, pid of the process that computed it)``, after sleeping ``delay`` seconds."""
    if delay:
        time.sleep(delay)
    return i, os.getpid()


def collect(parts: list[tuple[int, int]]) -> tuple[int, list[int]]:
    """Sum of the stamped numbers and the processes that produced them."""
    return sum(i for i, _ in parts), sorted({pid for _, pid in parts})


def slow_source(i: int, delay: float) -> int:
    time.sleep(delay)
    return i


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def total(parts: list[int]) -> int:
    return sum(parts)


class SlowToSend:
    """A result whose pickling takes ``delay`` seconds, so that sending it to a peer worker is
    a wide window in which the sender or the receiver can be killed."""

    def __init__(self, payload: bytes, delay: float) -> None:
        self.payload = payload
        self.delay = delay

    def __reduce__(self) -> tuple[Any, ...]:
        time.sleep(self.delay)
        return SlowToSend, (self.payload, self.delay)


def slow_to_send(tag: str, size: int, compute_delay: float, send_delay: float) -> SlowToSend:
    time.sleep(compute_delay)
    return SlowToSend(tag.encode() * size, send_delay)


def combine(x: SlowToSend, y: SlowToSend) -> tuple[int, int, int]:
    return len(x.payload), len(y.payload), os.getpid()


# --- helpers -------------------------------------------------------------------------------

class Background:
    """Run ``fn(*args, **kwargs)`` on a thread; ``result(timeout)`` returns or re-raises."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._box: dict[str, Any] = {}

        def run() -> None:
            try:
                self._box["value"] = fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the test thread
                self._box["error"] = e

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the background call did not return within {timeout} s")
        if "error" in self._box:
            raise self._box["error"]
        return self._box["value"]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
              interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_released(client: Client, timeout: float = 30.0) -> dict[str, Any]:
    """Poll the scheduler until it holds no task and no graph; return its last ``info()``."""
    info: dict[str, Any] = {}

    def empty() -> bool:
        info.update(client.info())
        return info["tasks"] == 0 and info["graphs"] == 0

    wait_for(empty, timeout, "the scheduler to release every graph", 0.05)
    return info


def listening_ports(pid: int) -> set[int]:
    return {c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN}


def worker_id(client: Client, pid: int) -> int:
    """The scheduler's id of the worker process ``pid`` (matched by its listening port)."""
    ports = listening_ports(pid)
    ids = [w for w, address in client.peers.items() if int(address.rsplit(":", 1)[1]) in ports]
    assert len(ids) == 1, (pid, ports, client.peers)
    return ids[0]


def connected_to(pid: int, ports: set[int]) -> bool:
    """Process ``pid`` has an open TCP connection to one of ``ports`` (a peer transfer)."""
    try:
        conns = psutil.Process(pid).net_connections("tcp")
    except psutil.NoSuchProcess:
        return False
    return any(c.raddr and c.raddr.port in ports and c.status == psutil.CONN_ESTABLISHED
               for c in conns)


def stamped_graph(prefix: str, n: int, delay: float) -> tuple[TaskGraph, list[Key]]:
    """``n`` independent stamped tasks and one ``total`` reading all of them: every stamp
    result is needed until the very end, so a worker that dies holds results still needed.
    The outputs are every stamp and the total."""
    dsk: dict[Key, Task] = {(prefix, i): Task(stamp, i, delay) for i in range(n)}
    dsk[f"{prefix}-total"] = Task(collect, [Ref((prefix, i)) for i in range(n)])
    return TaskGraph.from_dict(dsk), [f"{prefix}-total", *((prefix, i) for i in range(n))]


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def executed_by_role(spans: list[Any]) -> dict[str, int]:
    """Tasks run per worker role (the batch spans: ``execute`` without messages)."""
    out: dict[str, int] = {}
    for r in spans:
        if r.role.startswith("worker") and r.stage == Stage.execute and r.messages == 0:
            out[r.role] = out.get(r.role, 0) + r.tasks
    return out


def live_workers(cluster: LocalCluster) -> list[subprocess.Popen[str]]:
    return [p for p in cluster.workers if p.poll() is None]


@pytest.fixture(scope="module")
def module_cluster() -> Iterator[LocalCluster]:
    """One 2-worker cluster for the module (tests that kill a worker start a replacement)."""
    with LocalCluster(n_workers=2, env=cluster_env()) as c:
        yield c


@pytest.fixture
def shared_cluster(module_cluster: LocalCluster) -> LocalCluster:
    """The module's cluster with exactly two live workers (replacing any killed before) and
    nothing left of earlier tests' graphs."""
    for _ in range(2 - len(live_workers(module_cluster))):
        module_cluster.add_worker(name=f"worker-{len(module_cluster.workers)}")
    with Client(module_cluster, name="fixture", record=False, timeout=60) as c:
        wait_for(lambda: c.info()["workers"] == 2, 60, "two live workers")
        wait_released(c, 60)
    return module_cluster


# --- worker loss ---------------------------------------------------------------------------

def test_worker_killed_mid_graph_results_are_recomputed_and_a_replacement_is_used(
        shared_cluster: LocalCluster) -> None:
    """10,001 tasks: 10,000 stamps (0.5 ms each) that a final ``collect`` reads, so every stamp
    result is still needed when one worker is SIGKILLed with a quarter of the graph done. The
    client still gets every result, all correct; the stamps the dead worker held are computed again
    by live workers (no value stamped by the dead process survives); a replacement worker
    started with ``add_worker`` joins and runs tasks."""
    n = 10_000
    graph, outputs = stamped_graph("wk", n, 0.0005)
    cluster = shared_cluster
    with Client(cluster, timeout=60) as client:
        victim = live_workers(cluster)[1]
        victim_wid = worker_id(client, victim.pid)
        killed: dict[str, int] = {}

        def progress(done: int, _total: int) -> None:  # runs on the client's loop thread
            if done >= n // 4 and not killed:
                killed["held_by_victim"] = sum(1 for w in client.holders().values()
                                               if w == victim_wid)
                killed["done"] = done
                os.kill(victim.pid, signal.SIGKILL)

        run = Background(client.run, graph, outputs, progress=progress, timeout=TIMEOUT)
        wait_for(lambda: bool(killed) or run.done(), TIMEOUT, "a quarter of the graph")
        assert killed, "the graph finished before the kill: nothing was tested"
        replacement = cluster.add_worker(name=f"worker-{len(cluster.workers)}")
        results = run.result(TIMEOUT).results
        victim.wait(10)

        # complete and correct
        assert len(results) == n + 1
        assert [results[("wk", i)][0] for i in range(n)] == list(range(n))
        got_sum, producers = results["wk-total"]
        assert got_sum == sum(range(n))
        # the victim held results when it died, and none of them survived: recomputed
        assert killed["held_by_victim"] > 0, killed
        assert victim.pid not in producers
        assert victim.pid not in {results[("wk", i)][1] for i in range(n)}
        assert set(producers) <= {p.pid for p in live_workers(cluster)}

        # the replacement joined and is used (by the next graph at the latest)
        client.wait_for_workers(2, 60)
        client.spans(drain=True)
        again, again_outputs = stamped_graph("wk2", n, 0.0)
        second = client.compute(again, again_outputs, timeout=TIMEOUT)
        assert second["wk2-total"][0] == sum(range(n))
        assert replacement.pid in second["wk2-total"][1]
        roles = executed_by_role(client.spans(drain=True))
        new_role = f"worker-{worker_id(client, replacement.pid)}"
        assert roles.get(new_role, 0) > 0, roles
        assert client.info()["workers"] == 2


@pytest.mark.parametrize("who", ["sender", "receiver"])
def test_worker_killed_while_a_dependency_is_in_flight(shared_cluster: LocalCluster,
                                                      who: str) -> None:
    """``x`` and ``y`` are computed on different workers; ``z = combine(x, y)`` makes one
    worker fetch the other's result, and pickling that result takes 2 s. The test waits for
    the fetching connection between the two worker processes, then SIGKILLs the sender (or the
    receiver) in the middle of the transfer. ``z`` is still computed, correctly, by the
    surviving worker (the lost dependency is recomputed there)."""
    size = 1 << 20
    cluster = shared_cluster
    with Client(cluster, timeout=60) as client:
        pids = [p.pid for p in live_workers(cluster)]
        ports = {pid: listening_ports(pid) for pid in pids}
        # x keeps its worker busy for a second, so y goes to the other one
        x = client.submit(slow_to_send, "x", size, 1.0, 2.0, key=f"flight-x-{who}")
        y = client.submit(slow_to_send, "y", size, 0.0, 2.0, key=f"flight-y-{who}")
        z = client.submit(combine, x, y, key=f"flight-z-{who}")
        pair: dict[str, int] = {}

        def transfer_started() -> bool:
            for receiver in pids:
                sender = next(p for p in pids if p != receiver)
                if connected_to(receiver, ports[sender]):
                    pair.update(sender=sender, receiver=receiver)
                    return True
            return False

        wait_for(transfer_started, 60, "a worker fetching from the other", 0.005)
        victim = pair[who]
        os.kill(victim, signal.SIGKILL)
        survivor = pair["receiver" if who == "sender" else "sender"]
        assert z.result(TIMEOUT) == (size, size, survivor)
        next(p for p in cluster.workers if p.pid == victim).wait(10)
        assert client.info()["workers"] == 1
        # the survivor goes on with new work
        assert client.compute(TaskGraph.from_dict({"after": Task(inc, 1)}), ["after"],
                              timeout=TIMEOUT) == {"after": 2}


def shuffle_expected(m: int) -> dict[int, list[int]]:
    """Sorted contents of each output partition of the harness's shuffle of ``m`` inputs."""
    from harness.workloads import partition

    out: dict[int, list[int]] = {j: [] for j in range(m)}
    for i in range(m):
        for x in partition(i, m):
            out[x % m].append(x)
    return {j: sorted(v) for j, v in out.items()}


@pytest.mark.parametrize("n_tasks", [12_000, pytest.param(60_000, marks=pytest.mark.slow)])
def test_worker_killed_during_a_shuffle_with_transfers_under_way(
        shared_cluster: LocalCluster, n_tasks: int) -> None:
    """The harness's shuffle workload at 12,000 tasks (1,696 partitions, all-to-all in
    stages; 60,000 in the slow run): both workers get inputs and the stages move data between
    them. As soon as one worker has opened a connection to the other for dependencies, the
    fetching worker is SIGKILLed and a replacement is started. Every output partition still
    holds exactly the right items."""
    from harness.workloads import build

    w = build("shuffle", n_tasks)
    assert w.n_tasks >= 10_000
    graph, m = w.lower(), w.params["partitions"]
    cluster = shared_cluster
    with Client(cluster, timeout=60) as client:
        a, b = (p.pid for p in live_workers(cluster))
        ports = {a: listening_ports(b), b: listening_ports(a)}  # each one's peer's ports
        fetcher: list[int] = []

        def transfer_started() -> bool:
            fetcher.extend(p for p in (a, b) if connected_to(p, ports[p]))
            return bool(fetcher)

        run = Background(client.compute, graph, w.outputs, timeout=TIMEOUT)
        wait_for(lambda: transfer_started() or run.done(), TIMEOUT,
                 "a worker fetching from the other", 0.005)
        assert fetcher and not run.done(), "the shuffle finished before any transfer was seen"
        os.kill(fetcher[0], signal.SIGKILL)
        cluster.add_worker(name=f"worker-{len(cluster.workers)}")
        got = run.result(TIMEOUT)
        assert {j: sorted(got[("shuffle", j)]) for j in range(m)} == shuffle_expected(m)
        next(p for p in cluster.workers if p.pid == fetcher[0]).wait(10)


# --- heartbeats ----------------------------------------------------------------------------

def test_worker_that_stops_answering_is_removed_after_the_heartbeat_timeout() -> None:
    """``heartbeat_timeout=3``: worker-1 is SIGSTOPped with a quarter of a 4,001-task graph
    done. Its process still exists and its sockets stay open, but it sends nothing; the
    scheduler removes it after the timeout and reschedules its work, and the graph completes
    on worker-0 alone, correct, with nothing computed by the stopped process surviving. At
    the end the stopped process is SIGKILLed (it is ours)."""
    n = 4000
    graph, outputs = stamped_graph("hb", n, 0.001)
    with LocalCluster(n_workers=2, heartbeat_timeout=3, env=cluster_env()) as cluster, \
            Client(cluster, timeout=60) as client:
        stopped = cluster.workers[1]
        survivor = cluster.workers[0]
        paused: dict[str, int] = {}

        def progress(done: int, _total: int) -> None:
            if done >= n // 4 and not paused:
                paused["done"] = done
                os.kill(stopped.pid, signal.SIGSTOP)

        try:
            run = Background(client.run, graph, outputs, progress=progress, timeout=TIMEOUT)
            wait_for(lambda: bool(paused) or run.done(), TIMEOUT, "a quarter of the graph")
            assert paused, "the graph finished before the worker was stopped"
            wait_for(lambda: client.info()["workers"] == 1, 60,
                     "the scheduler to drop the silent worker")
            assert stopped.poll() is None  # removed while its process still exists
            results = run.result(TIMEOUT).results
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped.pid, signal.SIGKILL)
            stopped.wait(10)
        got_sum, producers = results["hb-total"]
        assert got_sum == sum(range(n))
        assert [results[("hb", i)][0] for i in range(n)] == list(range(n))
        assert producers == [survivor.pid]
        assert {results[("hb", i)][1] for i in range(n)} == {survivor.pid}


# --- client loss ---------------------------------------------------------------------------

def slow_layers(prefix: str, m: int, delay: float) -> LayerGraph:
    """``m`` sources sleeping ``delay`` s each, summed by a tree reduction (one output)."""
    return LayerGraph([blockwise(f"{prefix}-src", (m,), slow_source, IndexSlot(0), delay),
                       Reduction(f"{prefix}-total", f"{prefix}-src", total, split_every=16)])


def test_client_that_disconnects_mid_graph_has_its_tasks_and_memory_released(
        shared_cluster: LocalCluster, record_property: Callable[[str, object], None]) -> None:
    """A client submits a ~266,000-task graph of slow tasks and its socket is aborted while
    the graph runs. Its ``compute`` raises ConnectionError; the scheduler, seen from another
    client, goes back to 0 tasks and 0 graphs, its RSS returns near its level before the
    graph, and the other client's next graph runs normally."""
    scheduler_pid = shared_cluster.pids["scheduler"]
    layers = slow_layers("gone", 250_000, 0.002)
    graph = layers.lower()
    with Client(shared_cluster, name="observer", timeout=60) as observer:
        # warm up: the scheduler's code paths and allocator, with the same shape of graph
        warm = slow_layers("warm", 20_000, 0.0)
        assert observer.compute(warm, [("warm-total", 0)], timeout=TIMEOUT) == {
            ("warm-total", 0): sum(range(20_000))}
        wait_released(observer)
        before = rss(scheduler_pid)

        doomed = Client(shared_cluster, name="doomed", timeout=60)
        try:
            run = Background(doomed.compute, graph, [("gone-total", 0)], timeout=TIMEOUT)
            wait_for(lambda: observer.info()["tasks"] >= graph.n, 60,
                     "the doomed client's graph to be accepted")
            during = rss(scheduler_pid)
            assert doomed._comm is not None
            doomed._loop.call_soon_threadsafe(doomed._comm.abort)
            with pytest.raises(ConnectionError, match="lost the connection"):
                run.result(60)
            info = wait_released(observer, 60)
        finally:
            doomed.close()
        after = rss(scheduler_pid)
        mib = 1 << 20
        numbers = {"tasks": graph.n, "rss_before_mib": round(before / mib, 1),
                   "rss_during_mib": round(during / mib, 1),
                   "rss_after_mib": round(after / mib, 1)}
        record_property("scheduler_rss", numbers)
        print(f"\nscheduler RSS around a lost client's graph: {numbers}")
        assert info["tasks"] == 0 and info["graphs"] == 0, info
        assert after < max(2 * before, before + 50 * mib), numbers
        # the other client goes on
        assert observer.compute(warm, [("warm-total", 0)], timeout=TIMEOUT) == {
            ("warm-total", 0): sum(range(20_000))}
        assert observer.info()["workers"] == 2


_DOOMED_CLIENT = textwrap.dedent("""
    import sys
    from scheduler import Client
    from tests.test_faults import slow_layers
    layers = slow_layers("killed", 40_000, 0.002)
    client = Client(sys.argv[1], name="doomed-process", timeout=60)
    print("SUBMITTING", flush=True)
    client.compute(layers, [("killed-total", 0)], timeout=600)
    print("FINISHED", flush=True)  # never reached: the test kills this process first
""")


def test_client_process_killed_mid_graph_has_its_tasks_released(
        shared_cluster: LocalCluster) -> None:
    """A client running in its own process submits a 42,668-task graph of slow tasks and is
    SIGKILLed while it runs (its sockets are closed by the kernel, no goodbye). The scheduler
    releases that graph (0 tasks, 0 graphs, seen from another client) and the other client's
    graph runs normally."""
    n_tasks = slow_layers("killed", 40_000, 0.002).n_tasks
    proc = subprocess.Popen([sys.executable, "-c", _DOOMED_CLIENT, shared_cluster.address],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **cluster_env()})
    try:
        with Client(shared_cluster, name="observer", timeout=60) as observer:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "SUBMITTING"
            wait_for(lambda: observer.info()["tasks"] >= n_tasks, 60,
                     "the client process's graph to be accepted")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            info = wait_released(observer, 60)
            assert info["tasks"] == 0 and info["graphs"] == 0, info
            graph, outputs = stamped_graph("after-kill", 500, 0.0)
            assert observer.compute(graph, outputs, timeout=TIMEOUT)["after-kill-total"][0] \
                == sum(range(500))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


# --- several clients -----------------------------------------------------------------------

def client_graphs(k: int) -> list[tuple[TaskGraph | LayerGraph, list[Key], dict[Key, Any]]]:
    """Two graphs whose keys all carry the client's number: chains and a tree reduction."""
    width, length = 40, 25
    dsk: dict[Key, Task] = {}
    for c in range(width):
        dsk[(f"c{k}-chain", c, 0)] = Task(inc, 1000 * k + c)
        for d in range(1, length):
            dsk[(f"c{k}-chain", c, d)] = Task(inc, Ref((f"c{k}-chain", c, d - 1)))
    dsk[f"c{k}-sum"] = Task(total, [Ref((f"c{k}-chain", c, length - 1)) for c in range(width)])
    chains = TaskGraph.from_dict(dsk)
    chain_out: list[Key] = [f"c{k}-sum", (f"c{k}-chain", 0, length - 1)]
    m = 3000 + 100 * k
    tree = LayerGraph([blockwise(f"c{k}-src", (m,), slow_source, IndexSlot(0), 0.0),
                       Reduction(f"c{k}-tot", f"c{k}-src", total, split_every=8)])
    tree_out: list[Key] = [(f"c{k}-tot", 0)]
    return [(chains, chain_out, chains.execute(chain_out)),
            (tree, tree_out, {(f"c{k}-tot", 0): sum(range(m))})]


def test_four_clients_submitting_at_once_all_get_their_results(
        shared_cluster: LocalCluster) -> None:
    """Four clients, each on its own thread, start together (a barrier) and submit two graphs
    each (chains from a dict, and a tree reduction), with key names of their own. Every
    client gets exactly its expected results, and afterwards the scheduler holds nothing."""
    barrier = threading.Barrier(4)

    def one(k: int) -> list[bool]:
        plans = client_graphs(k)
        with Client(shared_cluster, name=f"many-{k}", timeout=60) as c:
            barrier.wait(60)
            return [c.compute(g, out, timeout=TIMEOUT) == expected
                    for g, out, expected in plans]

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(one, range(4), timeout=2 * TIMEOUT))
    assert outcomes == [[True, True]] * 4
    with Client(shared_cluster, name="checker", timeout=60) as checker:
        wait_released(checker)


def test_a_clients_results_are_not_released_by_another_client(
        shared_cluster: LocalCluster) -> None:
    """The keeper holds a result (a Future). Another client uses it as an argument of its own
    task, computes and releases graphs of its own, and disconnects. The keeper's result is
    still held: a new task reading it runs and gives the right value."""
    with Client(shared_cluster, name="keeper", timeout=60) as keeper:
        held = keeper.submit(add, 40, 2, key="keeper-held")
        assert held.result(TIMEOUT) == 42
        with Client(shared_cluster, name="borrower", timeout=60) as borrower:
            borrowed = borrower.submit(inc, held, key="borrower-uses-keeper")
            assert borrowed.result(TIMEOUT) == 43
            graph, outputs = stamped_graph("borrower", 300, 0.0)
            for _ in range(3):
                assert borrower.compute(graph, outputs, timeout=TIMEOUT)[
                    "borrower-total"][0] == sum(range(300))
            borrowed.release()
        # the borrower is gone (ClientLostEvent); the keeper's key must still be there
        again = keeper.submit(inc, held, key="keeper-again")
        assert again.result(TIMEOUT) == 43
        info = keeper.info()
        assert info["graphs"] >= 1, info


def test_a_key_defined_by_a_live_graph_of_another_client_is_shared(
        shared_cluster: LocalCluster) -> None:
    """Client A runs a graph (400 tasks of 5 ms) that defines ``"dup-shared"``. While it runs,
    client B submits a graph defining ``"dup-shared"`` with a different task. Dask's rule:
    the key already known wins, so B is accepted and gets A's value, A's graph completes with
    A's values, and once both are released B's own definition runs."""
    dsk: dict[Key, Task] = {("dup-a", i): Task(stamp, i, 0.005) for i in range(400)}
    dsk["dup-shared"] = Task(collect, [Ref(("dup-a", i)) for i in range(400)])
    graph_a = TaskGraph.from_dict(dsk)
    graph_b = TaskGraph.from_dict({"dup-shared": Task(inc, 100)})
    with Client(shared_cluster, name="a", timeout=60) as a, \
            Client(shared_cluster, name="b", timeout=60) as b:
        run = Background(a.compute, graph_a, ["dup-shared"], timeout=TIMEOUT)
        wait_for(lambda: b.info()["tasks"] > 0 or run.done(), 60, "A's graph to be accepted")
        assert not run.done()
        shared = b.compute(graph_b, ["dup-shared"], timeout=TIMEOUT)["dup-shared"]
        assert shared[0] == sum(range(400))
        assert run.result(TIMEOUT)["dup-shared"] == shared
        wait_released(b)
        assert b.compute(graph_b, ["dup-shared"], timeout=TIMEOUT) == {"dup-shared": 101}
        assert leftovers(quiet_audit(b)) == 0


def test_a_regular_block_overlapping_a_live_key_shares_it(
        shared_cluster: LocalCluster) -> None:
    """Client A's live graph defines ``("dup-reg", 5)`` (a slow task). Client B submits a
    blockwise layer ``dup-reg`` of 10 blocks, whose keys include ``("dup-reg", 5)`` with a
    different task. B is accepted: its ``("dup-reg", 5)`` is A's (the first definition
    wins), the other nine blocks are its own."""
    graph_a = TaskGraph.from_dict({("dup-reg", 5): Task(slow_source, 5, 2.0)})
    layers_b = LayerGraph([blockwise("dup-reg", (10,), inc, IndexSlot(0))])
    with Client(shared_cluster, name="a", timeout=60) as a, \
            Client(shared_cluster, name="b", timeout=60) as b:
        run = Background(a.compute, graph_a, [("dup-reg", 5)], timeout=TIMEOUT)
        try:
            wait_for(lambda: b.info()["tasks"] > 0, 60, "A's graph to be accepted")
            got = b.compute(layers_b, [("dup-reg", i) for i in range(10)], timeout=TIMEOUT)
            assert got == {("dup-reg", i): 5 if i == 5 else i + 1 for i in range(10)}
        finally:
            assert run.result(TIMEOUT) == {("dup-reg", 5): 5}
        assert leftovers(quiet_audit(b)) == 0


