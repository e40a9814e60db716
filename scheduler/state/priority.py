"""Task priorities for one graph, computed with numpy.

Rule: a lower number runs first, and the order is a depth-first post-order toward the
outputs: each task's *parent* is its first dependent (lowest id), which makes the graph a
forest; the forest is numbered in post-order (children before their parent, one subtree after
the other; roots in id order, siblings grouped by the group they belong to). For pipelines
this runs ``x0, y0, x1, y1, ...``; for a tree reduction it runs 8 leaves, their combine,
8 more leaves, ... so each intermediate result is consumed soon after it is made and memory
stays low, while the workers always have whole subtrees to run.

A shared dependency sits in its first dependent's subtree, so its number may exceed another
dependent's: priorities order tasks that are ready, they are not an execution order.

Cost: O(groups) numpy operations (subtree sizes in one forward pass, positions in one reverse
pass, with segmented sums for siblings); a Python walk only over explicit groups whose tasks
depend on each other.
"""

from __future__ import annotations

import numpy as np

from ..graph.lowgraph import TaskGraph

__all__ = ["graph_priorities"]


def graph_priorities(graph: TaskGraph,
                     dependencies: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """A permutation of ``0..n-1``: the post-order position of each task (0 runs first).
    ``dependencies`` is ``graph.dependencies()`` when the caller has it already."""
    n = graph.n
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    indptr, indices = graph.dependencies() if dependencies is None else dependencies
    owners = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    internal = indices < n
    parent = np.full(n, n, dtype=np.int64)          # n: no parent (a root)
    np.minimum.at(parent, indices[internal], owners[internal])
    size = np.ones(n, dtype=np.int64)
    groups = graph.groups
    offs = graph.offsets
    tangled = [gi for gi, g in enumerate(groups) if not g.regular
               and ((g.indices >= offs[gi]) & (g.indices < offs[gi + 1])).any()]
    # subtree sizes: children before parents (groups in order; tangled groups in topo order)
    for gi in range(len(groups)):
        a, b = int(offs[gi]), int(offs[gi + 1])
        if gi in tangled:
            for i in graph.explicit_order(gi):
                t = a + i
                if parent[t] < n:
                    size[parent[t]] += size[t]
            continue
        kids = np.arange(a, b)
        kids = kids[parent[a:b] < n]
        if len(kids):
            np.add.at(size, parent[kids], size[kids])
    # positions: roots one after another in id order, children from their parent's start
    start = np.zeros(n, dtype=np.int64)
    roots = np.flatnonzero(parent == n)
    start[roots] = np.cumsum(size[roots]) - size[roots]
    next_free = start.copy()
    for gi in range(len(groups) - 1, -1, -1):
        a, b = int(offs[gi]), int(offs[gi + 1])
        if gi in tangled:
            for i in reversed(graph.explicit_order(gi)):
                t = a + i
                p = parent[t]
                if p < n:
                    start[t] = next_free[p]
                    next_free[p] += size[t]
                    next_free[t] = start[t]
            continue
        ids = np.arange(a, b)
        kids = ids[parent[a:b] < n]
        if not len(kids):
            continue
        p = parent[kids]
        if not (p[1:] >= p[:-1]).all():  # blockwise groups are mostly in parent order
            order = np.argsort(p, kind="stable")
            kids, p = kids[order], p[order]
        s = size[kids]
        excl = np.cumsum(s) - s
        first = np.ones(len(kids), dtype=bool)
        first[1:] = p[1:] != p[:-1]
        base = np.maximum.accumulate(np.where(first, excl, 0))
        start[kids] = next_free[p] + (excl - base)
        np.add.at(next_free, p, s)
        next_free[kids] = start[kids]
    return start + size - 1
