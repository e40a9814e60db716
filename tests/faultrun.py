"""Repeated faults on a real cluster, counted: ``python -m tests.faultrun --fault kill-one -r 50``.

Each run computes a workload (default: the 100,000-task ``reduction``) on a ``LocalCluster``
of 3 single-threaded workers and, at a random moment of it (uniform over 1.2 times the
length of an undisturbed run), does the fault:

- ``kill-one``: SIGKILL one worker, start a replacement;
- ``kill-two``: SIGKILL two of the three, start two replacements;
- ``kill-all``: SIGKILL every worker, then start one with ``stagecost worker ADDRESS``;
- ``stop``: SIGSTOP one worker for 1.5 heartbeat timeouts, then SIGCONT it (the scheduler
  has removed it by then: it exits), and start a replacement.

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
from tests.conftest import cluster_env

FAULTS = ("kill-one", "kill-two", "kill-all", "stop")
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


def run_faults(fault: str, runs: int, *, workload: str = "reduction", n: int = 100_000,
               bound: float = 120.0, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    w = build(workload, n)
    graph = w.lower()
    expected = graph.execute(w.outputs)
    extra: list[subprocess.Popen[Any]] = []  # workers started with the CLI
    rows: list[dict[str, Any]] = []
    env = {**os.environ, **cluster_env()}
    with LocalCluster(n_workers=3, record=False, heartbeat_timeout=HEARTBEAT,
                      env=cluster_env()) as cluster, \
            Client(cluster, record=False, timeout=60) as client:
        try:
            base = []
            for _ in range(3):
                t = time.monotonic()
                client.compute(graph, w.outputs, timeout=bound)
                base.append(time.monotonic() - t)
            undisturbed = statistics.median(base)
            for i in range(runs):
                workers = _live(cluster.workers) + _live(extra)
                for _ in range(3 - len(workers)):
                    cluster.add_worker()
                client.wait_for_workers(3, 60)
                _wait_idle(client, 60)
                delay = rng.uniform(0, 1.2 * undisturbed)
                t0 = time.monotonic()
                run = _Run(client, graph, w.outputs, bound)
                time.sleep(delay)
                late = not run.is_alive()
                victims = _live(cluster.workers) + _live(extra)
                rng.shuffle(victims)
                if fault == "stop":
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
        finally:
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
