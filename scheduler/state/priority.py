"""Task priorities for one graph, computed with numpy.

Rule: a lower number runs first. The order is depth-first toward the outputs: every task is
anchored to the first terminal task (a task nothing in the graph depends on) it leads to,
and tasks sharing an anchor run deepest first. For independent pipelines (elementwise,
chains) this runs ``x0, y0, x1, y1, ...``, so intermediate results are freed as soon as they
are consumed instead of piling up; for trees it runs leaves before the levels above them.

Cost: one ``np.minimum.at`` and one ``np.maximum.at`` per group (groups in reverse order), plus
a Python walk over the internal edges of explicit groups only.
"""

from __future__ import annotations

import numpy as np

from ..graph.lowgraph import TaskGraph

__all__ = ["graph_priorities"]


def graph_priorities(graph: TaskGraph, dependents_count: np.ndarray) -> np.ndarray:
    """An int64 rank per task (0 runs first); ``dependents_count`` counts in-graph dependents."""
    n = graph.n
    big = np.iinfo(np.int64).max
    ids = np.arange(n, dtype=np.int64)
    anchor = np.where(dependents_count == 0, ids, big)
    depth = np.zeros(n, dtype=np.int64)
    for gi in range(len(graph.groups) - 1, -1, -1):
        g = graph.groups[gi]
        if not len(g.indices):
            continue
        start = int(graph.offsets[gi])
        counts = np.diff(g.indptr)
        owners = np.repeat(np.arange(start, start + len(g), dtype=np.int64), counts)
        internal = g.indices < n
        if not g.regular and ((g.indices >= start) & (g.indices < start + len(g))).any():
            _explicit_group(graph, gi, anchor, depth)
            continue
        deps, own = g.indices[internal], owners[internal]
        np.minimum.at(anchor, deps, anchor[own])
        np.maximum.at(depth, deps, depth[own] + 1)
    order = np.lexsort((ids, -depth, anchor))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = ids
    return rank


def _explicit_group(graph: TaskGraph, gi: int, anchor: np.ndarray, depth: np.ndarray) -> None:
    g = graph.groups[gi]
    start, n = int(graph.offsets[gi]), graph.n
    order = graph.explicit_order(gi)
    ptr = g.indptr.tolist()
    ind = g.indices.tolist()
    for i in reversed(order):  # dependents before their dependencies
        t = start + i
        a, d = int(anchor[t]), int(depth[t]) + 1
        for dep in ind[ptr[i]:ptr[i + 1]]:
            if dep < n:
                if a < anchor[dep]:
                    anchor[dep] = a
                if d > depth[dep]:
                    depth[dep] = d
