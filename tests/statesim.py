"""A deterministic in-memory driver for ``SchedulerState``: fake workers, no I/O, no threads.

Rules:

- Every event goes through ``Sim.handle``, one at a time, which calls ``state.validate()``
  after it, applies the instructions to the fake workers, and then checks that the two views
  agree: the tasks the scheduler holds as processing on each worker are exactly the ones
  that worker runs (``check_processing``), and the results it places on a worker are ones
  that worker holds. So a story that drives the scheduler through ``Sim`` checks the
  scheduler's invariants at every step. (``tests/clustersim.py`` does the same with real
  worker state machines and messages that take time.)
- Fake workers do not run anything. A ``SendTasks`` puts ids on a worker's ``running`` list;
  the test decides which worker finishes which of them, when, and in what batches
  (``finish``, ``fail``, ``run``). Finished ids become ``held`` data of that worker.
- Instructions are checked against what the fake workers hold, and a broken promise raises
  ``ProtocolError`` at once: a task sent twice to a worker that is still running it, a task
  sent before all its dependencies are held somewhere, a ``ReleaseData``/``CancelTasks``
  naming ids that worker does not hold/run, a ``KeysInMemory`` naming a worker that does not
  hold the result, an instruction for a worker that is gone.
- What the clients were told is kept per ``(client, graph_id)`` in ``Sim.clients``.
- Randomness only comes from a ``random.Random`` that the caller passes in (seeded).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scheduler.graph.lowgraph import TaskGraph
from scheduler.state.events import (
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
from scheduler.state.scheduler import SchedulerConfig, SchedulerState
from scheduler.state.segment import TaskState, csr_gather

__all__ = ["ClientLog", "FakeWorker", "ProtocolError", "Sim", "check_processing",
           "processing_by_worker"]


class ProtocolError(AssertionError):
    """The scheduler emitted an instruction that a real worker or client could not honour."""


def processing_by_worker(state: SchedulerState) -> dict[int, set[int]]:
    """The scheduler's view: global ids of the tasks processing on each worker."""
    return _by_worker(state, TaskState.processing)


def results_by_worker(state: SchedulerState) -> dict[int, set[int]]:
    """The scheduler's view: global ids of the results each worker holds."""
    return _by_worker(state, TaskState.memory)


def _by_worker(state: SchedulerState, which: TaskState) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for seg in state.segments.values():
        sel = np.nonzero(seg.state == which)[0]
        for w in np.unique(seg.worker[sel]).tolist():
            out.setdefault(int(w), set()).update((sel[seg.worker[sel] == w] + seg.base).tolist())
    return out


def check_processing(state: SchedulerState, running: dict[int, set[int]],
                     held: dict[int, set[int]] | None = None) -> None:
    """Assert that the scheduler's processing set on each worker equals what that worker
    runs (``running``: worker -> ids), and, with ``held``, that every result it places on a
    worker is one that worker holds. A task processing on a worker that does not run it
    would never finish: the graph would hang."""
    procs = processing_by_worker(state)
    for w in sorted(set(procs) | set(running)):
        mine, theirs = procs.get(w, set()), running.get(w, set())
        if mine != theirs:
            raise ProtocolError(
                f"worker {w}: the scheduler holds {sorted(mine - theirs)[:10]} as processing "
                f"there, which it does not run, and it runs {sorted(theirs - mine)[:10]}, "
                f"which the scheduler does not expect")
    if held is not None:
        for w, ids in results_by_worker(state).items():
            gone = ids - held.get(w, set())
            if gone:
                raise ProtocolError(f"the scheduler places results {sorted(gone)[:10]} on "
                                    f"worker {w}, which does not hold them")


@dataclass
class FakeWorker:
    wid: int
    nthreads: int
    running: list[int] = field(default_factory=list)   # sent, not finished, arrival order
    held: set[int] = field(default_factory=set)        # results this worker holds
    received: list[np.ndarray] = field(default_factory=list)  # every SendTasks batch
    released: list[int] = field(default_factory=list)  # every id named by ReleaseData
    cancelled: list[int] = field(default_factory=list)


@dataclass
class ClientLog:
    """What one graph's client heard."""

    outputs: np.ndarray                                   # global ids asked for
    in_memory: list[KeysInMemory] = field(default_factory=list)
    erred: list[KeysErred] = field(default_factory=list)
    rejected: list[GraphRejected] = field(default_factory=list)
    accepted: list[GraphAccepted] = field(default_factory=list)

    @property
    def reported(self) -> Counter:
        """How often each output id was reported in memory."""
        return Counter(int(i) for m in self.in_memory for i in m.ids.tolist())

    @property
    def done_count(self) -> int:
        return sum(m.done for m in self.in_memory)

    @property
    def done(self) -> bool:
        return self.done_count > 0


class Sim:
    """A ``SchedulerState`` and fake workers; see the module docstring."""

    def __init__(self, config: SchedulerConfig | None = None, *, workers: int = 0,
                 nthreads: int = 1) -> None:
        self.state = SchedulerState(config)
        self.workers: dict[int, FakeWorker] = {}
        self.clients: dict[tuple[str, str], ClientLog] = {}
        self.history: list[tuple[SchedulerEvent, list[Instruction]]] = []
        self.forgotten: list[int] = []  # segments the state said are gone, in order
        self._n = 0
        for _ in range(workers):
            self.add_worker(nthreads=nthreads)

    # --- driving ------------------------------------------------------------------------

    def stim(self, what: str) -> str:
        self._n += 1
        return f"{what}-{self._n}"

    def handle(self, event: SchedulerEvent) -> list[Instruction]:
        """One event in; validate; apply the instructions to the fakes; return them."""
        out = self.state.handle(event)
        self.state.validate()
        self.history.append((event, out))
        for ins in out:
            self._apply(ins)
        check_processing(self.state, {w: set(fw.running) for w, fw in self.workers.items()},
                         {w: fw.held for w, fw in self.workers.items()})
        return out

    def add_worker(self, wid: int | None = None, nthreads: int = 1) -> int:
        if wid is None:
            wid = max(self.workers, default=-1) + 1
        self.workers[wid] = FakeWorker(wid, nthreads)
        self.handle(WorkerAddedEvent(stimulus_id=self.stim("add"), worker=wid,
                                     nthreads=nthreads))
        return wid

    def lose_worker(self, wid: int) -> list[Instruction]:
        """The worker is gone with everything it ran and held."""
        del self.workers[wid]
        return self.handle(WorkerLostEvent(stimulus_id=self.stim("lost"), worker=wid))

    def submit(self, graph: TaskGraph, keys: Iterable[Any], *, client: str = "c",
               graph_id: str = "g") -> list[Instruction]:
        outputs = graph.ids_of(list(keys))
        ev = GraphSubmittedEvent(stimulus_id=self.stim(f"submit-{graph_id}"), client=client,
                                 graph_id=graph_id, graph=graph, outputs=outputs)
        # a resubmitted graph id keeps the log of the graph already there
        self.clients.setdefault((client, graph_id), ClientLog(outputs=np.zeros(0, dtype=np.int64)))
        out = self.handle(ev)
        seg = self.state.graph(client, graph_id)
        if seg is not None:
            self.clients[(client, graph_id)].outputs = seg.outputs.copy()
        return out

    def release(self, client: str = "c", graph_id: str = "g") -> list[Instruction]:
        return self.handle(ClientReleasedKeysEvent(stimulus_id=self.stim("release"),
                                                   client=client, graph_id=graph_id))

    def lose_client(self, client: str) -> list[Instruction]:
        return self.handle(ClientLostEvent(stimulus_id=self.stim("client-lost"),
                                           client=client))

    def finish(self, wid: int, ids: Sequence[int] | np.ndarray | None = None, *,
               n: int | None = None) -> list[Instruction]:
        """Worker ``wid`` reports ``ids`` (default: the first ``n`` it runs, or all) done."""
        w = self.workers[wid]
        if ids is None:
            ids = w.running[: (len(w.running) if n is None else n)]
        ids = [int(i) for i in ids]
        for i in ids:
            if i not in w.running:
                raise ValueError(f"test bug: worker {wid} is not running task {i}")
            w.running.remove(i)
        w.held.update(ids)
        return self.handle(TasksFinishedEvent(stimulus_id=self.stim(f"done-w{wid}"),
                                              worker=wid, ids=np.asarray(ids, dtype=np.int64)))

    def fail(self, wid: int, gid: int, text: str = "boom") -> list[Instruction]:
        self.workers[wid].running.remove(gid)
        return self.handle(TaskErredEvent(stimulus_id=self.stim(f"erred-w{wid}"), worker=wid,
                                          id=gid, error=text.encode(), text=text))

    def data_lost(self, wid: int, gid: int, missing: Sequence[int]) -> list[Instruction]:
        """Worker ``wid`` could not get ``missing`` for ``gid``; it forgets ``gid``."""
        self.workers[wid].running.remove(gid)
        return self.handle(DataLostEvent(stimulus_id=self.stim(f"lost-data-w{wid}"),
                                         worker=wid, id=gid,
                                         missing=np.asarray(missing, dtype=np.int64)))

    def run(self, rng: random.Random | None = None, *, max_batch: int = 64,
            max_steps: int = 100_000, workers: Iterable[int] | None = None) -> int:
        """Finish tasks until no fake worker runs any; return the number of reports.

        Without ``rng``: workers in id order, each reports everything it runs. With ``rng``:
        a random worker reports a random subset (1..``max_batch`` ids, any order)."""
        steps = 0
        only = None if workers is None else set(workers)
        while True:
            busy = [w for w in sorted(self.workers) if self.workers[w].running
                    and (only is None or w in only)]
            if not busy:
                return steps
            steps += 1
            if steps > max_steps:
                raise AssertionError(f"no progress after {max_steps} reports: {self.state!r}")
            if rng is None:
                self.finish(busy[0])
                continue
            w = self.workers[rng.choice(busy)]
            k = rng.randint(1, min(max_batch, len(w.running)))
            self.finish(w.wid, rng.sample(w.running, k))

    # --- look-ups -----------------------------------------------------------------------

    def gid(self, key: Any) -> int:
        g = self.state.find_key(key)
        if g < 0:
            raise KeyError(f"no live task with key {key!r}")
        return g

    def gids(self, keys: Iterable[Any]) -> list[int]:
        return [self.gid(k) for k in keys]

    def task_state(self, key: Any) -> TaskState:
        g = self.gid(key)
        seg = self.state.segment_of(g)
        return TaskState(int(seg.state[g - seg.base]))

    def where(self, key: Any) -> int:
        """The fake worker running ``key`` (-1 if none)."""
        g = self.gid(key)
        return next((w.wid for w in self.workers.values() if g in w.running), -1)

    def holder(self, key: Any) -> int:
        g = self.gid(key)
        return next((w.wid for w in self.workers.values() if g in w.held), -1)

    def running(self) -> dict[int, list[int]]:
        return {w: list(fw.running) for w, fw in self.workers.items()}

    def log(self, client: str = "c", graph_id: str = "g") -> ClientLog:
        return self.clients[(client, graph_id)]

    def sent(self, kind: type[Instruction]) -> list[Any]:
        """Every instruction of type ``kind`` emitted so far, in order."""
        return [i for _, out in self.history for i in out if isinstance(i, kind)]

    def held_anywhere(self) -> set[int]:
        return set().union(*(w.held for w in self.workers.values()))

    # --- applying instructions ------------------------------------------------------------

    def _worker(self, ins: Instruction, wid: int) -> FakeWorker:
        w = self.workers.get(wid)
        if w is None:
            raise ProtocolError(f"{type(ins).__name__} for worker {wid}, which is gone: {ins}")
        return w

    def _apply(self, ins: Instruction) -> None:
        if isinstance(ins, SendTasks):
            w = self._worker(ins, ins.worker)
            ids = [int(i) for i in ins.ids.tolist()]
            again = set(ids) & set(w.running)
            if again or len(set(ids)) != len(ids):
                raise ProtocolError(f"worker {w.wid} got tasks it is already running: {ins}")
            self._check_deps_held(ins)
            w.running.extend(ids)
            w.received.append(ins.ids.copy())
        elif isinstance(ins, CancelTasks):
            w = self._worker(ins, ins.worker)
            for i in ins.ids.tolist():
                if i not in w.running:
                    raise ProtocolError(f"worker {w.wid} told to cancel task {i} it does not "
                                        f"run: {ins}")
                w.running.remove(i)
                w.cancelled.append(i)
        elif isinstance(ins, ReleaseData):
            w = self._worker(ins, ins.worker)
            drop = set(ins.ids.tolist())
            if not drop <= w.held:
                raise ProtocolError(f"worker {w.wid} told to release {sorted(drop - w.held)} "
                                    f"that it does not hold: {ins}")
            w.held -= drop
            w.released.extend(ins.ids.tolist())
        elif isinstance(ins, KeysInMemory):
            for i, wid in zip(ins.ids.tolist(), ins.workers.tolist(), strict=True):
                if i not in self._worker(ins, wid).held:
                    raise ProtocolError(f"client told {i} is on worker {wid}, which does not "
                                        f"hold it: {ins}")
            self._client(ins).in_memory.append(ins)
        elif isinstance(ins, KeysErred):
            self._client(ins).erred.append(ins)
        elif isinstance(ins, GraphRejected):
            self._client(ins).rejected.append(ins)
        elif isinstance(ins, GraphAccepted):
            log = self._client(ins)
            if log.accepted or log.rejected:
                raise ProtocolError(f"a graph answered twice: {ins}")
            if self.state.segments.get(ins.segment) is None or \
                    self.state.segments[ins.segment].base != ins.base:
                raise ProtocolError(f"accepted as a segment the state does not hold: {ins}")
            log.accepted.append(ins)
        elif isinstance(ins, GraphForgotten):
            if ins.segment in self.state.segments:
                raise ProtocolError(f"told a segment is gone that the state still holds: {ins}")
            self.forgotten.append(ins.segment)
        else:
            raise ProtocolError(f"unknown instruction {ins!r}")

    def _client(self, ins: Any) -> ClientLog:
        log = self.clients.get((ins.client, ins.graph_id))
        if log is None:
            raise ProtocolError(f"message for a graph nobody submitted: {ins}")
        return log

    def _check_deps_held(self, ins: SendTasks) -> None:
        seg = self.state.segment_of(int(ins.ids[0]))
        local = ins.ids - seg.base
        if (local < 0).any() or (local >= seg.n).any() or seg.sid != ins.segment:
            raise ProtocolError(f"SendTasks mixes segments or names the wrong one: {ins}")
        prio = seg.priority[local]
        if (np.diff(prio) < 0).any():
            raise ProtocolError(f"SendTasks not in priority order: {ins}")
        deps, _ = csr_gather(seg.dep_ptr, seg.dep_idx, local)
        holders = self.state.holders(deps)
        for d, h in zip(deps.tolist(), holders.tolist(), strict=True):
            if h < 0 or h not in self.workers or d not in self.workers[h].held:
                raise ProtocolError(f"task sent before its dependency {d} is held "
                                    f"(scheduler says worker {h}): {ins}")
