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
