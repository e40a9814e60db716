"""One submitted graph inside the scheduler state: its tasks' state as numpy arrays.

Rules: a segment owns global ids ``base .. base + n - 1``; those of its tasks that alias a
task of an older live segment (a key defined twice: ``scheduler.state.sharing``) stay
released and never run. Dependencies are stored as global
ids (external keys of the graph already mapped to the ids of the segments that hold them);
dependents as global ids of this segment only (dependents in later segments are kept by the
state in a small dict, since graphs that share keys are rare). No I/O here.
"""

from __future__ import annotations

import enum

import numpy as np

from ..graph.lowgraph import TaskGraph
from .sharing import resolve_ids

__all__ = ["Segment", "TaskState", "csr_gather", "unique", "unique_counts"]


class TaskState(enum.IntEnum):
    released = 0    # known, not running, no result held (never run, or result freed)
    waiting = 1     # some dependencies are not in memory yet
    ready = 2       # dependencies in memory; queued on the scheduler or about to be assigned
    processing = 3  # sent to a worker
    memory = 4      # result held by a worker
    erred = 5       # raised, or a dependency erred


def unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int array (sort-based: numpy's hash-based ``np.unique``
    was measured 25x slower on 500,000 int64 values)."""
    if len(a) < 2:
        return np.asarray(a)
    if (a[1:] > a[:-1]).all():
        return np.asarray(a)  # already sorted and distinct (outputs of one layer, say)
    s = np.sort(a)
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def unique_counts(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, how often each occurs) of an int array."""
    if not len(a):
        return np.asarray(a), np.zeros(0, dtype=np.int64)
    s = np.sort(a)
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    return s[starts], np.diff(np.append(starts, len(s)))


def csr_gather(indptr: np.ndarray, indices: np.ndarray,
               rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of every row in ``rows``, concatenated; count per row)."""
    starts = indptr[rows]
    counts = indptr[rows + 1] - starts
    total = int(counts.sum())
    if total == 0:
        return indices[:0], counts
    # positions: for each row, starts[r] + 0..counts[r]-1, vectorised
    offs = np.repeat(starts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    return indices[offs + np.arange(total)], counts


class Segment:
    __slots__ = ("sid", "base", "n", "graph", "client", "graph_id", "state", "waiting",
                 "remaining", "wanted", "worker", "priority", "dep_ptr", "dep_idx",
                 "dpt_ptr", "dpt_idx", "shared", "outputs", "outputs_left", "refs",
                 "uses", "n_dependents", "released", "finished", "alias", "alias_gid",
                 "ext_ids")

    def __init__(self, sid: int, base: int, graph: TaskGraph, client: str, graph_id: str,
                 dep_ptr: np.ndarray, dep_idx: np.ndarray) -> None:
        n = graph.n
        self.sid = sid
        self.base = base
        self.n = n
        self.graph = graph
        self.client = client
        self.graph_id = graph_id
        self.dep_ptr = dep_ptr
        self.dep_idx = dep_idx  # global ids
        internal = (dep_idx >= base) & (dep_idx < base + n)
        owners = np.repeat(np.arange(n, dtype=np.int64), np.diff(dep_ptr))
        src = dep_idx[internal] - base
        own = owners[internal]
        self.n_dependents = np.bincount(src, minlength=n).astype(np.int64)
        self.dpt_ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(self.n_dependents, out=self.dpt_ptr[1:])
        if (src[1:] >= src[:-1]).all():  # blockwise layers: already in dependency order
            self.dpt_idx = own + base
        else:
            self.dpt_idx = own[np.argsort(src, kind="stable")] + base
        self.state = np.zeros(n, dtype=np.int8)
        self.waiting = np.zeros(n, dtype=np.int64)
        self.remaining = self.n_dependents.copy()
        self.wanted = np.zeros(n, dtype=np.int32)
        self.worker = np.full(n, -1, dtype=np.int32)
        self.priority = np.zeros(n, dtype=np.int64)
        self.shared = np.zeros(0, dtype=np.int64)
        self.outputs = np.zeros(0, dtype=np.int64)
        self.outputs_left = 0
        self.refs = 0        # later segments that use results of this one
        self.uses: list[int] = []  # earlier segments whose results this one uses
        self.released = False      # its client released it (or left)
        self.finished = 0          # task completions reported (recomputations count again)
        # tasks whose key a live graph already defined (sorted ids of this graph) and the
        # live tasks they stand for; they never run (see ``scheduler.state.sharing``)
        self.alias = np.zeros(0, dtype=np.int64)
        self.alias_gid = np.zeros(0, dtype=np.int64)
        self.ext_ids = np.zeros(0, dtype=np.int64)  # global ids of the graph's external keys

    def local(self, gids: np.ndarray) -> np.ndarray:
        return gids - self.base

    def contains(self, gid: int) -> bool:
        return self.base <= gid < self.base + self.n

    def resolve(self, ids: np.ndarray) -> np.ndarray:
        """Live global ids of this graph's task ids ``ids`` (aliases and external keys
        mapped to the tasks they name)."""
        return resolve_ids(self.base, self.n, ids, self.alias, self.alias_gid, self.ext_ids)

    def key(self, local: int) -> object:
        return self.graph.key_of(int(local))

    def __repr__(self) -> str:
        counts = np.bincount(self.state, minlength=len(TaskState))
        states = ", ".join(f"{s.name}={int(counts[s])}" for s in TaskState if counts[s])
        return f"Segment({self.graph_id!r}, ids {self.base}..{self.base + self.n - 1}, {states})"
