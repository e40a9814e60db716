"""Keys, task specs and the columnar low-level graph (``scheduler/graph/{keys,task,lowgraph}``)."""

from __future__ import annotations

import operator
import pickle

import cloudpickle
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.graph.errors import (
    CycleError,
    DuplicateKeyError,
    GraphError,
    MissingDependencyError,
    UnknownKeyError,
)
from scheduler.graph.keys import ExplicitKeys, InvalidKeyError, RegularKeys, check_key, key_name
from scheduler.graph.lowgraph import TaskGraph, TaskGroup
from scheduler.graph.task import (
    BlockArg,
    DepList,
    DepSlot,
    IndexSlot,
    Ref,
    Task,
    compile_spec,
    has_placeholders,
    map_placeholders,
    refs_to_slots,
    run_spec,
    spec_refs,
)

# --- module-level task functions (picklable by reference) ----------------------------------


def add_all(*args, **kwargs):
    """Sum of every int found in the arguments (lists, tuples and dict values flattened)."""
    total = 0
    for a in list(args) + list(kwargs.values()):
        total += _flat_sum(a)
    return total


def _flat_sum(x):
    if isinstance(x, list | tuple):
        return sum(_flat_sum(v) for v in x)
    if isinstance(x, dict):
        return sum(_flat_sum(v) for v in x.values())
    return x


def ident(*args, **kwargs):
    """Return what it was called with, to see exactly what compile_spec passed."""
    return (args, kwargs)


def inc(x):
    return x + 1


def neg(x):
    return -x


# --- keys ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["x", "", ("x",), ("x", 0), ("x", 1, 2, 3), ("x", "y", 2.5),
                                 ("x", -1), ("a-b", 10**12), 3, 2.5, (), (1, 2),
                                 ("x", ("y", 1)), ("s", 1, (0,)), ((), ((),))])
def test_check_key_accepts(key):
    assert check_key(key) is key


@pytest.mark.parametrize(("key", "message"), [
    ((None, "x"), r"part at position \[0\] is a NoneType"),
    (("x", None), r"part at position \[1\] is a NoneType"),
    (("x", True), "is a bool.*use int"),
    (("x", ("y", [1])), r"at position \[1, 1\] is a list.*use a tuple"),
    (b"x", "is a bytes.*decode it to a str"),
    (True, "is a bool"),
    (None, "is a NoneType"),
    (["x", 1], "is a list"),
])
def test_check_key_rejects_with_a_reason(key, message):
    with pytest.raises(InvalidKeyError, match=message):
        check_key(key)


def test_invalid_key_error_is_a_type_error():
    assert issubclass(InvalidKeyError, TypeError)


def test_key_name():
    assert key_name("x") == "x"
    assert key_name(("x", 1, 2)) == "x"
    assert key_name(("x", (0,))) == "x"
    assert key_name(7) == 7
    assert key_name(()) == ()
    assert key_name(((1,), "x")) == ((1,), "x")


@pytest.mark.parametrize("shape", [(), (1,), (7,), (2, 3, 4), (3, 1, 2), (0,), (4, 0, 2)])
def test_regular_keys_round_trip(shape):
    block = RegularKeys("x", shape)
    keys = block.tolist()
    size = int(np.prod(shape)) if shape else 1
    assert len(block) == len(keys) == size
    assert len(set(keys)) == size
    assert list(block) == keys
    for i, k in enumerate(keys):
        assert block.key(i) == k
        assert block.position(k) == i
        check_key(k)
    if shape:
        # C order: the last index varies fastest, and keys are (name, *index)
        import itertools

        assert keys == [("x", *idx) for idx in itertools.product(*(range(s) for s in shape))]
        assert all(block.index(i) == k[1:] for i, k in enumerate(keys))
    else:
        assert keys == ["x"]
        assert block.index(0) == ()
    assert block.names() == {"x"}


def test_regular_keys_wrong_keys_give_minus_one():
    block = RegularKeys("x", (2, 3, 4))
    wrong = [("x", 1, 2), ("x", 1, 2, 3, 0), ("y", 0, 0, 0), ("x", 2, 0, 0), ("x", 0, 3, 0),
             ("x", 0, 0, 4), ("x", 0, 0, -1), ("x", 0, 0, "1"), ("x", 0, 0, 1.5), "x", ("x",),
             None, 5, ["x", 0, 0, 0], ("x", 0, 0, [1])]
    assert [block.position(k) for k in wrong] == [-1] * len(wrong)
    zero_d = RegularKeys("s", ())
    assert zero_d.position("s") == 0
    assert [zero_d.position(k) for k in [("s",), ("s", 0), "t", None]] == [-1] * 4
    one_d = RegularKeys("v", (5,))
    assert [one_d.position(k) for k in ["v", ("v", 5), ("v", -1), ("w", 0), ("v", 0, 0)]] == \
        [-1] * 5


@pytest.mark.parametrize("shape", [(7,), (2, 3, 4)])
def test_regular_keys_vectorised_positions_and_indices(shape):
    block = RegularKeys("x", shape)
    keys = block.tolist()[::-1]
    pos = block.positions(keys)
    assert pos.tolist() == [block.position(k) for k in keys]
    assert block.indices(pos) == [block.index(int(p)) for p in pos]
    outside = [("x", shape[0], *[0] * (len(shape) - 1)), ("x", *[-1] * len(shape))]
    assert block.positions(outside).tolist() == [-1, -1]
    # not (name, *ints) of this block: the caller must take the per-key path
    assert block.positions([("y", *([0] * len(shape)))]) is None
    assert block.positions(["x"]) is None
    assert block.positions([]) is None
    zeros = [0] * (len(shape) - 1)
    refused = [("x", True, *zeros), ("x", np.int64(0), *zeros), ("x", 2**70, *zeros),
               ("x", 0.0, *zeros), (["x"], 0, *zeros), ("x", *zeros), ("x", 0, *zeros, 0)]
    for bad in refused:  # beside a good key, each still sends the caller to the per-key path
        assert block.positions([keys[0], bad]) is None, bad


def test_regular_keys_key_out_of_range():
    block = RegularKeys("x", (2, 2))
    with pytest.raises(IndexError, match="position 4 outside key block 'x'"):
        block.key(4)
    with pytest.raises(IndexError):
        block.key(-1)


def test_regular_keys_bad_construction():
    with pytest.raises(ValueError, match="negative extent"):
        RegularKeys("x", (2, -1))
    with pytest.raises(InvalidKeyError, match="must be a str"):
        RegularKeys(("x",), (2,))  # type: ignore[arg-type]


def test_regular_keys_equality_and_hash():
    assert RegularKeys("x", [2, 3]) == RegularKeys("x", (2, 3))
    assert hash(RegularKeys("x", [2, 3])) == hash(RegularKeys("x", (2, 3)))
    assert RegularKeys("x", (2, 3)) != RegularKeys("x", (3, 2))
    assert RegularKeys("x", (2,)) != RegularKeys("y", (2,))


def test_explicit_keys():
    keys = ["a", ("b", 1), ("b", 2), ("c", "d", 0.5)]
    block = ExplicitKeys(keys)
    assert len(block) == 4
    assert block.tolist() == keys
    assert [block.position(k) for k in keys] == [0, 1, 2, 3]
    assert [block.key(i) for i in range(4)] == keys
    assert block.position("zz") == -1
    assert block.position(["a"]) == -1  # unhashable: cannot be a key
    assert block.position(("b", [1])) == -1
    assert block.names() == {"a", "b", "c"}
    assert block == ExplicitKeys(list(keys))
    assert hash(block) == hash(ExplicitKeys(list(keys)))


def test_explicit_keys_reject_duplicates():
    with pytest.raises(ValueError, match=r"key \('b', 1\) appears twice in one key block"):
        ExplicitKeys(["a", ("b", 1), "c", ("b", 1)])
    with pytest.raises(ValueError, match="key 'a' appears twice"):
        ExplicitKeys(["a", "a"])


def test_explicit_keys_validate_keys():
    with pytest.raises(InvalidKeyError):
        ExplicitKeys(["a", (1, [2])])


# --- Task and placeholders -----------------------------------------------------------------

def test_task_needs_a_callable():
    with pytest.raises(TypeError, match="a Task needs a callable, got int"):
        Task(3, 4)  # type: ignore[arg-type]


def test_task_equality():
    assert Task(add_all, 1, Ref("a"), k=2) == Task(add_all, 1, Ref("a"), k=2)
    assert Task(add_all, 1, Ref("a")) != Task(add_all, 1, Ref("b"))
    assert Task(add_all, 1) != Task(inc, 1)
    assert Task(add_all, 1, k=2) != Task(add_all, 1, k=3)
    assert Task(add_all, 1, k=2) != Task(add_all, 1)
    assert Task(add_all, [Task(inc, 1)]) == Task(add_all, [Task(inc, 1)])
    assert Task(add_all, 1) != (add_all, 1)
    with pytest.raises(TypeError):
        hash(Task(add_all, 1))


def test_placeholder_equality_and_hash():
    assert Ref("a") == Ref("a")
    assert Ref(("a", 1)) == Ref(("a", 1))
    assert Ref("a") != Ref("b")
    assert DepSlot(1) != Ref(1)
    assert DepSlot(0) == DepSlot(0)
    assert DepList() == DepList(0, None)
    assert DepList(1, 3) != DepList(1, None)
    assert IndexSlot(0) != DepSlot(0)
    assert BlockArg("x") == BlockArg("x")
    assert len({Ref("a"), Ref("a"), DepSlot(0), DepSlot(0), BlockArg("a")}) == 3
    assert repr(DepList(1, 3)) == "DepList(1, 3)"
    assert repr(Ref(("a", 1))) == "Ref(('a', 1))"


SPECS = [
    Task(add_all, 1, 2),
    Task(add_all, Ref("a"), [Ref(("b", 1)), {"k": DepSlot(2)}], (DepList(1, None),)),
    Task(add_all, Task(inc, Ref("a")), scale=3, extra=[IndexSlot(0)]),
    Task(operator.add, 1, Task(operator.mul, 2, 3)),
    Ref("a"),
    DepSlot(3),
    DepList(),
    DepList(2, 5),
    IndexSlot(1),
    BlockArg("layer"),
    [Ref("a"), (DepSlot(0),), {"z": Task(neg, 1, )}],
]


@pytest.mark.parametrize("dumps,loads", [(pickle.dumps, pickle.loads),
                                         (cloudpickle.dumps, pickle.loads)],
                         ids=["pickle", "cloudpickle"])
@pytest.mark.parametrize("spec", SPECS, ids=range(len(SPECS)))
def test_specs_pickle_round_trip(spec, dumps, loads):
    back = loads(dumps(spec))
    assert back == spec
    assert type(back) is type(spec)


def test_task_kwargs_survive_pickling():
    t = Task(ident, 1, a=Ref("x"), b=[2])
    for back in (pickle.loads(pickle.dumps(t)), pickle.loads(cloudpickle.dumps(t))):
        assert back.kwargs == {"a": Ref("x"), "b": [2]}
        assert back.args == (1,)
        assert run_spec(refs_to_slots(back)[0], deps=[9]) == ((1,), {"a": 9, "b": [2]})


def test_cloudpickle_of_a_lambda_task_still_runs():
    t = Task(lambda x, y=0: x * 10 + y, DepSlot(0), y=IndexSlot(0))
    back = pickle.loads(cloudpickle.dumps(t))
    assert run_spec(back, deps=[4], index=(2,)) == 42


# --- spec helpers --------------------------------------------------------------------------

def test_refs_to_slots_numbers_distinct_refs_in_order():
    spec = Task(add_all, Ref("b"), [Ref("a"), Ref("b")], {"x": Task(inc, Ref(("c", 0)))},
                k=Ref("a"))
    new, deps = refs_to_slots(spec)
    assert deps == ["b", "a", ("c", 0)]
    assert new == Task(add_all, DepSlot(0), [DepSlot(1), DepSlot(0)],
                       {"x": Task(inc, DepSlot(2))}, k=DepSlot(1))
    assert spec_refs(spec) == deps


def test_map_placeholders_returns_untouched_specs_as_they_are():
    spec = Task(add_all, [1, 2], {"a": (3,)}, k=4)
    assert map_placeholders(spec, lambda p: 0) is spec
    assert not has_placeholders(spec)
    assert has_placeholders([1, (2, {"k": Ref("a")})])
    assert not has_placeholders(np.arange(3))


# --- compile_spec --------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "deps", "index", "expected"), [
    # constants compute to themselves
    (5, [], (), 5),
    ("text", [], (), "text"),
    ([1, (2, 3), {"a": 4}], [], (), [1, (2, 3), {"a": 4}]),
    # placeholders
    (DepSlot(1), [10, 20], (), 20),
    (DepList(), [1, 2, 3], (), [1, 2, 3]),
    (DepList(1), [1, 2, 3], (), [2, 3]),
    (DepList(0, 2), [1, 2, 3], (), [1, 2]),
    (DepList(3), [1, 2, 3], (), []),
    (IndexSlot(1), [], (4, 5, 6), 5),
    # containers walked, type kept
    ([DepSlot(0), 1], [7], (), [7, 1]),
    ((DepSlot(0), 1), [7], (), (7, 1)),
    ({"a": DepSlot(0), "b": 2}, [7], (), {"a": 7, "b": 2}),
    ([(DepSlot(0), [IndexSlot(0), {"x": DepList(1)}])], [1, 2, 3], (9,),
     [(1, [9, {"x": [2, 3]}])]),
    # tasks, every specialised shape of _compile_task
    (Task(ident), [], (), ((), {})),
    (Task(ident, 1, 2), [], (), ((1, 2), {})),
    (Task(ident, DepSlot(0)), [3], (), ((3,), {})),
    (Task(ident, DepSlot(1)), [3, 4], (), ((4,), {})),
    (Task(ident, [DepSlot(0)]), [3], (), (([3],), {})),
    (Task(ident, DepSlot(0), 9), [3], (), ((3, 9), {})),
    (Task(ident, DepSlot(1), 9), [3, 4], (), ((4, 9), {})),
    (Task(ident, IndexSlot(0), [9]), [], (5,), ((5, [9]), {})),
    (Task(ident, 9, DepSlot(0)), [3], (), ((9, 3), {})),
    (Task(ident, DepSlot(1), DepSlot(0)), [3, 4], (), ((4, 3), {})),
    (Task(ident, DepSlot(0), 1, DepSlot(1)), [3, 4], (), ((3, 1, 4), {})),
    (Task(ident, DepList(), IndexSlot(0), 2, "x"), [1, 2], (7,), (([1, 2], 7, 2, "x"), {})),
    # kwargs
    (Task(ident, a=1), [], (), ((), {"a": 1})),
    (Task(ident, DepSlot(0), a=DepSlot(1), b=[IndexSlot(0)]), [1, 2], (3,),
     ((1,), {"a": 2, "b": [3]})),
    # nested tasks
    (Task(add_all, Task(inc, DepSlot(0)), [Task(neg, DepSlot(1))], {"k": Task(inc, 1)}),
     [10, 3], (), 11 - 3 + 2),
    (Task(operator.add, Task(operator.mul, DepSlot(0), IndexSlot(0)), 1), [6], (7,), 43),
])
def test_compile_spec(spec, deps, index, expected):
    run = compile_spec(spec)
    assert run(deps, index) == expected
    assert run(deps, index) == expected  # a compiled spec runs any number of times
    assert run_spec(spec, deps, index) == expected


def test_compiled_template_runs_with_different_deps():
    run = compile_spec(Task(add_all, DepList(), IndexSlot(0), scale=DepSlot(0)))
    assert run([1, 2], (10,)) == 1 + 2 + 10 + 1
    assert run([5], (0,)) == 5 + 0 + 5


@pytest.mark.parametrize("spec", [Ref("a"), Task(inc, Ref("a")), [BlockArg("x")],
                                  Task(ident, k=BlockArg("x"))])
def test_compile_spec_rejects_unresolved_placeholders(spec):
    with pytest.raises(ValueError, match="must be resolved before a task runs"):
        compile_spec(spec)


# --- TaskGraph -----------------------------------------------------------------------------

def small_graph() -> TaskGraph:
    return TaskGraph.from_dict({
        "a": 1,
        ("b", 0): Task(inc, Ref("a")),
        ("b", 1): Task(add_all, Ref("a"), [Ref(("b", 0))], k={"x": Ref("ext")}),
        "c": Task(add_all, Task(neg, Ref(("b", 1))), (Ref("a"), Ref(("b", 0)))),
        "alias": Ref("a"),
    }, external=["ext"])


def test_from_dict_and_execute():
    g = small_graph()
    assert len(g) == 5
    out = g.execute(external_values={"ext": 100})
    assert out == {"a": 1, ("b", 0): 2, ("b", 1): 1 + 2 + 100, "c": -103 + 1 + 2,
                   "alias": 1}
    assert g.execute(keys=["c"], external_values={"ext": 0}) == {"c": -3 + 3}
    assert g.execute(keys=[("b", 0), "a", ("b", 0)], external_values={"ext": 0}) == \
        {("b", 0): 2, "a": 1}


def test_execute_runs_dependencies_first_whatever_the_dict_order():
    g = TaskGraph.from_dict({
        "d": Task(add_all, Ref("c"), Ref("b")),
        "c": Task(inc, Ref("b")),
        "b": Task(inc, Ref("a")),
        "a": 0,
    })
    assert g.execute() == {"d": 3, "c": 2, "b": 1, "a": 0}


def test_execute_needs_every_external_value():
    g = small_graph()
    with pytest.raises(MissingDependencyError, match="'ext'"):
        g.execute()


def test_cycle_error_names_the_keys_on_the_cycle():
    dsk = {
        "start": 1,
        "a": Task(inc, Ref("c")),
        "b": Task(inc, Ref("a")),
        "c": Task(add_all, Ref("b"), Ref("start")),
        "after": Task(inc, Ref("a")),  # blocked by the cycle but not on it
    }
    with pytest.raises(CycleError) as info:
        TaskGraph.from_dict(dsk)
    err = info.value
    assert isinstance(err, GraphError) and isinstance(err, ValueError)
    cycle = err.cycle
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}
    assert len(cycle) == 4
    # each key depends on the next one
    deps = {"a": {"c"}, "b": {"a"}, "c": {"b", "start"}}
    assert all(cycle[i + 1] in deps[cycle[i]] for i in range(3))
    msg = str(err)
    assert "cycle" in msg
    for k in ("'a'", "'b'", "'c'"):
        assert k in msg
    assert "'after'" not in msg and "'start'" not in msg


def test_long_cycle_message_is_shortened_but_the_error_keeps_every_key():
    n = 12
    dsk = {("c", i): Task(inc, Ref(("c", (i + 1) % n))) for i in range(n)}
    with pytest.raises(CycleError) as info:
        TaskGraph.from_dict(dsk)
    cycle = info.value.cycle
    assert len(cycle) == n + 1 and set(cycle) == set(dsk)
    msg = str(info.value)
    assert msg.count("('c', ") == 8
    assert "-> ..." in msg


def test_self_dependency_is_a_cycle():
    with pytest.raises(CycleError, match=r"\('x', 1\) -> \('x', 1\)"):
        TaskGraph.from_dict({("x", 1): Task(inc, Ref(("x", 1)))})


def test_missing_dependency_names_the_key_and_a_task_needing_it():
    with pytest.raises(MissingDependencyError) as info:
        TaskGraph.from_dict({"a": 1, "b": Task(inc, Ref(("gone", 3))), "c": Ref("a")})
    assert info.value.missing == {("gone", 3): "b"}
    assert "('gone', 3) (needed by 'b')" in str(info.value)


def test_unknown_keys_requested():
    g = small_graph()
    with pytest.raises(UnknownKeyError) as info:
        g.ids_of(["a", "zz", ("b", 7)])
    assert info.value.keys == ["zz", ("b", 7)]
    assert "'zz'" in str(info.value) and "('b', 7)" in str(info.value)
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownKeyError, match="'nope'"):
        g.execute(keys=["a", "nope"], external_values={"ext": 0})


def test_ids_of_accepts_any_iterable():
    g = small_graph()
    assert g.ids_of(iter(["a", "c"])).tolist() == [0, 3]
    with pytest.raises(UnknownKeyError, match="'zz'"):
        g.ids_of(k for k in ["a", "zz"])
    regular = TaskGraph([_regular("x", (3, 4))])
    assert regular.ids_of(("x", i, 1) for i in range(3)).tolist() == [1, 5, 9]
    with pytest.raises(UnknownKeyError, match=r"\('x', 3, 0\)"):
        regular.ids_of(k for k in [("x", 0, 0), ("x", 3, 0)])
    assert regular.ids_of([]).tolist() == []


def test_ids_of_keys_of_one_regular_block():
    g = TaskGraph([_regular("y", (2,)), _regular("x", (3, 4))], external=[("x", 9, 9)])
    keys = [("x", i, j) for i in range(3) for j in range(4)][::-1]
    assert g.ids_of(keys).tolist() == [g.id_of(k) for k in keys] == list(range(13, 1, -1))
    # a regular block's keys mixed with others (and external keys) take the general path
    assert g.ids_of([("x", 0, 1), ("y", 1), ("x", 9, 9)]).tolist() == [3, 1, 14]
    for bad in [("x", 3, 0), ("x", 0, 4), ("x", -1, 0), ("x", 0, 2**70), ("x", 0),
                ("x", 0, 0, 0)]:
        with pytest.raises(UnknownKeyError) as info:
            g.ids_of([("x", 0, 0), bad])
        assert info.value.keys == [bad]


@pytest.mark.parametrize("other", [("x", 9, 9), ("x", 5, 5)], ids=["external", "explicit"])
def test_ids_of_keys_named_like_a_regular_block_but_defined_elsewhere(other):
    explicit = TaskGroup(ExplicitKeys([("x", 5, 5)]), specs=[1], indptr=[0, 0], indices=[])
    g = TaskGraph([_regular("x", (3, 4)), explicit], external=[("x", 9, 9)])
    keys = [("x", 0, 1), other]
    assert g.ids_of(keys).tolist() == [g.id_of(k) for k in keys]


@pytest.mark.parametrize("bad", [("x", 1.5, 2), ("x", "1", 2)])
def test_ids_of_does_not_coerce_index_parts(bad):
    g = TaskGraph([_regular("x", (3, 4))])
    assert g.id_of(bad) == -1
    with pytest.raises(UnknownKeyError):
        g.ids_of([("x", 0, 0), bad])


def _regular(name: str, shape: tuple, deps=None) -> TaskGroup:
    n = int(np.prod(shape)) if shape else 1
    return TaskGroup.uniform(RegularKeys(name, shape), Task(add_all, IndexSlot(0), DepList())
                             if shape else Task(add_all, DepList()),
                             np.zeros((n, 0), dtype=np.int64) if deps is None else deps)


def test_duplicate_keys_across_groups():
    explicit = TaskGroup(ExplicitKeys(["y", ("x", 2)]), specs=[1, 2], indptr=[0, 0, 0],
                         indices=[])
    with pytest.raises(DuplicateKeyError, match=r"\('x', 2\)"):
        TaskGraph([_regular("x", (3,)), explicit])
    with pytest.raises(DuplicateKeyError, match=r"\('x', 0\)"):
        TaskGraph([_regular("x", (3,)), _regular("x", (5,))])
    with pytest.raises(DuplicateKeyError, match="'s'"):
        TaskGraph([_regular("s", ()), TaskGroup(ExplicitKeys(["s"]), specs=[0],
                                                indptr=[0, 0], indices=[])])
    with pytest.raises(DuplicateKeyError, match="'a'"):
        TaskGraph.from_dict({"a": 1}, external=["a"])
    # same name, different number of dimensions: distinct keys
    g = TaskGraph([_regular("x", (3,)), _regular("x", (2, 2))])
    assert len(g) == 7
    assert g.id_of(("x", 1, 1)) == 6


def test_groups_out_of_topological_order_are_rejected():
    # group 0 (regular) reads group 1: a bug in whoever built it
    deps = np.array([[3], [3], [3]])
    with pytest.raises(ValueError, match="topological order"):
        TaskGraph([_regular("x", (3,), deps), _regular("y", (1,))])


def test_to_dict_gives_back_the_specs_with_refs():
    dsk = {
        "a": 1,
        ("b", 0): Task(inc, Ref("a")),
        ("b", 1): Task(add_all, Ref("a"), [Ref(("b", 0))], k={"x": Ref("ext")}),
    }
    g = TaskGraph.from_dict(dsk, external=["ext"])
    assert g.to_dict() == dsk
    again = TaskGraph.from_dict(g.to_dict(), external=["ext"])
    assert again.execute(external_values={"ext": 5}) == g.execute(external_values={"ext": 5})


def test_to_dict_of_regular_groups_resolves_slots():
    x = _regular("x", (3,))
    y = TaskGroup.uniform(RegularKeys("y", (3,)), Task(inc, DepSlot(0)),
                          np.arange(3).reshape(3, 1))
    g = TaskGraph([x, y])
    d = g.to_dict()
    assert d[("x", 2)] == Task(add_all, 2, [])
    assert d[("y", 1)] == Task(inc, Ref(("x", 1)))
    assert g.execute() == {("x", 0): 0, ("x", 1): 1, ("x", 2): 2,
                           ("y", 0): 1, ("y", 1): 2, ("y", 2): 3}


def test_edges_and_dependencies():
    g = small_graph()
    assert g.edges() == {
        ("a", ("b", 0)),
        ("a", ("b", 1)), (("b", 0), ("b", 1)), ("ext", ("b", 1)),
        (("b", 1), "c"), ("a", "c"), (("b", 0), "c"),
        ("a", "alias"),
    }
    assert g.n_edges == 8
    indptr, indices = g.dependencies()
    keys = g.keys() + g.external
    assert keys == ["a", ("b", 0), ("b", 1), "c", "alias", "ext"]
    per_task = {keys[i]: [keys[d] for d in indices[indptr[i]:indptr[i + 1]]]
                for i in range(len(g))}
    # in the order the spec's slots number them (first appearance)
    assert per_task == {"a": [], ("b", 0): ["a"], ("b", 1): ["a", ("b", 0), "ext"],
                        "c": [("b", 1), "a", ("b", 0)], "alias": ["a"]}


def test_dependencies_over_several_groups():
    x = _regular("x", (2,))
    y = TaskGroup.uniform(RegularKeys("y", (2,)), Task(add_all, DepList()),
                          np.array([[0, 1], [1, 0]]))
    z = TaskGroup(ExplicitKeys(["z"]), specs=[Task(add_all, DepList())],
                  indptr=[0, 3], indices=[2, 3, 5])
    g = TaskGraph([x, y, z], external=["e"])
    indptr, indices = g.dependencies()
    assert indptr.tolist() == [0, 0, 0, 2, 4, 7]
    assert indices.tolist() == [0, 1, 1, 0, 2, 3, 5]
    assert g.edges() == {(("x", 0), ("y", 0)), (("x", 1), ("y", 0)), (("x", 1), ("y", 1)),
                         (("x", 0), ("y", 1)), (("y", 0), "z"), (("y", 1), "z"), ("e", "z")}
    assert g.execute(external_values={"e": 10}) == {
        ("x", 0): 0, ("x", 1): 1, ("y", 0): 1, ("y", 1): 1, "z": 12}


def test_empty_graph():
    g = TaskGraph([])
    assert len(g) == 0
    assert g.execute() == {}
    assert g.edges() == set()
    indptr, indices = g.dependencies()
    assert indptr.tolist() == [0] and indices.tolist() == []


def test_key_of_and_id_of_including_external_keys():
    g = TaskGraph([_regular("x", (2, 3)), _regular("s", ())], external=["e", ("f", 1)])
    keys = g.keys()
    assert len(keys) == 7
    for tid, k in enumerate(keys + g.external):
        assert g.key_of(tid) == k
        assert g.id_of(k) == tid
    assert g.id_of("e") == 7 and g.id_of(("f", 1)) == 8
    assert g.key_of(8) == ("f", 1)
    for bad in ["zz", ("x", 2, 0), ("x", 0), ("f", 2), ["e"], ("x", [1]), None, 3]:
        assert g.id_of(bad) == -1
    with pytest.raises(IndexError):
        g.group_of(7)
    with pytest.raises(IndexError):
        g.key_of(-1)
    assert g.ids_of(["s", "e", ("x", 1, 2)]).tolist() == [6, 7, 5]
    assert g.group_of(4) == (0, 4)
    assert g.group_of(6) == (1, 0)


def test_external_key_listed_twice_is_rejected():
    with pytest.raises(DuplicateKeyError, match="'e'"):
        TaskGraph.from_dict({"a": Task(add_all, Ref("e"))}, external=["e", "e"])


def test_invalid_external_key_rejected():
    with pytest.raises(InvalidKeyError):
        TaskGraph([], external=[(1, None)])


# --- property: random explicit DAGs --------------------------------------------------------

def reference_eval(dsk: dict, external: dict) -> dict:
    """A deliberately naive evaluator: recursion with memo, spec walked at every call."""
    memo: dict = dict(external)

    def value(key):
        if key not in memo:
            memo[key] = walk(dsk[key])
        return memo[key]

    def walk(spec):
        if isinstance(spec, Ref):
            return value(spec.key)
        if isinstance(spec, Task):
            return spec.func(*[walk(a) for a in spec.args],
                             **{k: walk(v) for k, v in spec.kwargs.items()})
        if type(spec) is list:
            return [walk(a) for a in spec]
        if type(spec) is tuple:
            return tuple(walk(a) for a in spec)
        if type(spec) is dict:
            return {k: walk(v) for k, v in spec.items()}
        return spec

    return {k: value(k) for k in dsk}


def _key(i: int, style: int):
    return (f"k{i}", f"t{i}", ("t", i), ("u", i, "z"))[style % 4]


@st.composite
def random_dags(draw):
    n = draw(st.integers(1, 20))
    styles = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    keys = [_key(i, s) for i, s in enumerate(styles)]
    n_ext = draw(st.integers(0, 2))
    ext_keys = [("ext", j) for j in range(n_ext)]
    ext_vals = {k: draw(st.integers(-50, 50)) for k in ext_keys}
    dsk = {}
    for i, key in enumerate(keys):
        pool = keys[:i] + ext_keys
        deps = draw(st.lists(st.sampled_from(pool), max_size=4)) if pool else []
        refs = [Ref(d) for d in deps]
        c = draw(st.integers(-100, 100))
        kind = draw(st.integers(0, 6))
        if kind == 0 or not refs and kind == 5:
            spec = Task(add_all, refs, c)
        elif kind == 1:
            spec = Task(add_all, tuple(refs), {"c": c, "r": refs[:1]})
        elif kind == 2:
            spec = Task(add_all, [Task(neg, r) for r in refs], (Task(inc, c),))
        elif kind == 3:
            spec = Task(add_all, *refs, scale=c, more=[Task(inc, r) for r in refs[:2]])
        elif kind == 4:
            spec = c  # a constant task
        elif kind == 5:
            spec = refs[0]  # an alias of another result
        else:
            spec = Task(operator.add, Task(add_all, refs), c)
        dsk[key] = spec
    order = draw(st.permutations(list(dsk)))
    return {k: dsk[k] for k in order}, ext_vals


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dags())
def test_random_dags_execute_like_the_reference_evaluator(case):
    dsk, ext_vals = case
    g = TaskGraph.from_dict(dsk, external=list(ext_vals))
    expected = reference_eval(dsk, ext_vals)
    assert g.execute(external_values=ext_vals) == expected
    # the structure survives: same keys, same edges, and to_dict reproduces the specs
    assert g.keys() == list(dsk)
    edges = {(r, k) for k, spec in dsk.items() for r in spec_refs(spec)}
    assert g.edges() == edges
    assert g.to_dict() == dsk
    some = list(dsk)[::2]
    assert g.execute(keys=some, external_values=ext_vals) == {k: expected[k] for k in some}
    for k in list(dsk) + list(ext_vals):
        assert g.key_of(g.id_of(k)) == k


@settings(max_examples=40, deadline=None)
@given(random_dags(), st.data())
def test_random_dags_with_a_back_edge_are_cycles(case, data):
    dsk, _ = case
    keys = list(dsk)
    # pick a task with at least one dependency inside the graph and make one of its
    # ancestors without dependencies depend on it
    candidates = [k for k in keys if any(r in dsk for r in spec_refs(dsk[k]))]
    if not candidates:
        return
    k = data.draw(st.sampled_from(candidates))
    root = _a_root_of(dsk, k)
    bad = dict(dsk)
    bad[root] = Task(add_all, Ref(k), 0)
    with pytest.raises(CycleError) as info:
        TaskGraph.from_dict(bad, external=_externals(dsk))
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1]
    assert root in cycle and k in cycle
    # consecutive keys on the cycle: each depends on the next
    for a, b in zip(cycle, cycle[1:], strict=False):
        assert b in spec_refs(bad[a])


def _a_root_of(dsk, key):
    """Follow in-graph dependencies down to a task that has none."""
    while True:
        inside = [r for r in spec_refs(dsk[key]) if r in dsk]
        if not inside:
            return key
        key = inside[0]


def _externals(dsk):
    return sorted({r for spec in dsk.values() for r in spec_refs(spec) if r not in dsk})


def longest_paths(g: TaskGraph) -> list[int]:
    """Level of each task of a one-group graph, by repeated relaxation (Bellman-Ford)."""
    indptr, indices = g.dependencies()
    level = [0] * g.n
    for _ in range(g.n):
        changed = False
        for t in range(g.n):
            for d in indices[indptr[t]:indptr[t + 1]].tolist():
                if level[d] + 1 > level[t]:
                    level[t], changed = level[d] + 1, True
        if not changed:
            break
    return level


@pytest.mark.parametrize("deep", [0, 10**9])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_explicit_levels_are_longest_paths_by_numpy_steps_and_by_walk(
        seed: int, deep: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``explicit_levels`` gives each task 1 + its deepest dependency's level, whether it
    relaxes all edges per level or walks task by task; ``explicit_order`` runs dependencies first."""
    import random

    import scheduler.graph.lowgraph as lowgraph

    monkeypatch.setattr(lowgraph, "DEEP", deep)
    rng = random.Random(seed)
    n = 200
    deps = [rng.sample(range(i), min(i, rng.randint(0, 3))) for i in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    g = TaskGraph.from_dict({f"k{i}": Task(add_all, *[Ref(f"k{d}") for d in deps[i]])
                             for i in order})
    assert g.explicit_levels(0).tolist() == longest_paths(g)
    seen: set[int] = set()
    indptr, indices = g.dependencies()
    for t in g.explicit_order(0):
        assert set(indices[indptr[t]:indptr[t + 1]].tolist()) <= seen
        seen.add(t)
    assert len(seen) == n


@pytest.mark.parametrize("deep", [0, 10**9])
def test_cycles_are_found_by_numpy_steps_and_by_walk(
        deep: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import scheduler.graph.lowgraph as lowgraph

    monkeypatch.setattr(lowgraph, "DEEP", deep)
    dsk: dict = {f"w{i}": Task(inc, i) for i in range(100)}
    dsk.update({f"c{i}": Task(inc, Ref(f"c{i - 1}")) for i in range(1, 20)}, c0=1)
    dsk.update({"a": Task(inc, Ref("b")), "b": Task(add_all, Ref("a"), Ref("c19"))})
    with pytest.raises(CycleError) as info:
        TaskGraph.from_dict(dsk)
    assert set(info.value.cycle) == {"a", "b"}
