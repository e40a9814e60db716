"""The floor backend: the lowered graph's functions in one process, no scheduler.

Its results must be the reference system's (a TCP cluster of 2 workers, shared by the
module) for every built-in workload; its stage table has only the stages it has. Sizes are
small; nothing asserts on wall time.
"""

from __future__ import annotations

import pytest

from harness.backends import make_backend
from harness.backends.base import RunOptions
from harness.backends.floor import FloorBackend, run_graph
from harness.measure import run_row, stage_rows, time_to_first_task
from harness.workloads import WORKLOADS, build
from scheduler import Client
from scheduler.graph.lowgraph import TaskGraph
from scheduler.graph.optimize import cull
from scheduler.graph.task import Ref, Task
from scheduler.stages import SpanRecorder, Stage

SIZE = 2000


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_floor_results_equal_the_reference_systems(name: str, client: Client) -> None:
    w = build(name, SIZE)
    expected = client.run(w.lower(), w.outputs, timeout=120).results
    m = FloorBackend(RunOptions()).run_once(w)
    assert m.extra["results"] == expected
    assert m.tasks_run == cull(w.lower(), w.outputs).n  # culled as the reference culls


@pytest.mark.parametrize("name", ["elementwise", "reduction", "shuffle"])
def test_floor_with_fusion_gives_the_same_results(name: str) -> None:
    w = build(name, SIZE)
    plain = FloorBackend(RunOptions()).run_once(w).extra["results"]
    fused = FloorBackend(RunOptions(fuse=True)).run_once(w).extra["results"]
    assert fused == plain == w.lower().execute(w.outputs)


def test_floor_stage_rows_mark_what_it_does_not_have() -> None:
    backend = make_backend("floor", RunOptions())
    w = build("reduction", SIZE)
    m = backend.run_once(w)
    rows = stage_rows(m, {}, w.n_tasks, backend.applicable)
    by_stage = {r["stage"]: r for r in rows if r["role"] in ("all", "client", "worker-0")}
    for stage in (Stage.serialize, Stage.communicate, Stage.update_graph, Stage.schedule,
                  Stage.dispatch):
        assert by_stage[stage.name]["applicable"] is False
        assert by_stage[stage.name]["seconds"] is None
    assert by_stage["execute"]["role"] == "worker-0"
    assert by_stage["execute"]["seconds"] > 0
    first = time_to_first_task(m)
    assert first is not None and 0 < first <= run_row(m, {})["wall_s"]


def test_floor_with_recording_off_records_nothing_and_still_runs() -> None:
    w = build("elementwise", SIZE)
    m = FloorBackend(RunOptions(record=False)).run_once(w)
    assert m.spans == []
    assert m.extra["results"] == w.lower().execute(w.outputs)


def test_intermediate_values_are_released_and_outputs_kept() -> None:
    # a -> b -> c chain of groups where an intermediate key is also an output
    w = build("chain", 60, length=6)
    g = w.lower()
    outputs = [*w.outputs, ("chain-2", 0)]
    got = run_graph(g, outputs, SpanRecorder("worker-0"))
    assert got == g.execute(outputs)


def test_explicit_group_runs_in_dependency_order() -> None:
    def add(a: int, b: int) -> int:
        return a + b

    dsk = {"c": Task(add, Ref("b"), Ref("a")), "b": Task(add, Ref("a"), 1), "a": 1}
    g = TaskGraph.from_dict(dsk)
    assert run_graph(g, ["c", "b"]) == {"c": 3, "b": 2}


def test_a_graph_with_external_keys_is_refused_with_a_reason() -> None:
    g = TaskGraph.from_dict({"y": Task(abs, Ref("x"))}, external=["x"])
    with pytest.raises(ValueError, match="external keys"):
        run_graph(g, ["y"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_million_task_shuffle_on_the_reference_equals_the_floor(client: Client) -> None:
    """The 1,000,000-task shuffle (944,784 tasks: 104,976 partitions in 4 stages of 18-way
    splits, 7.6 million edges) end to end over TCP on 2 workers gives, partition by partition,
    what the floor gives; and the floor's partitions hold exactly the items the inputs send to
    them. The timeouts only guard against a hang."""
    from tests.test_faults import shuffle_expected

    w = build("shuffle", 1_000_000)
    graph = w.lower()
    m = w.params["partitions"]
    assert graph.n == w.n_tasks >= 900_000
    got = client.run(graph, w.outputs, timeout=600).results
    floor = run_graph(graph, w.outputs)
    assert len(got) == len(floor) == m
    assert got == floor
    expected = shuffle_expected(m)
    assert all(sorted(floor[("shuffle", j)]) == expected[j] for j in range(m))
