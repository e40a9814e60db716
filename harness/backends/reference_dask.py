"""Work written with Dask's APIs on the reference system: Dask generates and optimises the
graph on the client, as ``dask.compute(x, scheduler=client.get)`` has it do; the reference
system takes over from serialize on.

What is timed, on the client (role ``client``):

- ``generate``: building the collections (calling the workload's function),
  ``collections_to_expr``, materialising Dask's graph (but for its low-level optimiser) and
  importing it into a ``TaskGraph`` (``scheduler.graph.dask_import.from_dask``);
- ``optimize``: Dask's expression optimisation (``expr.optimize()``), its low-level
  optimiser (the collection's ``__dask_optimize__``, with the lowering it does itself) and the
  reference's cull to the outputs.

Dask's calls are timed by ``dask_plugins`` (``StageClock`` and ``patch_lowering``), as the
Dask backends time them; with recording off nothing is patched. The reference's own fusion
(``--fuse``) is not applied: Dask has fused already. With the ``layers`` encoding the imported
graph travels as Materialized layers (one spec per task: an imported graph has no layers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from harness.backends import dask_plugins as plug
from harness.backends.dask_backends import to_spans
from harness.workloads import Workload, materialized_layers
from scheduler.graph.keys import Key, key_name
from scheduler.graph.layers import LayerGraph
from scheduler.graph.lowgraph import TaskGraph
from scheduler.stages import SpanRow

__all__ = ["DaskPrepared", "prepare_dask"]


class DaskPrepared:
    """The imported graph, its output keys in Dask's order, and the client spans of stages
    1-2 (empty with recording off)."""

    __slots__ = ("graph", "outputs", "spans")

    def __init__(self, graph: TaskGraph, outputs: list[Key], spans: list[SpanRow]) -> None:
        self.graph = graph
        self.outputs = outputs
        self.spans = spans

    def layers(self, name: str) -> tuple[LayerGraph, str]:
        """The graph as Materialized layers and the name of the output layer."""
        return materialized_layers(self.graph, self.outputs, name), key_name(self.outputs[0])


@contextlib.contextmanager
def _hooks(clock: plug.StageClock, record: bool) -> Iterator[None]:
    if not record:
        yield
        return
    p = plug.Patches()
    try:
        plug.patch_lowering(p, clock, optimize_role="client")
        yield
    finally:
        p.restore()


def prepare_dask(workload: Workload, record: bool) -> DaskPrepared:
    """Stages 1-2 of ``workload`` (built with Dask's APIs) on the client; see the module
    docstring for what each covers."""
    from dask.base import collections_to_expr
    from dask.core import flatten

    from scheduler.graph.dask_import import from_dask
    from scheduler.graph.optimize import cull

    assert workload.dask is not None
    clock = plug.StageClock("client") if record else \
        plug.StageClock("client", accept=lambda t: False)
    with _hooks(clock, record):
        with clock.frame("generate"):
            work = workload.dask()
            expr = collections_to_expr(list(work.collections), optimize_graph=True)
        with clock.frame("optimize"):
            expr = expr.optimize()
        with clock.frame("generate") as frame:
            keys = list(flatten(expr.__dask_keys__()))
            graph = from_dask(expr.__dask_graph__())
            if frame is not None:
                frame[2] = graph.n
        with clock.frame("optimize", tasks=graph.n):
            graph = cull(graph, keys)
    return DaskPrepared(graph, keys, to_spans(clock.drain()[0]))


def results_in_order(results: dict[Key, Any], keys: list[Key]) -> list[Any]:
    """Values in the order of ``keys`` (what the Dask backends hand tests, too)."""
    return [results[k] for k in keys]
