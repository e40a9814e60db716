"""The scheduler's and the workers' state machines together, with messages that take time.

Where ``tests/statesim.py`` applies the scheduler's instructions to fake workers at once,
this driver joins one ``SchedulerState`` to real ``WorkerState``s by FIFO channels, one each
way per worker, like the TCP connections of the runtime: a message is delivered when the
driver chooses, so messages cross (a report on its way while a cancel of the same task is
on its way back), batches run while others wait, fetches between workers are answered
late, and a worker can be killed between any two steps (what it had sent still arrives,
then the scheduler learns of its loss, as when a socket's buffered bytes are read before
its end). Choices come from a seeded ``random.Random``, or a story makes them one by one.

After every step ``check()`` asserts that the two views agree:

- every task the scheduler holds as ``processing`` on a live worker is accounted for by that
  worker: a compute message on its way there, queued or running there, or a report of it on
  its way back. A task that is none of these is a hang: nothing will ever finish it;
- every dependency a worker is fetching has a fetch under way (else its tasks wait forever);
- every result the scheduler places on a live worker is in that worker's ``data``;
- ``state.validate()`` (the scheduler's own invariants).

Task values are checked too: task ``t`` computes ``t + sum(its arguments)``, and the outputs
the client is told about are compared with the same graph evaluated directly.
"""

from __future__ import annotations

import functools
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scheduler.graph.lowgraph import TaskGraph
from scheduler.state.events import (
    CancelTasks,
    DataLostEvent,
    GraphSubmittedEvent,
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
from scheduler.state.segment import csr_gather
from scheduler.state.worker import (
    CancelTasksEvent,
    ComputeTasksEvent,
    DataFetchedEvent,
    Execute,
    ExecutedEvent,
    FetchData,
    ReleaseDataEvent,
    ReportDataLost,
    ReportErred,
    ReportFinished,
    WorkerEvent,
    WorkerInstruction,
    WorkerState,
)
from tests.statesim import processing_by_worker, results_by_worker

__all__ = ["ClusterSim", "Hang", "expected_values"]


def _seqs(ins: ReportFinished) -> np.ndarray:
    """The assignment numbers a report carries, as the runtime sends them."""
    return np.asarray(ins.seqs if ins.seqs is not None else [1] * len(ins.ids), dtype=np.int32)


class Hang(AssertionError):
    """The scheduler waits for something no worker will ever do."""


def run_task(tid: int, args: list, index: tuple) -> int:
    return tid + sum(args)


def expected_values(graph: TaskGraph) -> list[int]:
    """Every task's value when ``graph`` is evaluated directly (ids in topological order)."""
    ptr, idx = graph.dependencies()
    values = [0] * graph.n
    for t in range(graph.n):  # lowered graphs list dependencies before their dependents
        values[t] = t + sum(values[d] for d in idx[ptr[t]:ptr[t + 1]].tolist())
    return values


@dataclass
class _Worker:
    wid: int
    state: WorkerState
    inbox: deque[WorkerEvent] = field(default_factory=deque)          # from the scheduler
    outbox: deque[SchedulerEvent] = field(default_factory=deque)      # to the scheduler
    batches: deque[Execute] = field(default_factory=deque)            # running on threads
    fetches: deque[FetchData] = field(default_factory=deque)          # asked of peers
    alive: bool = True


class ClusterSim:
    """See the module docstring. ``submit`` a graph, then ``run(rng)`` or single steps."""

    def __init__(self, n_workers: int = 3, *, nthreads: int = 1,
                 config: SchedulerConfig | None = None, check_every_step: bool = True) -> None:
        self.state = SchedulerState(config)
        self.nthreads = nthreads
        self.workers: dict[int, _Worker] = {}
        self.told: list[KeysInMemory | KeysErred] = []
        self.check_every_step = check_every_step
        self.steps = 0
        self._graph: TaskGraph | None = None
        self._base = 0
        self._n = 0
        for _ in range(n_workers):
            self.add_worker()

    # --- the scheduler side ------------------------------------------------------------------

    def _stim(self, what: str) -> str:
        self._n += 1
        return f"{what}-{self._n}"

    def _to_scheduler(self, event: SchedulerEvent) -> None:
        self._apply_scheduler(self.state.handle(event))

    def _apply_scheduler(self, instructions: list[Any]) -> None:
        for ins in instructions:
            if isinstance(ins, SendTasks):
                w = self.workers.get(ins.worker)
                if w is None or not w.alive:
                    continue  # written to a dead socket: lost, like the runtime's
                w.inbox.append(self._compute_event(ins))
            elif isinstance(ins, CancelTasks):
                self._post(ins.worker, CancelTasksEvent(stimulus_id=ins.stimulus_id,
                                                        ids=ins.ids.copy()))
            elif isinstance(ins, ReleaseData):
                self._post(ins.worker, ReleaseDataEvent(
                    stimulus_id=ins.stimulus_id, ids=ins.ids.copy(),
                    seqs=None if ins.seqs is None else ins.seqs.copy()))
            elif isinstance(ins, KeysInMemory | KeysErred):
                self.told.append(ins)

    def _post(self, wid: int, event: WorkerEvent) -> None:
        w = self.workers.get(wid)
        if w is not None and w.alive:
            w.inbox.append(event)

    def _compute_event(self, ins: SendTasks) -> ComputeTasksEvent:
        """What the runtime's compute message carries: dependencies and their holders as the
        scheduler knows them when it sends."""
        seg = self.state.segments[ins.segment]
        local = ins.ids - seg.base
        deps, counts = csr_gather(seg.dep_ptr, seg.dep_idx, local)
        ptr = np.zeros(len(local) + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        ids = ins.ids.copy()
        return ComputeTasksEvent(
            stimulus_id=ins.stimulus_id, ids=ids, priorities=seg.priority[local].copy(),
            runners=[functools.partial(run_task, int(t) - self._base) for t in ids.tolist()],
            indices=[()] * len(ids), dep_ptr=ptr, dep_ids=deps,
            dep_holders=self.state.holders(deps).astype(np.int64),
            seqs=seg.seq[local].copy())

    def submit(self, graph: TaskGraph, outputs: np.ndarray) -> None:
        """Submit ``graph`` (one graph per simulation); ``outputs`` are ids in it."""
        assert self._graph is None, "one graph per simulation"
        self._graph = graph
        self._to_scheduler(GraphSubmittedEvent(
            stimulus_id=self._stim("graph"), client="c", graph_id="g", graph=graph,
            outputs=np.asarray(outputs, dtype=np.int64)))
        seg = self.state.graph("c", "g")
        assert seg is not None
        self._base = seg.base
        self.check()

    # --- the workers' side -------------------------------------------------------------------

    def add_worker(self) -> int:
        wid = max(self.workers, default=-1) + 1
        self.workers[wid] = _Worker(wid, WorkerState(self.nthreads, max_batch=4, check_moves=True))
        self._to_scheduler(WorkerAddedEvent(stimulus_id=self._stim("add"), worker=wid,
                                            nthreads=self.nthreads))
        return wid

    def kill(self, wid: int) -> None:
        """The process dies now: what it queued for the scheduler still arrives, then its
        loss; everything on its way to it, running on it or fetched by it is gone."""
        w = self.workers[wid]
        assert w.alive
        w.alive = False
        w.inbox.clear()
        w.batches.clear()
        w.fetches.clear()
        w.outbox.append(WorkerLostEvent(stimulus_id=self._stim("lost"), worker=wid))

    def _do(self, w: _Worker, instructions: list[WorkerInstruction]) -> None:
        for ins in instructions:
            if isinstance(ins, Execute):
                w.batches.append(ins)
            elif isinstance(ins, FetchData):
                w.fetches.append(ins)
            elif isinstance(ins, ReportFinished):
                w.outbox.append(TasksFinishedEvent(stimulus_id=self._stim(f"done-w{w.wid}"),
                                                   worker=w.wid,
                                                   ids=np.asarray(ins.ids, dtype=np.int64),
                                                   seqs=_seqs(ins)))
            elif isinstance(ins, ReportErred):
                w.outbox.append(TaskErredEvent(stimulus_id=self._stim("err"), worker=w.wid,
                                               id=ins.id, error=ins.error, text=ins.text))
            elif isinstance(ins, ReportDataLost):
                w.outbox.append(DataLostEvent(stimulus_id=self._stim("lost-data"),
                                              worker=w.wid, id=ins.id,
                                              missing=np.asarray(ins.missing, dtype=np.int64)))

    # --- steps -------------------------------------------------------------------------------

    def actions(self) -> list[tuple[str, int]]:
        """Every step that can be taken now: (kind, worker id)."""
        out = []
        for wid, w in self.workers.items():
            if w.outbox:
                out.append(("report", wid))
            if w.alive and w.inbox:
                out.append(("deliver", wid))
            if w.alive and w.batches:
                out.append(("execute", wid))
            if w.alive and w.fetches:
                out.append(("fetch", wid))
        return out

    def step(self, kind: str, wid: int) -> None:
        w = self.workers[wid]
        if kind == "report":  # the scheduler reads the next message from this worker
            ev = w.outbox.popleft()
            if isinstance(ev, WorkerLostEvent) or self.state.nthreads[wid] > 0:
                self._to_scheduler(ev)
        elif kind == "deliver":
            self._do(w, w.state.handle(w.inbox.popleft()))
        elif kind == "execute":
            ex = w.batches.popleft()
            results = {tid: runner(args, index) for tid, runner, args, index in ex.tasks}
            self._do(w, w.state.handle(ExecutedEvent(stimulus_id=self._stim("executed"),
                                                     results=results)))
        elif kind == "fetch":  # asked and answered in one step; a dead peer answers nothing
            f = w.fetches.popleft()
            peer = self.workers.get(f.peer)
            have = peer.state.data if peer is not None and peer.alive else {}
            values = {i: have[i] for i in f.ids if i in have}
            self._do(w, w.state.handle(DataFetchedEvent(
                stimulus_id=self._stim("fetched"), peer=f.peer, values=values,
                missing=[i for i in f.ids if i not in values])))
        else:
            raise ValueError(f"test bug: unknown step {kind!r}")
        self.steps += 1
        if self.check_every_step:
            self.check()

    def try_step(self, kind: str, wid: int) -> bool:
        """Take the step if it can be taken now (a story written for one order of events
        goes on where the scheduler chose otherwise); whether it was taken."""
        if (kind, wid) not in self.actions():
            return False
        self.step(kind, wid)
        return True

    def run(self, rng: random.Random, *, kills: int = 0, replace: bool = True,
            slow_reports: float = 0.2, max_steps: int = 200_000) -> None:
        """Take random steps until nothing can happen; kill ``kills`` random live workers at
        random moments (each replaced by a new one with ``replace``). Reports to the
        scheduler are read ``slow_reports`` times as often as other steps are taken, so
        that they are often on their way while the scheduler acts. Raises ``Hang`` when the
        graph is not done by then."""
        kill_at = sorted(rng.randrange(1, 4 * max(1, self._graph_size())) for _ in range(kills))
        while True:
            while kill_at and self.steps >= kill_at[0]:
                kill_at.pop(0)
                live = [w for w, x in self.workers.items() if x.alive]
                if live:
                    self.kill(rng.choice(live))
                    if replace:
                        self.add_worker()
                    if self.check_every_step:
                        self.check()
            acts = self.actions()
            if not acts:
                if kill_at and not self.done:
                    self.steps = kill_at[0]
                    continue
                break
            if self.steps > max_steps:
                raise Hang(f"no end after {max_steps} steps")
            weights = [slow_reports if kind == "report" else 1.0 for kind, _ in acts]
            self.step(*rng.choices(acts, weights)[0])
        self.check()
        if not self.done and any(w.alive for w in self.workers.values()):
            raise Hang(f"nothing left to do but the graph is not done: "
                       f"{self._describe_processing()}")

    def _graph_size(self) -> int:
        return self._graph.n if self._graph is not None else 0

    # --- what was told -----------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return any(isinstance(m, KeysInMemory) and m.done for m in self.told)

    def results(self) -> dict[int, int]:
        """Output id (in the graph) -> value, read from the workers the client was last told
        hold them (as the client gathers)."""
        where: dict[int, int] = {}
        for m in self.told:
            if isinstance(m, KeysInMemory):
                where.update(zip(m.ids.tolist(), m.workers.tolist(), strict=True))
        out = {}
        for g, wid in where.items():
            w = self.workers[wid]
            assert w.alive and g in w.state.data, f"output {g} is not on worker {wid}"
            out[g - self._base] = w.state.data[g]
        return out

    # --- the check ---------------------------------------------------------------------------

    def check(self) -> None:
        """Assert the invariants of the module docstring; raise ``Hang`` naming what broke."""
        self.state.validate()
        by_worker = processing_by_worker(self.state)
        for wid, w in self.workers.items():
            if not w.alive:
                continue
            procs = by_worker.get(wid, set())
            if procs:
                accounted = set(w.state.tasks) | w.state.running
                for ev in w.inbox:
                    if isinstance(ev, ComputeTasksEvent):
                        accounted.update(ev.ids.tolist())
                for ev in w.outbox:
                    if isinstance(ev, TasksFinishedEvent):
                        accounted.update(ev.ids.tolist())
                    elif isinstance(ev, TaskErredEvent | DataLostEvent):
                        accounted.add(ev.id)
                stuck = procs - accounted
                if stuck:
                    t = min(stuck)
                    raise Hang(f"step {self.steps}: task {t} is processing on worker {wid} in "
                               f"the scheduler's view, but that worker has it neither queued "
                               f"nor running, nor a report of it on the way; story: "
                               f"{self.state.story(t)}")
            asked = {(f.peer, i) for f in w.fetches for i in f.ids}
            for d, peer in w.state.fetching.items():
                if (peer, d) not in asked:
                    raise Hang(f"step {self.steps}: worker {wid} fetches {d} from {peer} but "
                               f"no fetch is under way")
        for wid, ids in results_by_worker(self.state).items():
            w = self.workers[wid]
            gone = ids - set(w.state.data) if w.alive else set()
            if gone:
                raise AssertionError(f"step {self.steps}: the scheduler places results "
                                     f"{sorted(gone)[:10]} on worker {wid}, which does not "
                                     f"hold them")

    def untracked(self) -> dict[int, list[int]]:
        """Results live workers hold that the scheduler does not place there (the audit's
        ``untracked``; a leak once the simulation is quiet)."""
        tracked = results_by_worker(self.state)
        out = {}
        for wid, w in self.workers.items():
            extra = set(w.state.data) - tracked.get(wid, set()) if w.alive else set()
            if extra:
                out[wid] = sorted(extra)
        return out

    def _describe_processing(self) -> str:
        return "; ".join(f"worker {w}: {sorted(ts)[:10]}"
                         for w, ts in processing_by_worker(self.state).items() if ts)
