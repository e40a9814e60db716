"""Task priorities (``scheduler/state/priority.py``): a depth-first post-order toward the outputs.

Each task's *parent* is its first dependent (lowest id); the parents make a forest, and a
priority is a task's position in a post-order walk of that forest. The checks here follow from
that definition: a permutation; every task before its parent; every subtree numbered as one
contiguous run ending with its root; root subtrees one after another in id order.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.workloads import build
from scheduler.graph.layers import LayerGraph, Materialized, Reduction, blockwise
from scheduler.graph.lowgraph import TaskGraph
from scheduler.graph.task import BlockArg, IndexSlot, Ref, Task
from scheduler.state.priority import graph_priorities
from tests.statesim import Sim

NAMES = ["elementwise", "reduction", "shuffle", "chain", "fanout", "random-dag"]


def inc(x: int) -> int:
    return x + 1


def add(*xs: int) -> int:
    return sum(xs)


def total(parts: list) -> int:
    return sum(parts)


def parents(g: TaskGraph) -> np.ndarray:
    """First (lowest-id) dependent of each task inside the graph; -1 for none."""
    indptr, indices = g.dependencies()
    parent = np.full(g.n, -1, dtype=np.int64)
    for t in range(g.n):
        for d in indices[indptr[t]:indptr[t + 1]].tolist():
            if d < g.n and parent[d] < 0:
                parent[d] = t          # t grows, so the first seen is the lowest id
    return parent


def assert_post_order(g: TaskGraph, prio: np.ndarray) -> None:
    """``prio`` is a post-order of the parent forest of ``g`` (see the module docstring)."""
    n = g.n
    assert sorted(prio.tolist()) == list(range(n)), "not a permutation of 0..n-1"
    parent = parents(g)
    has = parent >= 0
    assert (prio[has] < prio[parent[has]]).all(), "a task is numbered after its parent"
    # subtree size, min and max number, children before parents (deepest first)
    depth = np.zeros(n, dtype=np.int64)
    for t in range(n):
        d, p = 0, int(parent[t])
        while p >= 0:
            d, p = d + 1, int(parent[p])
        depth[t] = d
    size = np.ones(n, dtype=np.int64)
    lo = prio.copy()
    hi = prio.copy()
    for t in np.argsort(-depth, kind="stable").tolist():
        p = int(parent[t])
        if p >= 0:
            size[p] += size[t]
            lo[p] = min(lo[p], lo[t])
            hi[p] = max(hi[p], hi[t])
    assert (hi == prio).all(), "a subtree does not end with its root"
    assert (lo == prio - size + 1).all(), "a subtree is not one contiguous run"
    roots = np.flatnonzero(~has)
    assert (np.diff(prio[roots]) > 0).all(), "root subtrees are not in id order"


def order_of(g: TaskGraph, prio: np.ndarray) -> list:
    keys = g.keys()
    return [keys[int(t)] for t in np.argsort(prio)]


# --- the shapes the docstring promises ----------------------------------------------------

def test_elementwise_interleaves_each_source_with_its_consumer() -> None:
    """``x_i -> y_i``: the order is ``x0, y0, x1, y1, ...`` so each ``x`` is consumed at once."""
    g = LayerGraph([blockwise("x", (5,), inc, IndexSlot(0)),
                    blockwise("y", (5,), inc, BlockArg("x"))]).lower()
    expected = [k for i in range(5) for k in (("x", i), ("y", i))]
    assert order_of(g, graph_priorities(g)) == expected


def test_a_tree_reduction_runs_eight_leaves_then_their_combine() -> None:
    """64 blocks summed 8 at a time: leaves 0-7, their partial sum, leaves 8-15, theirs, ...,
    and the total last. At most 8 leaves wait for a combine at any time."""
    g = LayerGraph([blockwise("src", (64,), inc, IndexSlot(0)),
                    Reduction("tot", "src", total, split_every=8)]).lower()
    expected = []
    for j in range(8):
        expected += [("src", i) for i in range(8 * j, 8 * j + 8)] + [("tot-partial0", j)]
    expected.append(("tot", 0))
    assert order_of(g, graph_priorities(g)) == expected


def test_a_deep_reduction_keeps_few_results_alive() -> None:
    """512 blocks, ``split_every=8`` (three levels). Running tasks one at a time in priority
    order, a result lives until its combine runs. No more than 8 results per level are ever
    alive together."""
    g = LayerGraph([blockwise("src", (512,), inc, IndexSlot(0)),
                    Reduction("tot", "src", total, split_every=8)]).lower()
    prio = graph_priorities(g)
    parent = parents(g)
    indptr, indices = g.dependencies()
    alive: set[int] = set()
    peak = 0
    for t in np.argsort(prio).tolist():
        alive.add(t)
        alive -= set(indices[indptr[t]:indptr[t + 1]].tolist())
        peak = max(peak, len(alive))
    assert (parent >= 0).sum() == g.n - 1
    assert peak <= 8 * 3


def test_chains_run_one_after_the_other() -> None:
    """Three chains of four: each chain runs start to end before the next begins."""
    layers = [blockwise("c0", (3,), inc, IndexSlot(0))]
    layers += [blockwise(f"c{d}", (3,), inc, BlockArg(f"c{d - 1}")) for d in range(1, 4)]
    g = LayerGraph(layers).lower()
    expected = [(f"c{d}", i) for i in range(3) for d in range(4)]
    assert order_of(g, graph_priorities(g)) == expected


def test_a_shared_dependency_goes_with_its_first_dependent() -> None:
    """``s`` is read by ``a`` and ``b`` (``a`` first by id): ``s`` runs in ``a``'s subtree,
    just before ``a``, and ``b`` comes after."""
    g = TaskGraph.from_dict({"s": Task(inc, 0), "a": Task(inc, Ref("s")),
                             "b": Task(inc, Ref("s"))})
    assert order_of(g, graph_priorities(g)) == ["s", "a", "b"]


def test_empty_graph_and_lone_tasks() -> None:
    """No tasks: no priorities. Tasks without any edges run in id order."""
    assert graph_priorities(TaskGraph([])).tolist() == []
    g = TaskGraph.from_dict({f"t{i}": Task(inc, i) for i in range(5)})
    assert graph_priorities(g).tolist() == [0, 1, 2, 3, 4]


# --- every workload -------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_every_workload_is_numbered_in_post_order(name: str) -> None:
    """On every workload (~2000 tasks) the priorities are a post-order of the parent forest.
    Where the graph is a tree (no task read twice) that makes every task's priority lower
    than every dependent's, so priority order is also a valid execution order."""
    g = build(name, 2000).lower()
    prio = graph_priorities(g)
    assert_post_order(g, prio)
    indptr, indices = g.dependencies()
    owners = np.repeat(np.arange(g.n), np.diff(indptr))
    n_dependents = np.bincount(indices, minlength=g.n)
    if n_dependents.max() <= 1:
        assert (prio[indices] < prio[owners]).all()
    assert name not in ("elementwise", "reduction", "chain") or n_dependents.max() <= 1


def test_the_scheduler_numbers_each_graph_after_the_previous_ones() -> None:
    """Inside the scheduler, a graph's priorities are these positions shifted by the graph's
    first id, so an older graph's tasks come first."""
    sim = Sim()
    g1 = build("reduction", 100).lower()
    g2 = TaskGraph.from_dict({"b": Task(inc, Ref("a")), "a": Task(inc, 1),
                              "c": Task(inc, 2)})
    sim.submit(g1, [("total", 0)], graph_id="g1")
    sim.submit(g2, ["b", "c"], graph_id="g2")
    s1, s2 = sim.state.graph("c", "g1"), sim.state.graph("c", "g2")
    assert s1 is not None and s2 is not None
    assert (s1.priority == graph_priorities(g1)).all()
    assert (s2.priority == graph_priorities(g2) + g1.n).all()


# --- explicit graphs ------------------------------------------------------------------------

@st.composite
def shuffled_dags(draw: st.DrawFn) -> dict:
    """A random DAG of 1..40 tasks with 0..3 dependencies each, keys in random order."""
    n = draw(st.integers(1, 40))
    deps = [draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
            for i in range(n)]
    order = draw(st.permutations(range(n)))
    return {f"k{i}": Task(add, *[Ref(f"k{d}") for d in deps[i]]) for i in order}


@settings(max_examples=100, deadline=None, derandomize=True)
@given(dsk=shuffled_dags())
def test_explicit_graphs_in_any_key_order_are_numbered_in_post_order(dsk: dict) -> None:
    """A plain dict whose tasks depend on each other, keys in any order (so an id can depend
    on a higher id): still a post-order of the parent forest."""
    g = TaskGraph.from_dict(dsk)
    assert_post_order(g, graph_priorities(g))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_trees_in_any_key_order_run_dependencies_first(seed: int) -> None:
    """A random tree (every task read by at most one other) given as a dict in random key
    order: priority order runs every task after all its dependencies."""
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    children: list[list[int]] = [[] for _ in range(n)]
    for i in range(1, n):
        children[rng.randrange(i)].append(i)
    order = list(range(n))
    rng.shuffle(order)
    g = TaskGraph.from_dict({f"k{i}": Task(add, *[Ref(f"k{c}") for c in children[i]])
                             for i in order})
    prio = graph_priorities(g)
    assert_post_order(g, prio)
    indptr, indices = g.dependencies()
    owners = np.repeat(np.arange(g.n), np.diff(indptr))
    assert (prio[indices] < prio[owners]).all()


def test_layers_mixing_regular_and_tangled_explicit_groups() -> None:
    """A blockwise layer, then a materialized layer whose tasks read the blocks and each
    other (listed out of order), then a reduction over the blocks: a post-order throughout,
    and it ignores external keys."""
    blocks = blockwise("b", (6,), inc, IndexSlot(0))
    tasks: dict[Any, Any] = {("m", 2): Task(add, Ref(("m", 1)), Ref(("b", 5))),
             ("m", 0): Task(add, Ref(("b", 0)), Ref(("b", 1))),
             ("m", 1): Task(add, Ref(("m", 0)), Ref(("b", 2))),
             ("m", 3): Task(add, Ref(("m", 2)), Ref(("m", 0)))}
    g = LayerGraph([blocks, Materialized("m", tasks),
                    Reduction("r", "b", total, split_every=3)]).lower()
    assert_post_order(g, graph_priorities(g))
    ext = TaskGraph.from_dict({"z": Task(add, Ref("y"), Ref("x")), "w": Task(inc, Ref("z")),
                               "v": Task(inc, Ref("y"))}, external=["x", "y"])
    prio = graph_priorities(ext)
    assert_post_order(ext, prio)
    assert order_of(ext, prio) == ["z", "w", "v"]


def wide_dag(seed: int, n: int = 3000, width: int = 300) -> dict:
    """A random DAG of ``n`` tasks in layers of ``width``, each reading up to three tasks of
    any earlier layer, keys in random order: few levels of many tasks each."""
    rng = random.Random(seed)
    deps = [rng.sample(range(i - i % width), min(3, i - i % width)) for i in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    return {f"k{i}": Task(add, *[Ref(f"k{d}") for d in deps[i]]) for i in order}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_explicit_graphs_by_levels_equal_the_task_by_task_walk(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit groups of wide levels are numbered one numpy step per level; the walk task
    by task (what a long chain gets) gives the same numbers, a post-order."""
    import scheduler.state.priority as priority

    g = TaskGraph.from_dict(wide_dag(seed))
    by_levels = graph_priorities(g)
    assert_post_order(g, by_levels)
    monkeypatch.setattr(priority, "DEEP", 0)
    walked = graph_priorities(g)
    assert (walked == by_levels).all()


def test_a_long_chain_in_an_explicit_group_is_numbered_in_post_order() -> None:
    """A chain (one task per level) listed in reverse, beside independent tasks."""
    n = 500
    dsk: dict[Any, Any] = {f"c{i}": Task(inc, Ref(f"c{i - 1}")) for i in range(n - 1, 0, -1)}
    dsk["c0"] = Task(inc, 0)
    dsk.update({f"x{i}": Task(inc, i) for i in range(10)})
    g = TaskGraph.from_dict(dsk)
    prio = graph_priorities(g)
    assert_post_order(g, prio)
    assert order_of(g, prio)[:n] == [f"c{i}" for i in range(n)]
