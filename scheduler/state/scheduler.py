"""The scheduler's state machine: events in, instructions out.

Rules of this module (and of ``scheduler.state``): no sockets, asyncio, threads, clocks,
randomness or logging of tasks. Everything that changes task state happens in
``handle(event)``; it returns the instructions the runtime must carry out, in order.

Tasks live in ``Segment``s (one per submitted graph) as numpy arrays, and every event is
handled as a batch with numpy: a report of 10,000 finished tasks costs a few array operations,
not 10,000 Python calls. Per-task Python loops exist only on rare paths (worker loss,
errors, explicit lookups).

Transitions are listed in one table, ``TRANSITIONS``: ``(from, to) -> method``. A move that
is not in the table raises ``InvalidTransition`` with the story of the task (the recent
batches that moved it).

Several graphs (of one client or many) may define the same key: the first definition wins
(``scheduler.state.sharing``), later graphs read and ask for the live task, every graph that
asked for a task hears of it, and a result is freed once no unreleased graph wants it and no
pending task reads it. A released graph that others still use stops its own work nobody
needs and is dropped when the last graph using it goes.

Placement: a task whose dependencies are held by workers goes to the worker holding most of
them (dependencies shared by very many tasks do not count), ties broken by the least
occupied worker; tasks without such dependencies ("root-like") wait in a queue on the
scheduler, in priority order, and are handed out in contiguous runs so that each worker stays
busy with at most ``inflight_per_thread`` tasks per thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..graph.errors import GraphError
from ..graph.keys import Key, key_name
from .events import (
    CancelTasks,
    ClientLostEvent,
    ClientReleasedKeysEvent,
    DataLostEvent,
    GraphAccepted,
    GraphForgotten,
    GraphRejected,
    GraphSubmittedEvent,
    Instruction,
    KeysErred,
    KeysInMemory,
    ReleaseData,
    SchedulerEvent,
    SendTasks,
    TaskErredEvent,
    TasksFinishedEvent,
    WorkerAddedEvent,
    WorkerLostEvent,
)
from .priority import graph_priorities
from .segment import Segment, TaskState, csr_gather, unique, unique_counts
from .sharing import alias_dependencies, shared_keys

__all__ = ["InvalidTransition", "SchedulerConfig", "SchedulerState", "TRANSITIONS"]

S = TaskState
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class SchedulerConfig:
    inflight_per_thread: int = 4096
    """Root-like tasks handed to a worker beyond its running ones, per thread."""
    shared_dependents: int = 32
    """A dependency with more dependents than this does not attract them (broadcast data)."""
    story_length: int = 10_000
    """Batches of transitions remembered for error messages."""


class InvalidTransition(RuntimeError):
    """A bug here: a task was asked to move between two states that the table forbids."""


TRANSITIONS: dict[tuple[TaskState, TaskState], str] = {
    (S.released, S.waiting): "_noop",
    (S.released, S.ready): "_to_ready",
    (S.waiting, S.ready): "_to_ready",
    (S.ready, S.processing): "_ready_processing",
    (S.processing, S.memory): "_processing_memory",
    (S.processing, S.ready): "_leave_processing_ready",
    (S.processing, S.waiting): "_leave_processing",
    (S.ready, S.waiting): "_noop",
    (S.memory, S.released): "_memory_released",
    (S.waiting, S.erred): "_noop",
    (S.ready, S.erred): "_noop",
    (S.processing, S.erred): "_leave_processing",
    (S.erred, S.erred): "_noop",
    (S.waiting, S.released): "_noop",          # nobody needs it any more (shared keys)
    (S.ready, S.released): "_noop",
    (S.processing, S.released): "_leave_processing",
}

_LEGAL = np.zeros((len(S), len(S)), dtype=bool)
for _a, _b in TRANSITIONS:
    _LEGAL[_a, _b] = True


class SchedulerState:
    """All the scheduler knows: workers, segments, queues. See the module docstring."""

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()
        self.nthreads: list[int] = []     # by worker id; 0 = gone
        self.occupancy: list[int] = []    # tasks processing per worker
        self.segments: dict[int, Segment] = {}
        self._bases: list[int] = []       # sorted bases of live segments
        self._by_base: list[Segment] = []
        self._by_graph: dict[tuple[str, str], Segment] = {}
        self._names: dict[Hashable, list[int]] = {}  # key name -> segment ids
        self._next_sid = 0
        self._next_base = 0
        self._queue: deque[tuple[Segment, np.ndarray]] = deque()  # root-like ready tasks
        self._cross: dict[int, list[int]] = {}  # gid -> dependents in later segments
        self._cross_keys: np.ndarray | None = None  # sorted keys of _cross (None: stale)
        # segment id -> sorted ids of the tasks of other segments it wants as outputs
        self._watch: dict[int, np.ndarray] = {}
        self._copies: dict[int, set[int]] = {}  # gid in memory -> workers with a stale copy
        self._failures: dict[int, tuple[Any, bytes, str]] = {}  # failed gid -> error
        self._story: deque[tuple[str, int, np.ndarray, np.ndarray, int]] = deque(
            maxlen=self.config.story_length)
        self._out: list[Instruction] = []
        self._ready: list[tuple[Segment, np.ndarray]] = []
        self._stimulus = ""
        self._handlers: dict[type, Callable[[Any], None]] = {
            WorkerAddedEvent: self._worker_added,
            WorkerLostEvent: self._worker_lost,
            GraphSubmittedEvent: self._graph_submitted,
            TasksFinishedEvent: self._tasks_finished,
            TaskErredEvent: self._task_erred,
            DataLostEvent: self._data_lost,
            ClientReleasedKeysEvent: self._client_released,
            ClientLostEvent: self._client_lost,
        }

    # --- entry point ---------------------------------------------------------------------

    def handle(self, *events: SchedulerEvent, schedule: bool = True) -> list[Instruction]:
        """Apply ``events`` in order; return the instructions to carry out.

        With ``schedule=False`` tasks that became ready are only noted; a following
        ``schedule()`` places them (so that a runtime can time the two apart)."""
        self._out = []
        for ev in events:
            self._stimulus = ev.stimulus_id
            handler = self._handlers.get(type(ev))
            if handler is None:
                raise TypeError(f"unknown event {type(ev).__name__}")
            handler(ev)
            if schedule:
                self._schedule()
        out, self._out = self._out, []
        return out

    def schedule(self) -> list[Instruction]:
        """Place tasks noted ready by ``handle(..., schedule=False)``; top up workers."""
        self._out = []
        self._schedule()
        out, self._out = self._out, []
        return out

    @property
    def pending_placement(self) -> int:
        """Ready tasks noted but not placed yet."""
        return sum(len(loc) for _, loc in self._ready)

    # --- look-ups --------------------------------------------------------------------------

    @property
    def n_tasks(self) -> int:
        return sum(s.n for s in self.segments.values())

    @property
    def n_results(self) -> int:
        """Results held by workers, as far as the scheduler knows."""
        return sum(int((s.state == S.memory).sum()) for s in self.segments.values())

    def bookkeeping(self) -> dict[str, int]:
        """Sizes of the indexes kept beside the segments (all 0 when no graph is live)."""
        return {"graphs": len(self._by_graph), "bases": len(self._bases),
                "by_base": len(self._by_base),
                "names": len(self._names), "cross": len(self._cross),
                "watch": len(self._watch), "failures": len(self._failures),
                "copies": len(self._copies),
                "queued": len(self._queue)}

    def results_on(self, worker: int) -> np.ndarray:
        """Global ids of the results the scheduler knows worker ``worker`` holds."""
        parts = [np.flatnonzero((s.state == S.memory) & (s.worker == worker)) + s.base
                 for s in self.segments.values()]
        return np.concatenate(parts) if parts else _EMPTY

    def workers(self) -> list[int]:
        return [w for w, n in enumerate(self.nthreads) if n > 0]

    def segment_of(self, gid: int) -> Segment:
        i = int(np.searchsorted(self._bases, gid, side="right")) - 1
        if i < 0 or not self._by_base[i].contains(gid):
            raise KeyError(f"task id {gid} belongs to no live graph")
        return self._by_base[i]

    def graph(self, client: str, graph_id: str) -> Segment | None:
        return self._by_graph.get((client, graph_id))

    def _split(self, gids: np.ndarray) -> Iterator[tuple[Segment, np.ndarray]]:
        """(segment, local ids) for global ``gids``; ids of dropped segments are skipped."""
        if not len(gids):
            return
        if len(self._by_base) == 1:
            seg = self._by_base[0]
            local = gids - seg.base
            ok = (local >= 0) & (local < seg.n)
            yield seg, (local if ok.all() else local[ok])
            return
        where = np.searchsorted(self._bases, gids, side="right") - 1
        for i in unique(where):
            if i < 0:
                continue
            seg = self._by_base[int(i)]
            local = gids[where == i] - seg.base
            local = local[local < seg.n]
            if len(local):
                yield seg, local

    def holders(self, gids: np.ndarray) -> np.ndarray:
        """Worker holding each task's result (-1 if none)."""
        out = np.full(len(gids), -1, dtype=np.int32)
        for seg, (pos, loc) in self._split_positions(gids):
            out[pos] = seg.worker[loc]
        return out

    def find_key(self, key: Key) -> int:
        """Global id of a live task with ``key``, or -1."""
        for sid in self._names.get(key_name(key), ()):
            seg = self.segments[sid]
            i = seg.graph.id_of(key)
            if 0 <= i < seg.n:
                return int(seg.resolve(np.asarray([i]))[0])
        return -1

    def moves(self) -> list[tuple[str, int, np.ndarray, np.ndarray, int]]:
        """The remembered transitions, oldest first: ``(stimulus id, segment base, local ids,
        their previous states, new state)`` per batch moved."""
        return list(self._story)

    def story(self, gid: int) -> list[str]:
        """The remembered transitions of task ``gid`` (oldest first)."""
        out = []
        for stim, base, local, frm, to in self._story:
            hit = np.nonzero(local == gid - base)[0]
            if len(hit):
                out.append(f"{stim}: {S(int(frm[hit[0]])).name} -> {S(to).name}")
        return out

    # --- transitions -------------------------------------------------------------------------

    def _transition(self, seg: Segment, local: np.ndarray, to: TaskState) -> None:
        if not len(local):
            return
        frm = seg.state[local]
        legal = _LEGAL[frm, to]
        if not legal.all():
            bad = int(local[np.argmin(legal)])
            gid = seg.base + bad
            story = "; ".join(self.story(gid)[-8:]) or "(no transitions remembered)"
            raise InvalidTransition(
                f"task {seg.key(bad)!r} (id {gid}) cannot go from "
                f"{S(int(seg.state[bad])).name} to {to.name} on {self._stimulus!r}; "
                f"story: {story}")
        self._story.append((self._stimulus, seg.base, local, frm, int(to)))
        kinds = np.flatnonzero(np.bincount(frm, minlength=len(S)))
        for f in kinds:
            part = local if len(kinds) == 1 else local[frm == f]
            getattr(self, TRANSITIONS[(S(int(f)), to)])(seg, part)
        seg.state[local] = to

    def _noop(self, seg: Segment, local: np.ndarray) -> None:
        return None

    def _to_ready(self, seg: Segment, local: np.ndarray) -> None:
        self._ready.append((seg, local))

    def _ready_processing(self, seg: Segment, local: np.ndarray) -> None:
        return None  # worker and occupancy are set by _assign, which knows the worker

    def _processing_memory(self, seg: Segment, local: np.ndarray) -> None:
        return None  # bookkeeping done in _tasks_finished (it owns the batch)

    def _leave_processing(self, seg: Segment, local: np.ndarray) -> None:
        ws = seg.worker[local]
        for w, c in zip(*unique_counts(ws), strict=True):
            self.occupancy[int(w)] -= int(c)
        seg.worker[local] = -1

    def _leave_processing_ready(self, seg: Segment, local: np.ndarray) -> None:
        self._leave_processing(seg, local)
        self._ready.append((seg, local))

    def _memory_released(self, seg: Segment, local: np.ndarray) -> None:
        ws = seg.worker[local]
        alive = np.asarray([self.nthreads[int(w)] > 0 if w >= 0 else False
                            for w in unique(ws)]) if len(ws) else np.zeros(0, bool)
        for w, ok in zip(unique(ws), alive, strict=True):
            if ok:
                sel = local[ws == w]
                self._out.append(ReleaseData(stimulus_id=self._stimulus, worker=int(w),
                                             ids=sel + seg.base, seqs=seg.seq[sel]))
        seg.worker[local] = -1
        if self._copies:
            self._release_copies(local + seg.base)

    def _release_copies(self, gids: np.ndarray) -> None:
        """Results freed: free the stale copies other workers reported of them too."""
        keys = np.fromiter(self._copies, dtype=np.int64, count=len(self._copies))
        by_worker: dict[int, list[int]] = {}
        for g in keys[np.isin(keys, gids)].tolist():
            for w in self._copies.pop(g):
                if self.nthreads[w] > 0:
                    by_worker.setdefault(w, []).append(g)
        for w, ids in by_worker.items():
            self._out.append(ReleaseData(stimulus_id=self._stimulus, worker=w,
                                         ids=np.asarray(ids, dtype=np.int64)))

    # --- workers -----------------------------------------------------------------------------

    def _worker_added(self, ev: WorkerAddedEvent) -> None:
        w = ev.worker
        if ev.nthreads < 1:
            raise ValueError(f"worker {w} announced {ev.nthreads} threads; it needs >= 1")
        while len(self.nthreads) <= w:
            self.nthreads.append(0)
            self.occupancy.append(0)
        if self.nthreads[w] > 0:
            raise ValueError(f"worker id {w} is already in use (a bug in the runtime)")
        self.nthreads[w] = ev.nthreads
        self.occupancy[w] = 0

    def _worker_lost(self, ev: WorkerLostEvent) -> None:
        w = ev.worker
        if w >= len(self.nthreads) or self.nthreads[w] == 0:
            return
        self.nthreads[w] = 0
        for g in [g for g, ws in self._copies.items() if w in ws]:
            self._copies[g].discard(w)
            if not self._copies[g]:
                del self._copies[g]
        lost_needed: list[tuple[Segment, np.ndarray]] = []
        for seg in list(self.segments.values()):
            held = np.nonzero((seg.state == S.memory) & (seg.worker == w))[0]
            if len(held):
                self._transition(seg, held, S.released)
                needed = held[(seg.remaining[held] > 0) | (seg.wanted[held] > 0)]
                if len(needed):
                    lost_needed.append((seg, needed))
        for seg in list(self.segments.values()):
            proc = np.nonzero((seg.state == S.processing) & (seg.worker == w))[0]
            if len(proc):
                self._requeue(seg, proc)
        self.occupancy[w] = 0
        for seg, needed in lost_needed:
            for s_, gids in self._wanters(seg, needed):
                s_.outputs_left += len(gids)
        if lost_needed:
            self._recompute(np.concatenate([seg.base + needed for seg, needed in lost_needed]))

    def _requeue(self, seg: Segment, local: np.ndarray) -> None:
        """Processing tasks that lost their worker: ready again, or waiting if a dependency
        is gone."""
        missing = self._count_missing(seg, local)
        self._transition(seg, local[missing == 0], S.ready)
        rest = local[missing > 0]
        seg.waiting[rest] = missing[missing > 0]
        self._transition(seg, rest, S.waiting)

    def _count_missing(self, seg: Segment, local: np.ndarray) -> np.ndarray:
        deps, counts = csr_gather(seg.dep_ptr, seg.dep_idx, local)
        not_mem = (self._states(deps) != S.memory).astype(np.int64)
        rows = np.repeat(np.arange(len(local)), counts)
        return np.bincount(rows, weights=not_mem, minlength=len(local)).astype(np.int64)

    def _states(self, gids: np.ndarray) -> np.ndarray:
        out = np.full(len(gids), -1, dtype=np.int64)
        if len(self._by_base) == 1:
            seg = self._by_base[0]
            return seg.state[gids - seg.base].astype(np.int64)
        where = np.searchsorted(self._bases, gids, side="right") - 1
        for i in unique(where):
            seg = self._by_base[int(i)]
            m = where == i
            out[m] = seg.state[gids[m] - seg.base]
        return out

    def _recompute(self, gids: np.ndarray) -> None:
        """Make released tasks ``gids`` (global ids) that are still needed run again, and
        first, transitively, their dependencies whose results are gone; their dependents
        that have not run count their missing dependencies again (a running one is
        cancelled). Batched: a lost worker's 100,000 results cost array operations per
        level of the graph, not Python per task."""
        gids = unique(np.asarray(gids, dtype=np.int64))
        todo = frontier = gids[self._states(gids) == S.released]
        while len(frontier):
            deps = unique(self._gather(frontier, dependents=False))
            frontier = deps[self._states(deps) == S.released]
            frontier = frontier[~np.isin(frontier, todo)]
            todo = np.union1d(todo, frontier)
        if not len(todo):
            return
        for dseg, dl in self._split(self._gather(todo, dependents=False)):
            np.add.at(dseg.remaining, dl, 1)  # pending again: their dependencies are needed
        for seg, local in self._split(todo):
            missing = self._count_missing(seg, local)
            seg.waiting[local] = missing
            self._transition(seg, local[missing > 0], S.waiting)
            self._transition(seg, local[missing == 0], S.ready)
        for useg, ul in self._split(unique(self._gather(todo, dependents=True))):
            st = useg.state[ul]
            proc = ul[st == S.processing]
            for w in unique(useg.worker[proc]):
                self._out.append(CancelTasks(stimulus_id=self._stimulus, worker=int(w),
                                             ids=proc[useg.worker[proc] == w] + useg.base))
            self._transition(useg, ul[(st == S.processing) | (st == S.ready)], S.waiting)
            live = ul[np.isin(st, (S.waiting, S.ready, S.processing))]
            useg.waiting[live] = self._count_missing(useg, live)
        self._fail_readers_of_errors(todo)

    def _fail_readers_of_errors(self, gids: np.ndarray) -> None:
        """Tasks ``gids`` were made again, but some read a result that failed meanwhile:
        those fail at once (with their dependents), and every graph wanting them is told."""
        for seg, local in self._split(gids):
            local = local[seg.state[local] == S.waiting]
            deps, counts = csr_gather(seg.dep_ptr, seg.dep_idx, local)
            bad = self._states(deps) == S.erred
            if not bad.any():
                continue
            rows = np.repeat(np.arange(len(local)), counts)
            hit = unique(local[rows[bad]])
            self._spread_error(seg, hit, int(deps[np.flatnonzero(bad)[0]]))

    def _gather(self, gids: np.ndarray, *, dependents: bool) -> np.ndarray:
        """Global ids of the dependencies (or dependents) of ``gids``, with repeats."""
        parts = [_EMPTY]
        for seg, local in self._split(gids):
            ptr, idx = (seg.dpt_ptr, seg.dpt_idx) if dependents else (seg.dep_ptr, seg.dep_idx)
            parts.append(csr_gather(ptr, idx, local)[0])
        if dependents and self._cross:
            parts.append(np.asarray([u for g in gids.tolist() for u in self._cross.get(g, ())],
                                    dtype=np.int64))
        return np.concatenate(parts).astype(np.int64, copy=False)

    # --- graphs ------------------------------------------------------------------------------

    def _graph_submitted(self, ev: GraphSubmittedEvent) -> None:
        try:
            seg = self._add_segment(ev)
        except GraphError as e:
            self._out.append(GraphRejected(stimulus_id=self._stimulus, client=ev.client,
                                           graph_id=ev.graph_id, reason=str(e)))
            return
        n = seg.n
        self._out.append(GraphAccepted(
            stimulus_id=self._stimulus, client=ev.client, graph_id=ev.graph_id,
            segment=seg.sid, base=seg.base, n=n,
            gids=seg.resolve(np.asarray(ev.outputs, dtype=np.int64)) if seg.uses else None))
        ext_out = seg.outputs[(seg.outputs < seg.base) | (seg.outputs >= seg.base + n)]
        if n and len(seg.outputs):
            # every dependency inside the new graph is missing; only external ones (keys
            # of live graphs, named or shared) may be held
            missing = np.diff(seg.dep_ptr)
            if seg.uses:
                ext = (seg.dep_idx < seg.base) | (seg.dep_idx >= seg.base + n)
                owners = np.repeat(np.arange(n, dtype=np.int64), missing)[ext]
                held = self._states(seg.dep_idx[ext]) == S.memory
                missing = missing - np.bincount(owners[held], minlength=n)
            seg.waiting[:] = missing
            runs = missing == 0
            if len(seg.alias):
                runs[seg.alias] = False  # aliases never run
            self._transition(seg, np.nonzero(missing > 0)[0], S.waiting)
            self._transition(seg, np.nonzero(runs)[0], S.ready)
            if seg.uses:
                self._inherit_errors(seg)
        if len(ext_out):
            # outputs that are tasks of live graphs: those in memory are reported at once
            self._notify_outputs_external(seg, ext_out)
        if seg.uses:
            ext = seg.dep_idx[(seg.dep_idx < seg.base) | (seg.dep_idx >= seg.base + n)] \
                if n and len(seg.outputs) else _EMPTY
            ext = unique(np.concatenate([ext, ext_out]))
            # results freed before this graph came: make them again
            self._recompute(ext[self._states(ext) == S.released])
        if not len(ext_out) and (not len(seg.outputs) or not n):
            # nothing asked for: the answer is complete now (the client will release it)
            self._out.append(KeysInMemory(stimulus_id=self._stimulus, client=seg.client,
                                          graph_id=seg.graph_id, ids=_EMPTY,
                                          workers=_EMPTY, done=True))

    def _add_segment(self, ev: GraphSubmittedEvent) -> Segment:
        graph = ev.graph
        if (ev.client, ev.graph_id) in self._by_graph:
            raise GraphError(f"graph id {ev.graph_id!r} was already submitted by this client")
        ext_ids = np.asarray([self.find_key(k) for k in graph.external], dtype=np.int64)
        if len(ext_ids) and (ext_ids < 0).any():
            gone = [k for k, i in zip(graph.external, ext_ids.tolist(), strict=True) if i < 0]
            raise GraphError(f"the graph uses results that the cluster does not hold: "
                             f"{', '.join(repr(k) for k in gone[:5])}")
        out_ids = np.asarray(ev.outputs, dtype=np.int64)
        if len(out_ids) and (out_ids.min() < 0 or out_ids.max() >= graph.n + len(ext_ids)):
            raise GraphError(f"requested task ids outside the graph's 0.."
                             f"{graph.n + len(ext_ids) - 1}")
        alias, alias_gid = shared_keys(graph, self._live_graphs) if self._names else \
            (_EMPTY, _EMPTY)
        base = self._next_base
        deps = indptr, indices = graph.dependencies()
        gidx = indices + base
        if len(ext_ids):
            ext = indices >= graph.n
            gidx[ext] = ext_ids[indices[ext] - graph.n]
        if len(alias):
            indptr, gidx = alias_dependencies(graph.n, indptr, indices, gidx, alias, alias_gid)
        seg = Segment(self._next_sid, base, graph, ev.client, ev.graph_id, indptr, gidx)
        seg.alias, seg.alias_gid, seg.ext_ids = alias, alias_gid, ext_ids
        seg.outputs = unique(seg.resolve(out_ids))
        mine = (seg.outputs >= base) & (seg.outputs < base + graph.n)
        internal_out = seg.outputs[mine]
        seg.wanted[internal_out - base] += 1  # outputs are unique
        seg.outputs_left = len(internal_out)
        seg.priority = graph_priorities(graph, deps) + base
        self._next_sid += 1
        self._next_base += graph.n
        self.segments[seg.sid] = seg
        self._bases.append(base)
        self._by_base.append(seg)
        self._by_graph[(ev.client, ev.graph_id)] = seg
        for g in graph.groups:
            for nm in g.keys.names():
                self._names.setdefault(nm, []).append(seg.sid)
        if len(ext_ids) or len(alias):
            self._link_external(seg, seg.outputs[~mine])
        return seg

    def _live_graphs(self, name: Hashable) -> list[tuple[Any, Callable[[np.ndarray],
                                                                         np.ndarray]]]:
        return [(self.segments[sid].graph, self.segments[sid].resolve)
                for sid in self._names.get(name, ())]

    def _link_external(self, seg: Segment, ext_out: np.ndarray) -> None:
        """Tie a new segment to the live tasks it reads (dependencies outside its range),
        asks for (outputs outside its range) or aliases: they count it as a dependent or a
        wanter, and their segments cannot be dropped before it."""
        owners = np.repeat(np.arange(seg.n, dtype=np.int64), np.diff(seg.dep_ptr))
        ext = (seg.dep_idx < seg.base) | (seg.dep_idx >= seg.base + seg.n)
        src = seg.dep_idx[ext]
        for g, u in zip(src.tolist(), (owners[ext] + seg.base).tolist(), strict=True):
            self._cross.setdefault(g, []).append(u)
        self._cross_keys = None
        for sseg, loc in self._split(src):
            np.add.at(sseg.remaining, loc, 1)
        for sseg, loc in self._split(ext_out):
            sseg.wanted[loc] += 1  # outputs are unique
        if len(ext_out):
            self._watch[seg.sid] = ext_out  # sorted: seg.outputs is
        # aliases count too, read or not: a key must name a live task while seg lives
        for sseg, _ in self._split(unique(np.concatenate([src, ext_out, seg.alias_gid]))):
            sseg.refs += 1
            seg.uses.append(sseg.sid)

    def _inherit_errors(self, seg: Segment) -> None:
        """Tasks of a new graph that use results which already failed fail at once."""
        n = seg.n
        ext = (seg.dep_idx < seg.base) | (seg.dep_idx >= seg.base + n)
        if not ext.any():
            return
        bad = ext.copy()
        bad[ext] = self._states(seg.dep_idx[ext]) == S.erred
        if not bad.any():
            return
        owners = np.repeat(np.arange(n, dtype=np.int64), np.diff(seg.dep_ptr))
        cause = int(seg.dep_idx[np.flatnonzero(bad)[0]])
        self._spread_error(seg, unique(owners[bad]), cause)

    def _spread_error(self, seg: Segment, start: np.ndarray, cause: int) -> None:
        """Tasks ``start`` of ``seg`` read the failed result ``cause``: they and everything
        that depends on them fail (running ones are cancelled), and the graphs that want
        them are told."""
        key, blob, text = self._failure_of(cause)
        hit: list[tuple[Segment, np.ndarray]] = []
        for s, erred in self._dependents_closure(seg, start):
            erred = np.union1d(erred, start) if s is seg else erred
            new = erred[np.isin(s.state[erred], (S.waiting, S.ready, S.processing))]
            proc = new[s.state[new] == S.processing]
            for w in unique(s.worker[proc]):
                self._out.append(CancelTasks(stimulus_id=self._stimulus, worker=int(w),
                                             ids=proc[s.worker[proc] == w] + s.base))
            self._transition(s, new, S.erred)
            hit.append((s, new))
        for s, erred in hit:
            self._tell_erred(s, erred, cause, key, blob, text)

    def _tell_erred(self, seg: Segment, erred: np.ndarray, cause: int, key: Any,
                    blob: bytes, text: str) -> None:
        """Tell ``seg``'s client that its graph failed (naming its outputs among ``erred``),
        and every other graph that asked for one of ``erred`` as an output."""
        told = False
        for s, gids in self._wanters(seg, erred):
            s.outputs_left -= len(gids)
            told = told or s is seg
            self._out.append(KeysErred(stimulus_id=self._stimulus, client=s.client,
                                       graph_id=s.graph_id, id=cause, key=key, error=blob,
                                       text=text, ids=gids))
        if not told and not seg.released:  # a released graph's client hears no more
            self._out.append(KeysErred(stimulus_id=self._stimulus, client=seg.client,
                                       graph_id=seg.graph_id, id=cause, key=key, error=blob,
                                       text=text, ids=_EMPTY))

    def _wanters(self, seg: Segment, local: np.ndarray) -> list[tuple[Segment, np.ndarray]]:
        """The graphs that asked for tasks ``local`` of ``seg`` as outputs, each with the
        global ids it asked for: ``seg`` itself, and later graphs sharing those keys."""
        out = local[seg.wanted[local] > 0]
        if not len(out):
            return []
        gids = out + seg.base
        if not self._watch:
            return [(seg, gids)]  # nobody shares keys: every wanted task is seg's own output
        if len(seg.outputs) and not seg.released:
            pos = np.minimum(np.searchsorted(seg.outputs, gids), len(seg.outputs) - 1)
            mine = seg.outputs[pos] == gids
        else:
            mine = np.zeros(len(gids), dtype=bool)
        found = [(seg, gids[mine])] if mine.any() else []
        # wanted by more graphs than seg itself: the others are in _watch (a few graphs)
        shared = gids[seg.wanted[out] > mine]
        if len(shared):
            for sid, gs in self._watch.items():
                pos = np.minimum(np.searchsorted(gs, shared), len(gs) - 1)
                hit = shared[gs[pos] == shared]
                if len(hit):
                    found.append((self.segments[sid], hit))
        return found

    def _failure_of(self, gid: int) -> tuple[Any, bytes, str]:
        """(key, error blob, text) of the task whose failure made ``gid`` erred."""
        seen: set[int] = set()
        stack = [gid]
        while stack:
            t = stack.pop()
            if t in self._failures:
                return self._failures[t]
            if t in seen:
                continue
            seen.add(t)
            s = self.segment_of(t)
            i = t - s.base
            for d in s.dep_idx[s.dep_ptr[i]:s.dep_ptr[i + 1]].tolist():
                ds = self.segment_of(d)
                if ds.state[d - ds.base] == S.erred:
                    stack.append(d)
        s = self.segment_of(gid)
        return s.key(gid - s.base), b"", "a task this one depends on failed"

    def _notify_outputs_external(self, seg: Segment, gids: np.ndarray) -> None:
        """A new graph's outputs that are tasks of live graphs: those in memory are
        reported now, an erred one fails the graph, the others count as still to come."""
        states = self._states(gids)
        held = gids[states == S.memory]
        seg.outputs_left += int((states != S.memory).sum())
        bad = gids[states == S.erred]
        if len(bad):
            seg.outputs_left -= len(bad)
            key, blob, text = self._failure_of(int(bad[0]))
            self._out.append(KeysErred(stimulus_id=self._stimulus, client=seg.client,
                                       graph_id=seg.graph_id, id=int(bad[0]), key=key,
                                       error=blob, text=text, ids=bad))
        if len(held) or seg.outputs_left == 0:
            self._out.append(KeysInMemory(stimulus_id=self._stimulus, client=seg.client,
                                          graph_id=seg.graph_id, ids=held,
                                          workers=self.holders(held).astype(np.int64),
                                          done=seg.outputs_left == 0))

    # --- results -----------------------------------------------------------------------------

    def _tasks_finished(self, ev: TasksFinishedEvent) -> None:
        w = ev.worker
        ids = np.asarray(ev.ids, dtype=np.int64)
        seqs = None if ev.seqs is None else np.asarray(ev.seqs, dtype=np.int64)
        live = self._is_live(ids)
        # answered with ReleaseData: (ids, their reported assignment numbers)
        stale: list[tuple[np.ndarray, np.ndarray | None]] = []
        if not live.all():  # tasks of graphs dropped meanwhile
            stale.append((ids[~live], None if seqs is None else seqs[~live]))
            ids = ids[live]
            seqs = None if seqs is None else seqs[live]
        for seg, (pos, local) in self._split_positions(ids):
            here = seg.worker[local] == w
            proc = seg.state[local] == S.processing
            ok = proc & here
            if seqs is not None:
                # a report of an older assignment than the current one is stale even when
                # the task is processing there again (sent back after a release or a
                # cancel): the worker may have dropped that result since
                older: np.ndarray = seqs[pos] < seg.seq[local]
                ok &= ~older
            else:
                older = np.zeros(len(local), dtype=bool)
            if not ok.all():
                self._stale_finished(seg, w, local[~ok], (proc & here & older)[~ok],
                                     None if seqs is None else seqs[pos][~ok], stale)
                local = local[ok]
            if not len(local):
                continue
            self._transition(seg, local, S.memory)
            seg.finished += len(local)
            self.occupancy[w] -= len(local)
            seg.worker[local] = w
            self._finished_bookkeeping(seg, local)
        if stale and w < len(self.nthreads) and self.nthreads[w] > 0:
            gone = np.concatenate([g for g, _ in stale])
            if len(gone):
                given = all(s is not None for _, s in stale)
                self._out.append(ReleaseData(
                    stimulus_id=self._stimulus, worker=w, ids=gone,
                    seqs=np.concatenate([s for _, s in stale if s is not None]).astype(np.int32)
                    if given else None))

    def _stale_finished(self, seg: Segment, w: int, bad: np.ndarray, coming: np.ndarray,
                        seqs: np.ndarray | None,
                        stale: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
        """A stale report from ``w`` of tasks ``bad`` (cancelled, moved away, of an older
        assignment, or already in memory): the worker holds results nobody tracks, and is
        told to free them, except where they are the tracked result (in memory there), or a
        newer assignment of the task is on its way there (``coming``: its report will stand
        for it), or a task processing there may read them (a copy of a result held
        elsewhere, which tasks sent there read in place of fetching it: freed with that
        result)."""
        mem = seg.state[bad] == S.memory
        held_here = mem & (seg.worker[bad] == w)
        keep = held_here | coming
        elsewhere = np.flatnonzero(mem & ~held_here)
        for i in elsewhere.tolist():  # rare: a copy of a result another worker holds
            g = int(bad[i]) + seg.base
            users = self._gather(np.asarray([g]), dependents=True)
            if len(users) and ((self._states(users) == S.processing)
                               & (self.holders(users) == w)).any():
                self._copies.setdefault(g, set()).add(w)
                keep[i] = True
        free = ~keep
        if free.any():
            stale.append((bad[free] + seg.base, None if seqs is None else seqs[free]))

    def _is_live(self, gids: np.ndarray) -> np.ndarray:
        """Whether each global id belongs to a live segment."""
        if not self._by_base:
            return np.zeros(len(gids), dtype=bool)
        if len(self._by_base) == 1:  # the common case: one graph
            seg = self._by_base[0]
            return (gids >= seg.base) & (gids < seg.base + seg.n)
        where = np.searchsorted(self._bases, gids, side="right") - 1
        ends = np.asarray([s.base + s.n for s in self._by_base], dtype=np.int64)
        return (where >= 0) & (gids < ends[np.maximum(where, 0)])

    def _finished_bookkeeping(self, seg: Segment, local: np.ndarray) -> None:
        # dependents inside the segment
        dpts, _ = csr_gather(seg.dpt_ptr, seg.dpt_idx, local)
        if len(dpts):
            dl = dpts - seg.base
            np.subtract.at(seg.waiting, dl, 1)
            # only the dependents that reached zero are sorted, not every edge
            cand = unique(dl[seg.waiting[dl] == 0])
            newly = cand[seg.state[cand] == S.waiting]
            self._transition(seg, newly, S.ready)
        if self._cross:
            # dependents in later graphs (a result many tasks of another graph read: one
            # batch per graph, not a transition per task)
            users = [u for g in self._with_cross(local + seg.base) for u in self._cross[g]]
            for useg, ul in self._split(np.asarray(users, dtype=np.int64)):
                np.subtract.at(useg.waiting, ul, 1)
                cand = unique(ul)
                newly = cand[(useg.waiting[cand] == 0) & (useg.state[cand] == S.waiting)]
                self._transition(useg, newly, S.ready)
        # dependencies: one consumer fewer; free what nobody needs any more
        deps, _ = csr_gather(seg.dep_ptr, seg.dep_idx, local)
        for dseg, dl in self._split(deps):
            np.subtract.at(dseg.remaining, dl, 1)
            self._release_unneeded(dseg, unique(dl[dseg.remaining[dl] <= 0]))
        # finished tasks nobody depends on and nobody wants (not culled by the client)
        self._release_unneeded(seg, local)
        # outputs, to every graph that asked for them
        for s, gids in self._wanters(seg, local):
            s.outputs_left -= len(gids)
            self._out.append(KeysInMemory(stimulus_id=self._stimulus, client=s.client,
                                          graph_id=s.graph_id, ids=gids,
                                          workers=seg.worker[gids - seg.base].astype(np.int64),
                                          done=s.outputs_left == 0))

    def _with_cross(self, gids: np.ndarray) -> list[int]:
        """Those of ``gids`` that have dependents in later segments (numpy, not a loop)."""
        if self._cross_keys is None:
            self._cross_keys = np.sort(np.fromiter(self._cross, dtype=np.int64,
                                                   count=len(self._cross)))
        keys = self._cross_keys
        pos = np.minimum(np.searchsorted(keys, gids), len(keys) - 1)
        return gids[keys[pos] == gids].tolist()

    def _release_unneeded(self, seg: Segment, local: np.ndarray) -> None:
        free = local[(seg.remaining[local] <= 0) & (seg.wanted[local] == 0)
                     & (seg.state[local] == S.memory)]
        self._transition(seg, free, S.released)

    def _task_erred(self, ev: TaskErredEvent) -> None:
        try:
            seg = self.segment_of(ev.id)
        except KeyError:
            return
        i = ev.id - seg.base
        if seg.state[i] != S.processing or seg.worker[i] != ev.worker:
            return
        self._transition(seg, np.asarray([i]), S.erred)  # frees its worker slot
        self._failures[ev.id] = (seg.key(i), ev.error, ev.text)
        hit_outputs: list[tuple[Segment, np.ndarray]] = []
        for s, erred in self._dependents_closure(seg, np.asarray([i])):
            st = s.state[erred]
            proc = erred[st == S.processing]
            for w in unique(s.worker[proc]):
                self._out.append(CancelTasks(stimulus_id=self._stimulus, worker=int(w),
                                             ids=proc[s.worker[proc] == w] + s.base))
            todo = erred[np.isin(st, (S.waiting, S.ready, S.processing))]
            self._transition(s, todo, S.erred)
            own = np.asarray([i] if s is seg else [], dtype=np.int64)
            hit_outputs.append((s, np.union1d(todo, own)))  # newly spoiled only
        for s, erred in hit_outputs:
            self._tell_erred(s, erred, ev.id, seg.key(i), ev.error, ev.text)

    def _dependents_closure(self, seg: Segment,
                            start: np.ndarray) -> list[tuple[Segment, np.ndarray]]:
        """Every task that depends, transitively, on ``start`` (by segment)."""
        found: dict[int, np.ndarray] = {seg.sid: _EMPTY}
        frontier = [(seg, start)]
        while frontier:
            nxt = []
            for s, loc in frontier:
                d, _ = csr_gather(s.dpt_ptr, s.dpt_idx, loc)
                new = np.setdiff1d(d - s.base, found.get(s.sid, _EMPTY))
                if len(new):
                    found[s.sid] = np.union1d(found.get(s.sid, _EMPTY), new)
                    nxt.append((s, new))
                if self._cross:
                    cross = [u for g in (loc + s.base).tolist() for u in self._cross.get(g, ())]
                    for cs, cl in self._split(np.asarray(cross, dtype=np.int64)):
                        new = np.setdiff1d(cl, found.get(cs.sid, _EMPTY))
                        if len(new):
                            found[cs.sid] = np.union1d(found.get(cs.sid, _EMPTY), new)
                            nxt.append((cs, new))
            frontier = nxt
        return [(self.segments[sid], loc) for sid, loc in found.items()]

    def _data_lost(self, ev: DataLostEvent) -> None:
        """A worker could not fetch dependencies of a task it runs: the holder says it does
        not have them, so they are gone (recomputed) and the task waits for them again. A
        report about a task not running on that worker any more is stale and ignored."""
        try:
            seg = self.segment_of(ev.id)
        except KeyError:
            return
        i = ev.id - seg.base
        if seg.state[i] != S.processing or seg.worker[i] != ev.worker:
            return
        self._requeue(seg, np.asarray([i]))  # the worker gave it up: not running anywhere
        for dseg, local in self._split(np.asarray(ev.missing, dtype=np.int64)):
            gone = local[dseg.state[local] == S.memory]
            if len(gone):
                self._transition(dseg, gone, S.released)
                self._recompute(gone + dseg.base)  # and sends the task back to waiting

    # --- clients -----------------------------------------------------------------------------

    def _client_released(self, ev: ClientReleasedKeysEvent) -> None:
        seg = self._by_graph.get((ev.client, ev.graph_id))
        if seg is None:
            return
        self._unwant(seg)
        self._maybe_drop(seg)

    def _client_lost(self, ev: ClientLostEvent) -> None:
        mine = [seg for (client, _gid), seg in self._by_graph.items() if client == ev.client]
        for seg in mine:
            self._unwant(seg)
            seg.client = ""  # nobody to notify any more
        for seg in mine:
            self._maybe_drop(seg)

    def _unwant(self, seg: Segment) -> None:
        """``seg``'s client wants its outputs no more: each output is wanted by one graph
        fewer, and results that nobody wants or needs any more are freed. Tasks that other
        graphs still want or read stay (a key is released when no client wants it)."""
        if seg.released:
            return
        seg.released = True
        seg.outputs_left = 0
        outs = seg.outputs
        mine = (outs >= seg.base) & (outs < seg.base + seg.n)
        own = outs[mine] - seg.base
        seg.wanted[own] -= 1
        ext = outs[~mine]
        self._watch.pop(seg.sid, None)
        for oseg, loc in self._split(ext):
            oseg.wanted[loc] -= 1
            self._release_unneeded(oseg, loc)
            if oseg.released:
                self._maybe_drop(oseg)
        self._release_unneeded(seg, own)

    def _forget_unneeded(self, seg: Segment) -> None:
        """A released graph that others still use: its tasks that no graph wants, directly
        or through what they feed, stop (cancelled if running) and go back to released, as
        if never asked for; what they read is freed if nobody else needs it."""
        pending = np.isin(seg.state, (S.waiting, S.ready, S.processing))
        if not pending.any():
            return
        needed = seg.wanted > 0
        if self._cross:
            fed = np.asarray(self._with_cross(np.arange(seg.base, seg.base + seg.n)),
                             dtype=np.int64)
            for g in fed.tolist():
                if any(np.isin(self._states(np.asarray(self._cross[g])),
                               (S.waiting, S.ready, S.processing, S.erred))):
                    needed[g - seg.base] = True
        frontier = np.flatnonzero(needed)
        while len(frontier):  # everything the needed tasks read, inside this graph
            deps, _ = csr_gather(seg.dep_ptr, seg.dep_idx, frontier)
            deps = deps[(deps >= seg.base) & (deps < seg.base + seg.n)] - seg.base
            frontier = unique(deps[~needed[deps]])
            needed[frontier] = True
        drop = np.flatnonzero(pending & ~needed)
        if not len(drop):
            return
        proc = drop[seg.state[drop] == S.processing]
        for w in unique(seg.worker[proc]):
            if self.nthreads[int(w)] > 0:
                self._out.append(CancelTasks(stimulus_id=self._stimulus, worker=int(w),
                                             ids=proc[seg.worker[proc] == w] + seg.base))
        self._transition(seg, drop, S.released)
        deps, _ = csr_gather(seg.dep_ptr, seg.dep_idx, drop)  # one dependent fewer each
        for dseg, dl in self._split(deps):
            np.subtract.at(dseg.remaining, dl, 1)
            self._release_unneeded(dseg, unique(dl))

    def _maybe_drop(self, seg: Segment) -> None:
        """Forget a graph nobody wants and no later graph uses: cancel its running tasks,
        free its results, drop its arrays."""
        if seg.sid not in self.segments:
            return
        if seg.refs > 0 or seg.wanted.any():
            if seg.released:
                self._forget_unneeded(seg)
            return
        proc = np.nonzero(seg.state == S.processing)[0]
        for w in unique(seg.worker[proc]):
            sel = proc[seg.worker[proc] == w]
            self.occupancy[int(w)] -= len(sel)
            if self.nthreads[int(w)] > 0:
                self._out.append(CancelTasks(stimulus_id=self._stimulus, worker=int(w),
                                             ids=sel + seg.base))
        mem = np.nonzero(seg.state == S.memory)[0]
        for w in unique(seg.worker[mem]):
            if self.nthreads[int(w)] > 0:
                sel = mem[seg.worker[mem] == w]
                self._out.append(ReleaseData(stimulus_id=self._stimulus, worker=int(w),
                                             ids=sel + seg.base, seqs=seg.seq[sel]))
        if self._copies:
            self._release_copies(mem + seg.base)
        del self.segments[seg.sid]
        self._out.append(GraphForgotten(stimulus_id=self._stimulus, segment=seg.sid))
        for g in [g for g in self._failures if seg.contains(g)]:
            del self._failures[g]
        i = self._by_base.index(seg)
        del self._by_base[i]
        del self._bases[i]
        del self._by_graph[(seg.client or _find_client(self._by_graph, seg), seg.graph_id)]
        for names in self._names.values():
            while seg.sid in names:
                names.remove(seg.sid)
        for k in [k for k, v in self._names.items() if not v]:
            del self._names[k]
        if seg.uses:
            owners = np.repeat(np.arange(seg.n), np.diff(seg.dep_ptr))
            ext = (seg.dep_idx < seg.base) | (seg.dep_idx >= seg.base + seg.n)
            pending = np.isin(seg.state[owners[ext]], (S.waiting, S.ready, S.processing,
                                                        S.erred))
            for g in unique(seg.dep_idx[ext]).tolist():
                rest = [u for u in self._cross.get(g, ()) if not seg.contains(u)]
                if rest:
                    self._cross[g] = rest
                else:
                    self._cross.pop(g, None)
            self._cross_keys = None
            ids = seg.dep_idx[ext][pending]
            for g, c in zip(*unique_counts(ids), strict=True):
                g = int(g)
                try:
                    useg = self.segment_of(g)
                except KeyError:
                    continue
                useg.remaining[g - useg.base] -= int(c)
            for sid in seg.uses:
                used = self.segments.get(sid)
                if used is not None:
                    used.refs -= 1
                    self._release_unneeded(used, np.arange(used.n))
                    if used.released:
                        self._maybe_drop(used)
        self._queue = deque((s, loc) for s, loc in self._queue if s is not seg)
        # tasks that became ready but were not placed yet (a caller deferring schedule())
        self._ready = [(s, loc) for s, loc in self._ready if s is not seg]
        self._story = deque((e for e in self._story if e[1] != seg.base),
                            maxlen=self._story.maxlen)

    # --- scheduling ----------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Place the tasks that became ready during this event, then top up workers."""
        ready, self._ready = self._ready, []
        for seg, local in ready:
            local = local[seg.state[local] == S.ready]
            if len(local):
                self._place(seg, local)
        self._fill_from_queue()

    def _place(self, seg: Segment, local: np.ndarray) -> None:
        workers = self.workers()
        if not workers:
            self._enqueue(seg, local)
            return
        deps, counts = csr_gather(seg.dep_ptr, seg.dep_idx, local)
        if not len(deps):
            self._enqueue(seg, local)
            return
        holders = np.full(len(deps), -1, dtype=np.int64)
        n_dpts = np.zeros(len(deps), dtype=np.int64)
        for dseg, dl in self._split_positions(deps):
            pos, loc = dl
            holders[pos] = dseg.worker[loc]
            n_dpts[pos] = dseg.n_dependents[loc]
        rows = np.repeat(np.arange(len(local)), counts)
        vote = (holders >= 0) & (n_dpts <= self.config.shared_dependents)
        n_w = len(self.nthreads)
        score = np.bincount(rows[vote] * n_w + holders[vote],
                            minlength=len(local) * n_w).reshape(len(local), n_w)
        has_vote = score.max(axis=1) > 0
        if (~has_vote).any():
            self._enqueue(seg, local[~has_vote])
        local, score = local[has_vote], score[has_vote]
        if not len(local):
            return
        dead = np.asarray([t == 0 for t in self.nthreads])
        occ = np.asarray(self.occupancy, dtype=np.float64)
        thr = np.maximum(np.asarray(self.nthreads, dtype=np.float64), 1)
        tiebreak = occ / thr / (occ.max() / thr.min() + 1.0) / 2  # < 0.5: never beats a vote
        score = score.astype(np.float64) - tiebreak[None, :]
        score[:, dead] = -np.inf
        choice = np.argmax(score, axis=1)
        self._assign(seg, local, choice)

    def _split_positions(self, gids: np.ndarray) -> Iterator[tuple[Segment, tuple]]:
        if len(self._by_base) == 1:
            seg = self._by_base[0]
            yield seg, (slice(None), gids - seg.base)
            return
        where = np.searchsorted(self._bases, gids, side="right") - 1
        for i in unique(where):
            seg = self._by_base[int(i)]
            pos = np.nonzero(where == i)[0]
            yield seg, (pos, gids[pos] - seg.base)

    def _enqueue(self, seg: Segment, local: np.ndarray) -> None:
        order = np.argsort(seg.priority[local], kind="stable")
        self._queue.append((seg, local[order]))

    def _fill_from_queue(self) -> None:
        if not self._queue:
            return
        workers = self.workers()
        if not workers:
            return
        if len(self._queue) > 1:
            self._merge_queue()
        per = self.config.inflight_per_thread
        free = {w: per * self.nthreads[w] - self.occupancy[w] for w in workers}
        free = {w: f for w, f in free.items() if f > 0}
        room = sum(free.values())
        if not room:
            return
        queued = sum(len(loc) for _, loc in self._queue)
        hand = min(room, queued)
        # shares proportional to free room, so every worker gets work when there is little;
        # each share is a contiguous run of the priority order (siblings stay together)
        shares = {w: hand * f // room for w, f in free.items()}
        for w in sorted(free, key=lambda w: -free[w]):
            if sum(shares.values()) >= hand:
                break
            shares[w] += 1
        for w in sorted(free, key=lambda w: -free[w]):
            want = shares[w]
            while want > 0 and self._queue:
                seg, local = self._queue[0]
                take = local[:want]
                if len(take) == len(local):
                    self._queue.popleft()
                else:
                    self._queue[0] = (seg, local[want:])
                # entries whose task left the ready state meanwhile (erred, sent back to
                # waiting, already handed out) are stale: skip them, they used no room
                take = take[seg.state[take] == S.ready]
                if len(take):
                    self._assign(seg, take, np.full(len(take), w))
                    want -= len(take)

    def _merge_queue(self) -> None:
        by_seg: dict[int, list[np.ndarray]] = {}
        segs: dict[int, Segment] = {}
        for seg, local in self._queue:
            by_seg.setdefault(seg.sid, []).append(local)
            segs[seg.sid] = seg
        self._queue = deque()
        for sid in sorted(by_seg):
            seg = segs[sid]
            local = unique(np.concatenate(by_seg[sid]))  # a task queued twice goes once
            self._queue.append((seg, local[np.argsort(seg.priority[local], kind="stable")]))

    def _assign(self, seg: Segment, local: np.ndarray, choice: np.ndarray) -> None:
        self._transition(seg, local, S.processing)
        seg.worker[local] = choice
        seg.seq[local] += 1  # a new assignment: reports of older ones are stale
        for w in unique(choice):
            sel = local[choice == w]
            sel = sel[np.argsort(seg.priority[sel], kind="stable")]
            self.occupancy[int(w)] += len(sel)
            self._out.append(SendTasks(stimulus_id=self._stimulus, worker=int(w),
                                       segment=seg.sid, ids=sel + seg.base))

    # --- checks --------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check every invariant; raise AssertionError naming the first one broken."""
        occ = [0] * len(self.nthreads)
        cross_pending: dict[int, int] = {}  # gid -> its pending dependents in later segments
        if self._cross:
            src = np.asarray([g for g, us in self._cross.items() for _ in us], dtype=np.int64)
            users = np.asarray([u for us in self._cross.values() for u in us], dtype=np.int64)
            pend = np.isin(self._states(users), (S.waiting, S.ready, S.processing, S.erred))
            for g, c in zip(*unique_counts(src[pend]), strict=True):
                cross_pending[int(g)] = int(c)
        for seg in self.segments.values():
            st = seg.state
            proc = np.nonzero(st == S.processing)[0]
            for w in seg.worker[proc].tolist():
                assert w >= 0 and self.nthreads[w] > 0, f"{seg}: processing on dead worker {w}"
                occ[w] += 1
            mem = np.nonzero(st == S.memory)[0]
            assert (seg.worker[mem] >= 0).all(), f"{seg}: result without holder"
            for w in unique(seg.worker[mem]).tolist():
                assert self.nthreads[w] > 0, f"{seg}: result on dead worker {w}"
            live = np.nonzero(np.isin(st, (S.waiting, S.ready, S.processing)))[0]
            missing = self._count_missing(seg, live)
            waiting = st[live] == S.waiting
            assert (missing[waiting] > 0).all(), f"{seg}: waiting task with all deps in memory"
            assert (seg.waiting[live[waiting]] == missing[waiting]).all(), \
                f"{seg}: waiting count differs from dependencies not in memory"
            assert (missing[~waiting] == 0).all(), f"{seg}: ready/processing task lacks deps"
            pending = np.isin(st, (S.waiting, S.ready, S.processing, S.erred)).astype(np.int64)
            owners = np.repeat(np.arange(seg.n), np.diff(seg.dep_ptr))
            internal = (seg.dep_idx >= seg.base) & (seg.dep_idx < seg.base + seg.n)
            expect = np.bincount(seg.dep_idx[internal] - seg.base,
                                 weights=pending[owners[internal]], minlength=seg.n)
            for g, c in cross_pending.items():
                if seg.contains(g):
                    expect[g - seg.base] += c
            done = np.isin(st, (S.memory, S.released))
            assert (seg.remaining[done] == expect[done]).all(), \
                f"{seg}: remaining-dependents count is wrong"
        wanted = {sid: np.zeros(seg.n, dtype=np.int64) for sid, seg in self.segments.items()}
        for seg in self.segments.values():
            if not seg.released:
                for oseg, loc in self._split(seg.outputs):
                    wanted[oseg.sid][loc] += 1
            if len(seg.alias):
                assert (seg.state[seg.alias] == S.released).all(), f"{seg}: an alias ran"
        for g in self._copies:
            cs = self.segment_of(g)
            assert cs.state[g - cs.base] == S.memory, f"stale copy of task id {g} kept"
        for sid in self._watch:
            assert not self.segments[sid].released, f"released graph {sid} still watches"
        for sid, seg in self.segments.items():
            assert (seg.wanted == wanted[sid]).all(), \
                f"{seg}: wanted counts differ from the outputs of unreleased graphs"
        assert occ == [o if n else 0 for o, n in zip(self.occupancy, self.nthreads,
                                                         strict=True)], \
            f"occupancy {self.occupancy} differs from processing tasks {occ}"


def _find_client(by_graph: dict[tuple[str, str], Segment], seg: Segment) -> str:
    return next(c for (c, _g), s in by_graph.items() if s is seg)
