"""Repeated faults on a real cluster, counted: ``python -m tests.faultrun --fault kill-one -r 50``.

Each run computes a workload (default: the 100,000-task ``reduction``) on a ``LocalCluster``
of 3 single-threaded workers and, at a random moment of it (uniform over 1.2 times the
length of an undisturbed run), does the fault:

- ``kill-one``: SIGKILL one worker, start a replacement;
- ``kill-two``: SIGKILL two of the three, start two replacements;
- ``kill-all``: SIGKILL every worker, then start one with ``stagecost worker ADDRESS``;
- ``stop``: SIGSTOP one worker for 1.5 heartbeat timeouts, then SIGCONT it (the scheduler
  has removed it by then: it exits), and start a replacement;
- ``during-gather``: the graph is done and the client starts fetching its outputs: the
  worker it asks first is SIGKILLed just before the request (a replacement started);
- ``only-copy``: a source ``src`` is computed and held by one worker only; a graph of
  ``-n`` tasks that all read it (sources ``src + i``, summed by a tree) is submitted, and
  at a random moment of its first half the holder of ``src`` is SIGKILLed (a replacement
  started): whatever has not read ``src`` yet waits for it to be computed again.

A run is ``correct`` (result equal to the workload evaluated directly), ``wrong``, ``hung``
(no answer within ``--bound`` seconds: the client's timeout) or ``failed`` (any other error:
its message is kept). ``recover_s`` is the run's wall time minus the median undisturbed one:
what the fault cost. Runs whose fault came after the result are counted apart (``late``).
Prints one table row per fault (Markdown, or ``--json``); each run on stderr as it ends.

Rules: every process is ours (the cluster, and workers we start), signalled by PID only, and
closed at the end; every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from harness.workloads import build
from scheduler import Client, LocalCluster
from scheduler.graph.lowgraph import TaskGraph
from scheduler.graph.task import Ref, Task
from tests.conftest import cluster_env
from tests.test_faults import worker_id

FAULTS = ("kill-one", "kill-two", "kill-all", "stop", "during-gather", "only-copy")
SRC = "only-copy-src"
HEARTBEAT = 3.0


def expected_result(name: str, n: int) -> Any:
    w = build(name, n)
    return w.lower().execute(w.outputs)


class _Run(threading.Thread):
    def __init__(self, client: Client, graph: Any, outputs: list[Any], bound: float) -> None:
        super().__init__(daemon=True)
        self.client, self.graph, self.outputs, self.bound = client, graph, outputs, bound
        self.value: Any = None
        self.error: BaseException | None = None
        self.t_end = 0.0
        self.start()

    def run(self) -> None:
        try:
            self.value = self.client.compute(self.graph, self.outputs, timeout=self.bound)
        except BaseException as e:  # noqa: BLE001 - classified by the caller
            self.error = e
        self.t_end = time.monotonic()


def _live(procs: list[subprocess.Popen[Any]]) -> list[subprocess.Popen[Any]]:
    return [p for p in procs if p.poll() is None]


def plus(x: int, i: int) -> int:  # task functions here: workers need not import pytest
    return x + i


def total(parts: list[int]) -> int:
    return sum(parts)


def seven() -> int:
    return 7


def reads_one_source(n: int, split_every: int = 8) -> tuple[TaskGraph, list[Any], int]:
    """About ``n`` tasks that all read the result ``SRC`` (the value 7): sources
    ``("oc", i) = SRC + i``, summed by a tree; (graph, outputs, expected value)."""
    m = max(1, n * (split_every - 1) // split_every)
    dsk: dict[Any, Task] = {("oc", i): Task(plus, Ref(SRC), i) for i in range(m)}
    level, depth = [("oc", i) for i in range(m)], 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for j in range(0, len(level), split_every):
            key = ("oc-sum", depth, j // split_every)
            dsk[key] = Task(total, [Ref(k) for k in level[j:j + split_every]])
            nxt.append(key)
        level = nxt
    return TaskGraph.from_dict(dsk, external=[SRC]), level, 7 * m + m * (m - 1) // 2


def _kill_worker(client: Client, cluster: LocalCluster, extra: list[subprocess.Popen[Any]],
                 wid: int) -> threading.Thread:
    """SIGKILL the worker the scheduler calls ``wid`` (found by its port), then start a
    replacement from another thread (the caller may be the client's loop), returned."""
    victim = next(p for p in _live(cluster.workers) + _live(extra)
                  if worker_id(client, p.pid) == wid)
    os.kill(victim.pid, signal.SIGKILL)

    def replace() -> None:
        victim.wait(10)
        cluster.add_worker()

    thread = threading.Thread(target=replace, daemon=True)
    thread.start()
    return thread


def _kill_at_first_fetch(client: Client, cluster: LocalCluster,
                         extra: list[subprocess.Popen[Any]],
                         killed: list[threading.Thread]) -> Any:
    """Make the client's next fetch of results SIGKILL the worker it asks just before asking
    (``killed`` gets the thread starting its replacement); returns the client's own fetch,
    to put back."""
    fetch = client._fetch

    async def fetch_after_killing(worker: int, ids: list[int]) -> Any:
        if not killed:
            killed.append(_kill_worker(client, cluster, extra, worker))
        return await fetch(worker, ids)

    client._fetch = fetch_after_killing  # type: ignore[method-assign]
    return fetch


def run_faults(fault: str, runs: int, *, workload: str = "reduction", n: int = 100_000,
               bound: float = 120.0, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    if fault == "only-copy":
        graph, outputs, value = reads_one_source(n)
        expected: Any = {outputs[0]: value}
    else:
        w = build(workload, n)
        graph, outputs = w.lower(), w.outputs
        expected = graph.execute(outputs)
    extra: list[subprocess.Popen[Any]] = []  # workers started with the CLI
    rows: list[dict[str, Any]] = []
    env = {**os.environ, **cluster_env()}
    with LocalCluster(n_workers=3, record=False, heartbeat_timeout=HEARTBEAT,
                      env=cluster_env()) as cluster, \
            Client(cluster, record=False, timeout=60) as client:
        src = client.submit(seven, key=SRC) if fault == "only-copy" else None
        try:
            base = []
            for _ in range(3):
                t = time.monotonic()
                client.compute(graph, outputs, timeout=bound)
                base.append(time.monotonic() - t)
            undisturbed = statistics.median(base)
            for i in range(runs):
                workers = _live(cluster.workers) + _live(extra)
                for _ in range(3 - len(workers)):
                    cluster.add_worker()
                client.wait_for_workers(3, 60)
                _wait_idle(client, 60)
                delay = rng.uniform(0, (0.5 if fault == "only-copy" else 1.2) * undisturbed)
                if src is not None:  # held by one worker (computed again if it was lost)
                    src.result(bound)
                    holder = next(iter(client.holders(src.graph_id).values()))
                killed: list[threading.Thread] = []
                if fault == "during-gather":
                    delay = 0.0
                    fetch = _kill_at_first_fetch(client, cluster, extra, killed)
                t0 = time.monotonic()
                run = _Run(client, graph, outputs, bound)
                time.sleep(delay)
                late = not run.is_alive()
                victims = _live(cluster.workers) + _live(extra)
                rng.shuffle(victims)
                if fault == "during-gather":
                    run.join(bound + 30)
                    client._fetch = fetch  # type: ignore[method-assign]
                    late = not killed
                elif fault == "only-copy":
                    if not late:
                        killed.append(_kill_worker(client, cluster, extra, holder))
                elif fault == "stop":
                    v = victims[0]
                    os.kill(v.pid, signal.SIGSTOP)
                    time.sleep(1.5 * HEARTBEAT)
                    os.kill(v.pid, signal.SIGCONT)
                    try:
                        v.wait(30)
                    except subprocess.TimeoutExpired:
                        v.kill()
                        v.wait(10)
                    cluster.add_worker()
                else:
                    k = {"kill-one": 1, "kill-two": 2, "kill-all": len(victims)}[fault]
                    for v in victims[:k]:
                        os.kill(v.pid, signal.SIGKILL)
                    for v in victims[:k]:
                        v.wait(10)
                    if fault == "kill-all":
                        extra.append(subprocess.Popen(
                            [sys.executable, "-m", "harness.cli", "worker", cluster.address,
                             "--no-record"], env=env))
                    else:
                        for _ in range(k):
                            cluster.add_worker()
                run.join(bound + 30)
                for thread in killed:
                    thread.join(30)
                wall = (run.t_end or time.monotonic()) - t0
                if run.is_alive() or isinstance(run.error, TimeoutError):
                    outcome, why = "hung", str(run.error or "the client never returned")
                elif run.error is not None:
                    outcome, why = "failed", f"{type(run.error).__name__}: {run.error}"
                else:
                    outcome, why = ("correct" if run.value == expected else "wrong"), ""
                row = {"run": i, "delay_s": round(delay, 3), "late": late, "outcome": outcome,
                       "wall_s": round(wall, 3), "recover_s": round(wall - undisturbed, 3),
                       "error": why}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                if outcome == "hung":
                    break  # the cluster is in an unknown state: stop counting here
            with contextlib.suppress(TimeoutError):  # replacements joined before closing
                client.wait_for_workers(3, 60)
        finally:
            if src is not None:
                src.release()
            for p in extra:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
    return summarize(fault, workload, graph.n, undisturbed, rows)


def _wait_idle(client: Client, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while client.info()["tasks"] and time.monotonic() < deadline:
        time.sleep(0.05)


def summarize(fault: str, workload: str, n_tasks: int, undisturbed: float,
              rows: list[dict[str, Any]]) -> dict[str, Any]:
    during = [r for r in rows if not r["late"]]
    rec = sorted(r["recover_s"] for r in during if r["outcome"] == "correct")
    return {"fault": fault, "workload": workload, "tasks": n_tasks,
            "undisturbed_s": round(undisturbed, 3), "runs": len(during),
            "late": len(rows) - len(during),
            "correct": sum(r["outcome"] == "correct" for r in during),
            "wrong": sum(r["outcome"] == "wrong" for r in during),
            "hung": sum(r["outcome"] == "hung" for r in rows),
            "failed": sum(r["outcome"] == "failed" for r in during),
            "errors": sorted({r["error"] for r in rows if r["error"]}),
            "recover_median_s": round(statistics.median(rec), 3) if rec else None,
            "recover_max_s": rec[-1] if rec else None}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| fault | workload, tasks | runs | correct | hung | failed (clear error) | "
             "wrong | time to recover, median / max |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        rec = (f"{r['recover_median_s']:.2f} s / {r['recover_max_s']:.2f} s"
               if r["recover_median_s"] is not None else "-")
        lines.append(f"| {r['fault']} | {r['workload']}, {r['tasks']:,} | {r['runs']} | "
                     f"{r['correct']} | {r['hung']} | {r['failed']} | {r['wrong']} | {rec} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faultrun", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--fault", action="append", choices=FAULTS,
                   help="fault to apply (repeatable; default kill-one)")
    p.add_argument("-r", "--runs", type=int, default=10, help="runs per fault")
    p.add_argument("-w", "--workload", default="reduction")
    p.add_argument("-n", "--tasks", type=float, default=100_000)
    p.add_argument("--bound", type=float, default=120.0,
                   help="seconds a run may take before it counts as hung")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    results = [run_faults(f, args.runs, workload=args.workload, n=int(args.tasks),
                          bound=args.bound, seed=args.seed + i)
               for i, f in enumerate(args.fault or ["kill-one"])]
    print(json.dumps(results, indent=1) if args.json else markdown(results))
    return 1 if any(r["hung"] or r["wrong"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
