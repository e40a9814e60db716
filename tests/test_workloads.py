"""The six named workloads (``harness/workloads.py``): sizes, structure and answers.

Tolerances on the real task count, per workload (a request of ``n`` tasks):

- elementwise: two tasks per block, so within 1 of ``n``;
- chain: ``width * length`` with ``width = round(n / length)``: within ``length / 2``;
- reduction, fanout: never above ``n``, and below by at most one block plus one task per tree
  level (adding a block adds at most that many tasks);
- shuffle: never above ``n``; staging pads to ``k**s`` partitions so the count jumps; one more
  partition would exceed ``n``, and for ``n >= 50`` the count is within 10 % of ``n``;
- random-dag: ``levels * width`` with ``levels = round(n / width)``: within ``width / 2``.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from harness.workloads import (
    WORKLOADS,
    Workload,
    build,
    describe,
    names,
    partition,
    split_by_target,
)
from scheduler.graph.errors import GraphError
from scheduler.graph.layers import Blockwise, LayerGraph, Shuffle
from scheduler.graph.task import IndexSlot, Task

NAMES = ["elementwise", "reduction", "shuffle", "chain", "fanout", "random-dag"]
SIZES = [50, 1000, 10_000]


def tree_levels(m: int, split_every: int) -> int:
    """Number of levels of a tree reduction over ``m`` blocks (at least the final task)."""
    levels = 1
    while m > split_every:
        m = -(-m // split_every)
        levels += 1
    return levels


@pytest.fixture(scope="module")
def built() -> dict:
    """Each workload at each size, built and lowered once for the module."""
    out = {}
    for name in NAMES:
        for n in SIZES:
            wl = build(name, n)
            out[name, n] = (wl, wl.lower())
    return out


def test_describe_lists_all_six_first():
    entries = describe()
    assert [e["name"] for e in entries][:6] == NAMES == list(WORKLOADS)
    assert [e["name"] for e in entries] == names()
    assert {e["kind"] for e in entries[:6]} == {"synthetic"}
    for e in entries:
        assert isinstance(e["summary"], str) and e["summary"]
        assert isinstance(e["parameters"], dict)
    params = {e["name"]: e["parameters"] for e in entries}
    assert params["reduction"] == {"split_every": 8}
    assert params["shuffle"] == {"max_branch": 32}
    assert params["chain"] == {"length": 100}
    assert params["fanout"] == {"fan_in": 1000}
    assert params["elementwise"] == {}
    assert set(params["random-dag"]) == {"width", "max_deps", "window", "seed"}


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_reported_count_is_the_lowered_count(built, name, n):
    wl, g = built[name, n]
    assert isinstance(wl, Workload)
    assert wl.name == name and wl.requested == n
    assert wl.n_tasks == len(g)
    if wl.layers is not None:
        assert wl.layers.n_tasks == wl.n_tasks
    # the outputs are in the graph, and named after the output layer
    ids = g.ids_of(wl.outputs)
    assert len(set(ids.tolist())) == len(wl.outputs)
    assert {k[0] for k in wl.outputs} == {wl.output_layer}


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_count_is_within_tolerance_of_the_request(built, name, n):
    wl, _ = built[name, n]
    got, p = wl.n_tasks, wl.params
    if name == "elementwise":
        assert abs(got - n) <= 1
        assert got == 2 * p["blocks"]
    elif name == "chain":
        assert abs(got - n) <= p["length"] / 2
        assert got == p["width"] * p["length"]
    elif name == "reduction":
        assert n - 1 - tree_levels(p["blocks"], p["split_every"]) <= got <= n
        assert got == p["blocks"] + sum_tree(p["blocks"], p["split_every"])
    elif name == "fanout":
        assert n - 1 - tree_levels(p["width"], p["fan_in"]) <= got <= n
        assert got == 1 + p["width"] + sum_tree(p["width"], p["fan_in"])
    elif name == "shuffle":
        assert 0.9 * n <= got <= n
        assert shuffle_count(p["partitions"] + 1, p["max_branch"]) > n
    elif name == "random-dag":
        assert abs(got - n) <= p["width"] / 2
        assert got == p["levels"] * p["width"]
    else:  # pragma: no cover
        raise AssertionError(name)


def sum_tree(m: int, split_every: int) -> int:
    """Tasks of a tree reduction over ``m`` blocks, counted level by level."""
    count = 0
    while m > split_every:
        m = -(-m // split_every)
        count += m
    return count + 1


def shuffle_count(partitions: int, max_branch: int) -> int:
    lg = LayerGraph([Blockwise("partition", (partitions,), Task(partition, IndexSlot(0), 1)),
                     Shuffle("shuffle", "partition", split_by_target, list, max_branch)])
    return lg.n_tasks


@pytest.mark.parametrize("n", SIZES)
def test_elementwise_answer(built, n):
    wl, g = built["elementwise", n]
    out = g.execute(keys=wl.outputs)
    m = wl.params["blocks"]
    assert wl.outputs == [("inc", i) for i in range(m)]
    assert out == {("inc", i): i + 1 for i in range(m)}


@pytest.mark.parametrize("n", SIZES)
def test_reduction_answer(built, n):
    wl, g = built["reduction", n]
    m = wl.params["blocks"]
    assert g.execute(keys=wl.outputs) == {("total", 0): m * (m - 1) // 2}
    assert wl.outputs == [("total", 0)]


@pytest.mark.parametrize("n", SIZES)
def test_chain_answer(built, n):
    wl, g = built["chain", n]
    width, length = wl.params["width"], wl.params["length"]
    out = g.execute(keys=wl.outputs)
    assert out == {(f"chain-{length - 1}", i): i + length - 1 for i in range(width)}
    # a chain: each link reads exactly the previous link of the same index
    assert g.n_edges == width * (length - 1)


@pytest.mark.parametrize("n", SIZES)
def test_shuffle_answer(built, n):
    wl, g = built["shuffle", n]
    m = wl.params["partitions"]
    inputs = [("partition", i) for i in range(m)]
    out = g.execute(keys=inputs + wl.outputs)
    sent = Counter(x for key in inputs for x in out[key])
    assert all(out[("partition", i)] == partition(i, m) for i in range(m))
    received = Counter(x for key in wl.outputs for x in out[key])
    assert received == sent  # the multiset of items is preserved
    for j in range(m):
        assert Counter(out[("shuffle", j)]) == Counter({x: c for x, c in sent.items()
                                                        if x % m == j})


@pytest.mark.parametrize("n", SIZES)
def test_fanout_answer(built, n):
    wl, g = built["fanout", n]
    width = wl.params["width"]
    assert g.execute(keys=wl.outputs) == {("gather", 0): width * (width - 1) // 2}
    # the root is read by every spreading task
    root = g.id_of("root")
    indptr, indices = g.dependencies()
    assert int((indices == root).sum()) == width


def random_dag_reference(g, levels: int, width: int) -> np.ndarray:
    """Values computed level by level from the dependency arrays, without ``execute``."""
    indptr, indices = g.dependencies()
    values = np.zeros(levels * width, dtype=np.int64)
    values[:width] = np.arange(width)
    for tid in range(width, levels * width):
        deps = indices[indptr[tid]:indptr[tid + 1]]
        values[tid] = (int(values[deps].sum()) + tid % width) % 1_000_003
    return values


@pytest.mark.parametrize("n", SIZES)
def test_random_dag_structure_and_answer(built, n):
    wl, g = built["random-dag", n]
    p = wl.params
    levels, width = p["levels"], p["width"]
    assert wl.outputs == [(f"rand-{levels - 1}", i) for i in range(width)]
    indptr, indices = g.dependencies()
    counts = np.diff(indptr)
    assert (counts[:width] == 0).all()
    assert ((counts[width:] >= 1) & (counts[width:] <= p["max_deps"])).all()
    for tid in range(width, len(g)):
        lev = tid // width
        deps = indices[indptr[tid]:indptr[tid + 1]]
        assert len(set(deps.tolist())) == len(deps)  # distinct
        assert (deps < lev * width).all()  # earlier levels only
        assert (deps >= max(0, lev - p["window"]) * width).all()  # inside the window
    expected = random_dag_reference(g, levels, width)
    out = g.execute(keys=wl.outputs)
    base = (levels - 1) * width
    assert out == {k: int(expected[base + i]) for i, k in enumerate(wl.outputs)}


def test_random_dag_is_deterministic_for_a_seed():
    a, b = build("random-dag", 5000, seed=7), build("random-dag", 5000, seed=7)
    ga, gb = a.lower(), b.lower()
    assert a.params == b.params
    assert ga.edges() == gb.edges()
    assert ga.execute(keys=a.outputs) == gb.execute(keys=b.outputs)


def test_random_dag_differs_for_another_seed():
    a, c = build("random-dag", 5000, seed=7), build("random-dag", 5000, seed=8)
    assert a.n_tasks == c.n_tasks and a.outputs == c.outputs
    ga, gc = a.lower(), c.lower()
    assert ga.edges() != gc.edges()
    assert ga.execute(keys=a.outputs) != gc.execute(keys=c.outputs)


@pytest.mark.parametrize("n", [10, 50, 120])
def test_random_dag_small_requests(n):
    wl = build("random-dag", n)
    assert wl.n_tasks <= 1.5 * n
    assert wl.lower().n_edges > 0


@pytest.mark.parametrize("n", [2, 3, 7])
@pytest.mark.parametrize("name", NAMES)
def test_tiny_sizes_build_and_run(name, n):
    wl = build(name, n)
    g = wl.lower()
    assert wl.n_tasks == len(g) >= 1
    out = g.execute(keys=wl.outputs)
    assert set(out) == set(wl.outputs)


@pytest.mark.parametrize(("name", "params", "key"), [
    ("reduction", {"split_every": 2}, "split_every"),
    ("reduction", {"split_every": 32}, "split_every"),
    ("shuffle", {"max_branch": 4}, "max_branch"),
    ("chain", {"length": 7}, "length"),
    ("fanout", {"fan_in": 10}, "fan_in"),
    ("random-dag", {"width": 40, "max_deps": 5, "window": 2}, "width"),
])
def test_parameters_are_honoured_and_reported(name, params, key):
    wl = build(name, 2000, **params)
    assert wl.params[key] == params[key]
    g = wl.lower()
    assert wl.n_tasks == len(g)
    out = g.execute(keys=wl.outputs)
    assert set(out) == set(wl.outputs)
    if name == "reduction":
        m = wl.params["blocks"]
        assert out == {("total", 0): m * (m - 1) // 2}
    if name == "random-dag":
        indptr, _ = g.dependencies()
        assert np.diff(indptr).max() <= 5


def test_chain_fuses_into_one_layer_with_the_same_answer():
    wl = build("chain", 1000, length=50)
    fused = wl.layers.fuse_blockwise(keep=[wl.output_layer])
    assert list(fused.layers) == [wl.output_layer]
    assert fused.lower().execute(keys=wl.outputs) == wl.lower().execute(keys=wl.outputs)


def test_elementwise_fuses_with_the_same_answer():
    wl = build("elementwise", 1000)
    fused = wl.layers.fuse_blockwise(keep=[wl.output_layer])
    assert len(fused) == 1 and fused.n_tasks == wl.n_tasks // 2
    assert fused.lower().execute(keys=wl.outputs) == wl.lower().execute(keys=wl.outputs)


def test_cull_to_the_output_layer_keeps_everything_needed():
    for name in ["elementwise", "reduction", "shuffle", "chain", "fanout"]:
        wl = build(name, 500)
        culled = wl.layers.cull([wl.output_layer])
        assert culled.n_tasks == wl.n_tasks


@pytest.mark.parametrize("name", ["nope", "Elementwise", "", "random_dag"])
def test_build_rejects_unknown_names(name):
    with pytest.raises(ValueError, match=f"unknown workload {name!r}; choose one of "
                                         "elementwise, reduction, shuffle, chain, fanout, "
                                         "random-dag"):
        build(name, 100)


@pytest.mark.parametrize("n", [1, 0, -5, 2.5, 100.0, "100", None, True])
def test_build_rejects_bad_sizes(n):
    with pytest.raises(ValueError, match=r"n_tasks must be an int >= 2, got "):
        build("elementwise", n)  # type: ignore[arg-type]


def test_build_rejects_bad_parameters():
    with pytest.raises(GraphError, match="split_every must be >= 2"):
        build("reduction", 100, split_every=1)
    with pytest.raises(GraphError, match="max_branch must be >= 2"):
        build("shuffle", 100, max_branch=1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        build("elementwise", 100, blocks=3)


def test_workloads_are_sized_by_task_count_not_hardcoded():
    small, big = build("chain", 1000), build("chain", 10_000)
    assert big.n_tasks == 10 * small.n_tasks
    assert math.isclose(build("elementwise", 10_000).n_tasks / build("elementwise", 1000).n_tasks,
                        10)
