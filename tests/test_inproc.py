"""``InProcessCluster``: both state machines in one thread, no sockets, no processes.

It must give exactly the results of ``TaskGraph.execute`` for every workload, record spans
for the client, scheduler and worker roles, never a ``communicate`` span (there is no
network), and raise a failing task's error with the worker's traceback as ``__cause__``.
"""

from __future__ import annotations

import pytest

from harness.workloads import WORKLOADS, Workload, build
from scheduler import Stage
from scheduler.graph.lowgraph import TaskGraph
from scheduler.graph.task import Ref, Task
from scheduler.runtime.client import RemoteTraceback
from scheduler.runtime.inproc import InProcessCluster


def inc(x: int) -> int:
    return x + 1


def fail_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError(f"stagecost inproc test: refusing input {x}")
    return x * 2


def total(parts: list[int]) -> int:
    return sum(parts)


def at_least(name: str, n: int) -> Workload:
    """Workload ``name`` with at least ``n`` real tasks (sizes are requests)."""
    request = n
    while True:
        w = build(name, request)
        if w.n_tasks >= n:
            return w
        request = int(request * 1.05) + 1


def failing_graph(width: int = 50) -> TaskGraph:
    dsk: dict[object, Task] = {}
    for i in range(width):
        dsk[("x", i)] = Task(inc, i)
        dsk[("y", i)] = Task(fail_on_seven, Ref(("x", i)))
    dsk["total"] = Task(total, [Ref(("y", i)) for i in range(width)])
    return TaskGraph.from_dict(dsk)


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_workload_matches_in_process_execution(name: str) -> None:
    w = at_least(name, 10_000)
    graph = w.lower()
    result = InProcessCluster(n_workers=2).run(graph, w.outputs)
    assert result.results == graph.execute(w.outputs)
    assert list(result.results) == list(w.outputs)
    assert result.nbytes > 0
    assert result.t_done_ns >= result.t_submit_ns


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_workload_with_pickle_encoding(name: str) -> None:
    w = build(name, 2_000)
    graph = w.lower()
    result = InProcessCluster(n_workers=2).run(graph, w.outputs, encoding="pickle")
    assert result.results == graph.execute(w.outputs)


@pytest.mark.parametrize("n_workers", [1, 3])
def test_other_worker_counts(n_workers: int) -> None:
    w = build("shuffle", 3_000)
    graph = w.lower()
    cluster = InProcessCluster(n_workers=n_workers)
    assert cluster.run(graph, w.outputs).results == graph.execute(w.outputs)
    roles = {r.role for r in cluster.spans()}
    assert {"client", "scheduler", "worker-0"} <= roles
    assert roles <= {"client", "scheduler"} | {f"worker-{i}" for i in range(n_workers)}


def test_several_graphs_on_one_cluster() -> None:
    cluster = InProcessCluster(n_workers=2)
    for i, name in enumerate(WORKLOADS):
        w = build(name, 2_000)
        graph = w.lower()
        got = cluster.run(graph, w.outputs, graph_id=f"g{i}").results
        assert got == graph.execute(w.outputs)
    # the same graph id and keys again, once the previous run has finished
    w = build("elementwise", 1_000)
    assert cluster.run(w.lower(), w.outputs).results == w.lower().execute(w.outputs)
    assert cluster.run(w.lower(), w.outputs).results == w.lower().execute(w.outputs)


def test_spans_have_every_role_and_never_communicate() -> None:
    cluster = InProcessCluster(n_workers=2)
    # more root tasks than one worker takes at once (SchedulerConfig.inflight_per_thread),
    # so that both workers run some
    w = at_least("elementwise", 20_000)
    cluster.run(w.lower(), w.outputs)
    spans = cluster.spans()
    roles = {r.role for r in spans}
    assert {"client", "scheduler", "worker-0", "worker-1"} <= roles
    stages = {Stage(r.stage) for r in spans}
    assert Stage.communicate not in stages
    assert {Stage.serialize, Stage.update_graph, Stage.schedule, Stage.dispatch,
            Stage.execute} <= stages
    assert all(r.end_ns >= r.start_ns for r in spans)
    for worker in ("worker-0", "worker-1"):
        ran = sum(r.tasks for r in spans if r.role == worker and r.stage == Stage.execute)
        assert ran > 0, f"{worker} ran no task"
    assert cluster.spans() == []  # drained


def test_recording_off_records_nothing() -> None:
    cluster = InProcessCluster(n_workers=2, record=False)
    w = build("reduction", 2_000)
    assert cluster.run(w.lower(), w.outputs).results == w.lower().execute(w.outputs)
    assert cluster.spans() == []


@pytest.mark.parametrize("encoding", ["compact", "pickle"])
def test_a_raising_task_raises_with_the_remote_traceback(encoding: str) -> None:
    cluster = InProcessCluster(n_workers=2)
    with pytest.raises(ValueError, match="refusing input 7") as info:
        cluster.run(failing_graph(), ["total"], encoding=encoding)
    assert type(info.value) is ValueError
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_on_seven" in cause.text
    assert "ValueError: stagecost inproc test: refusing input 7" in cause.text


def test_cluster_stays_usable_after_a_task_error() -> None:
    cluster = InProcessCluster(n_workers=2)
    with pytest.raises(ValueError):
        cluster.run(failing_graph(), ["total"])
    good = TaskGraph.from_dict({"total": Task(total, [1, 2, 3])})
    assert cluster.run(good, ["total"]).results == {"total": 6}
    w = build("elementwise", 1_000)
    assert cluster.run(w.lower(), w.outputs).results == w.lower().execute(w.outputs)


@pytest.mark.parametrize("n_workers", [1, 2])
def test_an_error_while_dependents_wait_to_be_placed_raises_the_error(n_workers: int) -> None:
    # the failing task's siblings finish in the same step and make their dependents ready;
    # the error ends the run before they are placed, and releasing the graph must forget them
    graph = TaskGraph.from_dict({
        **{("src", i): Task(fail_on_seven, 6 + i) for i in range(4)},
        **{("out", i): Task(inc, Ref(("src", i))) for i in range(4)}})
    cluster = InProcessCluster(n_workers=n_workers)
    with pytest.raises(ValueError, match="refusing input 7"):
        cluster.run(graph, [("out", i) for i in range(4)])
    good = TaskGraph.from_dict({"total": Task(total, [1, 2, 3])})
    assert cluster.run(good, ["total"]).results == {"total": 6}


def test_run_with_no_outputs_returns_no_results() -> None:
    graph = TaskGraph.from_dict({"lonely": Task(inc, 1)})
    assert InProcessCluster(n_workers=2).run(graph, []).results == {}


def test_batches_handed_out_before_an_error_still_finish(monkeypatch) -> None:
    """One-task batches leave work handed to the workers when the error surfaces; the run
    lets it finish, so the workers take the next graph (they used to stall)."""
    import scheduler.runtime.inproc as inproc

    monkeypatch.setattr(inproc, "batch_size", lambda n_tasks, elapsed_ns: 1)
    cluster = InProcessCluster(n_workers=2)
    for ws in cluster.workers:
        ws.max_batch = 1
    with pytest.raises(ValueError):
        cluster.run(failing_graph(), ["total"])
    assert [ws.running_batches for ws in cluster.workers] == [0, 0]
    w = build("elementwise", 1_000)
    assert cluster.run(w.lower(), w.outputs).results == w.lower().execute(w.outputs)


@pytest.mark.parametrize(("n_tasks", "elapsed_ns", "expected"), [
    (0, 0, 8),                  # nothing measured yet: the first batch's size
    (256, 2_560_000, 500),      # 10 us per task: 5 ms worth
    (100, 0, 1024),             # too fast to time: the largest batch
    (10, 1_000_000, 50),        # 100 us per task
    (1, 2_000_000_000, 1),      # a 2 s task: one at a time
    (4, 1_000, 1024),           # 0.25 us per task: capped
])
def test_worker_batches_aim_at_a_few_milliseconds(n_tasks: int, elapsed_ns: int,
                                                  expected: int) -> None:
    from scheduler.runtime.worker import BATCH_SECONDS, FIRST_BATCH, MAX_BATCH, batch_size

    assert (BATCH_SECONDS, FIRST_BATCH, MAX_BATCH) == (0.005, 8, 1024)
    assert batch_size(n_tasks, elapsed_ns) == expected


def _nap_then(ms: float, value: int) -> int:
    import time

    time.sleep(ms / 1000)
    if value < 0:
        raise ValueError(f"stagecost test: negative {value}")
    return value


def test_a_slow_batch_hands_over_its_results_as_it_goes() -> None:
    """A batch sized for fast tasks meets 12 tasks of 5 ms (one fails). Every ~20 ms
    (``PARTIAL_REPORT_NS``) what finished is handed to ``report``; the rest comes back at
    the end. Every task is accounted for exactly once, in order, the error included."""
    from scheduler.runtime.worker import PARTIAL_REPORT_NS, run_batch
    from scheduler.stages import SpanRecorder

    assert PARTIAL_REPORT_NS == 20_000_000
    tasks = [(i, lambda args, index: _nap_then(*args), [5, -1 if i == 7 else i], ())
             for i in range(12)]
    parts: list[tuple[dict, list]] = []
    results, errors, elapsed_ns = run_batch(tasks, SpanRecorder("w", enabled=False),
                                             lambda r, e: parts.append((r, e)))
    parts.append((results, errors))
    assert len(parts) >= 2  # >= 60 ms of naps: at least one report before the end
    seen = [tid for r, e in parts for tid in [*r, *(t for t, _, _ in e)]]
    assert sorted(seen) == list(range(12))
    assert [tid for r, _ in parts for tid in r] == [i for i in range(12) if i != 7]
    [(failed, _, text)] = [err for _, e in parts for err in e]
    assert failed == 7 and text.endswith("ValueError: stagecost test: negative -1\n")
    assert elapsed_ns >= 12 * 5_000_000


def test_without_report_a_batch_returns_everything_at_its_end() -> None:
    from scheduler.runtime.worker import run_batch
    from scheduler.stages import SpanRecorder

    tasks = [(i, lambda args, index: _nap_then(*args), [2, i], ()) for i in range(15)]
    results, errors, _ = run_batch(tasks, SpanRecorder("w", enabled=False))
    assert results == {i: i for i in range(15)} and errors == []


def test_a_worker_event_made_from_a_task_message_names_the_scheduler_event() -> None:
    """The task message the scheduler builds for a ``SendTasks`` carries that instruction's
    stimulus id, and the worker's event decoded from it keeps it; a message from a peer that
    sends none gets an id numbered by the worker, never a constant."""
    import numpy as np

    from scheduler.runtime.dispatch import GraphCatalog, compute_messages, graph_def_message
    from scheduler.runtime.messages import unpack
    from scheduler.runtime.worker import WorkerServer
    from scheduler.state.events import GraphSubmittedEvent, SendTasks, WorkerAddedEvent
    from scheduler.state.scheduler import SchedulerState
    from scheduler.wire.encodings import decode_graph, encode_graph

    graph = TaskGraph.from_dict({("a", i): Task(inc, i) for i in range(3)})
    wire = decode_graph([bytes(f) for f in encode_graph(graph, "compact")])
    state = SchedulerState()
    state.handle(WorkerAddedEvent(stimulus_id="add-0", worker=0, nthreads=1))
    out = state.handle(GraphSubmittedEvent(stimulus_id="graph-7", client="c", graph_id="g",
                                           graph=wire.graph, outputs=np.arange(3)))
    [send] = [i for i in out if isinstance(i, SendTasks)]
    assert send.stimulus_id == "graph-7"
    catalog = GraphCatalog()
    catalog.define(unpack(graph_def_message(state.segments[send.segment], wire.functions)))
    [msg] = [unpack(m) for m in compute_messages(state, send)]
    assert msg.fields["stim"] == "graph-7"
    worker = WorkerServer("tcp://127.0.0.1:1", name="w-test")
    event = catalog.compute_event(msg, worker.stimulus_of(msg))
    assert event.stimulus_id == "graph-7"
    del msg.fields["stim"]
    first, second = worker.stimulus_of(msg), worker.stimulus_of(msg)
    assert first.startswith("w-test-compute-") and first != second
