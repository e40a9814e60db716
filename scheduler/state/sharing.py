"""Keys shared between graphs: a key that a live graph already defines is not defined again.

Rules (Dask's): when a submitted graph defines a key that a live graph (of any client)
already defines, the task already known is the one that counts, whatever state it is in
(waiting, processing, in memory, freed after use, erred): the first definition wins, and the
new graph's task for that key is never run. The new graph's slot for such a key becomes an
*alias* of the live task: its dependents read the live task's result, and an output on it
is reported when the live task finishes.

Everything here is pure numpy on key blocks and dependency arrays, done once per submitted
graph, and only for key names that a live graph also uses: a graph whose names are all new
costs one dict look-up per name.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np

from ..graph.keys import KeyBlock, RegularKeys
from ..graph.lowgraph import TaskGraph

__all__ = ["alias_dependencies", "block_overlap", "resolve_ids", "shared_keys"]

_EMPTY = np.zeros(0, dtype=np.int64)


def block_overlap(a: KeyBlock, b: KeyBlock) -> tuple[np.ndarray, np.ndarray]:
    """(positions in ``a``, positions in ``b``) of the keys both blocks hold, in ``a``'s
    order. Two regular blocks are intersected with numpy; a block of explicit keys is
    walked key by key (rare: explicit keys of one name in two live graphs)."""
    if isinstance(a, RegularKeys) and isinstance(b, RegularKeys):
        if a.name != b.name or len(a.shape) != len(b.shape):
            return _EMPTY, _EMPTY
        if not a.shape:
            return np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
        box = tuple(min(x, y) for x, y in zip(a.shape, b.shape, strict=True))
        if 0 in box:
            return _EMPTY, _EMPTY
        idx = np.indices(box).reshape(len(box), -1)
        pa = np.ravel_multi_index(tuple(idx), a.shape).astype(np.int64)
        pb = np.ravel_multi_index(tuple(idx), b.shape).astype(np.int64)
        return pa, pb
    if not isinstance(a, RegularKeys) and (isinstance(b, RegularKeys) or len(a) <= len(b)):
        hits = [(i, b.position(k)) for i, k in enumerate(a.tolist())]
    else:
        hits = [(a.position(k), j) for j, k in enumerate(b.tolist())]
    pairs = np.asarray([h for h in hits if h[0] >= 0 and h[1] >= 0],
                       dtype=np.int64).reshape(-1, 2)
    order = np.argsort(pairs[:, 0], kind="stable")
    return pairs[order, 0], pairs[order, 1]


def shared_keys(graph: TaskGraph, graphs_by_name: Callable[[Hashable], Sequence[
        tuple[TaskGraph, Callable[[np.ndarray], np.ndarray]]]]
        ) -> tuple[np.ndarray, np.ndarray]:
    """(ids in ``graph``, sorted; live global ids) of the keys ``graph`` defines that a live
    graph defines too. ``graphs_by_name(name)`` gives the live graphs using a key name, oldest
    first, each with a function mapping its task ids to live global ids (its own aliases
    resolved). A key found in several live graphs maps to the oldest (first wins)."""
    locs: list[np.ndarray] = []
    gids: list[np.ndarray] = []
    for gi, g in enumerate(graph.groups):
        if not len(g.keys):
            continue
        for nm in g.keys.names():
            for other, resolve in graphs_by_name(nm):
                for ogi in other.by_name.get(nm, ()):
                    pa, pb = block_overlap(g.keys, other.groups[ogi].keys)
                    if len(pa):
                        locs.append(pa + int(graph.offsets[gi]))
                        gids.append(resolve(pb + int(other.offsets[ogi])))
    if not locs:
        return _EMPTY, _EMPTY
    loc = np.concatenate(locs)
    gid = np.concatenate(gids)
    order = np.argsort(loc, kind="stable")  # stable: the oldest graph's entry comes first
    loc, gid = loc[order], gid[order]
    first = np.ones(len(loc), dtype=bool)
    first[1:] = loc[1:] != loc[:-1]
    return loc[first], gid[first]


def alias_dependencies(n: int, indptr: np.ndarray, indices: np.ndarray, gidx: np.ndarray,
                       alias: np.ndarray, alias_gid: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Dependencies ``(indptr, global ids)`` of a graph of ``n`` tasks whose tasks ``alias``
    (sorted) are aliases of the live tasks ``alias_gid``: a dependency on an alias reads the
    live task instead, and an alias has no dependencies of its own (it never runs).
    ``indices`` are the graph's own dependency ids, ``gidx`` the same mapped to global ids."""
    is_alias = np.zeros(n, dtype=bool)
    is_alias[alias] = True
    gidx = gidx.copy()
    inner = np.flatnonzero(indices < n)
    hit = inner[is_alias[indices[inner]]]
    if len(hit):
        gidx[hit] = alias_gid[np.searchsorted(alias, indices[hit])]
    counts = np.diff(indptr)
    owners = np.repeat(np.arange(n, dtype=np.int64), counts)
    keep = ~is_alias[owners]
    counts = counts.copy()
    counts[alias] = 0
    new_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=new_ptr[1:])
    return new_ptr, gidx[keep]


def resolve_ids(base: int, n: int, local: np.ndarray, alias: np.ndarray,
                alias_gid: np.ndarray, ext_ids: np.ndarray) -> np.ndarray:
    """Live global ids of a graph's task ids ``local`` (``>= n``: its external keys)."""
    local = np.asarray(local, dtype=np.int64)
    out = local + base
    if len(ext_ids):
        ext = local >= n
        out[ext] = ext_ids[local[ext] - n]
    if len(alias) and len(local):
        pos = np.minimum(np.searchsorted(alias, local), len(alias) - 1)
        hit = alias[pos] == local
        out[hit] = alias_gid[pos[hit]]
    return out

