"""The scheduler's and the workers' views converge whatever a dying worker had half done.

Told through ``tests/clustersim.py``: the real scheduler and worker state machines, joined by
channels whose messages are delivered in any order a seeded RNG (or the story) picks, with
workers killed between any two steps; after every step the simulator checks that every
task the scheduler holds as processing on a live worker is queued, running or reported
there (else the graph would hang), that fetches are under way, and that results are where
the scheduler places them. And the scheduler process keeps dispatching when it writes to a
worker whose connection has just died.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import msgpack
import numpy as np
import pytest

from harness.workloads import build
from scheduler.graph.lowgraph import TaskGraph
from scheduler.graph.task import Ref, Task
from scheduler.runtime.comm import CommClosedError
from scheduler.runtime.dispatch import compute_messages
from scheduler.runtime.messages import pack, unpack
from scheduler.runtime.scheduler_server import SchedulerServer, _Worker
from scheduler.state.events import GraphSubmittedEvent, SendTasks, WorkerAddedEvent
from scheduler.state.scheduler import SchedulerState
from scheduler.state.segment import TaskState
from scheduler.wire.encodings import decode_graph, encode_graph
from scheduler.wire.frames import FrameLimits, pack_frames
from tests.clustersim import ClusterSim, Hang, expected_values
from tests.statesim import processing_by_worker


def message_op(frames: list[Any]) -> str:
    return str(msgpack.unpackb(frames[0])["op"])


def nothing(*args: Any) -> int:
    return 0


def test_a_task_cancelled_after_it_ran_and_sent_again_is_reported_again() -> None:
    """The hang of a worker killed mid-graph, step by step. ``c = f(a, b)``: ``a`` is computed
    on worker 0, ``b`` on worker 1; ``c`` goes to worker 0, which fetches ``b``, runs ``c``
    and reports it. Before that report is read, worker 1 dies: ``b`` is lost while ``c``
    still needs it, so the scheduler cancels ``c`` (back to waiting) and computes ``b``
    again on worker 0. The report of ``c`` then arrives stale and is dropped; once ``b`` is
    back, ``c`` is sent to worker 0 again, which holds its result already. Worker 0 must
    report it again: the scheduler waits for nothing else."""
    graph = TaskGraph.from_dict({"a": Task(nothing, 1), "b": Task(nothing, 2),
                                 "c": Task(nothing, Ref("a"), Ref("b"))})
    a, b, c = graph.ids_of(["a", "b", "c"]).tolist()
    sim = ClusterSim(2)
    sim.submit(graph, np.asarray([c]))
    assert processing_by_worker(sim.state) == {0: {a}, 1: {b}}
    for kind, w in [("deliver", 0), ("deliver", 1), ("execute", 0), ("execute", 1),
                    ("report", 0), ("report", 1)]:
        sim.step(kind, w)
    assert processing_by_worker(sim.state) == {0: {c}}
    for kind in ("deliver", "fetch", "execute"):  # c: fetch b, run, report (not read yet)
        sim.step(kind, 0)
    assert c in sim.workers[0].state.data
    sim.kill(1)
    sim.step("report", 1)  # the loss of worker 1 is read before c's report
    seg = sim.state.graph("c", "g")
    assert seg is not None and seg.state[c] == TaskState.waiting
    sim.step("report", 0)  # c's report: stale, dropped
    for kind in ("deliver", "deliver", "execute", "report"):  # cancel c; b again
        sim.step(kind, 0)
    assert processing_by_worker(sim.state) == {0: {c}}
    sim.step("deliver", 0)  # c again, already done here: reported again
    sim.run(random.Random(0))
    assert sim.done
    assert sim.results() == {c: expected_values(graph)[c]}


def test_a_report_of_an_older_assignment_is_not_taken_for_the_current_one() -> None:
    """``x = f(a1, a2, d)`` goes to worker 1 three times, with a release in between, and a
    report of an older assignment must never stand for a newer one.

    1. ``x`` runs on worker 1 (it holds ``a1``, ``a2``); its report waits in the socket.
    2. Worker 2, holder of ``d``, dies: ``x`` is cancelled, ``d`` made again on worker 0 and
       ``x`` sent to worker 1 a second time, behind the cancel.
    3. The first report is read. Taken as current, ``x`` is in memory; ``y = f(x, r1, r2)``
       runs on worker 0 and ``x`` is released: worker 1's queue is now *cancel, compute x,
       release x*.
    4. Worker 0 dies with ``y``: ``x`` is needed again and, once ``d`` is back, sent to worker
       1 a third time.
    5. Worker 1 reads its queue: it answers the second compute from its data (a report),
       then drops ``x``. When that report is read, ``x`` is processing on worker 1 for the
       third time: taken as current, the scheduler places ``x`` on a worker that has just
       dropped it, and anyone reading it there (a peer, a client gathering an output) finds
       nothing. The check after every step fails there ("places results ... which does not
       hold them"); with assignments numbered, the older reports are not taken. Steps the
       scheduler gives no occasion for are skipped; the run then ends, every output right."""
    graph = TaskGraph.from_dict({
        "r1": Task(nothing, 1), "r2": Task(nothing, 2), "a1": Task(nothing, 3),
        "a2": Task(nothing, 4), "d": Task(nothing, 5),
        "z": Task(nothing, Ref("r1"), Ref("r2")),
        "x": Task(nothing, Ref("a1"), Ref("a2"), Ref("d")),
        "y": Task(nothing, Ref("x"), Ref("r1"), Ref("r2"))})
    x, z = graph.ids_of(["x", "z"]).tolist()
    outputs = graph.ids_of(["r1", "r2", "a1", "a2", "z", "y"])
    sim = ClusterSim(3)
    sim.submit(graph, outputs)
    # z reads r1 and r2 first, so they run as a subtree of their own, ahead of y's: the
    # first placement is the same whatever order the scheduler gives siblings
    assert processing_by_worker(sim.state) == {0: set(graph.ids_of(["r1", "r2"]).tolist()),
                                               1: set(graph.ids_of(["a1", "a2"]).tolist()),
                                               2: set(graph.ids_of(["d"]).tolist())}
    for w in (0, 1, 2):
        for kind in ("deliver", "execute", "report"):
            sim.step(kind, w)
    assert processing_by_worker(sim.state) == {0: {z}, 1: {x}}
    for kind in ("deliver", "execute", "report"):  # z done on worker 0
        sim.step(kind, 0)
    assert processing_by_worker(sim.state) == {1: {x}}
    for kind in ("deliver", "fetch", "execute"):  # 1: x runs, its report not read yet
        sim.step(kind, 1)
    sim.kill(2)
    sim.add_worker()
    sim.step("report", 2)  # 2: d lost, x cancelled, d again on worker 0
    for kind in ("deliver", "execute", "report"):
        sim.step(kind, 0)
    assert processing_by_worker(sim.state) == {1: {x}}  # x sent to worker 1 again
    sim.step("report", 1)  # 3: the first report of x
    for kind in ("deliver", "deliver", "fetch", "execute", "report"):  # y on worker 0
        sim.try_step(kind, 0)
    sim.kill(0)  # 4
    fresh = sim.add_worker()
    sim.step("report", 0)
    for _ in range(3):  # 5: worker 1 reads cancel, compute x, release x
        sim.try_step("deliver", 1)
    for kind in ("deliver", "execute", "report"):  # d on the new worker: x sent again
        sim.try_step(kind, fresh)
    sim.try_step("report", 1)  # the answer to the second compute
    sim.run(random.Random(0))
    assert sim.done and sim.untracked() == {}
    expected = expected_values(graph)
    assert sim.results() == {int(o): expected[int(o)] for o in outputs.tolist()}


def test_a_stale_copy_of_an_output_held_elsewhere_is_freed_at_once() -> None:
    """``x = f(a, d)`` runs on worker 1 (it holds ``a``); before its report is read, worker 2
    dies with ``d``: ``x`` is cancelled, and once ``d`` is made again on worker 0 it goes
    there and is done there. The report from worker 1 then arrives stale: ``x`` is held by
    worker 0, and no task on worker 1 reads it. Worker 1 is told to free its copy at once,
    not when the client releases ``x``: once the run is quiet, every worker holds only the
    results the scheduler places there (the audit's ``untracked``)."""
    graph = TaskGraph.from_dict({"r": Task(nothing, 0), "a": Task(nothing, 1),
                                 "d": Task(nothing, 2), "x": Task(nothing, Ref("a"), Ref("d"))})
    r, a, d, x = graph.ids_of(["r", "a", "d", "x"]).tolist()
    sim = ClusterSim(3)
    sim.submit(graph, np.asarray([x]))
    assert processing_by_worker(sim.state) == {0: {r}, 1: {a}, 2: {d}}
    for w in (0, 1, 2):
        for kind in ("deliver", "execute", "report"):
            sim.step(kind, w)
    assert processing_by_worker(sim.state) == {1: {x}}
    for kind in ("deliver", "fetch", "execute"):  # x runs on worker 1, report not read
        sim.step(kind, 1)
    sim.kill(2)
    sim.add_worker()
    sim.step("report", 2)  # d lost: x cancelled, d again on worker 0
    for kind in ("deliver", "deliver", "execute", "report"):  # release r; d
        sim.step(kind, 0)
    assert processing_by_worker(sim.state) == {0: {x}}
    for kind in ("deliver", "fetch", "execute", "report"):
        sim.step(kind, 0)
    assert sim.done and sim.results() == {x: expected_values(graph)[x]}
    sim.step("report", 1)  # the stale report of x from worker 1
    sim.run(random.Random(0))
    assert sim.untracked() == {}


@pytest.mark.parametrize("name", ["reduction", "shuffle", "elementwise"])
@pytest.mark.parametrize("seed", range(4))
def test_random_interleavings_with_two_workers_killed_converge(name: str, seed: int) -> None:
    """A ~300-task workload on 3 workers, messages delivered in a random order (reports
    slow), two workers killed at random moments and replaced: the simulation ends with
    every output correct, the views agreed after every step, and once quiet no worker holds
    a result the scheduler does not place there (stale reports were answered)."""
    _converges(name, 300, seed, kills=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["reduction", "shuffle", "elementwise"])
def test_many_random_interleavings_converge(name: str) -> None:
    """The same with 60 seeds per workload, 1 to 3 kills each, some without replacement."""
    for seed in range(60):
        _converges(name, 300, 100 + seed, kills=1 + seed % 3, replace=seed % 4 != 0)


def _converges(name: str, n: int, seed: int, kills: int, replace: bool = True) -> None:
    w = build(name, n)
    graph = w.lower()
    outputs = graph.ids_of(w.outputs)
    sim = ClusterSim(3)
    sim.submit(graph, outputs)
    sim.run(random.Random(seed), kills=kills, replace=replace)
    assert sim.done, f"seed {seed}: not done with {sum(x.alive for x in sim.workers.values())}"
    assert sim.untracked() == {}, f"seed {seed}"
    expected = expected_values(graph)
    assert sim.results() == {int(o): expected[int(o)] for o in outputs.tolist()}


def test_the_check_catches_a_task_nobody_runs() -> None:
    """The check itself: a task the scheduler sends that the worker then loses track of (the
    compute message dropped on the way) is reported as a hang at once."""
    graph = TaskGraph.from_dict({"a": Task(nothing, 1)})
    sim = ClusterSim(1)
    sim.submit(graph, graph.ids_of(["a"]))
    sim.workers[0].inbox.clear()
    with pytest.raises(Hang, match="neither queued nor running"):
        sim.check()


# --- the scheduler process -------------------------------------------------------------------

class _Recorder:
    """Stands in for a worker's connection: records what is posted, or is closed."""

    def __init__(self, closed: bool) -> None:
        self.closed = closed
        self.posted: list[list[Any]] = []
        self.aborted = False

    def post(self, frames: list[Any]) -> int:
        if self.closed:
            raise CommClosedError("connection to a dead worker is closed")
        self.posted.append(frames)
        return 1

    def post_msg(self, *args: Any, **kwargs: Any) -> int:
        return self.post(pack(*args, **kwargs))

    def abort(self) -> None:
        self.aborted = True


def test_dispatch_goes_on_when_a_workers_connection_has_just_closed() -> None:
    """Two workers; the first one's socket is closed (its process died) but its reader has not
    noticed yet. A dispatch that sends tasks to both still reaches the second worker, and
    the first is removed on the next loop iteration: its tasks go to the live one. (A
    dispatch used to stop at the first closed connection, leaving the tasks meant for later
    workers processing there forever.)"""

    async def story() -> tuple[_Recorder, _Recorder, SchedulerServer]:
        server = SchedulerServer(record=False)
        dead, live = _Recorder(closed=True), _Recorder(closed=False)
        for wid, comm in ((0, dead), (1, live)):
            server.workers[wid] = _Worker(wid, comm, f"tcp://127.0.0.1:{wid + 1}",  # type: ignore[arg-type]
                                          f"w{wid}", 1, 0.0)
            server.state.handle(WorkerAddedEvent(stimulus_id="add", worker=wid, nthreads=1))
        graph = TaskGraph.from_dict({("x", i): Task(nothing, i) for i in range(4)})
        ins = server.state.handle(GraphSubmittedEvent(
            stimulus_id="g", client="c", graph_id="g", graph=graph,
            outputs=np.arange(4, dtype=np.int64)))
        server.functions[0] = b""
        sends = [i for i in ins if isinstance(i, SendTasks)]
        assert {s.worker for s in sends} == {0, 1}
        server._apply(ins)
        await asyncio.sleep(0.01)
        return dead, live, server

    dead, live, server = asyncio.run(story())
    ops = [message_op(frames) for frames in live.posted]
    assert ops[:2] == ["graph-def", "compute"], ops  # its share, sent despite the dead one
    assert 0 not in server.workers and dead.aborted
    procs = processing_by_worker(server.state)
    assert set(procs) == {1} and len(procs[1]) == 4


def test_a_batch_larger_than_a_message_goes_as_several() -> None:
    """70,000 tasks of an explicit group (each with a spec frame of its own) handed to one
    worker at once, as when they all read a result that worker holds: more frames than one
    message may carry (65,536). They go as several compute messages, each within the frame
    limits, together naming every task once. (One message used to be refused by the sender,
    which took the client's connection handler down with it: the client waited for
    nothing.)"""
    n = 70_000
    state = SchedulerState()
    sent_graph = TaskGraph.from_dict({("t", i): Task(nothing, i) for i in range(n)})
    graph = decode_graph(encode_graph(sent_graph, "compact")).graph  # the scheduler's view
    state.handle(GraphSubmittedEvent(stimulus_id="g", client="c", graph_id="g", graph=graph,
                                     outputs=np.arange(n, dtype=np.int64)))
    seg = state.graph("c", "g")
    assert seg is not None
    ids = np.arange(seg.base, seg.base + n, dtype=np.int64)
    messages = list(compute_messages(state, SendTasks(stimulus_id="s", worker=0,
                                                      segment=seg.sid, ids=ids)))
    assert len(messages) > 1
    sent = []
    for frames in messages:
        pack_frames(frames, FrameLimits())  # raises beyond the limits
        sent.append(unpack([bytes(f) for f in frames]).array("ids"))
    assert np.array_equal(np.sort(np.concatenate(sent)), ids)
