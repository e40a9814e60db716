"""The reference system in one thread: both state machines, no sockets, no processes.

The graph still goes through the real encoding and decoding, task batches through the real
dispatch encoding, and tasks run in this thread, batch by batch. What is left out is only the
network and the processes, so comparing this with the TCP cluster isolates their cost.

Spans use the same stages and roles as the cluster (``client``, ``scheduler``,
``worker-N``); ``communicate`` does not exist here.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..graph.keys import Key
from ..stages import SpanRecorder, SpanRow, Stage
from ..state.events import (
    ClientReleasedKeysEvent,
    GraphRejected,
    GraphSubmittedEvent,
    Instruction,
    KeysErred,
    KeysInMemory,
    TaskErredEvent,
    TasksFinishedEvent,
    WorkerAddedEvent,
)
from ..state.routing import route
from ..state.scheduler import SchedulerConfig, SchedulerState
from ..state.worker import (
    CancelTasksEvent,
    ComputeTasksEvent,
    DataFetchedEvent,
    Execute,
    ExecutedEvent,
    FetchData,
    ReleaseDataEvent,
    ReportErred,
    ReportFinished,
    WorkerInstruction,
    WorkerState,
)
from ..wire.encodings import decode_graph, encode_graph
from ..wire.frames import pack_frames
from .clocks import now_ns
from .dispatch import GraphCatalog, compute_messages, graph_def_message
from .messages import unpack
from .worker import FIRST_BATCH, batch_size, run_batch

__all__ = ["InProcessCluster", "InprocResult"]


@dataclass
class InprocResult:
    results: dict[Key, Any]
    t_submit_ns: int
    t_done_ns: int
    nbytes: int


class InProcessCluster:
    """``InProcessCluster(n_workers).run(graph, outputs)`` -> results and spans."""

    def __init__(self, n_workers: int = 2, nthreads: int = 1, *, record: bool = True,
                 config: SchedulerConfig | None = None) -> None:
        self.state = SchedulerState(config)
        self.client_rec = SpanRecorder("client", enabled=record)
        self.sched_rec = SpanRecorder("scheduler", enabled=record)
        self.workers = [WorkerState(nthreads, max_batch=FIRST_BATCH) for _ in range(n_workers)]
        self.catalogs = [GraphCatalog() for _ in range(n_workers)]
        self.worker_recs = [SpanRecorder(f"worker-{i}", enabled=record)
                            for i in range(n_workers)]
        self._introduced: list[set[int]] = [set() for _ in range(n_workers)]
        self._functions: dict[int, bytes] = {}
        self._jobs: deque[tuple[int, list[WorkerInstruction]]] = deque()
        self._stims = itertools.count()  # numbers the stimulus ids of workers' own events
        for i in range(n_workers):
            self.state.handle(WorkerAddedEvent(stimulus_id=f"add-{i}", worker=i,
                                               nthreads=nthreads))

    def spans(self) -> list[SpanRow]:
        rows = self.client_rec.drain() + self.sched_rec.drain()
        for r in self.worker_recs:
            rows += r.drain()
        return rows

    def run(self, graph: Any, outputs: list[Key] | None = None, encoding: str = "compact",
            graph_id: str = "g", output_layers: list[str] | None = None) -> InprocResult:
        """Run ``graph`` (a ``TaskGraph``, or a ``LayerGraph`` with ``encoding="layers"`` and
        ``output_layers``); return the outputs' values and timings."""
        t_submit = now_ns()
        if encoding == "layers":
            from ..wire.layers import output_keys

            if output_layers is None:
                raise ValueError("the layers encoding needs output_layers")
            outputs = output_keys(graph, output_layers)
            out_ids = None
        else:
            assert outputs is not None
            out_ids = graph.ids_of(outputs)
        with self.client_rec.span(Stage.serialize, tasks=graph.n_tasks if out_ids is None
                                  else graph.n, messages=1) as sp:
            frames = encode_graph(graph, encoding, outputs=output_layers)
            nbytes = sum(len(f) for f in frames)
            sp.nbytes = nbytes
        with self.sched_rec.span(Stage.update_graph, tasks=0, nbytes=nbytes, messages=1) as us:
            wire = decode_graph(frames)
            us.tasks = wire.graph.n
            if out_ids is None:
                assert wire.outputs is not None
                out_ids = wire.outputs
            ins = self.state.handle(GraphSubmittedEvent(
                stimulus_id=graph_id, client="inproc", graph_id=graph_id, graph=wire.graph,
                outputs=out_ids), schedule=False)
        seg = self.state.graph("inproc", graph_id)
        if seg is not None:
            self._functions[seg.sid] = wire.functions
        try:
            results = self._drive(ins, seg, outputs, out_ids)
        finally:
            # release whatever happened (an error must not leave the graph's keys live), then
            # let the batches already handed to workers finish as a real worker would: a
            # worker whose batch never ends would think its thread busy for ever
            self._apply(self.state.handle(ClientReleasedKeysEvent(
                stimulus_id=f"release-{graph_id}", client="inproc", graph_id=graph_id)))
            while self._jobs:
                self._apply(self._step())
        return InprocResult(results, t_submit, now_ns(), nbytes)

    def _drive(self, ins: list[Instruction], seg: Any, outputs: list[Key],
               out_ids: Any) -> dict[Key, Any]:
        held: dict[int, int] = {}
        done = False
        while True:
            for i in ins:
                if isinstance(i, KeysInMemory):
                    held.update(zip(i.ids.tolist(), i.workers.tolist(), strict=True))
                    done = done or i.done
                elif isinstance(i, KeysErred | GraphRejected):
                    raise _error(i)
            n = self.state.pending_placement
            with self.sched_rec.span(Stage.schedule, tasks=n):
                ins = [*ins, *self.state.schedule()]
            self._apply(ins)
            if done:
                break
            if not self._jobs:
                raise RuntimeError("the in-process run stalled: nothing to run and outputs "
                                   "missing (a bug in the state machines)")
            ins = self._step()
        assert seg is not None
        with self.client_rec.span(Stage.execute, tasks=len(out_ids)):
            results = {}
            for k, t in zip(outputs, out_ids.tolist(), strict=True):
                results[k] = self.workers[held[seg.base + t]].data[seg.base + t]
        return results

    def _apply(self, instructions: list[Instruction]) -> None:
        routed = route(instructions)  # per worker: cancels, task batches, releases
        for w, c in routed.cancels.items():
            self._worker_do(w, self.workers[w].handle(
                CancelTasksEvent(stimulus_id=c.stimulus_id, ids=c.ids)))
        if routed.sends:
            with self.sched_rec.span(Stage.dispatch, tasks=routed.n_sent):
                msgs = []
                for (w, sid), s in routed.sends.items():
                    if sid not in self._introduced[w]:
                        seg = self.state.segments[sid]
                        msgs.append((w, pack_frames(graph_def_message(
                            seg, self._functions.get(sid, b"")))))
                        self._introduced[w].add(sid)
                    msgs.extend((w, pack_frames(m)) for m in compute_messages(self.state, s))
            for w, chunks in msgs:
                self._deliver(w, chunks)
        for w, r in routed.releases.items():
            self._worker_do(w, self.workers[w].handle(
                ReleaseDataEvent(stimulus_id=r.stimulus_id, ids=r.ids, seqs=r.seqs)))

    def _deliver(self, w: int, chunks: list[Any]) -> None:
        from ..wire.frames import FrameReader

        reader = FrameReader()
        for c in chunks:
            reader.feed(bytes(c))
        frames = reader.next_message()
        assert frames is not None
        msg = unpack(frames)
        with self.worker_recs[w].span(Stage.dispatch, messages=1) as sp:
            if msg.op == "graph-def":
                self.catalogs[w].define(msg)
                return
            event: ComputeTasksEvent = self.catalogs[w].compute_event(
                msg, str(msg.fields.get("stim") or f"w{w}-compute-{next(self._stims)}"))
            sp.tasks = len(event.ids)
        self._worker_do(w, self.workers[w].handle(event))

    def _worker_do(self, w: int, instructions: list[WorkerInstruction]) -> None:
        if instructions:
            self._jobs.append((w, instructions))

    def _step(self) -> list[Instruction]:
        """Carry out one worker's pending instructions; return the scheduler's answer."""
        w, instructions = self._jobs.popleft()
        ws = self.workers[w]
        out: list[Instruction] = []
        finished: list[int] = []
        for ins in instructions:
            if isinstance(ins, Execute):
                results, errors, elapsed_ns = run_batch(ins.tasks, self.worker_recs[w])
                self._worker_do(w, ws.handle(ExecutedEvent(
                    stimulus_id=f"w{w}-ran-{next(self._stims)}", results=results,
                    errors=errors, next_batch=batch_size(len(results) + len(errors),
                                                         elapsed_ns))))
            elif isinstance(ins, FetchData):
                peer = self.workers[ins.peer]
                with self.worker_recs[w].span(Stage.execute, tasks=len(ins.ids), messages=1):
                    values = {i: peer.data[i] for i in ins.ids if i in peer.data}
                    missing = [i for i in ins.ids if i not in peer.data]
                self._worker_do(w, ws.handle(DataFetchedEvent(
                    stimulus_id=f"w{w}-fetched-{next(self._stims)}", peer=ins.peer,
                    values=values, missing=missing)))
            elif isinstance(ins, ReportFinished):
                finished.extend(ins.ids)
            elif isinstance(ins, ReportErred):
                out += self._sched(TaskErredEvent(stimulus_id=f"w{w}-erred-{next(self._stims)}", worker=w, id=ins.id,
                                                  error=ins.error, text=ins.text), 1)
        if finished:
            out += self._sched(TasksFinishedEvent(stimulus_id=f"w{w}-done-{next(self._stims)}", worker=w,
                                                  ids=np.asarray(finished, dtype=np.int64)),
                               len(finished))
        return out

    def _sched(self, event: Any, tasks: int) -> list[Instruction]:
        with self.sched_rec.span(Stage.execute, tasks=tasks, messages=1):
            return self.state.handle(event, schedule=False)


def _error(ins: KeysErred | GraphRejected) -> BaseException:
    from ..graph.errors import GraphError
    from .client import remote_error

    if isinstance(ins, GraphRejected):
        return GraphError(f"the scheduler rejected the graph: {ins.reason}")
    return remote_error(ins.key, ins.error, ins.text)
