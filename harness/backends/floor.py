"""The floor: the workload's lowered graph run in this process, with no scheduler at all.

What a backend costs above the work itself is its wall time minus the floor's, on the same
graph: the floor builds and lowers the workload as ``reference`` does (``generate``), culls it
(``optimize``), then calls every task's compiled function in topological order, group by
group, on its dependencies' values (``execute``). Nothing is encoded, sent, scheduled or
dispatched, so those stages are not applicable.

Rules:

- The functions are the ones the reference's workers run (``compile_spec`` of each group's
  template, or of each task's spec), called with the same ``(dependency values, block index)``.
- The work outside the calls is one list comprehension per task gathering its dependencies'
  values; block indices are built only for templates that read them.
- Values are released a group at a time: once the last group that reads a group has run,
  that group's values (unless they are outputs) are dropped, so a ten-million-task chain of
  layers does not keep every intermediate result alive. The release is O(groups).
- The tasks run under the workers' garbage-collector settings (``task_gc``), so that the
  floor and a worker pay the same for keeping results alive.
- Spans: one ``execute`` span per group, recorded as role ``worker-0`` (the one process runs
  the tasks as a worker would), so that time to first task means the same as elsewhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.backends.base import Backend, BackendError, Measurement
from harness.workloads import Workload
from scheduler.graph.keys import Key, RegularKeys
from scheduler.graph.lowgraph import TaskGraph
from scheduler.graph.task import IndexSlot, compile_spec, placeholders
from scheduler.stages import NULL_RECORDER, SpanRecorder, Stage

__all__ = ["FloorBackend", "run_graph"]


def _block_indices(keys: Any, n: int) -> list[tuple]:
    """The block index of every position of a regular key block (vectorised)."""
    if not isinstance(keys, RegularKeys) or not keys.shape:
        return [()] * n
    if len(keys.shape) == 1:
        return [(i,) for i in range(n)]
    cols = np.unravel_index(np.arange(n), keys.shape)
    return list(zip(*(c.tolist() for c in cols), strict=True))


def _last_reader(graph: TaskGraph) -> list[int]:
    """For each group, the index of the last group that reads one of its tasks (or -1)."""
    offsets = graph.offsets
    last = [-1] * len(graph.groups)
    for gi, g in enumerate(graph.groups):
        if not len(g.indices):
            continue
        inside = g.indices[g.indices < graph.n]
        owners = np.unique(np.searchsorted(offsets, inside, side="right") - 1)
        for src in owners.tolist():
            last[src] = gi
    return last


def run_graph(graph: TaskGraph, outputs: list[Key],
              recorder: SpanRecorder = NULL_RECORDER) -> dict[Key, Any]:
    """Run every task of ``graph`` in this process and return ``{key: value}`` for ``outputs``.

    A graph with external keys cannot run here (nothing holds their values): ``ValueError``.
    An exception raised by a task propagates as it is, as it would from a plain call."""
    if graph.external:
        raise ValueError(f"the floor runs self-contained graphs only; this one reads "
                         f"{len(graph.external)} external keys such as {graph.external[0]!r}")
    out_ids = graph.ids_of(outputs)
    keep = np.zeros(graph.n, dtype=bool)
    keep[out_ids] = True
    last = _last_reader(graph)
    free_after: dict[int, list[int]] = {}
    for src, gi in enumerate(last):
        free_after.setdefault(gi, []).append(src)
    values: list[Any] = [None] * graph.n
    offsets = graph.offsets.tolist()
    for gi, g in enumerate(graph.groups):
        start, n = offsets[gi], len(g)
        ptr = g.indptr.tolist()
        ind = g.indices.tolist()
        with recorder.span(Stage.execute, tasks=n):
            if g.regular:
                run = compile_spec(g.template)
                wants_index = any(type(p) is IndexSlot for p in placeholders(g.template))
                index = _block_indices(g.keys, n) if wants_index else [()] * n
                for i in range(n):
                    values[start + i] = run([values[d] for d in ind[ptr[i]:ptr[i + 1]]],
                                            index[i])
            else:
                specs = g.specs
                assert specs is not None
                for i in graph.explicit_order(gi):
                    values[start + i] = compile_spec(specs[i])(
                        [values[d] for d in ind[ptr[i]:ptr[i + 1]]], ())
        for src in free_after.get(gi, ()):  # groups nobody reads any more
            a, b = offsets[src], offsets[src + 1]
            kept = np.flatnonzero(keep[a:b]).tolist()
            saved = [values[a + j] for j in kept]
            values[a:b] = [None] * (b - a)
            for j, v in zip(kept, saved, strict=True):
                values[a + j] = v
    return {k: values[int(t)] for k, t in zip(outputs, out_ids.tolist(), strict=True)}


class FloorBackend(Backend):
    """``floor``: the workload's functions in one process, in topological order."""

    name = "floor"
    applicable = frozenset({Stage.generate, Stage.optimize, Stage.execute})

    def run_once(self, workload: Workload, progress: Any = None) -> Measurement:
        from harness.backends.reference import prepare_graph
        from scheduler.runtime.clocks import now_ns
        from scheduler.runtime.gcpolicy import task_gc

        record = self.record
        client = SpanRecorder("client", enabled=record)
        worker = SpanRecorder("worker-0", enabled=record)
        t0 = now_ns()
        graph = prepare_graph(workload, client, self.options.fuse)
        with task_gc():  # as on the reference's workers
            results = run_graph(graph, workload.outputs, worker)
        t_end = now_ns()
        if len(results) != len(workload.outputs):
            raise BackendError(f"{len(results)} results for {len(workload.outputs)} outputs")
        if progress is not None:
            progress(len(results), len(results))
        return Measurement(client.drain() + worker.drain(), t0, t_end, graph.n,
                           extra={"results": results})

    def pids(self) -> dict[str, int]:
        import os

        return {"client": os.getpid()}
