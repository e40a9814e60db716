"""The realistic workloads written with Dask's collection APIs (``harness.dask_workloads``)
on the reference system, at 100,000 tasks: the client's stages (Dask generating and
optimising the graph, the reference importing it), update_graph, and end to end.

Rules of this module:

- Workloads: every realistic one that runs off distributed (the ``-p2p`` variants need
  distributed's workers; they are measured by ``stagecost run -b dask-distributed``).
- Size: 100,000 tasks requested (``STAGECOST_ASV_SIZES=small``: 10,000, for the CI dry
  run). The size parameter that gives it is found once, in ``setup_cache``, with the graph
  Dask runs encoded (``compact``) for update_graph; ``track_n_tasks`` records the real count.
- Recording is off everywhere, as speed comparisons run.
"""

from __future__ import annotations

import time
from typing import Any

from harness.backends.reference_dask import prepare_dask
from harness.dask_workloads import DASK_WORKLOADS, workload_at
from harness.workloads import build
from scheduler.runtime.inproc import InProcessCluster
from scheduler.wire.encodings import decode_graph, encode_graph

from . import common

WORKLOADS: tuple[str, ...] = tuple(n for n, s in DASK_WORKLOADS.items() if not s.only_on)
SIZES: tuple[int, ...] = (10_000,) if common.SIZES == common.SMALL_SIZES else (100_000,)


class RealisticInputs:
    """Base: ``cache[(workload, n)]`` is ``(p, n_tasks, path)``: the size parameter, the
    real task count and the path of ``(frames, out_ids)``, the imported graph encoded
    ``compact`` and the ids of its outputs. One sample is one call (``number = 1``)."""

    params = (list(WORKLOADS), list(SIZES))
    param_names = ("workload", "n_tasks")
    number = 1
    warmup_time = 0.0
    timeout = common.LONG_TIMEOUT

    def setup_cache(self) -> dict[tuple[str, int], tuple[int, int, str]]:
        out = {}
        for name in WORKLOADS:
            for n in SIZES:
                w = build(name, n)
                prep = prepare_dask(w, record=False)
                frames = [bytes(f) for f in encode_graph(prep.graph, "compact")]
                path = common.store_input((frames, prep.graph.ids_of(prep.outputs)),
                                     "realistic", name, n)
                out[(name, n)] = (w.params["p"], w.n_tasks, path)
        return out

    setup_cache.timeout = common.LONG_TIMEOUT  # type: ignore[attr-defined]


class ClientStages(RealisticInputs):
    """Times ``prepare_dask``: Dask building the collection, its expression optimisation
    and materialisation with its low-level optimiser, the reference importing the graph and
    culling it (generate + optimize, as the ``reference`` backend runs them on the client).
    ``track_n_tasks``: the real task count of the graph Dask runs."""

    repeat = (1, 3, 60.0)

    def setup(self, cache: Any, workload: str, n: int) -> None:
        p, self.n_tasks, _ = cache[(workload, n)]
        self.workload = workload_at(workload, p, n, self.n_tasks)

    def time_prepare(self, cache: Any, workload: str, n: int) -> None:
        prepare_dask(self.workload, record=False)

    def track_n_tasks(self, cache: Any, workload: str, n: int) -> int:
        return int(self.n_tasks)

    track_n_tasks.unit = "tasks"  # type: ignore[attr-defined]


class UpdateGraph(RealisticInputs):
    """Times ``state.handle(GraphSubmittedEvent(graph, outputs), schedule=False)`` on a new
    ``SchedulerState`` with 2 workers, for the Dask graph decoded from ``compact`` (as
    ``update_graph.UpdateGraph`` does for the synthetic workloads); ``track_us_per_task``
    is the same call timed once over the real task count."""

    repeat = (1, 5, 30.0)

    def setup(self, cache: Any, workload: str, n: int) -> None:
        _, self.n_tasks, path = cache[(workload, n)]
        frames, out_ids = common.load_once(self, path)
        self.state = common.fresh_state()
        self.event = common.submit_event(decode_graph(frames).graph, out_ids)

    def time_update_graph(self, cache: Any, workload: str, n: int) -> None:
        self.state.handle(self.event, schedule=False)

    def track_us_per_task(self, cache: Any, workload: str, n: int) -> float:
        t0 = time.perf_counter_ns()
        self.state.handle(self.event, schedule=False)
        return (time.perf_counter_ns() - t0) / 1e3 / self.n_tasks

    track_us_per_task.unit = "µs/task"  # type: ignore[attr-defined]


class EndToEnd(RealisticInputs):
    """Times ``InProcessCluster.run(graph, outputs)`` (both state machines in this process,
    2 workers, encoding ``compact``) for the imported Dask graph: serialize to execute,
    Dask's task functions on small blocks. The graph is prepared (and not timed) once per
    benchmark process."""

    rounds = 1
    repeat = (1, 3, 120.0)

    def setup(self, cache: Any, workload: str, n: int) -> None:
        memo = getattr(self, "_prepared", None)
        if memo is None or memo[0] != (workload, n):
            p, n_tasks, _ = cache[(workload, n)]
            prep = prepare_dask(workload_at(workload, p, n, n_tasks), record=False)
            self._prepared = memo = ((workload, n), prep)
        self.prep = memo[1]
        self.cluster = InProcessCluster(common.WORKERS, record=False)

    def time_compute(self, cache: Any, workload: str, n: int) -> None:
        self.cluster.run(self.prep.graph, self.prep.outputs, encoding="compact")
