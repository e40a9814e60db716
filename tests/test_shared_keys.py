"""Keys shared by several graphs and clients, told through the state machine's driver
(``tests/statesim.py``: every event is validated, every instruction checked against the fake
workers). The rule is Dask's: a key already known is reused, never computed twice while it is
wanted, reported to every client that asked for it, and released once no client wants it.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from harness.workloads import build
from scheduler.graph.lowgraph import TaskGraph
from scheduler.graph.task import Ref, Task
from scheduler.state.events import GraphForgotten, ReleaseData, SendTasks, TasksFinishedEvent
from scheduler.state.segment import TaskState
from tests.statesim import Sim
from tests.test_scheduler_state import assert_empty

S = TaskState


def inc(x: int) -> int:
    return x + 1


def graph(dsk: dict, external: tuple = ()) -> TaskGraph:
    return TaskGraph.from_dict(dsk, external=list(external))


def sent_count(sim: Sim) -> Counter:
    return Counter(int(i) for ins in sim.sent(SendTasks) for i in ins.ids.tolist())


def test_a_client_releasing_a_key_another_still_wants_keeps_it_running() -> None:
    """Clients ``c`` and ``d`` both ask for ``b = inc(a)``. ``c`` releases its graph while
    ``a`` runs: nothing is cancelled, ``d`` hears ``b``, and ``b`` is freed only when ``d``
    releases it too."""
    dsk = {"a": Task(inc, 1), "b": Task(inc, Ref("a"))}
    sim = Sim(workers=1)
    sim.submit(graph(dsk), ["b"], graph_id="g")
    sim.submit(graph(dsk), ["b"], client="d", graph_id="g")
    out = sim.release("c", "g")
    assert out == [] and sim.task_state("a") == S.processing
    sim.run()
    assert set(sim.log("d", "g").reported) == {sim.gid("b")} and sim.log("d", "g").done
    assert sim.log("c", "g").reported == Counter()
    assert sim.held_anywhere() == {sim.gid("b")}
    assert all(c == 1 for c in sent_count(sim).values())
    b = sim.gid("b")
    out = sim.release("d", "g")
    assert [(type(i), i.ids.tolist()) for i in out if not isinstance(i, GraphForgotten)] == \
        [(ReleaseData, [b])]
    assert len([i for i in out if isinstance(i, GraphForgotten)]) == 2  # both graphs go
    assert_empty(sim)


def test_a_lost_client_leaves_the_shared_keys_to_the_other() -> None:
    """``ann`` and ``bob`` run the same 500-task reduction; ``ann`` disconnects halfway.
    No task is cancelled that ``bob`` still needs, no task runs twice, ``bob`` hears every
    output once, and when ``bob`` releases, the state is empty."""
    wl = build("reduction", 500)
    sim = Sim(workers=2, nthreads=2)
    sim.submit(wl.lower(), wl.outputs, client="ann")
    sim.submit(wl.lower(), wl.outputs, client="bob")
    rng = random.Random(3)
    for _ in range(8):
        busy = [w for w, r in sim.running().items() if r]
        w = rng.choice(busy)
        sim.finish(w, rng.sample(sim.running()[w], min(7, len(sim.running()[w]))))
    sim.lose_client("ann")
    sim.run(rng)
    log = sim.log("bob", "g")
    assert log.reported == Counter(dict.fromkeys(log.outputs.tolist(), 1)) and log.done
    assert max(sent_count(sim).values()) == 1
    sim.release("bob", "g")
    assert_empty(sim)


def test_a_shared_task_that_fails_fails_every_graph_that_wants_it() -> None:
    """``x`` is defined by ``c``'s graph and shared by ``d``'s, which asks for ``x`` and
    ``y = inc(x)``. ``x`` raises: both clients hear it; a third graph asking for ``x`` later
    hears it at once."""
    sim = Sim(workers=1)
    sim.submit(graph({"x": Task(inc, 1)}), ["x"], graph_id="g")
    sim.submit(graph({"x": Task(inc, 1), "y": Task(inc, Ref("x"))}), ["x", "y"],
               client="d", graph_id="g")
    x = sim.gid("x")
    sim.fail(0, x)
    assert [e.ids.tolist() for e in sim.log("c", "g").erred] == [[x]]
    assert {i for e in sim.log("d", "g").erred for i in e.ids.tolist()} == {x, sim.gid("y")}
    sim.submit(graph({"x": Task(inc, 1)}), ["x"], client="e", graph_id="g")
    assert [e.ids.tolist() for e in sim.log("e", "g").erred] == [[x]]
    for client in "cde":
        sim.release(client, "g")
    assert_empty(sim)


def test_a_lost_worker_holding_a_shared_output_is_recomputed_for_both() -> None:
    """``c`` and ``d`` both want ``a``; its worker dies after it finished: it runs again and
    both hear of it again (they were told it was there, now it is elsewhere)."""
    sim = Sim(workers=2)
    sim.submit(graph({"a": Task(inc, 1)}), ["a"], graph_id="g")
    sim.submit(graph({"a": Task(inc, 1)}), ["a"], client="d", graph_id="g")
    w = sim.where("a")
    sim.finish(w)
    sim.lose_worker(w)
    sim.run()
    a = sim.gid("a")
    assert sim.log("c", "g").reported == Counter({a: 2})
    assert sim.log("d", "g").reported == Counter({a: 2})
    sim.release("c", "g")
    sim.release("d", "g")
    assert_empty(sim)


def test_many_clients_with_overlapping_and_disjoint_graphs_in_any_order() -> None:
    """Six clients submit reference workloads at random moments: three share the same
    elementwise graph, two the same reduction, one runs a chain of its own. Workers report
    in random batches; one client releases early, one is lost mid-run. No task runs twice
    unless its result had been freed in between, every remaining client hears each of its outputs and ``done``, and once all release, the
    state is empty and the workers hold nothing."""
    rng = random.Random(7)
    plan = [("elementwise", "e1"), ("elementwise", "e2"), ("reduction", "r1"),
            ("chain", "c1"), ("elementwise", "e3"), ("reduction", "r2")]
    built = {name: build(name, 1000) for name in {n for n, _ in plan}}
    sim = Sim(workers=3, nthreads=2)
    submitted: list[str] = []
    for name, client in plan:
        wl = built[name]
        sim.submit(wl.lower(), wl.outputs, client=client)
        submitted.append(client)
        for _ in range(rng.randint(1, 20)):
            busy = [w for w, r in sim.running().items() if r]
            if not busy:
                break
            w = rng.choice(busy)
            sim.finish(w, rng.sample(sim.running()[w], rng.randint(1, len(sim.running()[w]))))
        if client == "r1":
            sim.release("e1")
        if client == "c1":
            sim.lose_client("e2")
    sim.run(rng, max_batch=200)
    # a task runs again only after its result was freed (nobody wanted or needed it), never
    # while it was running or held (the reduction reads the elementwise graph's sources)
    cancelled = Counter(i for w in sim.workers.values() for i in w.cancelled)
    freed: Counter = Counter()
    for _stim, base, local, frm, to in sim.state.moves():
        if to == S.released:
            freed.update((local[frm == S.memory] + base).tolist())
    for gid, n in sent_count(sim).items():
        assert n <= 1 + freed[gid] + cancelled[gid], (gid, n)
    for client in ("r1", "c1", "e3", "r2"):
        log = sim.log(client)
        assert set(log.reported) == set(log.outputs.tolist()), client
        assert log.done and not log.erred and not log.rejected, client
    held = sim.held_anywhere()
    assert held == set().union(*(set(sim.log(c).outputs.tolist())
                                 for c in ("r1", "c1", "e3", "r2")))
    for client in ("r1", "c1", "e3", "r2"):
        sim.release(client)
    assert_empty(sim)
    assert not np.any([w.running for w in sim.workers.values()])


def test_a_released_graph_stops_the_work_only_it_wanted() -> None:
    """``ann`` runs the elementwise workload, ``bob`` the reduction, which reads the same
    source layer. ``ann`` releases halfway: her running tasks that ``bob`` does not need are
    cancelled and none of them is sent again, while the sources ``bob`` reads keep running.
    ``bob`` gets every output, and then the state is empty."""
    ew, red = build("elementwise", 2000), build("reduction", 2000)
    sim = Sim(workers=2, nthreads=2)
    sim.submit(ew.lower(), ew.outputs, client="ann")
    sim.submit(red.lower(), red.outputs, client="bob")
    ann = sim.state.graph("ann", "g")
    assert ann is not None
    rng = random.Random(5)
    for _ in range(6):
        busy = [w for w, r in sim.running().items() if r]
        w = rng.choice(busy)
        sim.finish(w, rng.sample(sim.running()[w], min(50, len(sim.running()[w]))))
    bob = sim.state.graph("bob", "g")
    assert bob is not None
    bob_reads = set(bob.dep_idx[(bob.dep_idx >= ann.base)
                                & (bob.dep_idx < ann.base + ann.n)].tolist())
    running_before = {i for r in sim.running().values() for i in r}
    sent_before = len(sim.sent(SendTasks))
    out = sim.release("ann")
    cancelled = {int(i) for ins in out if type(ins).__name__ == "CancelTasks"
                 for i in ins.ids.tolist()}
    ann_only = {i for i in running_before if ann.base <= i < ann.base + ann.n} - bob_reads
    assert cancelled == ann_only and ann_only
    sim.run(rng)
    later = {int(i) for ins in sim.sent(SendTasks)[sent_before:] for i in ins.ids.tolist()}
    assert not later & (set(range(ann.base, ann.base + ann.n)) - bob_reads)
    log = sim.log("bob")
    assert set(log.reported) == set(log.outputs.tolist()) and log.done
    sim.release("bob")
    assert_empty(sim)


def test_a_key_shared_but_unused_still_names_a_live_task() -> None:
    """Graph 2 defines ``x`` (shared with graph 1) without reading or asking for it. Graph 1
    is released first; a third graph reading ``x`` as an existing result still finds a
    task for it (made again: its result had been freed), and everything is freed at the end."""
    sim = Sim(workers=1)
    sim.submit(graph({"x": Task(inc, 1)}), ["x"], graph_id="g1")
    sim.run()
    sim.submit(graph({"x": Task(inc, 1), "y": Task(inc, 5)}), ["y"], graph_id="g2")
    sim.release("c", "g1")
    sim.submit(graph({"z": Task(inc, Ref("x"))}, external=("x",)), ["z"], graph_id="g3")
    sim.run()
    assert sim.log("c", "g3").done and sim.log("c", "g2").done
    for g in ("g2", "g3"):
        sim.release("c", g)
    assert_empty(sim)


def _closure(deps: list[list[int]], outs: list[int]) -> set[int]:
    todo, seen = list(outs), set()
    while todo:
        t = todo.pop()
        if t not in seen:
            seen.add(t)
            todo.extend(deps[t])
    return seen


@pytest.mark.parametrize("seed", range(25))
def test_random_stories_of_clients_sharing_keys(seed: int) -> None:
    """Clients submit graphs cut from one DAG of 40 keys (so they overlap a lot) while
    workers report, tasks fail, workers die and clients release or vanish, in a random
    order. Every step keeps the state's invariants (``Sim`` validates each event and checks
    each instruction); every graph still held hears ``done`` or an error; once all are
    released, the state is empty and no worker holds anything."""
    rng = random.Random(seed)
    n = 40
    deps = [rng.sample(range(i), min(i, rng.randint(0, 3))) for i in range(n)]
    sim = Sim(workers=2, nthreads=2)
    live: list[tuple[str, str]] = []
    failed: set[int] = set()
    for step in range(60):
        roll = rng.random()
        busy = [w for w, r in sim.running().items() if r]
        if roll < 0.3 or not busy:
            outs = rng.sample(range(n), rng.randint(1, 4))
            keys = _closure(deps, outs)
            dsk = {f"k{t}": Task(inc, *[Ref(f"k{d}") for d in deps[t]]) for t in keys}
            client = f"c{rng.randint(0, 5)}"
            gid = f"s{step}"
            sim.submit(graph(dsk), [f"k{t}" for t in outs], client=client, graph_id=gid)
            live.append((client, gid))
        elif roll < 0.75:
            w = rng.choice(busy)
            sim.finish(w, rng.sample(sim.running()[w], rng.randint(1, len(sim.running()[w]))))
        elif roll < 0.8:
            w = rng.choice(busy)
            t = rng.choice(sim.running()[w])
            failed.add(t)
            sim.fail(w, t)
        elif roll < 0.85:
            sim.lose_worker(rng.choice(sorted(sim.workers)))
            sim.add_worker(nthreads=2)
        elif roll < 0.95 and live:
            client, gid = live.pop(rng.randrange(len(live)))
            sim.release(client, gid)
        elif live:
            client = rng.choice(live)[0]
            live = [(c, g) for c, g in live if c != client]
            sim.lose_client(client)
    sim.run(rng)
    for client, gid in live:
        log = sim.log(client, gid)
        assert log.done or log.erred, (client, gid)
    for client, gid in live:
        sim.release(client, gid)
    assert_empty(sim)


def test_a_stale_copy_of_a_result_held_elsewhere_is_freed_at_once() -> None:
    """Worker 1 holds ``a``; worker 0 reports it finished too (it ran a copy that was
    cancelled too late). No task on worker 0 reads ``a``: the copy is freed at once, not
    kept until ``a`` is."""
    sim = Sim(workers=2)
    sim.submit(graph({"a": Task(inc, 1)}), ["a"])
    a = sim.gid("a")
    w = sim.where("a")
    other = 1 - w
    sim.finish(w)
    sim.workers[other].held.add(a)
    out = sim.handle(TasksFinishedEvent(stimulus_id="late", worker=other,
                                        ids=np.asarray([a], dtype=np.int64)))
    assert [(i.worker, i.ids.tolist()) for i in out if isinstance(i, ReleaseData)] \
        == [(other, [a])]
    assert a not in sim.workers[other].held and sim.state.bookkeeping()["copies"] == 0
    sim.release()
    assert_empty(sim)


def test_a_stale_copy_that_a_task_there_may_read_is_freed_with_the_result() -> None:
    """``b = f(a, d, e)`` runs on worker 1 (it holds ``d`` and ``e``) while worker 0 holds
    ``a``; worker 1 reports ``a`` finished too (a copy it ran). ``b``, sent before, may read
    that copy in place of fetching ``a``: the copy is kept, and freed when ``a`` is (once
    ``b`` is done)."""
    sim = Sim(workers=2)
    sim.submit(graph({"a": Task(inc, 1), "z": Task(inc, 0), "d": Task(inc, 2),
                      "e": Task(inc, 3), "b": Task(sum, [Ref("a"), Ref("d"), Ref("e")])}),
               ["b"])
    a, b = sim.gid("a"), sim.gid("b")
    assert sim.where("a") == sim.where("z") == 0 and sim.where("d") == sim.where("e") == 1
    sim.finish(0)
    sim.finish(1)
    assert sim.where("b") == 1
    sim.workers[1].held.add(a)
    assert sim.handle(TasksFinishedEvent(stimulus_id="late", worker=1,
                                         ids=np.asarray([a], dtype=np.int64))) == []
    assert sim.state.bookkeeping()["copies"] == 1
    out = sim.finish(1, [b])
    assert sorted((i.worker, i.ids.tolist()) for i in out
                  if isinstance(i, ReleaseData) and a in i.ids.tolist()) \
        == [(0, [a]), (1, [a])]
    sim.release()
    assert_empty(sim)


def test_readers_in_another_graph_of_a_result_made_again_go_ready_in_one_batch() -> None:
    """300 tasks of a second graph read ``src`` of the first. Its holder dies before they
    run; when ``src`` is made again, all 300 become ready in one batch (one transition, not
    one per task: with 87,500 readers the per-task way took the scheduler 35 s), and the
    graph completes."""
    sim = Sim(workers=2)
    sim.submit(graph({"src": Task(inc, 1)}), ["src"], graph_id="g1")
    holder = sim.where("src")
    sim.finish(holder)
    readers = {("r", i): Task(inc, Ref("src")) for i in range(300)}
    sim.submit(graph(readers, external=("src",)), list(readers), graph_id="g2")
    sim.lose_worker(holder)
    sim.add_worker()
    where = sim.where("src")
    before = len(sim.state.moves())
    sim.finish(where, [sim.gid("src")])
    batches = [e for e in list(sim.state.moves())[before:] if e[4] == S.ready]
    assert len(batches) == 1 and len(batches[0][2]) == 300
    sim.run()
    assert sim.log("c", "g2").done
