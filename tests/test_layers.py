"""High-level layers and their lowering (``scheduler/graph/layers.py``).

Every lowering is compared with a reference ``{key: set of dependency keys}`` built here by
plain loops, independently of the vectorised code, and run with ``TaskGraph.execute``.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections import Counter
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.graph.errors import CycleError, DuplicateKeyError, GraphError, MissingDependencyError
from scheduler.graph.layers import (
    MAX_FUSED_DEPTH,
    Blockwise,
    LayerGraph,
    Materialized,
    Reduction,
    Shuffle,
    blockwise,
)
from scheduler.graph.lowgraph import TaskGraph
from scheduler.graph.task import BlockArg, DepSlot, IndexSlot, Ref, Task

# --- task functions ------------------------------------------------------------------------


def const(v):
    return v


def idx2(i, j):
    return 10 * i + j


def add(*xs):
    return sum(xs)


def inc(x):
    return x + 1


def double(x):
    return 2 * x


def total(parts):
    return sum(parts)


def concat(parts):
    return [x for p in parts for x in p]


def as_list(i, j):
    return [(i, j)]


def final(parts):
    return ("final", sum(parts))


# --- helpers -------------------------------------------------------------------------------


def structure(g: TaskGraph) -> dict:
    """``{key: set of dependency keys}`` of a lowered graph, from its edges."""
    keys = g.keys()  # a TaskGraph method, not a dict's
    out: dict = {k: set() for k in keys}
    for dep, key in g.edges():
        out[key].add(dep)
    return out


def grid(name: str, shape: tuple) -> list:
    if not shape:
        return [name]
    return [(name, *idx) for idx in itertools.product(*(range(s) for s in shape))]


def lowered(*layers) -> tuple[LayerGraph, TaskGraph]:
    lg = LayerGraph(layers)
    g = lg.lower()
    assert len(g) == lg.n_tasks
    return lg, g


# --- Blockwise -----------------------------------------------------------------------------


def test_blockwise_with_index_slots_and_a_broadcast_single_key():
    lg, g = lowered(
        blockwise("x", (3, 4), idx2, IndexSlot(0), IndexSlot(1)),
        blockwise("s", (), const, 1000),
        blockwise("y", (3, 4), add, BlockArg("x"), BlockArg("s"), IndexSlot(1)),
    )
    assert [len(grp) for grp in g.groups] == [12, 1, 12]
    assert len(g) == 25
    expected = {k: set() for k in grid("x", (3, 4))}
    expected["s"] = set()
    for i, j in itertools.product(range(3), range(4)):
        expected[("y", i, j)] = {("x", i, j), "s"}
    assert structure(g) == expected
    out = g.execute()
    for i, j in itertools.product(range(3), range(4)):
        assert out[("x", i, j)] == 10 * i + j
        assert out[("y", i, j)] == 10 * i + j + 1000 + j
    assert out["s"] == 1000


def test_blockwise_broadcasts_an_input_of_one_block():
    _, g = lowered(
        blockwise("one", (1,), const, 5),
        blockwise("y", (4,), add, BlockArg("one"), IndexSlot(0)),
    )
    assert structure(g) == {("one", 0): set(),
                            **{("y", i): {("one", 0)} for i in range(4)}}
    assert [g.execute()[("y", i)] for i in range(4)] == [5, 6, 7, 8]


def test_blockwise_reading_one_layer_twice_has_one_dependency():
    _, g = lowered(
        blockwise("x", (3,), const, IndexSlot(0)),
        blockwise("y", (3,), add, BlockArg("x"), BlockArg("x"), BlockArg("x")),
    )
    assert g.n_edges == 3
    assert structure(g)[("y", 2)] == {("x", 2)}
    assert g.execute(keys=[("y", 2)]) == {("y", 2): 6}


def test_blockwise_nested_template_and_containers():
    lg, g = lowered(
        blockwise("a", (2, 2), idx2, IndexSlot(1), IndexSlot(0)),
        blockwise("b", (2, 2), total, [BlockArg("a"), Task(double, BlockArg("a")),
                                       IndexSlot(0)]),
    )
    assert lg["b"].dependencies == ("a",)
    out = g.execute()
    for i, j in itertools.product(range(2), range(2)):
        a = 10 * j + i
        assert out[("b", i, j)] == a + 2 * a + i


def test_blockwise_zero_blocks():
    _, g = lowered(blockwise("x", (0,), const, IndexSlot(0)),
                   blockwise("y", (0,), inc, BlockArg("x")))
    assert len(g) == 0
    assert g.execute() == {}


def test_blockwise_shape_mismatch_is_an_error_naming_both_layers():
    lg = LayerGraph([blockwise("a", (3,), const, IndexSlot(0)),
                     blockwise("b", (4,), inc, BlockArg("a"))])
    with pytest.raises(GraphError, match=r"layer 'b' of shape \(4,\) reads layer 'a' of "
                                         r"shape \(3,\)"):
        lg.lower()
    with pytest.raises(GraphError, match="shapes must match"):
        LayerGraph([blockwise("a", (2, 3), const, 0),
                    blockwise("b", (3, 2), inc, BlockArg("a"))]).lower()


@pytest.mark.parametrize("bad", [DepSlot(0), Ref("x"), IndexSlot(2)])
def test_blockwise_template_placeholders_are_checked(bad):
    with pytest.raises(GraphError, match="layer 'b'"):
        Blockwise("b", (3, 3), Task(add, bad))


# --- Reduction -----------------------------------------------------------------------------


def reduction_reference(name: str, inputs: list, split_every: int) -> dict:
    """Tree levels by hand: chunks of ``split_every`` consecutive results, until at most
    ``split_every`` are left, which the final task reads."""
    expected: dict = {}
    level_keys = list(inputs)
    level = 0
    while len(level_keys) > split_every:
        nxt = []
        for c in range(0, len(level_keys), split_every):
            key = (f"{name}-partial{level}", c // split_every)
            expected[key] = set(level_keys[c:c + split_every])
            nxt.append(key)
        level_keys = nxt
        level += 1
    expected[(name, 0)] = set(level_keys)
    return expected


@pytest.mark.parametrize("split_every", [2, 3, 8])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 16, 63, 64, 65, 100])
def test_reduction_structure_and_sum(n, split_every):
    lg, g = lowered(
        blockwise("x", (n,), const, IndexSlot(0)),
        Reduction("r", "x", total, split_every=split_every),
    )
    ref = reduction_reference("r", grid("x", (n,)), split_every)
    assert lg["r"].n_tasks == len(ref)
    assert len(g) == n + len(ref)
    expected = {k: set() for k in grid("x", (n,))}
    expected.update(ref)
    assert structure(g) == expected
    # every task reads at most split_every results
    assert all(len(deps) <= split_every for deps in ref.values())
    assert g.execute(keys=[("r", 0)]) == {("r", 0): n * (n - 1) // 2}


def test_reduction_of_exactly_split_every_blocks_is_one_task():
    lg, g = lowered(blockwise("x", (4,), const, IndexSlot(0)),
                    Reduction("r", "x", total, split_every=4))
    assert lg["r"].n_tasks == 1
    assert structure(g)[("r", 0)] == {("x", i) for i in range(4)}


def test_reduction_aggregate_runs_last_and_only_last():
    _, g = lowered(blockwise("x", (20,), const, 1),
                   Reduction("r", "x", total, aggregate=final, split_every=3))
    out = g.execute()
    assert out[("r", 0)] == ("final", 20)
    partials = [v for k, v in out.items() if k[0].startswith("r-partial")]
    assert partials and all(isinstance(v, int) for v in partials)


def test_reduction_of_a_2d_layer_reads_blocks_in_c_order():
    _, g = lowered(blockwise("x", (3, 5), as_list, IndexSlot(0), IndexSlot(1)),
                   Reduction("r", "x", concat, split_every=4))
    assert g.execute(keys=[("r", 0)])[("r", 0)] == list(itertools.product(range(3), range(5)))
    ref = reduction_reference("r", grid("x", (3, 5)), 4)
    assert {k: v for k, v in structure(g).items() if k[0] != "x"} == ref


def test_reduction_of_a_single_key_layer():
    _, g = lowered(blockwise("s", (), const, 7), Reduction("r", "s", total))
    assert structure(g) == {"s": set(), ("r", 0): {"s"}}
    assert g.execute()[("r", 0)] == 7


def test_reduction_errors():
    with pytest.raises(GraphError, match="split_every must be >= 2"):
        Reduction("r", "x", total, split_every=1)
    with pytest.raises(GraphError, match="needs input_size"):
        _ = Reduction("r", "x", total).n_tasks
    lg = LayerGraph([blockwise("x", (0,), const, 0), Reduction("r", "x", total)])
    with pytest.raises(GraphError, match="reduces an empty layer 'x'"):
        lg.lower()


# --- Shuffle -------------------------------------------------------------------------------


def digits(x: int, k: int, s: int) -> list[int]:
    out = []
    for _ in range(s):
        x, d = divmod(x, k)
        out.append(d)
    return out


def shuffle_plan_reference(n: int, max_branch: int) -> tuple[int, int]:
    """Fewest stages ``s`` with ``max_branch**s >= n``, then the least ``k`` with
    ``k**s >= n``."""
    s = 1
    while max_branch ** s < n:
        s += 1
    k = 1
    while k ** s < n:
        k += 1
    return s, k


def shuffle_reference(name: str, inputs: list, max_branch: int) -> dict:
    n = len(inputs)
    s, k = shuffle_plan_reference(n, max_branch)
    padded = k ** s
    expected: dict = {}
    prev = list(inputs)
    for t in range(s):
        n_split = n if t == 0 else padded
        n_comb = n if t == s - 1 else padded
        splits = [(f"{name}-split{t}", i) for i in range(n_split)]
        for i, key in enumerate(splits):
            expected[key] = {prev[i]}
        comb_name = name if t == s - 1 else f"{name}-stage{t}"
        combines = [(comb_name, j) for j in range(n_comb)]
        for j, key in enumerate(combines):
            dj = digits(j, k, s)
            expected[key] = {splits[i] for i in range(n_split)
                             if all(a == b for u, (a, b) in enumerate(zip(digits(i, k, s), dj,
                                                                          strict=True))
                                    if u != t)}
        prev = combines
    return expected


def make_items(i: int, n: int) -> list:
    """Partition ``i``: items ``(target, i, j)`` with targets spread over ``0..n-1``."""
    return [((i * 31 + j * 17 + i * j) % n, i, j) for j in range(5)]


def split_items(part: list, stage: int, k: int) -> list[list]:
    out: list[list] = [[] for _ in range(k)]
    for item in part:
        out[(item[0] // k ** stage) % k].append(item)
    return out


SHUFFLE_CASES = [
    (1, 4), (2, 4), (4, 4),          # one stage, up to exactly max_branch
    (5, 4), (7, 4), (16, 4), (17, 4),  # two/three stages, sizes not powers of k
    (5, 2), (9, 2), (27, 3), (30, 3), (10, 3),
    (31, 32), (32, 32), (33, 32), (100, 32),
]


@pytest.mark.parametrize(("n", "max_branch"), SHUFFLE_CASES)
def test_shuffle_structure(n, max_branch):
    layer = Shuffle("sh", "p", split_items, concat, max_branch=max_branch)
    lg, g = lowered(blockwise("p", (n,), make_items, IndexSlot(0), n), layer)
    assert lg["sh"].plan(n) == shuffle_plan_reference(n, max_branch)
    ref = shuffle_reference("sh", grid("p", (n,)), max_branch)
    assert lg["sh"].n_tasks == len(ref)
    expected = {k: set() for k in grid("p", (n,))}
    expected.update(ref)
    assert structure(g) == expected
    assert lg["sh"].shape == (n,)
    s, k = shuffle_plan_reference(n, max_branch)
    if s == 1:
        assert g.n_edges == n + n * n
    else:
        assert k <= max_branch
        # each combine reads at most k pieces: edges grow as n*k*s, not n*n
        assert g.n_edges <= (k ** s) * (k + 1) * s


@pytest.mark.parametrize(("n", "max_branch"), SHUFFLE_CASES)
def test_shuffle_delivers_every_item_to_its_target(n, max_branch):
    _, g = lowered(blockwise("p", (n,), make_items, IndexSlot(0), n),
                   Shuffle("sh", "p", split_items, concat, max_branch=max_branch))
    outputs = [("sh", j) for j in range(n)]
    out = g.execute(keys=outputs)
    sent = Counter(item for i in range(n) for item in make_items(i, n))
    received = Counter(item for key in outputs for item in out[key])
    assert received == sent  # nothing lost, nothing duplicated
    for j in range(n):
        assert all(item[0] == j for item in out[("sh", j)])
        assert sorted(out[("sh", j)]) == sorted(x for x in sent if x[0] == j)


def test_shuffle_stage_sizes_and_plan():
    layer = Shuffle("sh", "p", split_items, concat, max_branch=4)
    assert layer.plan(4) == (1, 4)
    assert layer.plan(5) == (2, 3)
    assert layer.stage_sizes(5) == [(5, 9), (9, 5)]
    assert layer.plan(17) == (3, 3)
    assert layer.stage_sizes(17) == [(17, 27), (27, 27), (27, 17)]


def test_shuffle_errors():
    with pytest.raises(GraphError, match="max_branch must be >= 2"):
        Shuffle("sh", "p", split_items, concat, max_branch=1)
    with pytest.raises(GraphError, match="needs input_size"):
        _ = Shuffle("sh", "p", split_items, concat).n_tasks
    lg = LayerGraph([blockwise("p", (2, 2), const, []),
                     Shuffle("sh", "p", split_items, concat)])
    with pytest.raises(GraphError, match="a shuffle needs a 1-d layer"):
        lg.lower()


# --- Materialized --------------------------------------------------------------------------


def test_materialized_refers_to_keys_of_other_layers():
    m = Materialized("m", {
        "m-a": Task(add, Ref(("x", 1)), Ref(("r", 0))),
        ("m-b", 0): Task(inc, Ref("m-a")),
        ("m-b", 1): Task(add, Ref(("m-b", 0)), Task(len, Ref(("sh", 2))), Ref("s")),
        "m-c": Ref(("x", 3)),
    })
    # given out of order on purpose: LayerGraph sorts by layer names
    lg, g = lowered(
        m,
        blockwise("x", (4,), const, IndexSlot(0)),
        Reduction("r", "x", total, split_every=2),
        blockwise("s", (), const, 100),
        blockwise("q", (3,), make_items, IndexSlot(0), 3),
        Shuffle("sh", "q", split_items, concat),
    )
    assert set(m.dependencies) == {"x", "r", "sh", "s"}
    assert list(lg.layers)[-1] == "m"
    st = structure(g)
    assert st["m-a"] == {("x", 1), ("r", 0)}
    assert st[("m-b", 0)] == {"m-a"}
    assert st[("m-b", 1)] == {("m-b", 0), ("sh", 2), "s"}
    assert st["m-c"] == {("x", 3)}
    out = g.execute()
    assert out["m-a"] == 1 + 6
    assert out[("m-b", 0)] == 8
    targeting_2 = sum(item[0] == 2 for i in range(3) for item in make_items(i, 3))
    assert out[("m-b", 1)] == 8 + targeting_2 + 100
    assert out["m-c"] == 3


def test_materialized_values():
    _, g = lowered(
        blockwise("x", (4,), const, IndexSlot(0)),
        Materialized("m", {"a": Task(add, Ref(("x", 1)), Ref(("x", 3))),
                           "b": Task(inc, Ref("a")),
                           "c": [Ref("b"), Ref(("x", 0))]}),
    )
    assert g.execute(keys=["a", "b", "c"]) == {"a": 4, "b": 5, "c": [5, 0]}
    assert len(g) == 7


def test_materialized_missing_key_is_reported():
    lg = LayerGraph([blockwise("x", (4,), const, IndexSlot(0)),
                     Materialized("m", {"a": Task(inc, Ref(("x", 9))),
                                        "b": Task(inc, Ref("nowhere"))})])
    with pytest.raises(MissingDependencyError) as info:
        lg.lower()
    assert info.value.missing == {("x", 9): "a", "nowhere": "b"}


def test_materialized_reading_another_materialized_in_given_order():
    m1 = Materialized("m1", {"a": 1, "b": Task(inc, Ref("a"))})
    m2 = Materialized("m2", {"c": Task(add, Ref("a"), Ref("b"))})
    _, g = lowered(m1, m2)
    assert structure(g) == {"a": set(), "b": {"a"}, "c": {"a", "b"}}
    assert g.execute() == {"a": 1, "b": 2, "c": 3}


def test_materialized_reading_another_materialized_in_any_order():
    m1 = Materialized("m1", {"a": 1, "b": Task(inc, Ref("a"))})
    m2 = Materialized("m2", {"c": Task(add, Ref("a"), Ref("b"))})
    _, g = lowered(m2, m1)
    assert g.execute(keys=["c"]) == {"c": 3}


def test_cull_keeps_a_materialized_layer_read_by_key():
    m1 = Materialized("m1", {"a": 1, "b": Task(inc, Ref("a"))})
    m2 = Materialized("m2", {"c": Task(add, Ref("a"), Ref("b"))})
    culled = LayerGraph([m1, m2]).cull(["m2"])
    assert set(culled.layers) == {"m1", "m2"}
    assert culled.lower().execute(keys=["c"]) == {"c": 3}


# --- LayerGraph ----------------------------------------------------------------------------


def test_duplicate_layer_name():
    with pytest.raises(DuplicateKeyError, match="'x'"):
        LayerGraph([blockwise("x", (2,), const, 0), blockwise("y", (2,), const, 0),
                    blockwise("x", (3,), const, 1)])


def test_missing_input_layer():
    with pytest.raises(MissingDependencyError) as info:
        LayerGraph([blockwise("x", (2,), const, 0), blockwise("y", (2,), inc, BlockArg("z"))])
    assert info.value.missing == {"z": "y"}
    assert "'z' (needed by 'y')" in str(info.value)
    with pytest.raises(MissingDependencyError, match="'nope'"):
        LayerGraph([Reduction("r", "nope", total)])
    with pytest.raises(MissingDependencyError, match="'nope'"):
        LayerGraph([Shuffle("sh", "nope", split_items, concat)])


def test_cycle_between_layers():
    with pytest.raises(CycleError) as info:
        LayerGraph([
            blockwise("src", (2,), const, 0),
            blockwise("a", (2,), add, BlockArg("c"), BlockArg("src")),
            blockwise("b", (2,), inc, BlockArg("a")),
            blockwise("c", (2,), inc, BlockArg("b")),
        ])
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}
    assert "src" not in str(info.value)
    with pytest.raises(CycleError, match="'self' -> 'self'"):
        LayerGraph([blockwise("self", (2,), inc, BlockArg("self"))])


def test_layers_are_kept_in_topological_order():
    lg = LayerGraph([
        blockwise("c", (2,), add, BlockArg("a"), BlockArg("b")),
        blockwise("b", (2,), inc, BlockArg("a")),
        blockwise("a", (2,), const, IndexSlot(0)),
    ])
    names = list(lg.layers)
    assert names.index("a") < names.index("b") < names.index("c")
    assert lg.dependents() == {"a": ["b", "c"], "b": ["c"], "c": []}
    g = lg.lower()
    assert g.execute(keys=[("c", 1)]) == {("c", 1): 3}


def test_n_tasks_equals_the_lowered_count():
    lg, g = lowered(
        blockwise("x", (7, 3), idx2, IndexSlot(0), IndexSlot(1)),
        blockwise("s", (), const, 1),
        blockwise("y", (7, 3), add, BlockArg("x"), BlockArg("s")),
        Reduction("r", "y", total, split_every=4),
        blockwise("p", (13,), make_items, IndexSlot(0), 13),
        Shuffle("sh", "p", split_items, concat, max_branch=3),
        Materialized("m", {"out": Task(add, Ref(("r", 0)), Ref(("x", 0, 0)))}),
    )
    assert len(g) == lg.n_tasks == sum(layer.n_tasks for layer in lg.layers.values())
    assert lg["r"].n_tasks == len(reduction_reference("r", grid("y", (7, 3)), 4))
    assert lg["sh"].n_tasks == len(shuffle_reference("sh", grid("p", (13,)), 3))
    expected_r = sum(10 * i + j + 1 for i in range(7) for j in range(3))
    assert g.execute(keys=["out"]) == {"out": expected_r + 0}  # ("x", 0, 0) is 0


# --- cull ----------------------------------------------------------------------------------


def diamond() -> LayerGraph:
    return LayerGraph([
        blockwise("a", (3,), const, IndexSlot(0)),
        blockwise("b", (3,), inc, BlockArg("a")),
        blockwise("c", (3,), double, BlockArg("b")),
        blockwise("d", (3,), add, BlockArg("a"), 100),
        blockwise("e", (2,), const, 7),
        Reduction("r", "c", total),
    ])


def test_cull_keeps_only_the_needed_layers():
    full = diamond()
    culled = full.cull(["c"])
    assert set(culled.layers) == {"a", "b", "c"}
    g = culled.lower()
    assert len(g) == 9
    assert g.execute() == {k: v for k, v in full.lower().execute().items()
                           if k[0] in {"a", "b", "c"}}
    assert set(full.cull(["r", "d"]).layers) == {"a", "b", "c", "d", "r"}
    assert set(full.cull(["e"]).layers) == {"e"}
    assert full.cull(["r", "d", "e"]) is full


def test_cull_unknown_layer():
    with pytest.raises(MissingDependencyError, match="'zz'"):
        diamond().cull(["c", "zz"])


def test_cull_follows_materialized_refs_to_layers():
    lg = LayerGraph([
        blockwise("x", (3,), const, IndexSlot(0)),
        blockwise("y", (3,), const, 0),
        Materialized("m", {"k": Task(inc, Ref(("x", 2)))}),
    ])
    culled = lg.cull(["m"])
    assert set(culled.layers) == {"x", "m"}
    assert culled.lower().execute(keys=["k"]) == {"k": 3}


# --- fuse_blockwise ------------------------------------------------------------------------


def chain(length: int, width: int = 3) -> list:
    layers = [blockwise("c0", (width,), const, IndexSlot(0))]
    for d in range(1, length):
        layers.append(blockwise(f"c{d}", (width,), inc, BlockArg(f"c{d - 1}")))
    return layers


def without_recursion_error(fn):
    """``fn()``, turning a RecursionError into a short assertion (pytest takes seconds to
    render a thousand-frame traceback)."""
    try:
        return fn()
    except RecursionError:
        pass
    raise AssertionError("RecursionError")


def run(lg: LayerGraph, keys: list) -> dict:
    return lg.lower().execute(keys=keys)


def test_fuse_a_chain_into_its_last_layer():
    lg = LayerGraph(chain(6))
    fused = lg.fuse_blockwise(keep=["c5"])
    assert list(fused.layers) == ["c5"]
    g = fused.lower()
    assert len(g) == 3
    assert g.n_edges == 0
    outs = [("c5", i) for i in range(3)]
    assert g.execute() == run(lg, outs) == {("c5", i): i + 5 for i in range(3)}
    assert fused.n_tasks == 3 < lg.n_tasks == 18


def test_fuse_never_fuses_a_kept_layer():
    lg = LayerGraph(chain(4))
    fused = lg.fuse_blockwise(keep=["c1", "c3"])
    assert list(fused.layers) == ["c1", "c3"]
    st = structure(fused.lower())
    assert st[("c3", 2)] == {("c1", 2)}
    outs = [("c1", 0), ("c3", 2)]
    assert run(fused, outs) == run(lg, outs) == {("c1", 0): 1, ("c3", 2): 5}


def test_fuse_never_fuses_a_layer_read_by_two_layers():
    lg = LayerGraph([
        blockwise("a", (4,), const, IndexSlot(0)),
        blockwise("b", (4,), inc, BlockArg("a")),
        blockwise("c", (4,), double, BlockArg("a")),
        blockwise("d", (4,), add, BlockArg("b"), BlockArg("c")),
    ])
    fused = lg.fuse_blockwise(keep=["d"])
    assert set(fused.layers) == {"a", "d"}
    assert structure(fused.lower())[("d", 3)] == {("a", 3)}
    outs = [("d", i) for i in range(4)]
    assert run(fused, outs) == run(lg, outs) == {("d", i): 3 * i + 1 for i in range(4)}


def test_fuse_never_fuses_a_layer_read_twice():
    lg = LayerGraph([
        blockwise("a", (4,), const, IndexSlot(0)),
        blockwise("b", (4,), add, BlockArg("a"), BlockArg("a")),
    ])
    fused = lg.fuse_blockwise(keep=["b"])
    assert fused is lg
    assert set(fused.layers) == {"a", "b"}


def test_fuse_a_layer_read_directly_and_through_another():
    lg = LayerGraph([
        blockwise("a", (4,), const, IndexSlot(0)),
        blockwise("b", (4,), inc, BlockArg("a")),
        blockwise("c", (4,), add, BlockArg("a"), BlockArg("b")),
    ])
    fused = lg.fuse_blockwise(keep=["c"])
    assert set(fused.layers) == {"a", "c"}
    outs = [("c", i) for i in range(4)]
    assert run(fused, outs) == run(lg, outs) == {("c", i): 2 * i + 1 for i in range(4)}


def test_fuse_never_fuses_a_layer_read_by_a_materialized_or_a_reduction():
    layers = [
        blockwise("a", (3,), const, IndexSlot(0)),
        blockwise("b", (3,), inc, BlockArg("a")),
        Materialized("m", {"k": Task(inc, Ref(("a", 1)))}),
        blockwise("x", (3,), const, IndexSlot(0)),
        Reduction("r", "x", total),
        blockwise("y", (3,), inc, BlockArg("x")),
    ]
    lg = LayerGraph(layers)
    fused = lg.fuse_blockwise(keep=["b", "m", "r", "y"])
    assert set(fused.layers) == {"a", "b", "m", "x", "r", "y"}
    outs = ["k", ("r", 0), ("b", 2), ("y", 0)]
    assert run(fused, outs) == run(lg, outs) == {"k": 2, ("r", 0): 3, ("b", 2): 3,
                                                 ("y", 0): 1}


def test_fuse_never_fuses_across_shapes():
    lg = LayerGraph([
        blockwise("s", (), const, 10),
        blockwise("x", (3,), add, BlockArg("s"), IndexSlot(0)),
    ])
    assert lg.fuse_blockwise(keep=["x"]) is lg


def test_fuse_keeps_index_slots_and_broadcasts_working():
    lg = LayerGraph([
        blockwise("s", (), const, 100),
        blockwise("a", (2, 3), idx2, IndexSlot(0), IndexSlot(1)),
        blockwise("b", (2, 3), add, BlockArg("a"), BlockArg("s"), IndexSlot(1)),
        blockwise("c", (2, 3), double, BlockArg("b")),
    ])
    fused = lg.fuse_blockwise(keep=["c"])
    assert set(fused.layers) == {"s", "c"}
    st = structure(fused.lower())
    assert st[("c", 1, 2)] == {"s"}
    outs = grid("c", (2, 3))
    assert run(fused, outs) == run(lg, outs) == {
        ("c", i, j): 2 * (10 * i + j + 100 + j) for i in range(2) for j in range(3)}


def test_fuse_two_independent_chains_into_a_join():
    lg = LayerGraph([
        blockwise("p0", (5,), const, IndexSlot(0)),
        blockwise("p1", (5,), inc, BlockArg("p0")),
        blockwise("q0", (5,), const, 10),
        blockwise("q1", (5,), double, BlockArg("q0")),
        blockwise("j", (5,), add, BlockArg("p1"), BlockArg("q1")),
    ])
    fused = lg.fuse_blockwise(keep=["j"])
    assert list(fused.layers) == ["j"]
    outs = grid("j", (5,))
    assert run(fused, outs) == run(lg, outs) == {("j", i): i + 1 + 20 for i in range(5)}


def test_fuse_without_candidates_returns_the_same_graph():
    lg = diamond()
    assert lg.fuse_blockwise(keep=list(lg.layers)) is lg


def test_fuse_a_long_chain():
    length = 400
    lg = LayerGraph(chain(length, width=2))
    last = f"c{length - 1}"
    fused = without_recursion_error(lambda: lg.fuse_blockwise(keep=[last]))
    # chains fuse into pieces of at most MAX_FUSED_DEPTH layers, so templates stay compilable
    assert len(fused) == -(-length // MAX_FUSED_DEPTH)
    out = without_recursion_error(lambda: fused.lower().execute([(last, 0), (last, 1)]))
    assert out == {(last, i): i + length - 1 for i in range(2)}


def test_layer_graph_of_many_layers_in_reverse_order():
    lg = without_recursion_error(lambda: LayerGraph(chain(1200, width=1)[::-1]))
    assert list(lg.layers)[0] == "c0"


def test_layer_graph_of_many_layers_in_order():
    lg = LayerGraph(chain(1200, width=1))
    assert len(lg) == 1200
    assert lg.lower().execute(keys=[("c1199", 0)]) == {("c1199", 0): 1199}


def test_blockwise_helper_and_equality():
    a = blockwise("x", [2, 2], operator.add, IndexSlot(0), IndexSlot(1))
    assert a == Blockwise("x", (2, 2), Task(operator.add, IndexSlot(0), IndexSlot(1)))
    assert a.shape == (2, 2) and a.n_tasks == 4 and a.dependencies == ()
    shuffle = partial(Shuffle, "sh", "p", split_items, concat)
    assert shuffle(max_branch=3) == shuffle(max_branch=3)
    assert math.prod(Reduction("r", "x", total).shape) == 1


# --- property: fusion never changes what the kept layers compute ---------------------------


@st.composite
def blockwise_dags(draw):
    """Up to 8 Blockwise layers of one shape or single-key, each reading up to three earlier
    layers it may read (possibly the same one twice), and a random set of layers to keep."""
    n_layers = draw(st.integers(1, 8))
    shape = draw(st.sampled_from([(3,), (2, 2)]))
    layers: list = []
    for i in range(n_layers):
        single = i > 0 and draw(st.integers(0, 3)) == 0
        # a single-key layer can only read single-key layers
        readable = [lay.name for lay in layers if not single or not lay.out_shape]
        reads = draw(st.lists(st.sampled_from(readable), max_size=3)) if readable else []
        args: list = [BlockArg(r) for r in reads]
        if not single:
            args.append(IndexSlot(0))
        if args and draw(st.booleans()):
            args[0] = Task(double, args[0])
        layers.append(Blockwise(f"L{i}", () if single else shape, Task(add, *args, i)))
    keep = draw(st.lists(st.sampled_from([lay.name for lay in layers]), unique=True))
    return layers, keep


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blockwise_dags())
def test_fuse_blockwise_preserves_results(case):
    layers, keep = case
    lg = LayerGraph(layers)
    readers = lg.dependents()
    sinks = [nm for nm, r in readers.items() if not r]
    keep = list(dict.fromkeys(keep + sinks))
    fused = lg.fuse_blockwise(keep=keep)
    assert set(keep) <= set(fused.layers)
    for name in set(lg.layers) - set(fused.layers):
        # only a layer read by exactly one layer, once, of the same shape, is fused away
        (reader,) = readers[name]
        assert lg[reader].out_shape == lg[name].out_shape
        assert sum(1 for p in _block_args(lg[reader].template) if p == name) == 1
    outputs = [k for nm in keep for k in grid(nm, lg[nm].shape)]
    assert fused.lower().execute(keys=outputs) == lg.lower().execute(keys=outputs)
    assert fused.n_tasks <= lg.n_tasks


def _block_args(spec):
    from scheduler.graph.task import placeholders

    return [p.name for p in placeholders(spec) if type(p) is BlockArg]
