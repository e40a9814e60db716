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
pass, with segmented sums for siblings); an explicit group whose tasks depend on each other
takes one step per level of its own (``TaskGraph.explicit_levels``), siblings in a group
placed by level (higher first), then by id.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..graph.lowgraph import DEEP, TaskGraph, by_level

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
    # explicit groups whose tasks depend on each other: their tasks by level, so that a
    # task comes after every dependency of the group (``levels[gi]``: (ids, level bounds))
    levels: dict[int, tuple[np.ndarray, list[int]]] = {}
    for gi, g in enumerate(groups):
        a, b = int(offs[gi]), int(offs[gi + 1])
        if g.regular or not ((g.indices >= a) & (g.indices < b)).any():
            continue
        ids, bounds = by_level(graph.explicit_levels(gi))
        levels[gi] = (a + ids, bounds)
    # subtree sizes: children before parents (groups in order, levels in order)
    for gi in range(len(groups)):
        a, b = int(offs[gi]), int(offs[gi + 1])
        lv = levels.get(gi)
        if lv is not None and _narrow(lv):
            for t in lv[0].tolist():
                if parent[t] < n:
                    size[parent[t]] += size[t]
            continue
        for ids in _batches(lv, a, b, reverse=False):
            kids = ids[parent[ids] < n]
            if len(kids):
                np.add.at(size, parent[kids], size[kids])
    # positions: roots one after another in id order, children from their parent's start
    # (groups in reverse order, levels in reverse order; siblings by position within one)
    start = np.zeros(n, dtype=np.int64)
    roots = np.flatnonzero(parent == n)
    start[roots] = np.cumsum(size[roots]) - size[roots]
    next_free = start.copy()
    for gi in range(len(groups) - 1, -1, -1):
        a, b = int(offs[gi]), int(offs[gi + 1])
        lv = levels.get(gi)
        if lv is not None and _narrow(lv):
            for t in _reversed_levels(lv):
                p = parent[t]
                if p < n:
                    start[t] = next_free[p]
                    next_free[p] += size[t]
                    next_free[t] = start[t]
            continue
        for ids in _batches(lv, a, b, reverse=True):
            kids = ids[parent[ids] < n]
            if len(kids):
                _place(kids, parent, size, start, next_free)
    return start + size - 1


def _narrow(levels: tuple[np.ndarray, list[int]]) -> bool:
    """Too many levels for a numpy step each (a long chain): walk tasks."""
    return len(levels[1]) - 1 > DEEP


def _reversed_levels(levels: tuple[np.ndarray, list[int]]) -> list[int]:
    """The ids by level, highest level first, by id within a level (``_batches`` order)."""
    ids, bounds = levels
    return [t for lv in range(len(bounds) - 2, -1, -1)
            for t in ids[bounds[lv]:bounds[lv + 1]].tolist()]


def _batches(levels: tuple[np.ndarray, list[int]] | None, a: int, b: int, *,
             reverse: bool) -> Iterator[np.ndarray]:
    """The ids ``a..b-1`` of one group as batches none of which depends on a later one (or,
    ``reverse``, on an earlier one): the whole group, or one batch per level."""
    if levels is None:
        yield np.arange(a, b)
        return
    ids, bounds = levels
    steps = range(len(bounds) - 1)
    for lv in reversed(steps) if reverse else steps:
        yield ids[bounds[lv]:bounds[lv + 1]]


def _place(kids: np.ndarray, parent: np.ndarray, size: np.ndarray, start: np.ndarray,
           next_free: np.ndarray) -> None:
    """Give ``kids`` (whose parents are placed) consecutive starts after their parents'
    earlier children, siblings in the order given."""
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
