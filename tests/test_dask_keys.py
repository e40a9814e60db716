"""Every key Dask accepts works here, checked against Dask itself.

- ``check_key`` accepts exactly what ``dask.core.iskey`` accepts (``validate_key`` raising is
  the same question), on values generated to sit on both sides of the rule.
- Graphs whose keys are generated Dask keys (str, int, float, tuples of them nested) go
  through graph import, each wire encoding (``pickle``, ``compact``, ``layers``), the state
  machines (in-process cluster) and the TCP client, and give what ``dask.get`` gives; a task
  that raises is named, readably, in the error.
- Dask collections whose keys nest (a bag ``groupby`` and a dataframe ``set_index`` /
  ``shuffle`` with the tasks method) give on the cluster what Dask's sync scheduler gives.
- ``client.get`` returns the structure ``dask.get`` / ``dask.local.get_sync`` return.

NaN is a Dask key but not equal to a copy of itself: once it has travelled it names nothing,
so generated floats leave it out (the README says so).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import dask
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask.base import collections_to_expr
from dask.core import iskey, validate_key
from dask.local import get_sync as dask_get_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler import Client, LocalCluster
from scheduler.graph.dask_import import from_dask, get_sync
from scheduler.graph.keys import InvalidKeyError, check_key, key_repr
from scheduler.graph.layers import LayerGraph, Materialized
from scheduler.graph.lowgraph import TaskGraph
from scheduler.runtime.inproc import InProcessCluster
from scheduler.runtime.messages import pack, unpack
from scheduler.wire.encodings import decode_graph, encode_graph
from scheduler.wire.layers import output_keys

# --- task functions (module level: workers import them by reference) -----------------------

def node(i: int, *deps: int) -> int:
    """Task ``i`` of a generated graph: its number plus its dependencies' values."""
    return (i + 7 * sum(deps)) % 1_000_003


def explode(i: int, *deps: int) -> int:
    raise ValueError(f"generated task {i} refuses to run")


def mod7(x: int) -> int:
    return x % 7


# --- strategies ------------------------------------------------------------------------------

ATOMS = (st.text(max_size=6) | st.integers(-2**80, 2**80)
         | st.floats(allow_nan=False) | st.sampled_from(["x", "shuffle-group-ab12", 0, 1]))
DASK_KEYS = st.recursive(ATOMS, lambda inner: st.lists(inner, max_size=4).map(tuple),
                         max_leaves=8)
"""Values ``dask.core.validate_key`` accepts: atoms and (nested, possibly empty) tuples."""

NON_KEY_ATOMS = (st.booleans() | st.none() | st.binary(max_size=4)
                 | st.integers(-5, 5).map(np.int64) | st.floats(width=32).map(np.float32)
                 | st.just(frozenset()))
ANY_VALUES = st.recursive(ATOMS | NON_KEY_ATOMS,
                          lambda inner: st.lists(inner, max_size=3).map(tuple)
                          | st.lists(inner, max_size=2), max_leaves=8)


@st.composite
def dask_graphs(draw: st.DrawFn) -> tuple[dict[Any, Any], list[Any]]:
    """A legacy Dask graph over distinct generated keys: task ``i`` reads some earlier ones.
    Arguments are only references (the task's number is bound in a partial), so no literal
    can be mistaken for a key."""
    keys = draw(st.lists(DASK_KEYS, min_size=1, max_size=10, unique=True))
    dsk: dict[Any, Any] = {}
    for i, k in enumerate(keys):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        dsk[k] = (functools.partial(node, i), *(keys[j] for j in deps))
    return dsk, keys


def shapes(keys: list[Any]) -> list[str]:
    """The keys as exact values (``1`` and ``1.0`` differ here), in a comparable order."""
    return sorted(repr(k) for k in keys)


def deps_by_key(graph: TaskGraph) -> dict[str, list[str]]:
    keys = graph.keys()
    out = {}
    for gi, g in enumerate(graph.groups):
        base = int(graph.offsets[gi])
        for i in range(len(g)):
            ds = g.indices[g.indptr[i]:g.indptr[i + 1]].tolist()
            out[repr(keys[base + i])] = sorted(repr(keys[d]) for d in ds)
    return out


def as_layers(graph: TaskGraph) -> LayerGraph:
    return LayerGraph([Materialized("generated", graph.to_dict())])


# --- the rule --------------------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(ANY_VALUES)
def test_check_key_accepts_exactly_what_dask_validate_key_accepts(value: Any) -> None:
    try:
        validate_key(value)
        dask_says = True
    except TypeError:
        dask_says = False
    assert dask_says == iskey(value)
    if dask_says:
        assert check_key(value) is value
    else:
        with pytest.raises(InvalidKeyError, match="is not a valid key"):
            check_key(value)


@settings(max_examples=200, deadline=None)
@given(DASK_KEYS)
def test_a_key_travels_in_a_message_and_comes_back_exactly(key: Any) -> None:
    msg = unpack(pack("erred", {"key": key}))
    back = msg.key("key")
    assert repr(back) == repr(key) and back == key


# --- generated graphs through every stage ----------------------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dask_graphs())
def test_generated_keys_through_import_encodings_and_the_state_machines(
        case: tuple[dict[Any, Any], list[Any]]) -> None:
    dsk, keys = case
    want = dask.get(dsk, keys)
    assert get_sync(dsk, keys) == want
    graph = from_dask(dsk)
    assert shapes(graph.keys()) == shapes(keys)
    structure = deps_by_key(graph)
    for encoding in ("pickle", "compact"):
        wire = decode_graph(encode_graph(graph, encoding))
        assert shapes(wire.graph.keys()) == shapes(keys), encoding
        assert deps_by_key(wire.graph) == structure, encoding
        got = InProcessCluster(n_workers=2).run(graph, keys, encoding=encoding).results
        assert tuple(got[k] for k in keys) == want, encoding
    layers = as_layers(graph)
    wire = decode_graph(encode_graph(layers, "layers", outputs=["generated"]))
    assert shapes(wire.graph.keys()) == shapes(keys)
    assert deps_by_key(wire.graph) == structure
    run = InProcessCluster(n_workers=2).run(layers, encoding="layers",
                                            output_layers=["generated"])
    assert {repr(k): v for k, v in run.results.items()} == \
        {repr(k): v for k, v in zip(keys, want, strict=True)}
    assert shapes(output_keys(layers, ["generated"])) == shapes(keys)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dask_graphs(), st.data())
def test_a_failing_task_is_named_by_its_key(case: tuple[dict[Any, Any], list[Any]],
                                            data: st.DataObject) -> None:
    dsk, keys = case
    bad = data.draw(st.sampled_from(keys))
    i = keys.index(bad)
    dsk = {**dsk, bad: (functools.partial(explode, i), *dsk[bad][1:])}
    for encoding in ("pickle", "compact"):
        with pytest.raises(ValueError, match=f"generated task {i} refuses") as info:
            InProcessCluster(n_workers=1).run(from_dask(dsk), keys, encoding=encoding)
        assert f"raised by task {key_repr(bad)}" in "\n".join(info.value.__notes__)
        assert key_repr(bad) in str(info.value.__cause__)


def test_keys_in_errors_stay_readable_however_big() -> None:
    huge = ("x", 2**20_000, ("s", (1,)))           # repr() itself refuses such an int
    assert key_repr(huge) == "('x', <int of 20001 bits>, ('s', (1,)))"
    long = ("shuffle-split-" + "ab" * 200, 3, (0, 1))
    shown = key_repr(long)
    assert len(shown) <= 200 and shown.startswith("('shuffle-split-abab")
    assert shown.endswith("abab', 3, (0, 1))") and " ... " in shown
    assert key_repr(("a", (1,), (2.5, ()))) == "('a', (1,), (2.5, ()))"
    other = ("y", 2**20_000 + 1, ("s", (1,)))
    with pytest.raises(ValueError, match=r"cycle: \('x', <int of 20001 bits>, \('s', \(1,\)\)\)"):
        from_dask({huge: (node, other), other: (node, huge)}).validate()


# --- the TCP cluster -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clients() -> Iterator[dict[str, Client]]:
    from tests.conftest import cluster_env

    with LocalCluster(n_workers=2, env=cluster_env()) as cluster, \
            Client(cluster, timeout=60, encoding="pickle") as legacy, \
            Client(cluster, timeout=60) as compact:
        yield {"pickle": legacy, "compact": compact}


@pytest.mark.cluster
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(dask_graphs(), st.data())
def test_generated_keys_through_client_get(clients: dict[str, Client],
                                           case: tuple[dict[Any, Any], list[Any]],
                                           data: st.DataObject) -> None:
    dsk, keys = case
    for encoding, client in clients.items():
        assert client.get(dsk, keys) == dask.get(dsk, keys), encoding
        one = keys[-1]
        assert client.get(dsk, one) == dask.get(dsk, one), encoding
    bad = data.draw(st.sampled_from(keys))
    i = keys.index(bad)
    failing = {**dsk, bad: (functools.partial(explode, i), *dsk[bad][1:])}
    with pytest.raises(ValueError, match=f"generated task {i} refuses") as info:
        clients["compact"].get(failing, keys)
    assert f"raised by task {key_repr(bad)}" in "\n".join(info.value.__notes__)


def nested_keys(collection: Any) -> list[Any]:
    graph = collections_to_expr([collection]).optimize().__dask_graph__()
    return [k for k in graph if type(k) is tuple and any(type(p) is tuple for p in k)]


def frame() -> Any:
    pdf = pd.DataFrame({"a": np.arange(4_000) % 53, "b": np.arange(4_000.0),
                        "c": (np.arange(4_000) * 7919) % 101})
    return dd.from_pandas(pdf, npartitions=40)


@pytest.mark.cluster
def test_bag_groupby_with_the_tasks_shuffle(clients: dict[str, Client]) -> None:
    grouped = db.from_sequence(range(100), npartitions=10).groupby(mod7, shuffle="tasks")
    assert nested_keys(grouped)  # ('shuffle-group-...', 1, (2,)): the keys this is about
    want = sorted((k, sorted(v)) for k, v in grouped.compute(scheduler="sync"))
    for encoding, client in clients.items():
        got = grouped.compute(scheduler=client.get)
        assert sorted((k, sorted(v)) for k, v in got) == want, encoding
    assert [k for k, _ in want] == list(range(7))


@pytest.mark.cluster
@pytest.mark.parametrize("how", ["set_index", "shuffle"])
def test_dataframe_tasks_shuffle(clients: dict[str, Client], how: str) -> None:
    ddf = frame()
    out = ddf.set_index("c", shuffle_method="tasks") if how == "set_index" else \
        ddf.shuffle("c", shuffle_method="tasks")
    assert nested_keys(out)  # 40 partitions: a staged shuffle, ('split-...', 0, (1,)) keys
    want = out.compute(scheduler="sync")
    got = out.compute(scheduler=clients["compact"].get)
    if how == "set_index":  # sorted by the index; rows within one index value may move
        assert got.index.is_monotonic_increasing
        pd.testing.assert_frame_equal(got.reset_index().sort_values("b", ignore_index=True),
                                      want.reset_index().sort_values("b", ignore_index=True))
    else:  # each value of c in exactly one partition, as Dask put it
        parts = dask.compute(*out.to_delayed(), scheduler=clients["compact"].get)
        owners = [set(p["c"]) for p in parts]
        assert sum(len(o) for o in owners) == len(set().union(*owners)) == 101
        pd.testing.assert_frame_equal(got.sort_values("b"), want.sort_values("b"))


# --- get's return structure, against Dask's own ----------------------------------------------

GRAPH = {"a": 1, "b": (mod7, "a"), ("x", 0): (node, 1, "a", "b"), 7: (node, 2, ("x", 0)),
         2.5: (node, 3, 7), ("s", 1, (0,)): (node, 4, 2.5, "b"), ((), ("t", (1, 2))): (node, 5, "a")}


@pytest.mark.cluster
@pytest.mark.parametrize("keys", [
    "b", ("x", 0), 7, 2.5, ("s", 1, (0,)), ((), ("t", (1, 2))),
    ["a", "b"], [("s", 1, (0,)), 7, 2.5], [["b"], [("x", 0), [("s", 1, (0,)), "a"]]],
    [[], ["a"]], [[[]]], [], ["b", "b", [7, 7]],
], ids=["str", "tuple", "int", "float", "nested-tuple", "tuple-led-tuple", "list", "list-mixed",
        "nested", "nested-empty", "empty-inside", "empty", "repeated"])
def test_get_returns_what_dask_get_returns(clients: dict[str, Client], keys: Any) -> None:
    want = dask_get_sync(GRAPH, keys)
    assert dask.get(GRAPH, keys) == want
    for encoding, client in clients.items():
        got = client.get(GRAPH, keys)
        assert got == want and _structure(got) == _structure(want), encoding
    assert get_sync(GRAPH, keys) == want and _structure(get_sync(GRAPH, keys)) == _structure(want)


def _structure(value: Any) -> Any:
    """The containers of a result, values replaced by their type."""
    if isinstance(value, tuple | list):
        return type(value), [_structure(v) for v in value]
    return type(value)
