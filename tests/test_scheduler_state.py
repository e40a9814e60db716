"""Stories of the scheduler's state machine (``scheduler/state/scheduler.py``), told through the
in-memory driver of ``tests/statesim.py``: every event is followed by ``state.validate()`` and
every instruction is checked against what the fake workers hold.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.workloads import build
from scheduler.graph.layers import LayerGraph, blockwise
from scheduler.graph.lowgraph import TaskGraph
from scheduler.graph.task import IndexSlot, Ref, Task
from scheduler.state.events import (
    CancelTasks,
    DataLostEvent,
    KeysInMemory,
    ReleaseData,
    SendTasks,
    TaskErredEvent,
    TasksFinishedEvent,
    WorkerAddedEvent,
    WorkerLostEvent,
)
from scheduler.state.scheduler import InvalidTransition, SchedulerConfig
from scheduler.state.segment import TaskState
from tests.statesim import Sim

NAMES = ["elementwise", "reduction", "shuffle", "chain", "fanout", "random-dag"]
S = TaskState

BUG_ERRED_OCCUPANCY = (
    "bug: SchedulerState._task_erred (scheduler.py:617) subtracts 1 from the worker's "
    "occupancy, then _transition(processing -> erred) (line 619) runs _leave_processing, "
    "which subtracts it again; validate() reports 'occupancy differs from processing tasks'")


# --- task functions -------------------------------------------------------------------------

def inc(x: int) -> int:
    return x + 1


def add(*xs: int) -> int:
    return sum(xs)


def graph(dsk: dict, external: tuple = ()) -> TaskGraph:
    return TaskGraph.from_dict(dsk, external=list(external))


def assert_empty(sim: Sim) -> None:
    """The state forgot every graph: no segments, ids, names, queues, cross references or
    shared outputs, and the fake workers hold and run nothing."""
    state = sim.state
    assert state.n_tasks == 0
    assert state.segments == {}
    assert state.bookkeeping() == dict.fromkeys(state.bookkeeping(), 0)
    assert {"graphs", "bases", "names", "cross", "watch", "copies", "queued"} <= \
        set(state.bookkeeping())
    assert state.pending_placement == 0
    assert all(o == 0 for o in state.occupancy)
    assert sim.held_anywhere() == set()
    assert all(not w.running for w in sim.workers.values())


def sent_ids(sim: Sim, worker: int | None = None) -> list[int]:
    return [int(i) for ins in sim.sent(SendTasks) if worker is None or ins.worker == worker
            for i in ins.ids.tolist()]


# --- every workload, every way ----------------------------------------------------------------

@pytest.mark.parametrize("nworkers", [1, 2, 5])
@pytest.mark.parametrize("name", NAMES)
def test_every_workload_completes_in_any_order(name: str, nworkers: int) -> None:
    """A client submits a ~2000-task workload to 1, 2 or 5 workers with 1-3 threads each. The
    workers report their tasks in random batches and in random order. Every output is
    reported exactly once, the last report (and only it) says ``done``, every task ran exactly
    once, and at the end the workers hold the outputs and nothing else. Once the client
    releases the graph, the state is empty."""
    rng = random.Random(f"{name}/{nworkers}")
    wl = build(name, 2000)
    g = wl.lower()
    sim = Sim()
    for _ in range(nworkers):
        sim.add_worker(nthreads=rng.randint(1, 3))
    sim.submit(g, wl.outputs)
    sim.run(rng, max_batch=rng.choice([20, 100, 500]))
    log = sim.log()
    outputs = set(log.outputs.tolist())
    assert len(outputs) == len(wl.outputs)
    assert log.reported == Counter(dict.fromkeys(outputs, 1))
    assert [m.done for m in log.in_memory] == [False] * (len(log.in_memory) - 1) + [True]
    assert sorted(sent_ids(sim)) == list(range(g.n))
    assert sim.held_anywhere() == outputs
    assert not log.erred and not log.rejected
    sim.release()
    assert_empty(sim)


@st.composite
def small_dags(draw: st.DrawFn) -> tuple[dict, list]:
    """A random DAG of 1..20 tasks as a dict in random key order, and some outputs."""
    n = draw(st.integers(1, 20))
    deps = [draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
            for i in range(n)]
    order = draw(st.permutations(range(n)))
    dsk = {f"t{i}": Task(add, *[Ref(f"t{d}") for d in deps[i]]) for i in order}
    outs = draw(st.lists(st.sampled_from(sorted(dsk)), min_size=1, unique=True))
    return dsk, outs


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(dag=small_dags(), seed=st.integers(0, 2**32 - 1))
def test_random_dags_survive_worker_churn(dag: tuple[dict, list], seed: int) -> None:
    """Small random graphs, random finishing order, and now and then a worker dies (and
    sometimes a new one joins, always when none is left). Whatever happens, every output is
    reported, the last report says ``done``, the outputs are the only results held, and
    releasing the graph empties the state."""
    dsk, outs = dag
    rng = random.Random(seed)
    sim = Sim(workers=rng.randint(1, 3), nthreads=rng.randint(1, 2))
    sim.submit(graph(dsk), outs)
    next_id = 10
    for _ in range(500):
        busy = [w for w, fw in sim.workers.items() if fw.running]
        if rng.random() < 0.08:
            sim.lose_worker(rng.choice(sorted(sim.workers)))
            if not sim.workers or rng.random() < 0.5:
                sim.add_worker(next_id, nthreads=rng.randint(1, 2))
                next_id += 1
            continue
        if not busy:
            break
        w = sim.workers[rng.choice(busy)]
        sim.finish(w.wid, rng.sample(w.running, rng.randint(1, len(w.running))))
    sim.run(rng)
    log = sim.log()
    assert set(log.reported) == set(log.outputs.tolist())
    assert log.in_memory[-1].done
    assert sim.held_anywhere() == set(log.outputs.tolist())
    sim.release()
    assert_empty(sim)


def test_random_dags_survive_worker_churn_with_a_short_queue() -> None:
    """The same churn as above, but workers take at most 2 queued tasks per thread so that
    root-like tasks wait in the scheduler's queue while workers die. No task may be handed
    out twice."""
    for seed in range(100):
        rng = random.Random(seed)
        n = rng.randint(10, 40)
        deps = [rng.sample(range(i), rng.randint(0, min(i, 3))) if i else [] for i in range(n)]
        dsk = {f"k{i}": Task(add, *[Ref(f"k{d}") for d in deps[i]]) for i in range(n)}
        cfg = SchedulerConfig(inflight_per_thread=2, shared_dependents=rng.randint(1, 3))
        sim = Sim(cfg, workers=rng.randint(1, 3))
        sim.submit(graph(dsk), rng.sample(sorted(dsk), rng.randint(1, n)))
        for _ in range(300):
            busy = [w for w, fw in sim.workers.items() if fw.running]
            if rng.random() < 0.1:
                sim.lose_worker(rng.choice(sorted(sim.workers)))
                if not sim.workers or rng.random() < 0.5:
                    sim.add_worker(max([*sim.workers, 10]) + 1)
                continue
            if not busy:
                break
            w = sim.workers[rng.choice(busy)]
            sim.finish(w.wid, rng.sample(w.running, rng.randint(1, len(w.running))))
        sim.run(rng)
        assert set(sim.log().reported) == set(sim.log().outputs.tolist())


def test_queued_task_whose_dependency_is_lost_is_handed_out_once() -> None:
    """Source ``r`` feeds 40 tasks ``s0..s39`` (too many dependents to attract them, so they
    wait in the root queue); ``a0..a39`` are unrelated. Each worker takes 2 tasks at a time.
    Worker 0 computes ``r`` and dies, so the queued ``s`` tasks must wait again for ``r`` to be
    recomputed on worker 1. When ``r`` is back, each ``s`` task is handed out once."""
    dsk = {"r": Task(inc, 0)}
    dsk.update({f"s{i}": Task(add, Ref("r"), i) for i in range(40)})
    dsk.update({f"a{i}": Task(inc, i) for i in range(40)})
    sim = Sim(SchedulerConfig(inflight_per_thread=2), workers=2)
    sim.submit(graph(dsk), [k for k in dsk if k != "r"])
    sim.finish(0, [sim.gid("r")])
    sim.lose_worker(0)
    sim.finish(1, [sim.gid("a1")])
    sim.finish(1, [sim.gid("r")])
    sim.run()
    assert sorted(sim.log().reported.values()) == [1] * 80


def test_readers_of_a_lost_broadcast_result_all_run() -> None:
    """``r`` is read by ``s0..s3`` (broadcast data: they wait in the root queue) and the
    only worker takes one task at a time. It computes ``r``, starts ``s0`` and dies. A new
    worker recomputes ``r``; then every ``s`` task must run."""
    dsk = {"r": Task(inc, 0)}
    dsk.update({f"s{i}": Task(add, Ref("r"), i) for i in range(4)})
    sim = Sim(SchedulerConfig(inflight_per_thread=1, shared_dependents=2), workers=1)
    sim.submit(graph(dsk), [f"s{i}" for i in range(4)])
    sim.finish(0)
    assert sim.where("s0") == 0
    sim.lose_worker(0)
    sim.add_worker(1)
    sim.run()
    assert set(sim.log().reported) == set(sim.gids(f"s{i}" for i in range(4)))


# --- placement ----------------------------------------------------------------------------

def test_task_follows_its_dependency_even_to_a_busier_worker() -> None:
    """Worker 0 alone gets every root (``a``, ``b1``, ``b2``); worker 1 joins with nothing
    queued left, so it stays idle. When ``a`` finishes, ``c = inc(a)`` goes to worker 0
    although worker 1 is idle: data locality beats occupancy."""
    sim = Sim(workers=1)
    sim.submit(graph({"a": Task(inc, 1), "c": Task(inc, Ref("a")), "b1": Task(inc, 2),
                      "b2": Task(inc, 3)}), ["c", "b1", "b2"])
    assert sorted(sim.running()[0]) == sorted(sim.gids(["a", "b1", "b2"]))
    sim.add_worker(1)
    assert sim.running()[1] == []
    out = sim.finish(0, [sim.gid("a")])
    assert [(i.worker, i.ids.tolist()) for i in out if isinstance(i, SendTasks)] == [
        (0, [sim.gid("c")])]


def _two_holders(first: str) -> Sim:
    """x runs on worker 0, y on worker 1; z = add(x, y); fillers f0..f2 queue behind.
    ``first`` finishes first, so that worker picks up filler f0 and is busier when z is
    placed."""
    dsk = {"x": Task(inc, 1), "y": Task(inc, 2), "z": Task(add, Ref("x"), Ref("y"))}
    dsk.update({f"f{i}": Task(inc, i) for i in range(3)})
    sim = Sim(SchedulerConfig(inflight_per_thread=1), workers=2)
    sim.submit(graph(dsk), ["z", "f0", "f1", "f2"])
    assert sim.where("x") == 0 and sim.where("y") == 1
    second = "y" if first == "x" else "x"
    sim.finish(sim.where(first), [sim.gid(first)])
    sim.finish(sim.where(second), [sim.gid(second)])
    return sim


@pytest.mark.parametrize("first, expected", [("x", 1), ("y", 0)])
def test_tie_between_holders_goes_to_the_less_occupied_worker(first: str,
                                                              expected: int) -> None:
    """``z`` needs ``x`` (on worker 0) and ``y`` (on worker 1): one vote each. The worker
    that finished first took a queued filler task and is busier, so ``z`` goes to the other
    one."""
    sim = _two_holders(first)
    assert sim.where("z") == expected


def test_the_worker_holding_most_dependencies_wins() -> None:
    """``m`` needs ``r`` and ``p`` (on worker 1) and ``q`` (on worker 0). When ``m`` becomes
    ready worker 1 is the busier one (it took two queued fillers), but two votes beat one."""
    dsk = {"r": Task(inc, 0), "p": Task(inc, 1), "q": Task(inc, 2),
           "m": Task(add, Ref("r"), Ref("p"), Ref("q"))}
    dsk.update({f"f{i}": Task(inc, i) for i in range(6)})
    sim = Sim(SchedulerConfig(inflight_per_thread=1))
    sim.add_worker(0, nthreads=1)
    sim.add_worker(1, nthreads=2)
    sim.submit(graph(dsk), ["m", *(f"f{i}" for i in range(6))])
    assert sim.running() == {0: sim.gids(["q"]), 1: sim.gids(["r", "p"])}
    sim.finish(1)
    assert len(sim.running()[1]) == 2     # two fillers
    sim.finish(0)
    assert sim.where("m") == 1


@pytest.mark.parametrize("shared_dependents, attracted", [(2, False), (3, True)])
def test_widely_shared_dependency_does_not_attract(shared_dependents: int,
                                                   attracted: bool) -> None:
    """``s`` (on worker 0) is read by ``d0, d1, d2``. With ``shared_dependents=2`` it counts
    as broadcast data: its readers are handed out as root-like tasks, one per worker (each
    takes one task at a time). With ``shared_dependents=3`` they all follow ``s`` to worker
    0."""
    dsk = {"s": Task(inc, 0)}
    dsk.update({f"d{i}": Task(add, Ref("s"), i) for i in range(3)})
    cfg = SchedulerConfig(inflight_per_thread=1, shared_dependents=shared_dependents)
    sim = Sim(cfg, workers=2)
    sim.submit(graph(dsk), ["d0", "d1", "d2"])
    sim.finish(0)
    where = [sim.where(f"d{i}") for i in range(3)]
    if attracted:
        assert where == [0, 0, 0]
    else:
        assert sorted(where) == [-1, 0, 1]   # one each, the third waits in the queue
        assert sim.where("d0") >= 0          # lowest priority first


def test_shared_dependency_does_not_outvote_a_private_one() -> None:
    """``t`` reads broadcast data ``s`` (on worker 0) and private data ``p`` (on worker 1):
    only ``p`` votes, so ``t`` goes to worker 1."""
    dsk = {"s": Task(inc, 0), "p": Task(inc, 1)}
    dsk.update({f"d{i}": Task(add, Ref("s"), i) for i in range(3)})
    dsk["t"] = Task(add, Ref("s"), Ref("p"))
    sim = Sim(SchedulerConfig(inflight_per_thread=1, shared_dependents=2), workers=2)
    sim.submit(graph(dsk), ["t", "d0", "d1", "d2"])
    assert sim.where("s") == 0 and sim.where("p") == 1
    sim.finish(0)
    sim.finish(1)
    assert sim.where("t") == 1


def test_roots_go_out_in_contiguous_priority_runs_and_more_as_tasks_finish() -> None:
    """An elementwise graph of 40 blocks; worker 0 has 1 thread, worker 1 has 2, and each
    takes 3 queued tasks per thread. Worker 1 (most room) gets the first 6 roots in priority
    order, worker 0 the next 3. Finishing a root puts its ``inc`` on the same worker (no new
    root); finishing that frees a slot and exactly one more root arrives, the next in line.
    No worker ever runs more than its share, and over the whole run the roots go out in
    priority order, each once."""
    blocks = 40
    g = TaskGraph.from_dict({**{("x", i): Task(inc, i) for i in range(blocks)},
                             **{("y", i): Task(inc, Ref(("x", i))) for i in range(blocks)}})
    sim = Sim(SchedulerConfig(inflight_per_thread=3))
    sim.add_worker(0, nthreads=1)
    sim.add_worker(1, nthreads=2)
    sim.submit(g, [("y", i) for i in range(blocks)])
    roots = sim.gids([("x", i) for i in range(blocks)])   # priority order: x0, y0, x1, ...
    assert sim.running() == {1: roots[:6], 0: roots[6:9]}
    out = sim.finish(1, [roots[0]])
    assert [(i.worker, i.ids.tolist()) for i in out if isinstance(i, SendTasks)] == [
        (1, [sim.gid(("y", 0))])]
    out = sim.finish(1, [sim.gid(("y", 0))])
    assert [(i.worker, i.ids.tolist()) for i in out if isinstance(i, SendTasks)] == [
        (1, [roots[9]])]
    rng = random.Random(3)
    while any(sim.running().values()):
        w = rng.choice([w for w, r in sim.running().items() if r])
        sim.finish(w, [rng.choice(sim.running()[w])])
        for fw in sim.workers.values():
            assert len(fw.running) <= 3 * fw.nthreads
    root_set = set(roots)
    assert [i for i in sent_ids(sim) if i in root_set] == roots
    assert sorted(sim.log().reported) == sorted(sim.log().outputs.tolist())


# --- releasing data -----------------------------------------------------------------------

def test_intermediate_results_are_released_on_the_worker_that_holds_them() -> None:
    """Two chains ``a0 -> a1 -> a2`` and ``b0 -> b1 -> b2`` run on one worker each. Once
    ``a1`` finishes, nobody needs ``a0`` and worker 0 is told to drop it; the same for ``b0``
    on worker 1. ``a1`` is also an output, so it stays. Outputs are dropped only when the
    client releases the graph, after which the state is empty."""
    dsk = {"a0": Task(inc, 0), "a1": Task(inc, Ref("a0")), "a2": Task(inc, Ref("a1")),
           "b0": Task(inc, 1), "b1": Task(inc, Ref("b0")), "b2": Task(inc, Ref("b1"))}
    sim = Sim(SchedulerConfig(inflight_per_thread=1), workers=2)
    sim.submit(graph(dsk), ["a1", "a2", "b2"])
    assert sim.where("a0") == 0 and sim.where("b0") == 1
    sim.finish(0)
    out = sim.finish(0)   # a1
    assert [(i.worker, i.ids.tolist()) for i in out if isinstance(i, ReleaseData)] == [
        (0, [sim.gid("a0")])]
    sim.finish(1)
    out = sim.finish(1)   # b1: not an output, but b2 still needs it
    assert [(i.worker, i.ids.tolist()) for i in out if isinstance(i, ReleaseData)] == [
        (1, [sim.gid("b0")])]
    out = sim.finish(1)   # b2: now b1 can go
    assert [(i.worker, i.ids.tolist()) for i in out if isinstance(i, ReleaseData)] == [
        (1, [sim.gid("b1")])]
    sim.run()
    assert sim.held_anywhere() == set(sim.gids(["a1", "a2", "b2"]))
    assert sim.task_state("a1") == S.memory
    sim_gids_a, b2 = sim.gids(["a1", "a2"]), sim.gid("b2")
    out = sim.release()
    released = {i.worker: set(i.ids.tolist()) for i in out if isinstance(i, ReleaseData)}
    assert released == {0: set(sim_gids_a), 1: {b2}}
    assert_empty(sim)


def test_releasing_a_running_graph_cancels_and_forgets_it() -> None:
    """The client releases a graph halfway: running tasks are cancelled on their workers,
    held results are dropped, and the state is empty. A report that was already on its way
    for a cancelled task (the worker ran it anyway) changes nothing in the state, and tells
    that worker to free those results: nobody wants them."""
    wl = build("reduction", 200)
    sim = Sim(workers=2, nthreads=2)
    sim.submit(wl.lower(), wl.outputs)
    rng = random.Random(1)
    for _ in range(5):
        busy = [w for w, r in sim.running().items() if r]
        sim.finish(busy[0], rng.sample(sim.running()[busy[0]], 10))
    running = {w: list(r) for w, r in sim.running().items()}
    out = sim.release()
    cancelled = {i.worker: sorted(i.ids.tolist()) for i in out if isinstance(i, CancelTasks)}
    assert cancelled == {w: sorted(r) for w, r in running.items() if r}
    assert_empty(sim)
    late_ids = running[0][:3]
    sim.workers[0].held.update(late_ids)  # the cancel came too late: they ran
    late = TasksFinishedEvent(stimulus_id="late", worker=0,
                              ids=np.asarray(late_ids, dtype=np.int64))
    [rel] = sim.handle(late)
    assert isinstance(rel, ReleaseData) and rel.worker == 0
    assert sorted(rel.ids.tolist()) == sorted(late_ids)
    assert_empty(sim)


# --- worker loss --------------------------------------------------------------------------

def test_tasks_of_a_lost_worker_go_elsewhere() -> None:
    """Ten independent tasks, two workers taking 2 at a time. Worker 1 dies while running
    two: they go back to the front of the queue (they have the lowest priorities left) and
    worker 0 gets them as soon as it has room. Each output is reported once."""
    sim = Sim(SchedulerConfig(inflight_per_thread=2), workers=2)
    dsk = {f"t{i}": Task(inc, i) for i in range(10)}
    sim.submit(graph(dsk), list(dsk))
    assert sim.running() == {0: sim.gids(["t0", "t1"]), 1: sim.gids(["t2", "t3"])}
    sim.finish(0)
    sim.lose_worker(1)
    assert [sim.task_state(k) for k in ("t2", "t3")] == [S.ready, S.ready]
    sim.finish(0)
    assert sim.running() == {0: sim.gids(["t2", "t3"])}
    sim.run()
    assert sim.log().reported == Counter(dict.fromkeys(sim.gids(dsk), 1))
    assert sim.log().done_count == 1


def test_lost_results_are_recomputed_with_their_released_dependencies() -> None:
    """Chain ``a0 -> a1 -> a2`` runs on worker 1, chain ``b0 -> b1`` on worker 0. When worker
    1 dies, ``a1`` is gone (and ``a0`` was already freed) while ``a2`` still needs it. Worker 0
    recomputes ``a0``, then ``a1``, then ``a2``; bookkeeping stays right at every step."""
    dsk = {"b0": Task(inc, 0), "b1": Task(inc, Ref("b0")),
           "a0": Task(inc, 1), "a1": Task(inc, Ref("a0")), "a2": Task(inc, Ref("a1"))}
    sim = Sim(SchedulerConfig(inflight_per_thread=1), workers=2)
    sim.submit(graph(dsk), ["a2", "b1"])
    assert sim.where("b0") == 0 and sim.where("a0") == 1
    sim.finish(1)              # a0
    sim.finish(1)              # a1 -> a0 released
    assert sim.task_state("a0") == S.released
    assert sim.where("a2") == 1
    sim.lose_worker(1)          # worker 0 is busy with b0: a0 waits in the queue
    assert sim.task_state("a0") == S.ready
    assert sim.task_state("a1") == S.waiting and sim.task_state("a2") == S.waiting
    sim.run()
    order = sent_ids(sim, worker=0)
    a = sim.gids(["a0", "a1", "a2"])
    assert [i for i in order if i in a] == a
    assert sim.log().reported == Counter(dict.fromkeys(sim.gids(["a2", "b1"]), 1))
    assert sim.log().done_count == 1


def test_the_finished_count_grows_by_every_completion_recomputations_included() -> None:
    """What clients are told as progress: the segment counts each accepted completion. In
    the story above (``a0`` and ``a1`` are computed twice), 5 tasks finish 7 times; a
    report from the lost worker that arrives late is not a completion."""
    dsk = {"b0": Task(inc, 0), "b1": Task(inc, Ref("b0")),
           "a0": Task(inc, 1), "a1": Task(inc, Ref("a0")), "a2": Task(inc, Ref("a1"))}
    sim = Sim(SchedulerConfig(inflight_per_thread=1), workers=2)
    sim.submit(graph(dsk), ["a2", "b1"])
    (seg,) = sim.state.segments.values()
    assert seg.finished == 0
    sim.finish(1)              # a0
    sim.finish(1)              # a1
    assert seg.finished == 2
    a2 = sim.gid("a2")
    sim.lose_worker(1)
    sim.state.handle(TasksFinishedEvent(stimulus_id="late", worker=1,
                                        ids=np.asarray([a2], dtype=np.int64)))
    assert seg.finished == 2
    sim.run()
    assert seg.finished == 7


def test_lost_outputs_are_reported_again() -> None:
    """Output ``a1`` (made from ``a0``) was reported on worker 0; output ``p`` is still
    running on worker 1. Worker 0 dies: ``a1`` is recomputed on worker 1 (``a0`` first, it
    was freed) and reported again, this time on worker 1; ``done`` comes once, with the last
    output."""
    dsk = {"a0": Task(inc, 0), "a1": Task(inc, Ref("a0")), "p": Task(inc, 5)}
    sim = Sim(SchedulerConfig(inflight_per_thread=1), workers=2)
    sim.submit(graph(dsk), ["a1", "p"])
    assert sim.where("a0") == 0 and sim.where("p") == 1
    sim.finish(0)
    sim.finish(0)
    assert sim.log().reported == Counter({sim.gid("a1"): 1})
    sim.lose_worker(0)
    assert sim.task_state("a1") == S.waiting and sim.task_state("a0") == S.ready
    sim.run()
    log = sim.log()
    assert log.reported == Counter({sim.gid("a1"): 2, sim.gid("p"): 1})
    last_a1 = [m for m in log.in_memory if sim.gid("a1") in m.ids.tolist()][-1]
    assert last_a1.workers.tolist() == [1]
    assert [m.done for m in log.in_memory] == [False] * (len(log.in_memory) - 1) + [True]


def test_losing_every_worker_then_adding_one_completes() -> None:
    """Both workers die halfway through an elementwise graph. Nothing can be sent anywhere;
    the ready tasks wait. A new worker joins and gets them at once, and the graph completes:
    every output is reported (those that were lost, twice), and the last report is done."""
    wl = build("elementwise", 60)
    sim = Sim(workers=2)
    sim.submit(wl.lower(), wl.outputs)
    rng = random.Random(0)
    for _ in range(12):
        w = rng.choice([w for w, r in sim.running().items() if r])
        sim.finish(w, rng.sample(sim.running()[w], min(5, len(sim.running()[w]))))
    before = set(sim.log().reported)
    assert before
    sim.lose_worker(0)
    out = sim.lose_worker(1)
    assert not [i for i in out if isinstance(i, SendTasks)]
    sim.add_worker(7)
    assert [i for i in sim.history[-1][1] if isinstance(i, SendTasks) and i.worker == 7]
    sim.run()
    log = sim.log()
    assert set(log.reported) == set(log.outputs.tolist())
    assert all(log.reported[i] == 2 for i in before)
    assert log.in_memory[-1].done
    sim.release()
    assert_empty(sim)


def test_a_worker_added_later_gets_work() -> None:
    """One worker takes 2 tasks at a time from 20 independent ones; a second worker joins
    and is handed queued tasks in the very step it joins."""
    sim = Sim(SchedulerConfig(inflight_per_thread=2), workers=1)
    dsk = {f"t{i}": Task(inc, i) for i in range(20)}
    sim.submit(graph(dsk), list(dsk))
    sim.finish(0)
    sim.add_worker(1)
    assert len(sim.running()[1]) == 2
    sim.run()
    assert sent_ids(sim, worker=1)
    assert set(sim.log().reported) == set(sim.gids(dsk))


def test_losing_an_unknown_or_already_lost_worker_changes_nothing() -> None:
    """A loss report for a worker id never seen, or for a worker already lost, is a no-op."""
    sim = Sim(workers=2)
    assert sim.handle(WorkerLostEvent(stimulus_id="never", worker=9)) == []
    sim.lose_worker(1)
    assert sim.handle(WorkerLostEvent(stimulus_id="again", worker=1)) == []
    assert sim.state.workers() == [0]


# --- errors -------------------------------------------------------------------------------

def test_a_failed_task_frees_exactly_one_slot() -> None:
    """Worker 0 runs ``a`` and ``c``; ``a`` fails. The worker is running one task now, and
    the scheduler must count one."""
    sim = Sim(workers=1)
    sim.submit(graph({"a": Task(inc, 1), "b": Task(inc, Ref("a")), "c": Task(inc, 2)}),
               ["b", "c"])
    sim.fail(0, sim.gid("a"))
    assert sim.state.occupancy == [1]


def test_an_error_spoils_its_dependents_only() -> None:
    """``a`` fails. Its dependents ``b`` and ``c`` (an output) are erred and never run; the
    client hears one ``KeysErred`` naming ``a``, the error and the lost output ``c``. The
    unrelated branch ``d -> e`` completes and its last report says done. A later graph from
    the same client completes as usual."""
    dsk = {"a": Task(inc, 1), "b": Task(inc, Ref("a")), "c": Task(inc, Ref("b")),
           "d": Task(inc, 2), "e": Task(inc, Ref("d"))}
    sim = Sim(workers=2)
    sim.submit(graph(dsk), ["c", "e"])
    sim.fail(sim.where("a"), sim.gid("a"), "ZeroDivisionError: no")
    assert [sim.task_state(k) for k in "abc"] == [S.erred] * 3
    [err] = sim.log().erred
    assert (err.id, err.key, err.text, err.error) == (sim.gid("a"), "a", "ZeroDivisionError: no",
                                                      b"ZeroDivisionError: no")
    assert err.ids.tolist() == [sim.gid("c")]
    sim.run()
    assert set(sim.log().reported) == {sim.gid("e")}
    assert sim.log().in_memory[-1].done
    assert not set(sent_ids(sim)) & set(sim.gids(["b", "c"]))
    sim.submit(graph({"z": Task(inc, 0)}), ["z"], graph_id="g2")
    sim.run()
    assert sim.log("c", "g2").done
    sim.release()
    sim.release("c", "g2")
    assert_empty(sim)


def test_an_error_spoils_dependents_in_another_clients_graph() -> None:
    """Graph 2 (another client) reads ``x`` of graph 1. Graph 1's ``x`` is in memory, its
    ``y`` fails; graph 2's task reading ``y`` too is erred and that client is told."""
    sim = Sim(workers=1)
    sim.submit(graph({"x": Task(inc, 1), "y": Task(inc, 2)}), ["x", "y"], graph_id="g1")
    sim.finish(0, [sim.gid("x")])
    sim.submit(graph({"z": Task(add, Ref("x"), Ref("y")), "w": Task(inc, Ref("x"))},
                     external=("x", "y")), ["z", "w"], client="d", graph_id="g2")
    sim.fail(0, sim.gid("y"))
    assert [e.ids.tolist() for e in sim.log("d", "g2").erred] == [[sim.gid("z")]]
    assert [e.ids.tolist() for e in sim.log("c", "g1").erred] == [[sim.gid("y")]]
    sim.run()
    assert set(sim.log("d", "g2").reported) == {sim.gid("w")}


def test_two_failures_above_one_output_count_it_once() -> None:
    """``o`` needs ``a`` and ``b``; both fail. ``p`` is unrelated and finishes last: its
    report must say done."""
    dsk = {"a": Task(inc, 1), "b": Task(inc, 2), "o": Task(add, Ref("a"), Ref("b")),
           "p": Task(inc, 3)}
    sim = Sim(workers=1)
    sim.submit(graph(dsk), ["o", "p"])
    sim.fail(0, sim.gid("a"))
    sim.fail(0, sim.gid("b"))
    sim.finish(0)
    assert sim.log().in_memory[-1].done
    seg = sim.state.graph("c", "g")
    assert seg is not None and seg.outputs_left == 0


def test_an_error_report_for_a_task_not_running_there_is_ignored() -> None:
    """A worker reports an error for a task the scheduler has moved away (or never sent it):
    nothing happens."""
    sim = Sim(workers=2, nthreads=1)
    sim.submit(graph({"a": Task(inc, 1)}), ["a"])
    assert sim.where("a") == 0
    ev = TaskErredEvent(stimulus_id="stale", worker=1, id=sim.gid("a"), error=b"", text="")
    assert sim.handle(ev) == []
    ev = TaskErredEvent(stimulus_id="gone", worker=0, id=999, error=b"", text="")
    assert sim.handle(ev) == []
    assert sim.task_state("a") == S.processing


# --- lost data and stale reports ------------------------------------------------------------

def _c_needs_a_and_b() -> Sim:
    dsk = {"a": Task(inc, 1), "b": Task(inc, 2), "c": Task(add, Ref("a"), Ref("b"))}
    sim = Sim(SchedulerConfig(inflight_per_thread=1), workers=2)
    sim.submit(graph(dsk), ["c"])
    sim.finish(0)
    sim.finish(1)
    assert sim.holder("a") == 0 and sim.holder("b") == 1 and sim.where("c") == 0
    return sim


def test_data_lost_sends_the_task_again() -> None:
    """Worker 0 runs ``c`` but cannot fetch ``b`` from worker 1 and gives ``c`` up. The
    scheduler does not lose ``c``: once ``b`` is made again, ``c`` is placed again, and the
    graph completes."""
    sim = _c_needs_a_and_b()
    before = sent_ids(sim).count(sim.gid("c"))
    sim.data_lost(0, sim.gid("c"), [sim.gid("b")])
    sim.run()
    assert sim.log().done
    assert sent_ids(sim).count(sim.gid("c")) == before + 1


def test_data_lost_recomputes_the_missing_result() -> None:
    """As above, but the story the docstring of ``_data_lost`` tells: the missing result is
    gone, so ``b`` is computed again before ``c`` runs."""
    sim = _c_needs_a_and_b()
    sim.data_lost(0, sim.gid("c"), [sim.gid("b")])
    assert sim.task_state("b") != S.memory
    assert sim.gid("b") in sent_ids(sim)[3:]


def test_data_lost_for_a_task_not_running_there_is_ignored() -> None:
    """A late ``DataLostEvent`` for a task that already runs elsewhere changes nothing."""
    sim = _c_needs_a_and_b()
    ev = DataLostEvent(stimulus_id="late", worker=1, id=sim.gid("c"),
                       missing=np.asarray([sim.gid("a")]))
    assert sim.handle(ev) == []
    assert sim.where("c") == 0 and sim.task_state("a") == S.memory


def test_stale_finished_reports_are_ignored() -> None:
    """Task ``t`` ran on worker 1, which died; ``t`` now runs on worker 0. A report from the
    dead worker arriving late, and a report from worker 0 about a task it never got, are
    both ignored; ``t`` completes once, from worker 0."""
    sim = Sim(SchedulerConfig(inflight_per_thread=1), workers=2)
    sim.submit(graph({"s": Task(inc, 0), "t": Task(inc, 1)}), ["s", "t"])
    assert sim.where("t") == 1
    sim.lose_worker(1)
    assert sim.where("t") == -1 and sim.task_state("t") == S.ready
    sim.finish(0)
    assert sim.where("t") == 0
    late = TasksFinishedEvent(stimulus_id="late", worker=1, ids=np.asarray([sim.gid("t")]))
    assert sim.handle(late) == []
    wrong = TasksFinishedEvent(stimulus_id="wrong", worker=0, ids=np.asarray([sim.gid("s")]))
    assert sim.handle(wrong) == []
    assert sim.task_state("t") == S.processing
    sim.run()
    assert sim.log().reported == Counter(dict.fromkeys(sim.gids(["s", "t"]), 1))


# --- several graphs and clients -------------------------------------------------------------

def test_two_clients_two_graphs_at_once() -> None:
    """Two clients submit a reduction and a shuffle at the same time; the workers finish
    tasks of both in random order. Each client hears only about its own outputs, each once,
    with one done."""
    r, s = build("reduction", 300), build("shuffle", 300)
    sim = Sim(workers=3, nthreads=2)
    sim.submit(r.lower(), r.outputs, client="ann", graph_id="r")
    sim.submit(s.lower(), s.outputs, client="bob", graph_id="s")
    sim.run(random.Random(5), max_batch=20)
    for client, gid in [("ann", "r"), ("bob", "s")]:
        log = sim.log(client, gid)
        assert log.reported == Counter(dict.fromkeys(log.outputs.tolist(), 1))
        assert log.done_count == 1
    sim.release("ann", "r")
    sim.release("bob", "s")
    assert_empty(sim)


def _first_then_second(release_first: bool) -> Sim:
    g1 = graph({"x": Task(inc, 1), "y": Task(inc, Ref("x"))})
    g2 = graph({"z": Task(inc, Ref("y"))}, external=("y",))
    sim = Sim(workers=2)
    sim.submit(g1, ["y"], graph_id="g1")
    sim.run()
    sim.submit(g2, ["z"], client="d", graph_id="g2")
    assert sim.where("z") == sim.holder("y")
    sim.run()
    assert sim.log("d", "g2").done
    if release_first:
        sim.release("c", "g1")
        sim.release("d", "g2")
    else:
        sim.release("d", "g2")
        sim.release("c", "g1")
    return sim


def test_second_graph_reads_first_graphs_results() -> None:
    """Client ``d`` builds on ``y``, a result client ``c`` holds: ``z`` runs where ``y`` is.
    Releasing the second graph and then the first empties the state."""
    assert_empty(_first_then_second(release_first=False))


def test_releasing_the_first_graph_before_its_reader_leaves_nothing() -> None:
    """The same two graphs, released in the other order: the first graph must stay while
    the second reads it, and go when the second goes."""
    assert_empty(_first_then_second(release_first=True))


def test_a_graph_can_wait_for_a_result_still_being_computed() -> None:
    """Graph 2 arrives while ``y`` of graph 1 is still running: ``z`` waits for it and runs
    after it."""
    sim = Sim(workers=1)
    sim.submit(graph({"y": Task(inc, 1)}), ["y"], graph_id="g1")
    sim.submit(graph({"z": Task(inc, Ref("y"))}, external=("y",)), ["z"], client="d",
               graph_id="g2")
    assert sim.task_state("z") == S.waiting
    sim.finish(0)
    assert sim.where("z") == 0
    sim.run()
    assert sim.log("d", "g2").done and sim.log("c", "g1").done


def test_a_graph_can_ask_for_existing_results_as_outputs() -> None:
    """Graph 2 asks for ``y`` (held for graph 1) and its own ``w``: ``y`` is reported at
    once with its holder, ``w`` when it is done."""
    sim = Sim(workers=1)
    sim.submit(graph({"y": Task(inc, 1)}), ["y"], graph_id="g1")
    sim.run()
    sim.submit(graph({"w": Task(inc, 5)}, external=("y",)), ["y", "w"], graph_id="g2")
    log = sim.log("c", "g2")
    assert [(m.ids.tolist(), m.workers.tolist(), m.done) for m in log.in_memory] == [
        ([sim.gid("y")], [0], False)]
    sim.run()
    assert log.in_memory[-1].done


def test_a_graph_of_only_existing_results_reports_them() -> None:
    """Graph 2 has no tasks and asks for ``y``, which graph 1 holds: it hears about ``y``."""
    sim = Sim(workers=1)
    sim.submit(graph({"y": Task(inc, 1)}), ["y"], graph_id="g1")
    sim.run()
    sim.submit(TaskGraph([], external=["y"]), ["y"], graph_id="g2")
    assert set(sim.log("c", "g2").reported) == {sim.gid("y")}


def test_a_graph_reading_a_freed_intermediate_is_not_left_hanging() -> None:
    """Graph 1 computed ``x -> y``; ``x`` was freed once ``y`` finished. Graph 2 reads ``x``.
    The scheduler must either recompute ``x`` or reject the graph; it must not hang."""
    sim = Sim(workers=1)
    sim.submit(graph({"x": Task(inc, 1), "y": Task(inc, Ref("x"))}), ["y"], graph_id="g1")
    sim.run()
    assert sim.task_state("x") == S.released
    sim.submit(graph({"z": Task(inc, Ref("x"))}, external=("x",)), ["z"], graph_id="g2")
    sim.run()
    log = sim.log("c", "g2")
    assert log.rejected or log.done


def test_a_key_defined_by_two_live_graphs_is_shared_and_the_first_wins() -> None:
    """Client ``d`` submits a graph defining ``a`` (with another task) and ``b = inc(a)``,
    while client ``c``'s live graph defines ``a``. Dask's rule: the key already known wins.
    ``d``'s graph is accepted, its ``a`` never runs, its ``b`` reads ``c``'s ``a``, and both
    clients hear about ``a``. The same client reusing a graph id is still rejected."""
    sim = Sim(workers=1)
    sim.submit(graph({"a": Task(inc, 1)}), ["a"], graph_id="g1")
    a = sim.gid("a")
    sim.submit(graph({"a": Task(inc, 2), "b": Task(inc, Ref("a"))}), ["a", "b"],
               client="d", graph_id="g1")
    assert not sim.log("d", "g1").rejected
    d_seg = sim.state.graph("d", "g1")
    assert d_seg is not None and sim.gid("a") == a
    sim.submit(graph({"q": Task(inc, 2)}), ["q"], graph_id="g1")
    assert "already submitted" in sim.log("c", "g1").rejected[0].reason
    sim.run()
    assert sorted(sent_ids(sim)) == sorted([a, sim.gid("b")])  # d's own "a" never ran
    assert set(sim.log("c", "g1").reported) == {a}
    assert set(sim.log("d", "g1").reported) == {a, sim.gid("b")}
    assert sim.log("c", "g1").done and sim.log("d", "g1").done
    sim.release("c", "g1")
    assert sim.task_state("a") == S.memory  # d still wants it
    sim.release("d", "g1")
    assert_empty(sim)


def test_a_layer_overlapping_a_live_layer_shares_the_common_blocks() -> None:
    """Graph 1 has block ``("x", 0..3)``, graph 2 block ``("x", 0..9)``: graph 2 runs only
    ``("x", 4..9)`` and gets ``("x", 0)`` from graph 1."""
    sim = Sim(workers=1)
    sim.submit(LayerGraph([blockwise("x", (4,), inc, IndexSlot(0))]).lower(), [("x", 0)],
               graph_id="g1")
    first = set(sent_ids(sim))
    sim.submit(LayerGraph([blockwise("x", (10,), inc, IndexSlot(0))]).lower(),
               [("x", 0), ("x", 5)], graph_id="g2")
    assert not sim.log("c", "g2").rejected
    assert len(set(sent_ids(sim)) - first) == 6
    sim.run()
    assert set(sim.log("c", "g2").reported) == {sim.gid(("x", 0)), sim.gid(("x", 5))}
    assert sim.log("c", "g2").done
    sim.release("c", "g2")
    sim.release("c", "g1")
    assert_empty(sim)


def test_a_layer_overlapping_one_explicit_key_uses_it() -> None:
    """Graph 1 defines the single key ``("x", 5)``; graph 2 a block ``("x", 0..9)`` asking
    for ``("x", 5)``: it is told of graph 1's task, which ran once."""
    sim = Sim(workers=1)
    sim.submit(graph({("x", 5): Task(inc, 1)}), [("x", 5)], graph_id="g1")
    x5 = sim.gid(("x", 5))
    sim.submit(LayerGraph([blockwise("x", (10,), inc, IndexSlot(0))]).lower(), [("x", 5)],
               graph_id="g2")
    sim.run()
    assert set(sim.log("c", "g2").reported) == {x5}
    assert sent_ids(sim).count(x5) == 1


def test_losing_a_client_drops_only_its_graphs() -> None:
    """Clients ``ann`` and ``bob`` each run a graph; ``ann`` disconnects halfway. Her
    running tasks are cancelled and her results dropped; she hears nothing more. Bob's
    graph completes, and when he releases it the state is empty."""
    a, b = build("chain", 200), build("random-dag", 200)
    sim = Sim(workers=2, nthreads=2)
    sim.submit(a.lower(), a.outputs, client="ann", graph_id="g")
    sim.submit(b.lower(), b.outputs, client="bob", graph_id="g")
    rng = random.Random(2)
    for _ in range(10):
        busy = [w for w, r in sim.running().items() if r]
        w = rng.choice(busy)
        sim.finish(w, rng.sample(sim.running()[w], min(5, len(sim.running()[w]))))
    heard = len(sim.log("ann", "g").in_memory)
    sim.lose_client("ann")
    assert sim.state.graph("ann", "g") is None and sim.state.graph("bob", "g") is not None
    ann_ids = set(range(a.n_tasks))
    assert not (sim.held_anywhere() | {i for r in sim.running().values() for i in r}) & ann_ids
    sim.run(rng)
    assert len(sim.log("ann", "g").in_memory) == heard
    log = sim.log("bob", "g")
    assert log.reported == Counter(dict.fromkeys(log.outputs.tolist(), 1))
    sim.release("bob", "g")
    assert_empty(sim)


def test_a_lost_clients_graph_stays_while_another_client_reads_it() -> None:
    """Client ``d``'s graph reads ``y`` of client ``c``'s graph. ``c`` disconnects: ``y``
    stays for ``d``. When ``d`` releases its graph, everything goes."""
    sim = Sim(workers=1)
    sim.submit(graph({"y": Task(inc, 1)}), ["y"], graph_id="g1")
    sim.run()
    sim.submit(graph({"z": Task(inc, Ref("y")), "w": Task(inc, Ref("z"))}, external=("y",)),
               ["w"], client="d", graph_id="g2")
    sim.lose_client("c")
    assert sim.task_state("y") == S.memory
    sim.run()
    assert sim.log("d", "g2").done
    sim.release("d", "g2")
    assert_empty(sim)


# --- errors of the machine itself -------------------------------------------------------------

def test_invalid_transition_names_the_key_and_its_story() -> None:
    """Forcing ``a`` (in memory) back to processing, or ``b`` (waiting) straight to memory,
    is a bug here; the error names the key, its id, both states, the stimulus and the
    transitions that led there."""
    sim = Sim(workers=1)
    sim.submit(graph({"a": Task(inc, 1), "b": Task(add, Ref("a"), Ref("c")),
                      "c": Task(inc, 2)}), ["b"])
    sim.finish(0, [sim.gid("a")])
    seg = sim.state.graph("c", "g")
    assert seg is not None
    with pytest.raises(InvalidTransition) as info:
        sim.state._transition(seg, np.asarray([sim.gid("a") - seg.base]), S.processing)
    msg = str(info.value)
    assert "'a'" in msg and f"id {sim.gid('a')}" in msg
    assert "from memory to processing" in msg
    assert "released -> ready" in msg and "ready -> processing" in msg
    assert "processing -> memory" in msg and "done-w0" in msg
    with pytest.raises(InvalidTransition, match=r"task 'b' .* from waiting to memory"):
        sim.state._transition(seg, np.asarray([sim.gid("b") - seg.base]), S.memory)
    assert sim.state.story(sim.gid("b")) == [f"{sim.history[1][0].stimulus_id}: "
                                             "released -> waiting"]


def test_unknown_events_and_bad_workers_are_refused() -> None:
    """Events the machine does not know, workers announcing no threads and worker ids used
    twice are errors of the caller (the runtime), raised at once."""
    sim = Sim(workers=1)
    with pytest.raises(TypeError, match="unknown event"):
        sim.state.handle(KeysInMemory(stimulus_id="x", client="c", graph_id="g",  # type: ignore[arg-type]
                                      ids=np.zeros(0), workers=np.zeros(0)))
    with pytest.raises(ValueError, match="threads"):
        sim.state.handle(WorkerAddedEvent(stimulus_id="x", worker=1, nthreads=0))
    with pytest.raises(ValueError, match="already in use"):
        sim.state.handle(WorkerAddedEvent(stimulus_id="x", worker=0, nthreads=1))


# --- memory ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_a_released_graph_leaves_no_arrays_behind(name: str) -> None:
    """Two graphs run side by side, the second reading the first's outputs; a worker dies in
    the middle. After both are released (reader first), the state holds no segment, no
    queued or pending tasks, no key names and no cross references."""
    wl = build(name, 300)
    g1 = wl.lower()
    ext = wl.outputs[:3]
    g2 = graph({f"use{i}": Task(inc, Ref(k)) for i, k in enumerate(ext)}, external=tuple(ext))
    sim = Sim(workers=3)
    sim.submit(g1, wl.outputs, graph_id="g1")
    sim.submit(g2, [f"use{i}" for i in range(len(ext))], graph_id="g2")
    rng = random.Random(name)
    for _ in range(3):
        busy = [w for w, r in sim.running().items() if r]
        w = rng.choice(busy)
        sim.finish(w, rng.sample(sim.running()[w], min(30, len(sim.running()[w]))))
    sim.lose_worker(rng.choice(sorted(sim.workers)))
    sim.run(rng)
    assert sim.log("c", "g1").done and sim.log("c", "g2").done
    sim.release("c", "g2")
    sim.release("c", "g1")
    assert_empty(sim)


def test_acceptance_and_forgetting_of_a_graph_are_instructions() -> None:
    """The runtime learns from what ``handle()`` returns that a graph was accepted (its
    segment and ids) and, when its last use is gone, that it was forgotten: it never has to
    read the state back."""
    from scheduler.state.events import GraphAccepted, GraphForgotten

    sim = Sim(workers=1)
    first = sim.submit(TaskGraph.from_dict({"x": Task(inc, 1)}), ["x"], graph_id="one")
    out = sim.submit(TaskGraph.from_dict({"y": Task(inc, 2), "z": Task(inc, Ref("y"))}),
                     ["z"], graph_id="two")
    [acc1] = [i for i in first if isinstance(i, GraphAccepted)]
    [acc] = [i for i in out if isinstance(i, GraphAccepted)]
    assert (acc.client, acc.graph_id, acc.n, acc.gids) == ("c", "two", 2, None)
    assert acc.base == acc1.base + 1 and acc.segment != acc1.segment
    assert sim.state.graph("c", "two").sid == acc.segment
    sim.run()
    gone = [i.segment for i in sim.release("c", "two") if isinstance(i, GraphForgotten)]
    assert gone == [acc.segment] and acc1.segment in sim.state.segments
