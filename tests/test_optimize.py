"""Tests of ``scheduler.graph.optimize``: cull and linear fusion.

Every optimised graph is checked three ways: it validates, it has the tasks the rules say it
should (compared with a plain reference computed from ``to_dict``), and it computes the same
values as the original (``TaskGraph.execute``).
"""

from __future__ import annotations

import operator
from collections import deque
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.graph.errors import UnknownKeyError
from scheduler.graph.keys import ExplicitKeys, KeyBlock, RegularKeys
from scheduler.graph.lowgraph import TaskGraph, TaskGroup
from scheduler.graph.optimize import cull, fuse_linear, inline_dependency, key_ids
from scheduler.graph.task import (
    DepList,
    DepSlot,
    IndexSlot,
    Ref,
    Task,
    placeholders,
    refs_to_slots,
    run_spec,
    spec_refs,
)

_PRIME = 2**61 - 1


def mix(tag: int, *parts: Any) -> int:
    """A deterministic value that depends on the tag, every argument and their order."""
    h = tag % _PRIME
    for p in parts:
        for q in (p if isinstance(p, list) else [p]):
            h = (h * 1_000_003 + q) % _PRIME
    return h


def ids(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start, start + n).reshape(n, 1)


def regular_chain(length: int, n_groups: int, *, index_slot: bool = True) -> TaskGraph:
    """g0_i = mix(0, i); g{k}_i = mix(k, g{k-1}_i) for k >= 1: one-to-one chains of groups."""
    first = Task(mix, 0, IndexSlot(0)) if index_slot else Task(mix, 0, 7)
    groups = [TaskGroup.uniform(RegularKeys("g0", (length,)), first, np.zeros((length, 0)))]
    for k in range(1, n_groups):
        groups.append(TaskGroup.uniform(RegularKeys(f"g{k}", (length,)),
                                        Task(mix, k, DepSlot(0)), ids(length, (k - 1) * length)))
    return TaskGraph(groups)


def x_y_z(n: int = 6) -> TaskGraph:
    """x_i = mix(1, i); y_i = x_i + 1; z_i = mix(3, [y_i, y_{i+1}]) for i < n - 1."""
    x = TaskGroup.uniform(RegularKeys("x", (n,)), Task(mix, 1, IndexSlot(0)), np.zeros((n, 0)))
    y = TaskGroup.uniform(RegularKeys("y", (n,)), Task(operator.add, DepSlot(0), 1), ids(n))
    pairs = np.stack([np.arange(n - 1), np.arange(1, n)], axis=1) + n
    z = TaskGroup.uniform(RegularKeys("z", (n - 1,)), Task(mix, 3, DepList(0, None)), pairs)
    return TaskGraph([x, y, z])


def explicit_group(dsk: dict, ids_by_key: dict) -> TaskGroup:
    """An explicit group of ``{key: spec with Ref}`` whose Refs are ids in ``ids_by_key``
    (which must also give this group's own keys their ids)."""
    specs: list[Any] = []
    ptr: list[int] = [0]
    idx: list[int] = []
    for spec in dsk.values():
        spec, deps = refs_to_slots(spec)
        specs.append(spec)
        idx.extend(ids_by_key[d] for d in deps)
        ptr.append(len(idx))
    return TaskGroup(ExplicitKeys(list(dsk)), specs=specs, indptr=np.asarray(ptr),
                     indices=np.asarray(idx, dtype=np.int64))


def ancestors(graph: TaskGraph, keys: list) -> set:
    """The requested keys and everything they need, by breadth-first search on ``to_dict``."""
    dsk = graph.to_dict()
    seen = set(keys)
    todo = deque(keys)
    while todo:
        k = todo.popleft()
        for d in spec_refs(dsk[k]) if k in dsk else ():
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def ext_values(graph: TaskGraph) -> dict:
    return {k: sum(map(ord, repr(k))) for k in graph.external}  # by key, not position


def same_values(original: TaskGraph, optimised: TaskGraph, keys: list) -> None:
    assert optimised.execute(keys, ext_values(optimised)) == original.execute(
        keys, ext_values(original))


# --- cull: hand-built graphs ---------------------------------------------------------------

def test_cull_partial_regular_groups() -> None:
    g = x_y_z()
    out = cull(g, [("z", 0), ("z", 2)])
    out.validate()
    assert set(out.keys()) == {("z", 0), ("z", 2), ("y", 0), ("y", 1), ("y", 2), ("y", 3),
                               ("x", 0), ("x", 1), ("x", 2), ("x", 3)}
    x, y, z = out.groups
    # x's template reads its block index: partial, so it becomes per-task specs with the
    # index filled in; y's template does not, so y keeps it under explicit keys.
    assert not x.regular and isinstance(x.keys, ExplicitKeys)
    assert x.specs == [Task(mix, 1, i) for i in range(4)]
    assert y.regular and y.template is g.groups[1].template
    assert isinstance(y.keys, ExplicitKeys)
    assert out.to_dict() == {k: v for k, v in g.to_dict().items() if k in set(out.keys())}
    same_values(g, out, [("z", 0), ("z", 2)])


def test_cull_whole_groups_keep_their_regular_keys() -> None:
    g = x_y_z()
    out = cull(g, [("y", i) for i in range(6)])
    assert [grp.keys for grp in out.groups] == [RegularKeys("x", (6,)), RegularKeys("y", (6,))]
    assert out.groups[0].template is g.groups[0].template
    same_values(g, out, [("y", i) for i in range(6)])


def test_cull_nothing_to_drop_returns_same_object() -> None:
    g = x_y_z()
    assert cull(g, [("z", i) for i in range(5)]) is g
    d = TaskGraph.from_dict({"a": 1, "b": Task(operator.neg, Ref("a"))})
    assert cull(d, ["b"]) is d


def test_cull_two_dimensional_partial_group() -> None:
    a = TaskGroup.uniform(RegularKeys("a", (3, 4)), Task(mix, 5, IndexSlot(0), IndexSlot(1)),
                          np.zeros((12, 0)))
    b = TaskGroup.uniform(RegularKeys("b", (3, 4)), Task(mix, 6, DepSlot(0), IndexSlot(1)),
                          ids(12))
    g = TaskGraph([a, b])
    want = [("b", 2, 3), ("b", 0, 1)]
    out = cull(g, want)
    out.validate()
    assert set(out.keys()) == {("a", 0, 1), ("a", 2, 3), ("b", 0, 1), ("b", 2, 3)}
    assert all(not grp.regular for grp in out.groups)
    same_values(g, out, want)


def test_cull_explicit_group_with_internal_edges() -> None:
    dsk = {"d": Task(mix, 4, Ref("c")), "c": Task(mix, 3, Ref("b"), Ref("a")),
           "b": Task(mix, 2, Ref("a")), "a": 1, "other": Task(mix, 9, Ref("a"))}
    g = TaskGraph.from_dict(dsk)
    out = cull(g, ["d"])
    out.validate()
    assert set(out.keys()) == {"a", "b", "c", "d"}
    same_values(g, out, ["d"])


def test_cull_drops_external_keys_no_longer_used() -> None:
    g = TaskGraph.from_dict({"a": Task(mix, 1, Ref("e1")), "b": Task(mix, 2, Ref("e2")),
                             "c": Task(mix, 3, Ref("a"), Ref("e1"))}, external=["e1", "e2"])
    out = cull(g, ["c"])
    out.validate()
    assert out.external == ["e1"]
    same_values(g, out, ["c"])
    # A requested external key stays even if no task uses it any more.
    out = cull(g, ["a", "e2"])
    assert out.external == ["e1", "e2"] and set(out.keys()) == {"a"}
    same_values(g, out, ["a", "e2"])


def test_cull_mixed_regular_and_explicit_groups() -> None:
    x = TaskGroup.uniform(RegularKeys("x", (4,)), Task(mix, 1, IndexSlot(0)), np.zeros((4, 0)))
    id_of = {("x", i): i for i in range(4)} | {"s": 4, "t": 5, "ext": 6}
    e = explicit_group({"s": Task(mix, 2, Ref(("x", 1)), Ref(("x", 3))),
                        "t": Task(mix, 3, Ref("s"), Ref("ext"))}, id_of)
    g = TaskGraph([x, e], external=["ext"])
    out = cull(g, ["t"])
    out.validate()
    assert set(out.keys()) == {("x", 1), ("x", 3), "s", "t"}
    assert out.external == ["ext"]
    same_values(g, out, ["t"])


def test_cull_no_keys_gives_empty_graph() -> None:
    out = cull(x_y_z(), [])
    out.validate()
    assert len(out) == 0 and out.groups == [] and out.external == []


def test_cull_unknown_keys_are_named() -> None:
    g = x_y_z()
    with pytest.raises(UnknownKeyError) as info:
        cull(g, [("z", 0), ("z", 99), "nope"])
    assert info.value.keys == [("z", 99), "nope"]
    assert "('z', 99)" in str(info.value) and "'nope'" in str(info.value)
    # Parts that only look like ints are not block indices (as in RegularKeys.position).
    for bad in [("z", 1.0), ("z", True)]:
        with pytest.raises(UnknownKeyError) as info:
            cull(g, [("z", 0), bad])
        assert info.value.keys == [bad]
    with pytest.raises(TypeError, match="iterable of keys"):
        cull(g, "x")


@given(st.lists(st.one_of(
    st.tuples(st.sampled_from(["x", "y", "z", "w"]), st.integers(-2, 8)),
    st.tuples(st.sampled_from(["x", "z"]), st.integers(0, 5), st.integers(0, 5)),
    st.sampled_from(["x", "q"])), max_size=12))
def test_key_lookup_agrees_with_ids_of(keys: list) -> None:
    g = x_y_z()
    expected = [g.id_of(k) for k in keys]
    if -1 in expected:
        with pytest.raises(UnknownKeyError) as info:
            key_ids(g, keys)
        assert info.value.keys == [k for k, i in zip(keys, expected, strict=True) if i < 0]
    else:
        assert key_ids(g, keys).tolist() == expected


# --- fuse_linear: hand-built graphs --------------------------------------------------------

def test_fuse_chain_of_ten_regular_groups_into_one() -> None:
    g = regular_chain(1000, 10)
    last = [("g9", i) for i in range(1000)]
    out = fuse_linear(g, keep=last)
    out.validate()
    assert len(out.groups) == 1 and len(out) == 1000
    fused = out.groups[0]
    assert fused.regular and fused.keys == RegularKeys("g9", (1000,))
    assert out.n_edges == 0
    assert out.spec_with_refs(5) == Task(mix, 9, Task(mix, 8, Task(mix, 7, Task(mix, 6, Task(
        mix, 5, Task(mix, 4, Task(mix, 3, Task(mix, 2, Task(mix, 1, Task(mix, 0, 5))))))))))
    same_values(g, out, last)


def test_fuse_regular_chain_with_external_input_and_cap() -> None:
    n = 50
    groups = [TaskGroup.uniform(RegularKeys("g0", (n,)), Task(mix, 0, DepSlot(0), IndexSlot(0)),
                                np.full((n, 1), 6 * n))]
    for k in range(1, 6):
        groups.append(TaskGroup.uniform(RegularKeys(f"g{k}", (n,)), Task(mix, k, DepSlot(0)),
                                        ids(n, (k - 1) * n)))
    g = TaskGraph(groups, external=["seed"])
    last = [("g5", i) for i in range(n)]
    out = fuse_linear(g, keep=last, max_chain=4)
    out.validate()
    # Six groups, at most four per fused group: g0..g3 into g3, then g4..g5 into g5.
    assert [grp.keys.name for grp in out.groups] == ["g3", "g5"]  # type: ignore[attr-defined]
    assert out.external == ["seed"]
    same_values(g, out, last)


def scaled(values: list, *, scale: int) -> int:
    return sum(values) * scale


def from_dict_arg(d: dict) -> int:
    return mix(2, d["v"], d["i"])


def test_fuse_templates_with_lists_and_keywords() -> None:
    n = 7
    x = TaskGroup.uniform(RegularKeys("x", (n,)), Task(mix, 1, IndexSlot(0)), np.zeros((n, 0)))
    y = TaskGroup.uniform(RegularKeys("y", (n,)),
                          Task(scaled, DepList(0, None), scale=3), ids(n))
    z = TaskGroup.uniform(RegularKeys("z", (n,)),
                          Task(from_dict_arg, {"v": [DepSlot(-1)], "i": IndexSlot(0)}), ids(n, n))
    g = TaskGraph([x, y, z])
    last = z.keys.tolist()
    out = fuse_linear(g, keep=last)
    out.validate()
    assert len(out.groups) == 1 and out.groups[0].regular
    assert out.spec_with_refs(2) == Task(
        from_dict_arg, {"v": [Task(scaled, [Task(mix, 1, 2)], scale=3)], "i": 2})
    same_values(g, out, last)


def test_fuse_never_removes_a_kept_key() -> None:
    g = regular_chain(20, 6)
    keep = [("g5", i) for i in range(20)] + [("g2", 7)]
    out = fuse_linear(g, keep=keep)
    out.validate()
    assert [grp.keys.name for grp in out.groups] == ["g2", "g5"]  # type: ignore[attr-defined]
    same_values(g, out, keep)


def test_fuse_not_when_a_task_has_two_dependents() -> None:
    x = TaskGroup.uniform(RegularKeys("x", (5,)), Task(mix, 1, IndexSlot(0)), np.zeros((5, 0)))
    y = TaskGroup.uniform(RegularKeys("y", (5,)), Task(mix, 2, DepSlot(0)), ids(5))
    z = TaskGroup.uniform(RegularKeys("z", (5,)), Task(mix, 3, DepSlot(0)), ids(5))
    g = TaskGraph([x, y, z])
    assert fuse_linear(g) is g
    d = TaskGraph.from_dict({"a": 1, "b": Task(mix, 2, Ref("a")), "c": Task(mix, 3, Ref("a"))})
    assert fuse_linear(d) is d


def test_fuse_not_when_the_dependent_has_other_dependencies() -> None:
    d = TaskGraph.from_dict({"a": 1, "b": 2, "c": Task(mix, 3, Ref("a"), Ref("b"))})
    assert fuse_linear(d) is d


def test_fuse_not_when_the_value_is_used_twice() -> None:
    d = TaskGraph.from_dict({"a": Task(mix, 1, 2), "b": Task(mix, 2, Ref("a"), Ref("a"))})
    assert fuse_linear(d) is d  # fusing would compute a twice


def test_fuse_explicit_chain_and_cap() -> None:
    dsk: dict[Any, Any] = {"t0": Task(mix, 0, 1)}
    for i in range(1, 20):
        dsk[f"t{i}"] = Task(mix, i, Ref(f"t{i - 1}"))
    g = TaskGraph.from_dict(dict(reversed(list(dsk.items()))))
    out = fuse_linear(g, keep=["t19"])
    out.validate()
    assert out.keys() == ["t19"] and out.n_edges == 0
    same_values(g, out, ["t19"])
    out = fuse_linear(g, keep=["t19"], max_chain=5)
    out.validate()
    assert sorted(out.keys()) == ["t14", "t19", "t4", "t9"]
    same_values(g, out, ["t19"])
    assert fuse_linear(g, keep=["t19"], max_chain=1) is g


def test_fuse_long_explicit_chain_stays_runnable() -> None:
    dsk: dict[Any, Any] = {"t0": 0}
    for i in range(1, 2000):
        dsk[f"t{i}"] = Task(operator.add, Ref(f"t{i - 1}"), 1)
    g = TaskGraph.from_dict(dsk)
    out = fuse_linear(g, keep=["t1999"])  # default cap keeps specs shallow enough to run
    assert len(out) < 2000 // 32
    assert out.execute(["t1999"]) == {"t1999": 1999}


def test_fuse_regular_group_into_explicit_tasks() -> None:
    x = TaskGroup.uniform(RegularKeys("x", (4,)), Task(mix, 1, IndexSlot(0)), np.zeros((4, 0)))
    id_of = {("x", i): i for i in range(4)}
    tail = explicit_group({f"s{i}": Task(mix, 2, Ref(("x", i))) for i in range(3)}, id_of)
    g = TaskGraph([x, tail])
    keep: list[Any] = ["s0", "s1", "s2", ("x", 3)]
    out = fuse_linear(g, keep=keep)
    out.validate()
    assert set(out.keys()) == {("x", 3), "s0", "s1", "s2"}
    assert out.to_dict()["s1"] == Task(mix, 2, Task(mix, 1, 1))
    same_values(g, out, keep)


def test_fuse_index_slot_needs_matching_shapes() -> None:
    a = TaskGroup.uniform(RegularKeys("a", (6,)), Task(mix, 1, IndexSlot(0)), np.zeros((6, 0)))
    b = TaskGroup.uniform(RegularKeys("b", (2, 3)), Task(mix, 2, DepSlot(0)), ids(6))
    g = TaskGraph([a, b])
    assert fuse_linear(g) is g  # a's index would be read from b's 2-D index
    a2 = TaskGroup.uniform(RegularKeys("a", (6,)), Task(mix, 1, 5), np.zeros((6, 0)))
    g2 = TaskGraph([a2, b])
    out = fuse_linear(g2)
    assert len(out.groups) == 1
    same_values(g2, out, g2.groups[1].keys.tolist())


def test_fuse_unknown_keep_key_and_bad_cap() -> None:
    g = regular_chain(3, 2)
    with pytest.raises(UnknownKeyError, match="nope"):
        fuse_linear(g, keep=["nope"])
    with pytest.raises(ValueError, match="max_chain"):
        fuse_linear(g, max_chain=0)


def test_cull_then_fuse() -> None:
    g = x_y_z(8)
    want = [("z", 3)]
    out = fuse_linear(cull(g, want), keep=want)
    out.validate()
    assert set(out.keys()) == {("y", 3), ("y", 4), ("z", 3)}
    same_values(g, out, want)


# --- inline_dependency ---------------------------------------------------------------------

slot_refs = st.one_of(
    st.builds(DepSlot, st.integers(-3, 3)),
    st.builds(DepList, st.integers(-3, 3) | st.none(), st.integers(-3, 4) | st.none()))


@given(st.integers(1, 3).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))),
       st.lists(slot_refs, min_size=1, max_size=4), st.integers(1, 3),
       st.lists(slot_refs, max_size=3))
def test_inline_dependency_renumbers_like_the_two_step_run(
        outer_shape: tuple[int, int], outer_parts: list, n_inner: int, inner_parts: list) -> None:
    n_outer, slot = outer_shape
    outer_parts = [p for p in outer_parts if type(p) is DepList or -n_outer <= p.i < n_outer]
    inner_parts = [p for p in inner_parts if type(p) is DepList or -n_inner <= p.i < n_inner]
    outer = Task(lambda *a: a, *outer_parts)
    inner = Task(lambda *a: ("inner", a), *inner_parts)
    inner_deps = [f"i{j}" for j in range(n_inner)]
    outer_deps = [f"o{j}" for j in range(n_outer)]
    two_steps = outer_deps.copy()
    two_steps[slot] = run_spec(inner, inner_deps)
    fused = inline_dependency(outer, slot, inner, n_outer=n_outer, n_inner=n_inner)
    one_step = inner_deps + outer_deps[:slot] + outer_deps[slot + 1:]
    assert run_spec(fused, one_step) == run_spec(outer, two_steps)


def test_inline_dependency_rejects_bad_slots() -> None:
    with pytest.raises(ValueError, match="slot"):
        inline_dependency(DepSlot(0), 1, 5, n_outer=1)
    with pytest.raises(ValueError, match="DepSlot"):
        inline_dependency(Task(mix, DepSlot(0), DepSlot(2)), 0, 5, n_outer=2, n_inner=0)
    with pytest.raises(ValueError, match="n_inner"):
        inline_dependency(Task(mix, DepSlot(0), DepSlot(1)), 0, 5, n_outer=2)


# --- random graphs -------------------------------------------------------------------------

@st.composite
def explicit_dags(draw: st.DrawFn) -> TaskGraph:
    """One explicit group (``from_dict``, random insertion order), often with long chains."""
    n = draw(st.integers(1, 24))
    external = [("ext", j) for j in range(draw(st.integers(0, 2)))]
    keys: list[Any] = [f"t{i}" if i % 3 else ("t", i) for i in range(n)]
    chainy = draw(st.booleans())
    dsk: dict[Any, Any] = {}
    for i, key in enumerate(keys):
        pool = keys[:i] + external
        if chainy and i and draw(st.integers(0, 4)):
            deps = [keys[i - 1]]
        elif pool:
            deps = draw(st.lists(st.sampled_from(pool), unique=True, max_size=3))
        else:
            deps = []
        refs = [Ref(d) for d in deps]
        shape = draw(st.integers(0, 2))
        if shape == 1 and refs:
            dsk[key] = Task(mix, i, Task(mix, -i, refs[0]), refs[1:])
        elif shape == 2 and refs:
            dsk[key] = Task(mix, i, *refs, refs[0])  # uses its first dependency twice
        else:
            dsk[key] = Task(mix, i, *refs)
    order = draw(st.permutations(keys))
    return TaskGraph.from_dict({k: dsk[k] for k in order}, external=external)


@st.composite
def mixed_graphs(draw: st.DrawFn) -> TaskGraph:
    """Regular groups (1-D and 2-D, with ``IndexSlot``, some mapping the previous group one
    to one), explicit groups with internal edges, and external keys."""
    n_ext = draw(st.integers(0, 2))
    external = [f"ext-{j}" for j in range(n_ext)]
    built: list[tuple[Any, Any, Any, list[list[tuple[str, int]]]]] = []
    total = 0
    for gidx in range(draw(st.integers(1, 5))):
        prev = built[-1] if built else None
        kind = draw(st.sampled_from(["regular", "explicit", "identity"]))
        earlier = [("t", t) for t in range(total)] + [("e", j) for j in range(n_ext)]
        keys: KeyBlock
        if kind == "identity" and prev is not None and len(prev[0]):
            # One to one onto the previous group, regular or explicit.
            keys = RegularKeys(f"r{gidx}", prev[0].shape if prev[1] is not None
                               else (len(prev[0]),))
            start = total - len(prev[0])
            rows = [[("t", start + i)] for i in range(len(keys))]
            template = (Task(mix, gidx, DepSlot(0), IndexSlot(0)) if draw(st.booleans())
                        else Task(mix, gidx, DepSlot(0)))
            built.append((keys, template, None, rows))
        elif kind != "explicit":
            shape = draw(st.sampled_from([(0,), (1,), (4,), (5,), (2, 3), (3, 1)]))
            keys = RegularKeys(f"r{gidx}", shape)
            template = Task(mix, gidx, IndexSlot(len(shape) - 1), DepList(0, None))
            rows = [draw(st.lists(st.sampled_from(earlier), unique=True, max_size=2))
                    if earlier else [] for _ in range(len(keys))]
            built.append((keys, template, None, rows))
        else:
            size = draw(st.integers(1, 5))
            keys = ExplicitKeys([f"e{gidx}-{i}" if i % 2 else (f"e{gidx}", i, "s")
                                 for i in range(size)])
            rank = draw(st.permutations(range(size)))
            rows, specs = [], []
            for i in range(size):
                own = [("t", total + j) for j in range(size) if rank[j] < rank[i]]
                pool = earlier + own
                row = draw(st.lists(st.sampled_from(pool), unique=True, max_size=3)) if pool else []
                rows.append(row)
                specs.append(Task(mix, 10 * gidx + i, *[DepSlot(j) for j in range(len(row))]))
            built.append((keys, None, specs, rows))
        total += len(keys)
    groups = []
    for keys, template, specs, rows in built:
        flat = [t if kind == "t" else total + t for row in rows for kind, t in row]
        indptr = np.cumsum([0] + [len(r) for r in rows])
        groups.append(TaskGroup(keys, template=template, specs=specs, indptr=indptr,
                                indices=np.asarray(flat, dtype=np.int64)))
    return TaskGraph(groups, external=external)


graphs = st.one_of(explicit_dags(), mixed_graphs())
checks = settings(max_examples=150, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@checks
@given(graphs, st.data())
def test_cull_keeps_exactly_the_ancestors(graph: TaskGraph, data: st.DataObject) -> None:
    every = graph.keys() + graph.external
    want = data.draw(st.lists(st.sampled_from(every), unique=True, max_size=5)) if every else []
    out = cull(graph, want)
    out.validate()
    need = ancestors(graph, want)
    assert set(out.keys()) == need - set(graph.external)
    assert out.external == [k for k in graph.external if k in need]
    original = graph.to_dict()
    assert out.to_dict() == {k: original[k] for k in out.keys()}  # noqa: SIM118
    same_values(graph, out, want)
    if len(out) == len(graph) and out.external == graph.external:
        assert out is graph


def fusable(graph: TaskGraph, keep: list) -> set:
    """Keys the fusion rule allows to inline into their dependent (reference, from to_dict)."""
    dsk = graph.to_dict()
    uses = {k: [p.key for p in placeholders(v) if type(p) is Ref] for k, v in dsk.items()}
    dependents: dict[Any, list] = {}
    for b, refs in uses.items():
        for a in set(refs):
            dependents.setdefault(a, []).append(b)
    return {a for a, bs in dependents.items()
            if a in dsk and a not in keep and len(bs) == 1 and uses[bs[0]] == [a]}


@checks
@given(graphs, st.data(), st.sampled_from([None, 2, 3]))
def test_fuse_linear_follows_the_rule_and_keeps_values(graph: TaskGraph, data: st.DataObject,
                                                      max_chain: int | None) -> None:
    every = graph.keys()
    keep = data.draw(st.lists(st.sampled_from(every), unique=True, max_size=4)) if every else []
    out = fuse_linear(graph, keep=keep, max_chain=max_chain)
    out.validate()
    remaining = out.keys()
    assert set(keep) <= set(remaining)
    assert out.external == graph.external
    gone = set(every) - set(remaining)
    allowed = fusable(graph, keep)
    assert gone <= allowed
    if max_chain is None and len(graph.groups) == 1 and not graph.groups[0].regular:
        assert gone == allowed  # explicit graphs: every allowed link is fused
    if not gone:
        assert out is graph
    # Every task that remains computes the value it did before, also after a cull.
    same_values(graph, out, remaining)
    both = fuse_linear(cull(graph, keep), keep=keep, max_chain=max_chain)
    both.validate()
    same_values(graph, both, keep)
