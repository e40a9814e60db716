"""The worker's state machine: which tasks wait for which data, what runs next.

Rules: pure, like the scheduler's (no sockets, threads, clocks). The runtime turns messages
into events and carries out the instructions: ``Execute`` batches run on its threads,
``FetchData`` becomes a request to a peer, ``Report*`` become batched messages to the
scheduler. Task code is opaque here: a *runner* is any callable ``runner(args, index)``
prepared by the runtime; this module never calls it.

Data: ``data`` holds results by task id. Results computed here stay until the scheduler
releases them; copies fetched from peers are dropped as soon as no local task needs them.
Tasks run in the scheduler's priority order (lowest first).

Convergence with the scheduler, whose messages may cross ours: every task the scheduler
sends is reported once it is done here, even when it was done before it came. A task the
scheduler cancelled after it had run (its report then crossed the cancel and was dropped
as stale) and sent again is answered from ``data`` with a new report; a cancelled task that
is already running is left to finish and reported. A dependency being fetched from one peer
and named again with another holder is fetched from that holder too: the scheduler moved
it because the first one is gone. Results the scheduler never accepted are dropped with
their graph (``ForgetGraphEvent``).

Assignments are numbered: each time the scheduler sends a task it counts one more
(``seqs``), reports echo the number of the newest assignment received of each task, and a
release names the assignment it frees: one older than the newest received here is ignored
(the scheduler sent the task again since, and the report of that one will stand for it).
Numbers are kept only for tasks sent more than once (``seq``); the others are 1.
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter, deque
from collections.abc import Callable
from itertools import repeat
from typing import Any

import numpy as np

from .events import (
    CancelTasksEvent,
    ComputeTasksEvent,
    DataFetchedEvent,
    Execute,
    ExecutedEvent,
    FetchData,
    ForgetGraphEvent,
    ReleaseDataEvent,
    ReportDataLost,
    ReportErred,
    ReportFinished,
    WorkerEvent,
    WorkerInstruction,
)

__all__ = [
    # the events and instructions live in events.py; named here too for old imports
    "CancelTasksEvent", "ComputeTasksEvent", "DataFetchedEvent", "Execute", "ExecutedEvent",
    "FetchData", "ForgetGraphEvent", "ReleaseDataEvent", "ReportDataLost", "ReportErred",
    "ReportFinished", "InvalidMove", "MOVES", "WorkerState", "WorkerTaskState",
]

class _Task:
    __slots__ = ("id", "priority", "runner", "deps", "index", "missing")

    def __init__(self, tid: int, priority: int, runner: Callable[[list, tuple], Any],
                 deps: list[int], index: tuple) -> None:
        self.id = tid
        self.priority = priority
        self.runner = runner
        self.deps = deps
        self.index = index
        self.missing = 0


class WorkerTaskState(enum.Enum):
    """Where a task id stands on this worker. Held implicitly by the containers below (a
    task is in one of them at a time); ``WorkerState.state_of`` reads it."""

    released = "released"    # not known here: never sent, or dropped, freed, forgotten
    fetching = "fetching"    # a dependency of a local task, asked of the peer holding it
    waiting = "waiting"      # queued to run, some dependencies not here yet
    ready = "ready"          # queued to run, every dependency here
    executing = "executing"  # handed to a thread in a batch, not finished yet
    memory = "memory"        # its result is here (computed here, or a fetched copy)


W = WorkerTaskState
MOVES: dict[WorkerTaskState, frozenset[WorkerTaskState]] = {
    W.released: frozenset({W.waiting, W.ready, W.fetching}),   # sent to run; needed here
    W.fetching: frozenset({W.memory, W.released}),             # arrived; nobody waits, lost
    W.waiting: frozenset({W.ready, W.released}),               # data came; cancelled, lost
    W.ready: frozenset({W.executing, W.released}),             # batch started; cancelled
    W.executing: frozenset({W.memory, W.released}),            # ran; erred
    W.memory: frozenset({W.released}),                         # released, forgotten, unused
}
"""The legal moves of a task on a worker, in one event or one batch start: a legality
table. The work of each move is done in one place: sent to run (``_compute``), needed here
(``_wait_for``), data came or lost (``_fetched``), batch started (``_start_batches``), ran
or erred (``_executed``), released (``_release``), cancelled (``_cancel``), forgotten
(``_forget_graph``), a fetched copy unused (``_unuse``). With ``check_moves`` every event is
checked against it."""


class InvalidMove(RuntimeError):
    """A task moved in a way ``MOVES`` does not allow: a bug in this module."""


class WorkerState:
    CHECK_MOVES = False
    """Default of ``check_moves``: off, because checking reads every task id per event."""

    def __init__(self, nthreads: int = 1, max_batch: int = 256,
                 check_moves: bool | None = None) -> None:
        if nthreads < 1:
            raise ValueError(f"a worker needs at least one thread, got {nthreads}")
        self.nthreads = nthreads
        self.max_batch = max_batch
        self.check_moves = self.CHECK_MOVES if check_moves is None else check_moves
        self.data: dict[int, Any] = {}
        self.tasks: dict[int, _Task] = {}          # not yet handed to a thread
        self.ready: list[tuple[int, int]] = []     # heap of (priority, id)
        self.waiters: dict[int, list[int]] = {}    # missing dependency -> task ids
        self.fetched_users: dict[int, int] = {}    # fetched copy -> local tasks needing it
        self.fetching: dict[int, int] = {}         # dependency -> peer last asked for it
        self.running: set[int] = set()             # handed to a thread, not reported yet
        self.running_batches = 0
        self.executed = 0
        self.seq: dict[int, int] = {}              # newest assignment received, if not 1

    def handle(self, *events: WorkerEvent) -> list[WorkerInstruction]:
        """Handle ``events`` in order; return the instructions they caused, each with the
        stimulus id of its event (batches started at the end carry the last event's)."""
        out: list[WorkerInstruction] = []
        stim = ""
        for ev in events:
            handler = _HANDLERS.get(type(ev))
            if handler is None:
                raise TypeError(f"unknown event {type(ev).__name__}")
            stim = ev.stimulus_id
            if self.check_moves:
                before = self.states()
                handler(self, ev, out)
                self._check(before, type(ev).__name__, stim)
            else:
                handler(self, ev, out)
        if self.check_moves:
            before = self.states()
            self._start_batches(stim, out)
            self._check(before, "batch start", stim)
        else:
            self._start_batches(stim, out)
        return out

    def state_of(self, tid: int) -> WorkerTaskState:
        if tid in self.running:
            return W.executing
        if tid in self.data:
            return W.memory
        task = self.tasks.get(tid)
        if task is not None:
            return W.waiting if task.missing else W.ready
        return W.fetching if tid in self.fetching else W.released

    def states(self) -> dict[int, WorkerTaskState]:
        """The state of every task id known here (reads them all: for checks and tests)."""
        ids = {*self.running, *self.data, *self.tasks, *self.fetching}
        return {t: self.state_of(t) for t in ids}

    def _check(self, before: dict[int, WorkerTaskState], what: str, stim: str) -> None:
        after = self.states()
        for t in before.keys() | after.keys():
            a, b = before.get(t, W.released), after.get(t, W.released)
            if a is not b and b not in MOVES[a]:
                raise InvalidMove(f"task id {t} moved from {a.name} to {b.name} on {what} "
                                  f"({stim!r}); legal from {a.name}: "
                                  f"{sorted(s.name for s in MOVES[a])}")

    # --- events ------------------------------------------------------------------------------

    def _compute(self, ev: ComputeTasksEvent, out: list[WorkerInstruction]) -> None:
        if ev.seqs is not None and len(ev.seqs) and ev.seqs.max() > 1:
            again = np.flatnonzero(ev.seqs > 1)  # tasks sent before: few
            seq = self.seq
            for t, s in zip(ev.ids[again].tolist(), ev.seqs[again].tolist(), strict=True):
                if s > seq.get(t, 1):
                    seq[t] = s
        ids = ev.ids.tolist()
        prio = ev.priorities.tolist()
        ptr = ev.dep_ptr.tolist()
        dep_ids = ev.dep_ids.tolist()
        data, ready, tasks, running = self.data, self.ready, self.tasks, self.running
        fetched_users = self.fetched_users
        runners, indices = ev.runners, ev.indices
        new = np.ones(len(ids), dtype=bool)
        fresh: list[_Task] = []
        done: list[int] = []
        for i, tid in enumerate(ids):
            if tid in tasks or tid in running:
                new[i] = False
                continue  # already here: it is reported when it has run
            if tid in data:
                # done before it came (sent again after a cancel that crossed our report):
                # report it again; a fetched copy becomes a result of ours
                fetched_users.pop(tid, None)
                done.append(tid)
                new[i] = False
                continue
            task = _Task(tid, prio[i], runners[i], dep_ids[ptr[i]:ptr[i + 1]], indices[i])
            tasks[tid] = task
            fresh.append(task)
        if dep_ids and fresh:
            self._wait_for(ev, new, dep_ids, fresh, out)
        for task in fresh:
            if not task.missing:
                heapq.heappush(ready, (task.priority, task.id))
        if done:
            self._report(done, ev.stimulus_id, out)

    def _wait_for(self, ev: ComputeTasksEvent, new: np.ndarray, dep_ids: list[int],
                  fresh: list[_Task], out: list[WorkerInstruction]) -> None:
        """Count the missing dependencies of the ``new`` tasks of ``ev`` (``fresh``, in
        order), note who waits for them and ask their holders; note the local uses of
        fetched copies. Per distinct dependency, not per edge: the edges are arrays."""
        data, fetched_users, fetching = self.data, self.fetched_users, self.fetching
        deps = ev.dep_ids
        counts = np.diff(ev.dep_ptr)
        row = np.repeat(np.arange(len(counts)), counts)  # task row of each edge
        here = np.fromiter(map(data.__contains__, dep_ids), dtype=bool, count=len(dep_ids))
        edge_new = new[row]
        # fetched copies already here gain users
        if fetched_users:
            used = deps[edge_new & here]
            if len(used):
                for d in filter(fetched_users.__contains__, used.tolist()):
                    fetched_users[d] += 1
        lack = edge_new & ~here
        if not lack.any():
            return
        lack_row = row[lack]
        per_row = np.bincount(lack_row, minlength=len(counts))[new]
        for task, m in zip(fresh, per_row.tolist(), strict=True):
            task.missing = m
        lack_dep = deps[lack]
        order = np.argsort(lack_dep, kind="stable")
        lack_dep = lack_dep[order]
        first = np.flatnonzero(np.diff(lack_dep, prepend=lack_dep[0] - 1))
        bounds = np.append(first, len(lack_dep)).tolist()
        waiting_ids = ev.ids[lack_row[order]].tolist()
        holders = ev.dep_holders[lack][order][first].tolist()
        waiters = self.waiters
        fetch: dict[int, list[int]] = {}
        for k, (d, h) in enumerate(zip(lack_dep[first].tolist(), holders, strict=True)):
            a, b = bounds[k], bounds[k + 1]
            w = waiters.get(d)
            if w is None:
                waiters[d] = waiting_ids[a:b]
            else:
                w.extend(waiting_ids[a:b])
            fetched_users[d] = fetched_users.get(d, 0) + (b - a)
            if fetching.get(d) != h:
                fetching[d] = h
                f = fetch.get(h)
                if f is None:
                    fetch[h] = [d]
                else:
                    f.append(d)
        for peer, want in fetch.items():
            out.append(FetchData(stimulus_id=ev.stimulus_id, peer=peer, ids=want))

    def _executed(self, ev: ExecutedEvent, out: list[WorkerInstruction]) -> None:
        if not ev.partial:
            self.running_batches -= 1
        if ev.next_batch is not None:
            if ev.next_batch < 1:
                raise ValueError(f"a batch needs at least one task, got {ev.next_batch}")
            self.max_batch = ev.next_batch
        self.data.update(ev.results)
        self.running.difference_update(ev.results)
        self.running.difference_update(t for t, _, _ in ev.errors)
        self.executed += len(ev.results) + len(ev.errors)
        if ev.results:
            self._report(list(ev.results), ev.stimulus_id, out)
        for tid, blob, text in ev.errors:
            out.append(ReportErred(stimulus_id=ev.stimulus_id, id=tid, error=blob, text=text))

    def _report(self, ids: list[int], stim: str, out: list[WorkerInstruction]) -> None:
        seq = self.seq
        out.append(ReportFinished(stimulus_id=stim, ids=ids,
                                  seqs=[seq.get(t, 1) for t in ids] if seq else None))

    def _release(self, ev: ReleaseDataEvent, out: list[WorkerInstruction]) -> None:
        data, seq = self.data, self.seq
        if ev.seqs is None or not seq:  # no task here was sent twice: nothing is newer
            ids = ev.ids.tolist()
            deque(map(data.pop, ids, repeat(None)), maxlen=0)
            if seq:
                deque(map(seq.pop, ids, repeat(None)), maxlen=0)
            return
        for t, s in zip(ev.ids.tolist(), ev.seqs.tolist(), strict=True):
            if seq.get(t, 1) <= s:  # else: sent again since, and reported for that
                data.pop(t, None)
                seq.pop(t, None)

    def _fetched(self, ev: DataFetchedEvent, out: list[WorkerInstruction]) -> None:
        fetching, waiters, data, tasks = self.fetching, self.waiters, self.data, self.tasks
        woken: list[int] = []  # a task once per dependency of it that arrived
        for d, value in ev.values.items():
            fetching.pop(d, None)
            w = waiters.pop(d, None)
            if w is None:
                continue  # nobody waits any more (cancelled meanwhile)
            data[d] = value
            woken += w
        if woken:
            ready = self.ready
            for tid, n in Counter(woken).items():
                task = tasks.get(tid)
                if task is not None:
                    task.missing -= n
                    if task.missing == 0:
                        heapq.heappush(ready, (task.priority, tid))
        for d, reason in ev.unserializable.items():
            fetching.pop(d, None)
            for tid in self.waiters.pop(d, ()):
                if tid in self.tasks:
                    self._drop(tid)
                    out.append(ReportErred(
                        stimulus_id=ev.stimulus_id, id=tid, error=b"",
                        text=f"TypeError: the result of task id {d}, a dependency of this "
                             f"task, could not be serialised to send it between workers: "
                             f"{reason}"))
        lost: dict[int, list[int]] = {}
        for d in ev.missing:
            if d in fetching and fetching[d] != ev.peer:
                continue  # asked of another holder since: that answer decides
            fetching.pop(d, None)
            for tid in self.waiters.pop(d, ()):
                lost.setdefault(tid, []).append(d)
        for tid, missing in lost.items():
            self._drop(tid)
            out.append(ReportDataLost(stimulus_id=ev.stimulus_id, id=tid, missing=missing))

    def _drop(self, tid: int) -> None:
        """Forget a task not started yet (cancelled, or its data is lost)."""
        task = self.tasks.pop(tid, None)
        if task is None:
            return
        for d in task.deps:
            self._unuse(d)
            waiting = self.waiters.get(d)
            if waiting and tid in waiting:
                waiting.remove(tid)
                if not waiting:
                    del self.waiters[d]

    def _cancel(self, ev: CancelTasksEvent, out: list[WorkerInstruction]) -> None:
        for t in ev.ids.tolist():
            self._drop(t)

    def _forget_graph(self, ev: ForgetGraphEvent, out: list[WorkerInstruction]) -> None:
        self._forget(ev.base, ev.base + ev.n)

    def _forget(self, lo: int, hi: int) -> None:
        data = self.data
        ids = range(lo, hi) if hi - lo < len(data) else list(data)  # the fewer to look at
        for t in [t for t in ids if lo <= t < hi and t in data and t not in self.fetched_users]:
            del data[t]
        if self.seq:
            for t in [t for t in self.seq if lo <= t < hi]:
                del self.seq[t]

    def _unuse(self, d: int, uses: int = 1) -> None:
        """``uses`` local readers of ``d`` are done with it: a fetched copy nobody needs any
        more is dropped."""
        n = self.fetched_users.get(d)
        if n is None:
            return
        if n <= uses:
            del self.fetched_users[d]
            if d not in self.waiters:
                self.data.pop(d, None)
        else:
            self.fetched_users[d] = n - uses

    # --- running -----------------------------------------------------------------------------

    def _start_batches(self, stim: str, out: list[WorkerInstruction]) -> None:
        ready, tasks, data, running = self.ready, self.tasks, self.data, self.running
        fetched_users = self.fetched_users
        get = data.__getitem__
        while self.running_batches < self.nthreads and ready:
            size = min(self.max_batch, len(ready) // self.nthreads + 1)
            batch: list[tuple[int, Callable[[list, tuple], Any], list, tuple]] = []
            used: list[int] = []  # dependencies read by the batch, once per read
            while ready and len(batch) < size:
                _, tid = heapq.heappop(ready)
                task = tasks.get(tid)
                if task is None or task.missing:
                    continue  # stale entry: cancelled, or sent again and still waiting
                del tasks[tid]
                running.add(tid)
                deps = task.deps
                batch.append((tid, task.runner, list(map(get, deps)), task.index))
                used += deps
            if fetched_users and used:
                # fetched copies lose the users that just read them (their arguments are
                # gathered already)
                for d, n in Counter(filter(fetched_users.__contains__, used)).items():
                    self._unuse(d, n)
            if batch:
                self.running_batches += 1
                out.append(Execute(stimulus_id=stim, tasks=batch))

    @property
    def idle(self) -> bool:
        return not self.tasks and not self.running_batches


_HANDLERS: dict[type, Callable[[WorkerState, Any, list[WorkerInstruction]], None]] = {
    ComputeTasksEvent: WorkerState._compute,
    ExecutedEvent: WorkerState._executed,
    DataFetchedEvent: WorkerState._fetched,
    ReleaseDataEvent: WorkerState._release,
    CancelTasksEvent: WorkerState._cancel,
    ForgetGraphEvent: WorkerState._forget_graph,
}
"""Each event type's handler: it adds its instructions to the list it is given."""
