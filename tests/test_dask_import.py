"""Import of Dask graphs (``scheduler.graph.dask_import``) and the custom-scheduler protocol.

The oracle for dependencies is Dask's executed meaning: ``convert_legacy_graph(dsk)[k]``
``.dependencies`` (for Task-spec nodes that is the node's own ``.dependencies``). The oracle for
values is Dask's synchronous scheduler.
"""

from __future__ import annotations

import operator
from collections import namedtuple
from typing import Any

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask._task_spec import (
    Alias,
    DataNode,
    Dict,
    List,
    Set,
    TaskRef,
    Tuple,
    _execute_subgraph,
    convert_legacy_graph,
    execute_graph,
)
from dask._task_spec import Task as DTask
from dask.core import get_dependencies
from dask.utils import apply
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.graph.dask_import import (
    MAX_INLINE_DEPTH,
    flatten_keys,
    from_dask,
    get_sync,
    pack_results,
    run_dask_node,
    run_subgraph,
)
from scheduler.graph.errors import MissingDependencyError, UnknownKeyError
from scheduler.graph.keys import InvalidKeyError
from scheduler.graph.lowgraph import TaskGraph
from scheduler.graph.task import Ref, Task

# --- helpers ----------------------------------------------------------------------------------


def inc(x: Any) -> Any:
    return x + 1


def show(*args: Any, **kwargs: Any) -> tuple:
    return args, kwargs


def our_deps(graph: TaskGraph) -> dict:
    indptr, indices = graph.dependencies()
    keys = graph.keys() + graph.external
    return {k: {keys[int(j)] for j in indices[indptr[i]:indptr[i + 1]]}
            for i, k in enumerate(graph.keys())}


def dask_deps(dsk: Any) -> dict:
    """What Dask runs: every task's dependencies after its own legacy conversion."""
    return {k: set(v.dependencies) for k, v in convert_legacy_graph(dsk).items()}


def assert_same_structure(dsk: Any) -> TaskGraph:
    graph = from_dask(dsk)
    expected = dask_deps(dsk)
    assert set(graph.keys()) == set(expected)
    assert our_deps(graph) == expected
    return graph


def our_specs(graph: TaskGraph) -> dict:
    return graph.to_dict()


def capture_handed_graph(*collections: Any) -> tuple[dict, Any]:
    """The graph and keys ``dask.compute`` hands a custom scheduler (optimised, fused)."""
    seen: dict = {}

    def get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        seen["dsk"], seen["keys"] = dsk, keys
        return get_sync(dsk, keys, **kwargs)

    dask.compute(*collections, scheduler=get)
    return dict(seen["dsk"].__dask_graph__()), seen["keys"]


def sorted_frame(obj: Any) -> pd.DataFrame:
    """Rows in a canonical order; a non-unique index (merge, shuffle output) is dropped."""
    df = obj.to_frame() if isinstance(obj, pd.Series) else obj
    if df.index.is_unique:
        return df.sort_index()
    return df.sort_values(list(df.columns)).reset_index(drop=True)


# --- collections: keys, dependencies, results -------------------------------------------------


def _array_sum() -> Any:
    return (da.ones((1000, 1000), chunks=100) + 1).sum()


def _array_mixed() -> Any:
    x = da.arange(200 * 150, chunks=7000).reshape((200, 150)).rechunk((50, 30))
    y = x.map_blocks(lambda b: b * 2 + 1, dtype=x.dtype).T.rechunk((40, 45))
    return (y + y.T.T)[::3, 5:].mean(axis=0)


def _frame() -> dd.DataFrame:
    pdf = pd.DataFrame({"a": np.arange(120) % 7, "b": np.arange(120.0),
                        "c": np.arange(120) % 3})
    return dd.from_pandas(pdf, npartitions=4)


def _groupby() -> Any:
    return _frame().groupby("a").agg({"b": "sum", "c": "max"})


def _merge() -> Any:
    right = dd.from_pandas(pd.DataFrame({"a": range(7), "d": np.arange(7) * 10.0}),
                           npartitions=2)
    return _frame().merge(right, on="a", how="inner")


def _shuffle() -> Any:
    return _frame().shuffle("c", npartitions=3).map_partitions(len)


def _delayed() -> Any:
    parts = [dask.delayed(inc)(i) for i in range(5)]
    mid = dask.delayed(show)(parts[0], k=[parts[1], 2], d={"x": parts[2], "y": (parts[3], 4)})
    return dask.delayed(lambda m, rest: (m, sum(rest)))(mid, parts[3:])


def _bag() -> Any:
    b = db.from_sequence(range(50), npartitions=5)
    return b.map(inc).filter(lambda v: v % 3 != 0).frequencies(sort=True)


COLLECTIONS = {
    "array-sum": _array_sum,
    "array-map_blocks-transpose-rechunk": _array_mixed,
    "dataframe-groupby-agg": _groupby,
    "dataframe-merge": _merge,
    "dataframe-shuffle": _shuffle,
    "delayed": _delayed,
    "bag": _bag,
}


def _assert_equal_results(ours: Any, theirs: Any) -> None:
    if isinstance(theirs, np.ndarray | np.generic):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs))
    elif isinstance(theirs, pd.DataFrame | pd.Series):
        # Dask itself does not fix the row order of merges and shuffles between runs.
        pd.testing.assert_frame_equal(sorted_frame(ours), sorted_frame(theirs))
    else:
        assert ours == theirs


@pytest.mark.parametrize("name", list(COLLECTIONS))
def test_collection_graph_has_same_keys_and_dependencies(name: str) -> None:
    coll = COLLECTIONS[name]()
    dsk = dict(coll.__dask_graph__())
    graph = assert_same_structure(dsk)
    # Where Dask's two views agree (Task-spec nodes), check against get_dependencies too.
    deps = our_deps(graph)
    for key, node in dsk.items():
        if isinstance(node, DTask):
            assert deps[key] == get_dependencies(dsk, key)


@pytest.mark.parametrize("name", list(COLLECTIONS))
def test_graph_handed_to_get_and_results(name: str) -> None:
    coll = COLLECTIONS[name]()
    handed, keys = capture_handed_graph(coll)
    assert_same_structure(handed)
    (ours,) = dask.compute(coll, scheduler=get_sync)
    _assert_equal_results(ours, coll.compute(scheduler="sync"))


def test_high_level_graph_and_collection_inputs() -> None:
    x = _array_sum()
    hlg = x.__dask_graph__()
    assert set(from_dask(hlg).keys()) == set(dict(hlg))
    assert set(from_dask(x).keys()) == set(dict(hlg))
    with pytest.raises(TypeError, match="expected a Dask graph"):
        from_dask(42)


def test_several_collections_at_once() -> None:
    x, y = _array_sum(), _delayed()
    assert dask.compute(x, y, scheduler=get_sync) == dask.compute(x, y, scheduler="sync")


def test_fused_graphs_are_inlined_without_dask_execution() -> None:
    handed, _ = capture_handed_graph(_array_mixed())
    fused = [k for k, v in handed.items()
             if isinstance(v, DTask) and v.has_subgraph()]
    assert fused, "expected Dask to hand over fused tasks"
    specs = our_specs(from_dask(handed))
    for k in fused:
        assert isinstance(specs[k], Task)
        assert specs[k].func not in (run_dask_node, run_subgraph)


# --- legacy tuple graphs written by hand ------------------------------------------------------

Point = namedtuple("Point", ["x", "y"])

LEGACY: dict[Any, Any] = {
    "x": 1,
    ("t", 1): 5,
    ("t", 2.5, "s"): 7,
    "y": (inc, "x"),
    "z": (operator.add, "x", "y"),
    "alias": "z",
    "alias2": "alias",
    "nested": (sum, ["x", "y", (inc, "z"), (sum, [("t", 1)])]),
    "deep": (inc, (inc, (inc, (operator.mul, "y", 10)))),
    "tuple-arg": (show, ("x", ("t", 1), "not-a-key")),
    "tuple-key": (inc, ("t", 2.5, "s")),
    "dict-arg": (show, {"k": "x", "lit": [1, 2]}),
    "dict-in-list": (show, [{"k": "x"}]),
    "set-arg": (show, {"x", ("t", 1)}),
    "namedtuple": (show, Point("x", 3)),
    "apply": (apply, show, ["x", (inc, "y")], {"k": 2}),
    "apply-noargs": (apply, show, []),
    "apply-kw-task": (apply, show, ["x"], (dict, [["k", "y"]])),
    "literal-list": ["x", "y", "plain"],
    "literal-str": "not-a-key",
    "data": np.arange(3),
}


def test_legacy_graph_structure_and_values() -> None:
    graph = assert_same_structure(LEGACY)
    keys = list(LEGACY)
    ours = graph.execute(keys)
    theirs = dict(zip(keys, dask.get(LEGACY, keys), strict=True))
    for k in keys:
        if isinstance(theirs[k], np.ndarray):
            np.testing.assert_array_equal(ours[k], theirs[k])
        else:
            assert ours[k] == theirs[k], k


def test_legacy_specs_have_expected_shape() -> None:
    specs = our_specs(from_dask(LEGACY))
    assert specs["y"] == Task(inc, Ref("x"))
    assert specs["alias"] == Ref("z")
    assert specs["nested"] == Task(sum, [Ref("x"), Ref("y"), Task(inc, Ref("z")),
                                         Task(sum, [Ref(("t", 1))])])
    assert specs["tuple-arg"] == Task(show, (Ref("x"), Ref(("t", 1)), "not-a-key"))
    # ``apply`` is unwrapped into a direct call.
    assert specs["apply"] == Task(show, Ref("x"), Task(inc, Ref("y")), k=2)
    # A dict argument is data in Dask's executed meaning: "x" stays a string.
    assert specs["dict-arg"] == Task(show, {"k": "x", "lit": [1, 2]})
    assert specs["literal-str"] == "not-a-key"


def test_dict_argument_follows_executed_meaning_not_get_dependencies() -> None:
    dsk: dict[Any, Any] = {"x": 1, "a": (show, {"k": "x"})}
    assert get_dependencies(dsk, "a") == {"x"}  # Dask's static walker says so...
    assert dask.get(dsk, "a") == (({"k": "x"},), {})  # ...but Dask runs it as data.
    graph = from_dask(dsk)
    assert our_deps(graph)["a"] == set()
    assert get_sync(dsk, "a") == (({"k": "x"},), {})


def test_self_reference_becomes_external_key() -> None:
    dsk = {"held": "held", "y": (inc, "held"), "f": Alias("f"), "f2g": (inc, "y")}
    graph = from_dask(dsk)
    assert graph.external == ["held", "f"]
    assert set(graph.keys()) == {"y", "f2g"}
    assert graph.execute(["f2g"], external_values={"held": 1, "f": 0}) == {"f2g": 3}
    with pytest.raises(MissingDependencyError, match="held"):
        get_sync(dsk, "f2g")


def test_bulky_literals_are_not_walked() -> None:
    big = list(range(1000))
    dsk = {"x": 1, "s": (sum, big), "t": DTask("t", len, DataNode(None, big)), "b": big}
    specs = from_dask(dsk).groups[0].specs
    assert specs is not None
    for spec in specs[1:]:
        # A zero-argument task holding the list, not the list itself.
        inner = spec.args[0] if spec.args else spec
        assert isinstance(inner, Task) and not inner.args
    assert get_sync(dsk, ["s", "t", "b"]) == (sum(big), 1000, big)


# --- Task-spec graphs written by hand ---------------------------------------------------------


class PlusTen(DTask):
    """A Task subclass with its own ``__call__``: only Dask knows how to run it."""

    __slots__ = ()

    def __call__(self, values: Any = ()) -> Any:
        return super().__call__(values) + 10


class Tagged(DTask):
    """A Task subclass keeping ``Task.__call__`` (like distributed's P2PBarrierTask)."""

    __slots__ = ("tag",)

    def __init__(self, key: Any, func: Any, /, *args: Any, tag: str, **kwargs: Any) -> None:
        self.tag = tag
        super().__init__(key, func, *args, **kwargs)


def _taskspec_graph() -> dict:
    return {
        "a": DataNode("a", 2),
        ("b", 0): DTask(("b", 0), inc, TaskRef("a")),
        "c": DTask("c", show, TaskRef("a"), DTask(None, inc, TaskRef(("b", 0))),
                   k=TaskRef("a"), plain=[1, TaskRef("a")]),
        "lists": DTask("lists", show, List(TaskRef("a"), 3), Tuple(TaskRef(("b", 0)), 4),
                       Set(TaskRef("a"), 9)),
        "dicts": DTask("dicts", show, Dict({"p": TaskRef("a"), "q": 1})),
        "alias": Alias("alias", "c"),
        "nested-alias": DTask("nested-alias", inc, Alias(("b", 0))),
        "opaque": PlusTen("opaque", inc, TaskRef("a")),
        "tagged": Tagged("tagged", inc, TaskRef(("b", 0)), tag="t"),
        "plain": DTask("plain", inc, TaskRef("a")),
    }


def test_taskspec_graph_structure_and_values() -> None:
    dsk = _taskspec_graph()
    graph = assert_same_structure(dsk)
    keys = list(dsk)
    ours = graph.execute(keys)
    theirs = execute_graph(dict(dsk), keys=set(keys))
    assert ours == {k: theirs[k] for k in keys}
    specs = our_specs(graph)
    assert specs[("b", 0)] == Task(inc, Ref("a"))
    assert specs["alias"] == Ref("c")
    assert specs["lists"].args[0] == [Ref("a"), 3]
    assert specs["lists"].args[1] == (Ref(("b", 0)), 4)
    assert specs["dicts"].args[0] == {"p": Ref("a"), "q": 1}
    assert specs["opaque"].func is run_dask_node
    assert specs["tagged"] == Task(inc, Ref(("b", 0)))


def _chain(n: int) -> list[DTask]:
    tasks = [DTask("c0", inc, TaskRef("src"))]
    tasks += [DTask(f"c{i}", inc, TaskRef(f"c{i - 1}")) for i in range(1, n)]
    return tasks


@pytest.mark.parametrize("n", [2, 5, MAX_INLINE_DEPTH + 10])
def test_fused_chain(n: int) -> None:
    fused = DTask.fuse(*_chain(n), key="out")
    dsk = {"src": DataNode("src", 0), "out": fused}
    graph = assert_same_structure(dsk)
    assert graph.execute(["out"]) == {"out": n}
    spec = our_specs(graph)["out"]
    if n <= MAX_INLINE_DEPTH:
        assert spec.func is inc
    else:
        assert spec.func is run_subgraph


def test_fused_dag_with_shared_inner_result_uses_inner_graph() -> None:
    inner = [DTask("p", inc, TaskRef("src")), DTask("q", inc, TaskRef("p")),
             DTask("r", operator.add, TaskRef("p"), TaskRef("q"))]
    dsk = {"src": DataNode("src", 1), "w": DataNode("w", 5),
           "out": DTask.fuse(*inner, key="out"),
           "after": DTask("after", operator.mul, TaskRef("out"), TaskRef("w"))}
    graph = assert_same_structure(dsk)
    assert our_specs(graph)["out"].func is run_subgraph
    assert graph.execute(["after"]) == {"after": (2 + 3) * 5}


def test_nested_fused_tasks() -> None:
    first = DTask.fuse(*_chain(3), key="mid")
    second = DTask.fuse(DTask("m2", inc, TaskRef("mid")),
                        DTask("m3", operator.mul, TaskRef("m2"), 2), key="m3")
    outer = DTask("top", inc, second)  # a fused task nested as an argument
    dsk = {"src": DataNode("src", 0), "mid": first, "top": outer}
    graph = assert_same_structure(dsk)
    assert graph.execute(["top"]) == {"top": (3 + 1) * 2 + 1}


# --- errors -----------------------------------------------------------------------------------


def test_missing_dependency_in_taskspec_graph() -> None:
    dsk = {"a": DTask("a", inc, TaskRef("zzz"))}
    with pytest.raises(MissingDependencyError, match="'zzz' \\(needed by 'a'\\)"):
        from_dask(dsk)


def test_missing_dependency_in_real_dask_graph() -> None:
    x = da.ones((40, 40), chunks=10) + 1
    dsk = dict(x.__dask_graph__())
    victim = next(k for k in dsk if k[0].startswith("ones"))
    del dsk[victim]
    with pytest.raises(MissingDependencyError) as info:
        from_dask(dsk)
    assert victim in info.value.missing
    dependent = next(k for k, v in dsk.items() if victim in v.dependencies)
    with pytest.raises(MissingDependencyError):
        get_sync(dsk, dependent)


def test_unknown_requested_key_and_invalid_keys() -> None:
    with pytest.raises(UnknownKeyError, match="nope"):
        get_sync({"x": 1}, ["x", "nope"])
    with pytest.raises(InvalidKeyError, match="is a bool"):
        from_dask({True: 1, "y": (inc, 1)})
    with pytest.raises(InvalidKeyError):
        flatten_keys([["x"], {"not": "a key"}])


def test_cycle_is_reported() -> None:
    from scheduler.graph.errors import CycleError

    with pytest.raises(CycleError):
        from_dask({"a": (inc, "b"), "b": (inc, "a")})


# --- protocol: keys nesting, culling ----------------------------------------------------------


def test_flatten_and_pack_nested_keys() -> None:
    keys = [["x", ("t", 1)], [[["y"]], []], "x", ("t", 2.5, "s")]
    assert flatten_keys(keys) == ["x", ("t", 1), "y", ("t", 2.5, "s")]
    assert flatten_keys("x") == ["x"]
    assert flatten_keys(("t", 1)) == [("t", 1)]
    assert flatten_keys([]) == []
    values = {"x": 1, ("t", 1): 2, "y": 3, ("t", 2.5, "s"): 4}
    # the structure of Dask's get protocol: lists of keys give tuples of values
    assert pack_results(keys, values.__getitem__) == ((1, 2), (((3,),), ()), 1, 4)
    assert pack_results(("t", 1), values.__getitem__) == 2
    assert pack_results([], values.__getitem__) == ()


def test_get_sync_nested_keys_and_culling() -> None:
    keys = [["y", ["z"]], "x", ("t", 1)]
    assert get_sync(LEGACY, keys) == dask.get(LEGACY, keys) == ((2, (3,)), 1, 5)
    assert get_sync(LEGACY, "alias2") == 3
    culled = from_dask(LEGACY, ["z"])
    assert set(culled.keys()) == {"z", "y", "x"}
    culled = from_dask(LEGACY, [["nested"]])
    assert set(culled.keys()) == {"nested", "x", "y", "z", ("t", 1)}


def test_get_sync_accepts_and_ignores_scheduler_kwargs() -> None:
    assert get_sync(LEGACY, "z", num_workers=4, cache=None) == 3


# --- random legacy graphs against Dask ------------------------------------------------------


@st.composite
def legacy_graphs(draw: st.DrawFn) -> dict:
    n = draw(st.integers(1, 12))
    names = [f"k{i}" if draw(st.booleans()) else ("k", i) for i in range(n)]
    dsk: dict = {}
    for i, key in enumerate(names):
        earlier = names[:i]

        def value(depth: int, earlier: list = earlier) -> Any:
            choices = ["lit"] + (["ref"] if earlier else []) + (["task", "list"] if depth < 3
                                                                else [])
            kind = draw(st.sampled_from(choices))
            if kind == "lit":
                return draw(st.integers(-5, 5))
            if kind == "ref":
                return draw(st.sampled_from(earlier))
            items = draw(st.lists(st.just(None), max_size=3))
            parts = [value(depth + 1) for _ in items]
            return (_total, *parts) if kind == "task" else parts

        dsk[key] = value(0)
    return dsk


def _total(*parts: Any) -> int:
    out = 0
    for p in parts:
        out += _total(*p) if isinstance(p, list) else p
    return out


@settings(max_examples=40, deadline=None)
@given(legacy_graphs())
def test_random_legacy_graphs_match_dask(dsk: dict) -> None:
    assert_same_structure(dsk)
    keys = list(dsk)
    assert get_sync(dsk, keys) == dask.get(dsk, keys)


def test_fused_task_keeps_inputs_its_inner_graph_ignores() -> None:
    fused = DTask("out", _execute_subgraph, {"c0": DTask("c0", inc, TaskRef("i0"))}, "c0",
                  ("i0", "i1"), TaskRef("src"), TaskRef("other"))
    dsk = {"src": DataNode("src", 1), "other": DataNode("other", 9), "out": fused}
    graph = assert_same_structure(dsk)
    assert our_deps(graph)["out"] == {"src", "other"}
    assert graph.execute(["out"]) == {"out": 2}
