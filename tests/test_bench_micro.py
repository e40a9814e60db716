"""pytest-benchmark micro suite, one group per stage it serves.

CI runs these with ``--benchmark-disable`` (each body runs once), so every benchmark also
asserts on its result. Timings are read from ``pytest --benchmark-enable`` output, never
asserted here. Groups: ``recording`` (span overhead, on vs off: it applies to every stage),
``generate`` (lowering layers), ``update_graph`` (key look-up, as the scheduler resolves
keys), ``execute`` (compiled templates as a worker runs them).
"""

from __future__ import annotations

import pytest

from scheduler.graph.keys import ExplicitKeys, RegularKeys
from scheduler.graph.layers import LayerGraph, blockwise
from scheduler.graph.task import BlockArg, DepList, DepSlot, IndexSlot, Task, compile_spec
from scheduler.stages import SpanRecorder, Stage

SPANS = 1_000


def source(i):
    return i


def inc(x):
    return x + 1


def combine(a, i, rest):
    return a + i + sum(rest)


def record_spans(enabled: bool) -> SpanRecorder:
    rec = SpanRecorder("bench", enabled=enabled)
    for _ in range(SPANS):
        with rec.span(Stage.execute, tasks=1) as s:
            s.nbytes += 8
    return rec


@pytest.mark.benchmark(group="recording")
@pytest.mark.parametrize("enabled", [True, False], ids=["on", "off"])
def test_span_overhead(benchmark, enabled):
    """Cost of ``SPANS`` spans (divide by ``SPANS`` for one ``with rec.span(...)``)."""
    rec = benchmark(record_spans, enabled)
    if enabled:
        rows = rec.drain()
        assert len(rows) == SPANS
        assert all(r.stage == int(Stage.execute) and r.tasks == 1 and r.nbytes == 8
                   for r in rows)
    else:
        assert len(rec) == 0


@pytest.mark.benchmark(group="recording")
def test_record_explicit_times(benchmark):
    def run():
        rec = SpanRecorder("bench")
        for t in range(SPANS):
            rec.record(Stage.communicate, t, t + 1, nbytes=t)
        return rec

    rec = benchmark(run)
    rows = rec.drain()
    assert len(rows) == SPANS and rows[-1].nbytes == SPANS - 1


LOOKUPS = RegularKeys("x", (100, 100, 10))
SAMPLE = [LOOKUPS.key(i) for i in range(0, len(LOOKUPS), 7)]


@pytest.mark.benchmark(group="update_graph")
@pytest.mark.parametrize("kind", ["regular", "explicit"])
def test_key_position(benchmark, kind):
    """Key to position: computed for a regular block, a dict look-up for an explicit one."""
    block = LOOKUPS if kind == "regular" else ExplicitKeys(LOOKUPS.tolist(), validate=False)
    positions = benchmark(lambda: [block.position(k) for k in SAMPLE])
    assert positions == list(range(0, len(LOOKUPS), 7))
    assert block.position(("x", 100, 0, 0)) == -1


def lower_blockwise(n: int):
    lg = LayerGraph([blockwise("x", (n,), source, IndexSlot(0)),
                     blockwise("y", (n,), inc, BlockArg("x"))])
    return lg.lower()


@pytest.mark.benchmark(group="generate")
def test_lower_100k_block_blockwise(benchmark):
    n = 100_000
    g = benchmark(lower_blockwise, n)
    assert len(g) == 2 * n
    assert g.n_edges == n
    assert [len(grp) for grp in g.groups] == [n, n]
    # y_i reads x_i, spot-checked at both ends and in the middle
    for i in (0, n // 2, n - 1):
        tid = g.id_of(("y", i))
        assert tid == n + i
        assert g.groups[1].deps(i).tolist() == [g.id_of(("x", i))]
        assert g.key_of(tid) == ("y", i)


TEMPLATE = Task(combine, DepSlot(0), IndexSlot(0), DepList(1))
RUNS = 10_000


def compile_and_run():
    run = compile_spec(TEMPLATE)
    return [run((i, 1, 2), (i,)) for i in range(RUNS)]


@pytest.mark.benchmark(group="execute")
def test_compile_spec_and_run_template(benchmark):
    out = benchmark(compile_and_run)
    assert out == [2 * i + 3 for i in range(RUNS)]


@pytest.mark.benchmark(group="execute")
def test_run_single_dep_template(benchmark):
    """The specialised ``func(deps[0])`` shape that most fused-away chains have."""
    run = compile_spec(Task(inc, DepSlot(0)))
    out = benchmark(lambda: [run((i,), ()) for i in range(RUNS)])
    assert out == list(range(1, RUNS + 1))


# --- serialize / dispatch / schedule -----------------------------------------------------

def _running_state(n: int = 20_000):
    """A scheduler state with a 2-worker cluster and an elementwise graph handed out."""
    from harness.workloads import build
    from scheduler.state.events import GraphSubmittedEvent, SendTasks, WorkerAddedEvent
    from scheduler.state.scheduler import SchedulerState
    from scheduler.wire.encodings import decode_graph, encode_graph

    w = build("elementwise", n)
    g = w.lower()
    state = SchedulerState()
    state.handle(WorkerAddedEvent(stimulus_id="a", worker=0, nthreads=1),
                 WorkerAddedEvent(stimulus_id="b", worker=1, nthreads=1))
    wire = decode_graph(encode_graph(g, "compact"))
    out = state.handle(GraphSubmittedEvent(stimulus_id="g", client="c", graph_id="g",
                                           graph=wire.graph, outputs=g.ids_of(w.outputs)))
    sends = [i for i in out if isinstance(i, SendTasks)]
    return state, sends


@pytest.mark.benchmark(group="serialize")
def test_encode_compact_graph(benchmark):
    from harness.workloads import build
    from scheduler.wire.encodings import encode_graph

    g = build("elementwise", 100_000).lower()
    frames = benchmark(encode_graph, g, "compact")
    assert sum(len(f) for f in frames) < 40 * g.n


@pytest.mark.benchmark(group="dispatch")
def test_encode_a_task_batch(benchmark):
    """``compute_message`` for one batch the scheduler hands a worker."""
    from scheduler.runtime.dispatch import compute_message
    from scheduler.runtime.messages import unpack

    state, sends = _running_state()
    frames = benchmark(compute_message, state, sends[0])
    msg = unpack(frames)
    assert msg.op == "compute" and len(msg.array("ids")) == len(sends[0].ids)


@pytest.mark.benchmark(group="schedule")
def test_one_finished_task_and_its_transitions(benchmark):
    """One task reported finished: processing -> memory, its dependent waiting -> ready ->
    processing (one batch of transitions each), on a running 20,000-task graph."""
    import numpy as np

    from scheduler.state.events import SendTasks, TasksFinishedEvent

    def setup():
        state, sends = _running_state()
        first = sends[0]
        ev = TasksFinishedEvent(stimulus_id="f", worker=first.worker,
                                ids=np.asarray(first.ids[:1]))
        return (state, ev), {}

    def finish(state, ev):
        return state.handle(ev)

    out = benchmark.pedantic(finish, setup=setup, rounds=20)
    assert any(isinstance(i, SendTasks) for i in out)  # the dependent was handed out
