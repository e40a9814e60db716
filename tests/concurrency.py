"""Several clients on one reference cluster at once: jobs, a runner, and the table.

Rules of this module:

- A *job* is what one client computes and how its answer is checked: a reference workload
  (``harness.workloads``) through ``Client.compute``, or a Dask collection through
  ``dask.compute(x, scheduler=client.get)``; either way the answer must equal what Dask's
  synchronous scheduler gives for the same work.
- ``run_clients`` starts one client per job, each on its own thread (or in its own process),
  released together by a barrier, and returns one ``Outcome`` per job. Every thread and
  process ends by itself within the timeout.
- ``quiet_audit`` waits (bounded) until the cluster is quiet and returns its ``audit()``.

``python -m tests.concurrency`` prints the concurrency table (a fresh local cluster of two
workers, loopback only). ``python -m tests.concurrency client ADDRESS JOB`` is one client
process (used for the process rows and for the test that kills a client mid-compute).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from scheduler import Client, LocalCluster

__all__ = ["JOBS", "Outcome", "leftovers", "quiet_audit", "run_clients", "slow_graph"]

TIMEOUT = 120.0


def stamp(i: int, delay: float) -> int:
    time.sleep(delay)
    return i


def slow_graph(prefix: str, n: int, delay: float) -> tuple[Any, list[Any]]:
    """``n`` independent tasks of ``delay`` seconds, every one an output (so each result is
    held until the client releases the graph)."""
    from scheduler.graph.lowgraph import TaskGraph
    from scheduler.graph.task import Task

    keys = [(prefix, i) for i in range(n)]
    return TaskGraph.from_dict({k: Task(stamp, k[1], delay) for k in keys}), keys


@dataclass(frozen=True)
class Outcome:
    job: str
    correct: bool
    error: str = ""


def _reference(name: str, n: int) -> Callable[[], tuple[Callable[[Client], Any], Any]]:
    def prepare() -> tuple[Callable[[Client], Any], Any]:
        from dask.local import get_sync

        from harness.backends.dask_graphs import canonical, dask_collection, materialize
        from harness.workloads import build

        w = build(name, n)
        dsk, keys = materialize(dask_collection(w).collection)
        want = canonical(w, get_sync(dsk, keys))

        def run(client: Client) -> Any:
            got = client.compute(w.lower(), w.outputs, timeout=TIMEOUT)
            return canonical(w, [got[k] for k in w.outputs])

        return run, want
    return prepare


def _dask_array(size: int, chunk: int, shift: int) -> Callable[[], tuple[Callable[[Client],
                                                                              Any], Any]]:
    def prepare() -> tuple[Callable[[Client], Any], Any]:
        import dask
        import dask.array as da

        x = da.arange(size, chunks=chunk) + shift
        y = (x * 2).sum(), x.mean()

        def run(client: Client) -> Any:
            return tuple(float(v) for v in dask.compute(*y, scheduler=client.get))

        return run, tuple(float(v) for v in dask.compute(*y, scheduler="sync"))
    return prepare


JOBS: dict[str, Callable[[], tuple[Callable[[Client], Any], Any]]] = {
    "elementwise": _reference("elementwise", 2000),
    "reduction": _reference("reduction", 2000),
    "chain": _reference("chain", 2000),
    "shuffle": _reference("shuffle", 500),
    "dask-array": _dask_array(200_000, 1000, 0),
    **{f"dask-array-{i}": _dask_array(100_000 + 1000 * i, 1000, i) for i in range(1, 9)},
}
"""Jobs by name. The reference workloads share key names (``elementwise`` and ``reduction``
share their source layer); each ``dask-array-i`` has names of its own."""


def run_clients(address: str, jobs: list[str], *, processes: bool = False,
                one_client: bool = False, timeout: float = TIMEOUT) -> list[Outcome]:
    """Run ``jobs`` at the same time, one client each (or all on ``one_client`` shared by
    the threads; or each in a client process); an outcome per job, in order."""
    if processes:
        return _run_processes(address, jobs, timeout)
    prepared = [JOBS[j]() for j in jobs]
    outcomes: list[Outcome | None] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))
    shared = Client(address, name="shared", timeout=60) if one_client else None

    def work(i: int) -> None:
        run, want = prepared[i]
        try:
            client = shared or Client(address, name=f"c{i}", timeout=60)
            try:
                barrier.wait(timeout)
                got = run(client)
            finally:
                if shared is None:
                    client.close()
            outcomes[i] = Outcome(jobs[i], _equal(got, want))
        except Exception as e:  # noqa: BLE001 - reported in the outcome
            outcomes[i] = Outcome(jobs[i], False, f"{type(e).__name__}: {e}"[:200])

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 30)
    if shared is not None:
        shared.close()
    return [o or Outcome(j, False, "did not finish in time") for o, j in zip(outcomes, jobs,
                                                                              strict=True)]


def _equal(got: Any, want: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(got, dtype=object), np.asarray(want, dtype=object)))
    except ValueError:
        return bool(got == want)


def _run_processes(address: str, jobs: list[str], timeout: float) -> list[Outcome]:
    procs = [subprocess.Popen([sys.executable, "-m", "tests.concurrency", "client", address, j],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=os.environ.copy()) for j in jobs]
    out = []
    for j, p in zip(jobs, procs, strict=True):
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
        last = (stdout.strip().splitlines() or [""])[-1]
        err = "" if last in ("CORRECT", "WRONG") else (stderr.strip().splitlines() or
                                                         ["no answer"])[-1][:200]
        out.append(Outcome(j, last == "CORRECT", err))
    return out


def quiet_audit(client: Client, timeout: float = 30.0) -> dict[str, Any]:
    """``client.audit()`` once the cluster is quiet: no task left and no worker holding a
    result (or ``timeout`` seconds passed: the last audit, for the caller to judge)."""
    deadline = time.monotonic() + timeout
    while True:
        audit = client.audit()
        if leftovers(audit) == 0 or time.monotonic() > deadline:
            return audit
        time.sleep(0.05)


def leftovers(audit: dict[str, Any]) -> int:
    """Results workers hold plus tasks the scheduler keeps (0 when nothing is left)."""
    return int(audit["tasks"]) + sum(int(w["held"]) for w in audit["workers"].values())


SCENARIOS: list[tuple[str, list[str], dict[str, bool]]] = [
    ("same graph", ["elementwise"] * 4, {}),
    ("same graph", ["elementwise"] * 8, {}),
    ("shared source layer", ["elementwise", "reduction"] * 2, {}),
    ("mixed", ["elementwise", "reduction", "chain", "shuffle", "dask-array", "dask-array",
               "dask-array-1", "dask-array-2"], {}),
    ("disjoint", [f"dask-array-{i}" for i in range(1, 5)], {}),
    ("same Dask array", ["dask-array"] * 4, {}),
    ("one client, two threads", ["elementwise"] * 2, {"one_client": True}),
    ("same graph, processes", ["elementwise"] * 4, {"processes": True}),
]


def table(address: str) -> list[dict[str, Any]]:
    rows = []
    with Client(address, name="auditor", timeout=60) as auditor:
        for overlap, jobs, opts in SCENARIOS:
            outcomes = run_clients(address, jobs, **opts)
            audit = quiet_audit(auditor)
            rows.append({"clients": len(jobs), "overlap": overlap,
                         "correct": sum(o.correct for o in outcomes),
                         "errors": sum(bool(o.error) for o in outcomes),
                         "leaked results after": leftovers(audit),
                         "first error": next((o.error for o in outcomes if o.error), "")})
    return rows


def _client_main(address: str, job: str) -> None:
    if job.startswith("slow:"):  # slow:N:DELAY - hold N slow results, for killing mid-run
        _, n, delay = job.split(":")
        graph, keys = slow_graph("killed", int(n), float(delay))
        with Client(address, name="doomed", timeout=60) as client:
            print("SUBMITTING", flush=True)
            client.compute(graph, keys, timeout=TIMEOUT)
        print("CORRECT", flush=True)
        return
    run, want = JOBS[job]()
    with Client(address, name=job, timeout=60) as client:
        got = run(client)
    print("CORRECT" if _equal(got, want) else "WRONG", flush=True)


def main(argv: list[str]) -> None:
    if argv[:1] == ["client"]:
        _client_main(argv[1], argv[2])
        return
    from tests.conftest import cluster_env

    os.environ.update(cluster_env())
    with LocalCluster(n_workers=2, env=cluster_env()) as cluster:
        rows = table(cluster.address)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
