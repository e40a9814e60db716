"""Graph encodings: exact round trips, no unpickling on the scheduler, sizes, bad input."""

from __future__ import annotations

import _pickle
import contextlib
import functools
import operator
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cloudpickle
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.graph.errors import (
    CycleError,
    DuplicateKeyError,
    GraphError,
    MissingDependencyError,
)
from scheduler.graph.keys import ExplicitKeys, RegularKeys
from scheduler.graph.lowgraph import TaskGraph, TaskGroup
from scheduler.graph.task import DepList, DepSlot, IndexSlot, Ref, Task, map_placeholders
from scheduler.wire.encodings import (
    GRAPH_ENCODINGS,
    GraphLimits,
    SpecLoader,
    SpecLoadError,
    WireError,
    WireGraph,
    decode_graph,
    encode_graph,
)
from scheduler.wire.frames import FrameError, FrameReader, message_nbytes, pack_frames

FUNCS = [operator.add, max, len, sorted, dict, operator.itemgetter]  # pickled by reference
SLOW = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- helpers -------------------------------------------------------------------------------

def make_task(func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Task:
    return Task(func, *args, **kwargs)


def through_the_stream(frames: list[Any]) -> list[memoryview]:
    """What the scheduler receives: the frames packed, fed in two pieces, read back."""
    data = b"".join(bytes(b) for b in pack_frames(frames))
    reader = FrameReader()
    reader.feed(data[:len(data) // 2])
    reader.feed(data[len(data) // 2:])
    message = reader.next_message()
    assert message is not None
    return message


def tasks_of(graph: TaskGraph) -> list[tuple[str, list[str], str]]:
    """Per task, strictly: (repr of key, reprs of dependency keys in order, repr of spec)."""
    out = []
    for tid in range(graph.n):
        gi, i = graph.group_of(tid)
        deps = [repr(graph.key_of(int(d))) for d in graph.groups[gi].deps(i)]
        out.append((repr(graph.key_of(tid)), deps, repr(graph.spec_with_refs(tid))))
    return out


def round_trip(graph: TaskGraph, encoding: str) -> tuple[WireGraph, TaskGraph]:
    frames = encode_graph(graph, encoding)
    wire = decode_graph(through_the_stream(frames))
    assert wire.encoding == encoding
    assert wire.nbytes == message_nbytes(frames)
    for g in wire.graph.groups:   # the scheduler holds opaque bytes only
        assert all(type(s) is bytes for s in ([g.template] if g.specs is None else g.specs))
    return wire, SpecLoader(wire.functions).load_graph(wire.graph)


def assert_same(original: TaskGraph, wire: WireGraph, loaded: TaskGraph) -> None:
    assert repr(wire.graph.keys()) == repr(original.keys())
    assert repr(wire.graph.external) == repr(original.external)
    for a, b in zip(wire.graph.dependencies(), original.dependencies(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert tasks_of(loaded) == tasks_of(original)
    assert loaded.to_dict() == original.to_dict()


def rewrite(frames: list[Any], edit: Callable[[dict[str, Any], list[Any]], None]) -> list[Any]:
    """A copy of a graph message with its header (and frames) edited by ``edit``."""
    header = msgpack.unpackb(bytes(frames[0]), raw=False)
    rest = [bytes(f) for f in frames[1:]]
    edit(header, rest)
    return [msgpack.packb(header, use_bin_type=True), *rest]


# --- strategies ----------------------------------------------------------------------------

key_parts = st.one_of(st.integers(-5, 2**40), st.floats(allow_nan=False), st.text(max_size=3))


def keys_named(prefix: str) -> st.SearchStrategy[Any]:
    names = st.text(max_size=3).map(lambda s: prefix + s)
    return st.one_of(names, st.builds(lambda n, ps: (n, *ps), names,
                                      st.lists(key_parts, max_size=3)))


constants = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=4),
                      st.floats(allow_nan=False), st.binary(max_size=4))

# Specs are drawn once with placeholders holding arbitrary numbers, then ``fit`` turns each
# placeholder into a valid one for its task (building strategies per task would be slow).
SPECS = st.recursive(
    st.one_of(constants, st.integers(0, 99).map(Ref), st.integers(0, 99).map(DepSlot),
              st.builds(DepList, st.integers(0, 3), st.one_of(st.none(), st.integers(0, 3))),
              st.integers(0, 99).map(IndexSlot)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=2), inner, max_size=2),
        st.builds(make_task, st.sampled_from(FUNCS), st.lists(inner, max_size=3),
                  st.dictionaries(st.sampled_from(["a", "kw", "x_y"]), inner, max_size=2)),
    ), max_leaves=8)


def fit(spec: Any, refs: Sequence[Any] = (), k: int = 0, ndim: int = 0) -> Any:
    """``spec`` with placeholders valid for a task that may refer to ``refs`` (by ``Ref``),
    has ``k`` dependencies (``DepSlot``/``DepList``) and ``ndim`` index axes; others -> 0."""
    def fix(p: Any) -> Any:
        if type(p) is Ref:
            return Ref(refs[p.key % len(refs)]) if refs else 0
        if type(p) is DepSlot:
            return DepSlot(p.i % k) if k else 1
        if type(p) is DepList:
            return DepList(min(p.start, k), None if p.stop is None else min(p.stop, k))
        if type(p) is IndexSlot:
            return IndexSlot(p.axis % ndim) if ndim else 2
        return p

    return map_placeholders(spec, fix)


@st.composite
def dict_graphs(draw: st.DrawFn) -> TaskGraph:
    """``TaskGraph.from_dict`` graphs: Refs to earlier keys and external keys."""
    external = draw(st.lists(keys_named("ext"), unique=True, max_size=3))
    keys = draw(st.lists(keys_named("k"), unique=True, max_size=8))
    dsk: dict[Any, Any] = {}
    for key in keys:
        dsk[key] = fit(draw(SPECS), refs=list(dsk) + external)
    return TaskGraph.from_dict(dsk, external=external)


@st.composite
def mixed_graphs(draw: st.DrawFn) -> TaskGraph:
    """Several groups: regular or per-task specs, regular or explicit key blocks, depending on
    earlier groups, on external keys and (explicit groups) on their own earlier tasks."""
    external = draw(st.lists(keys_named("ext"), unique=True, max_size=3))
    pieces: list[tuple[Any, ...]] = []
    offset = 0
    for gi in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            shape = draw(st.lists(st.integers(0, 3), max_size=2))
            keys: RegularKeys | ExplicitKeys = RegularKeys(f"R{gi}", shape)
            ndim = len(shape)
        else:
            keys = ExplicitKeys(draw(st.lists(keys_named(f"E{gi}"), unique=True, max_size=5)))
            ndim = 0
        n = len(keys)
        # external dependencies are drawn as -1 - j and fixed once n is known
        pool = list(range(offset)) + [-1 - j for j in range(len(external))]
        if draw(st.booleans()):
            k = draw(st.integers(0, 2)) if pool else 0
            deps = [draw(st.sampled_from(pool)) for _ in range(n * k)]
            template = fit(draw(SPECS), k=k, ndim=ndim)
            template = 0 if template is None else template   # a group needs a template
            pieces.append((keys, template, None, [k] * n, deps))
        else:
            counts: list[int] = []
            deps = []
            task_specs: list[Any] = []
            for i in range(n):
                own = pool + [offset + j for j in range(i)]
                k = draw(st.integers(0, 3)) if own else 0
                deps += [draw(st.sampled_from(own)) for _ in range(k)]
                counts.append(k)
                task_specs.append(fit(draw(SPECS), k=k, ndim=ndim))
            pieces.append((keys, None, task_specs, counts, deps))
        offset += n
    groups = []
    for keys, template, task_specs, counts, deps in pieces:
        ids = np.array([d if d >= 0 else offset - 1 - d for d in deps], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        groups.append(TaskGroup(keys, template=template, specs=task_specs, indptr=indptr,
                                indices=ids))
    return TaskGraph(groups, external=external)


# --- exact round trips ---------------------------------------------------------------------

@pytest.mark.parametrize("encoding", GRAPH_ENCODINGS)
@SLOW
@given(graph=dict_graphs())
def test_round_trip_dict_graphs(encoding: str, graph: TaskGraph) -> None:
    wire, loaded = round_trip(graph, encoding)
    assert_same(graph, wire, loaded)


@pytest.mark.parametrize("encoding", GRAPH_ENCODINGS)
@SLOW
@given(graph=mixed_graphs())
def test_round_trip_mixed_graphs(encoding: str, graph: TaskGraph) -> None:
    wire, loaded = round_trip(graph, encoding)
    assert_same(graph, wire, loaded)


def two_regular_groups(half: int, f: Callable[..., Any] = operator.neg) -> TaskGraph:
    x = TaskGroup.uniform(RegularKeys("x", (half,)), Task(f, IndexSlot(0)),
                          np.zeros((half, 0), dtype=np.int64))
    y = TaskGroup.uniform(RegularKeys("y", (half,)), Task(operator.add, DepSlot(0), 1),
                          np.arange(half).reshape(half, 1))
    return TaskGraph([x, y])


@pytest.mark.parametrize("encoding", GRAPH_ENCODINGS)
def test_round_trip_regular_groups_and_empty_graph(encoding: str) -> None:
    graph = two_regular_groups(50)
    wire, loaded = round_trip(graph, encoding)
    assert_same(graph, wire, loaded)
    assert loaded.execute([("y", 7)]) == {("y", 7): -6}
    empty = TaskGraph([])
    wire, loaded = round_trip(empty, encoding)
    assert wire.graph.n == 0 and loaded.n == 0


def test_compact_keeps_groups_and_shares_templates() -> None:
    graph = two_regular_groups(50)
    wire, loaded = round_trip(graph, "compact")
    assert [g.keys for g in wire.graph.groups] == [g.keys for g in graph.groups]
    assert all(g.regular for g in wire.graph.groups)


def test_pickle_materialises_every_task() -> None:
    wire, loaded = round_trip(two_regular_groups(5), "pickle")
    assert len(wire.graph.groups) == 1 and not wire.graph.groups[0].regular
    assert loaded.groups[0].spec(3) == Task(operator.neg, 3)   # IndexSlot(0) -> 3
    assert wire.functions == b""


def test_keys_keep_their_part_types() -> None:
    keys = [("a", 1), ("a", 1.5), ("a", "1"), ("a", -0.0, 2**40), "a", ("b", 1, "x", 2.0)]
    graph = TaskGraph.from_dict({k: Task(operator.add, 1, i) for i, k in enumerate(keys)},
                                external=[("ext", 3.0)])
    for encoding in GRAPH_ENCODINGS:
        wire = decode_graph(encode_graph(graph, encoding))
        assert repr(wire.graph.keys()) == repr(keys)
        assert repr(wire.graph.external) == repr([("ext", 3.0)])


def test_int64_arrays_are_read_too() -> None:
    """Ids that do not fit int32 travel as int64; a message using int64 decodes the same."""
    graph = TaskGraph.from_dict({"a": 1, "b": Task(operator.add, Ref("a"), Ref("e"))},
                                external=["e"])

    def widen(header: dict[str, Any], rest: list[Any]) -> None:
        for g in header["groups"]:
            g["dtype"] = "<i8"
        for i in range(1, len(rest)):
            rest[i] = np.frombuffer(rest[i], dtype="<i4").astype("<i8").tobytes()

    frames = encode_graph(graph, "compact")
    assert msgpack.unpackb(frames[0])["groups"][0]["dtype"] == "<i4"
    wide = decode_graph(rewrite(frames, widen))
    assert tasks_of(wide.graph) == tasks_of(decode_graph(frames).graph)
    big = TaskGraph([TaskGroup(ExplicitKeys(["z"]), specs=[0], indptr=np.array([0, 1]),
                               indices=np.array([2**31]))], validate=False)
    assert msgpack.unpackb(encode_graph(big, "compact")[0])["groups"][0]["dtype"] == "<i8"


# --- functions: by value, deduplicated -----------------------------------------------------

def by_value_functions() -> list[Callable[[int], int]]:
    k = 10

    def closure(x: int) -> int:
        return x + k

    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("def from_main(x):\n    return x * 3\n", namespace)
    return [lambda x: x - 1, closure, namespace["from_main"]]


@pytest.mark.parametrize("encoding", GRAPH_ENCODINGS)
def test_lambdas_closures_and_main_functions_travel_by_value(encoding: str) -> None:
    lam, closure, from_main = by_value_functions()
    assert from_main.__module__ == "__main__"
    dsk: dict[Any, Any] = {("a", i): Task(lam, i) for i in range(30)}
    dsk |= {("b", i): Task(closure, Ref(("a", i))) for i in range(30)}
    dsk["c"] = Task(sum, [Task(from_main, Ref(("b", i))) for i in range(30)])
    graph = TaskGraph.from_dict(dsk)
    wire, loaded = round_trip(graph, encoding)
    assert loaded.execute(["c"]) == graph.execute(["c"])
    if encoding == "compact":
        # each distinct callable once: lam, closure, from_main, sum, the Task and DepSlot
        # classes
        assert len(SpecLoader(wire.functions)) == 6
        group = loaded.groups[0]
        assert group.spec(0).func is group.spec(29).func
        assert group.spec(30).func is group.spec(59).func


def test_compact_is_smaller_than_pickle_for_by_value_functions() -> None:
    lam = by_value_functions()[0]
    graph = TaskGraph.from_dict({("a", i): Task(lam, i) for i in range(200)})
    compact = message_nbytes(encode_graph(graph, "compact"))
    legacy = message_nbytes(encode_graph(graph, "pickle"))
    assert compact * 5 < legacy


# --- the scheduler never unpickles ---------------------------------------------------------

class Touch:
    """Unpickling this creates a file: evidence that someone unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def boom(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("something was unpickled while decoding on the scheduler")


@pytest.mark.parametrize("encoding", GRAPH_ENCODINGS)
def test_decoding_never_unpickles(encoding: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    evidence = tmp_path / "unpickled"
    graph = TaskGraph.from_dict({"a": Task(operator.add, 1, 2),
                                 "b": Task(print, Touch(evidence), Ref("a"))})
    group = TaskGroup.uniform(RegularKeys("r", (3,)), Task(print, Touch(evidence)),
                              np.zeros((3, 0)))
    graph = TaskGraph([*graph.groups, group])
    frames = encode_graph(graph, encoding)
    found: list[str] = []
    with monkeypatch.context() as patch:
        for module in (pickle, _pickle):
            for name in ("loads", "load", "Unpickler"):
                patch.setattr(module, name, boom)
        for name in ("loads", "load"):
            patch.setattr(cloudpickle, name, boom)
        active = [True]

        def audit(event: str, args: tuple[Any, ...]) -> None:
            if active[0] and event == "pickle.find_class":
                found.append(repr(args))

        sys.addaudithook(audit)   # hooks cannot be removed; this one is switched off below
        try:
            wire = decode_graph(through_the_stream(frames))
        finally:
            active[0] = False
    assert not found and not evidence.exists()
    active[0] = True
    try:
        SpecLoader(wire.functions).load_graph(wire.graph)   # the worker side does unpickle
    finally:
        active[0] = False
    assert evidence.exists()
    assert found   # and the audit hook does see it


# --- sizes ---------------------------------------------------------------------------------

def test_compact_bytes_per_task_on_regular_groups() -> None:
    graph = two_regular_groups(50_000)
    frames = encode_graph(graph, "compact")
    nbytes = message_nbytes(frames)
    assert nbytes / graph.n < 40
    # header, function table, one int32 indices array per group, no indptr (uniform stride)
    assert len(frames) == 4
    assert memoryview(frames[3]).nbytes == 4 * 50_000
    wire = decode_graph(frames)
    np.testing.assert_array_equal(wire.graph.groups[1].indices, np.arange(50_000))


# --- bad input -----------------------------------------------------------------------------

def small_graph() -> TaskGraph:
    return TaskGraph.from_dict({"a": 1, ("b", 0): Task(operator.add, Ref("a"), Ref("e")),
                                ("b", 1): Task(operator.neg, Ref(("b", 0)))}, external=["e"])


def test_keys_msgpack_cannot_carry() -> None:
    graph = TaskGraph.from_dict({("a", 2**5000): 1})
    with pytest.raises(ValueError, match="an int of 5001 bits cannot travel"):
        encode_graph(graph, "compact")


def test_unknown_encoding_names() -> None:
    with pytest.raises(ValueError, match="unknown graph encoding 'json'; choose one of"):
        encode_graph(small_graph(), "json")
    frames = rewrite(encode_graph(small_graph(), "compact"),
                     lambda h, r: h.update(encoding="layers-v9"))
    with pytest.raises(WireError, match="encoding 'layers-v9'"):
        decode_graph(frames)


@pytest.mark.parametrize("encoding", GRAPH_ENCODINGS)
def test_wrong_version(encoding: str) -> None:
    for version in (99, True, "1", None):
        def edit(header: dict[str, Any], rest: list[Any], v: Any = version) -> None:
            header["version"] = v

        frames = rewrite(encode_graph(small_graph(), encoding), edit)
        with pytest.raises(WireError, match="different versions"):
            decode_graph(frames)


@pytest.mark.parametrize("frames", [[], [b""], [b"\xc1\xc1"], [b"\x91\x01"],
                                    [msgpack.packb({"version": 1})], [b"garbage", b"x"]])
def test_garbage_messages(frames: list[bytes]) -> None:
    with pytest.raises(WireError):
        decode_graph(frames)


def compact_edits() -> list[tuple[str, Callable[[dict[str, Any], list[Any]], None], type,
                                  str]]:
    def set_group(**fields: Any) -> Callable[[dict[str, Any], list[Any]], None]:
        return lambda h, r: h["groups"][0].update(fields)

    def set_indices(values: list[int]) -> Callable[[dict[str, Any], list[Any]], None]:
        def edit(h: dict[str, Any], r: list[Any]) -> None:
            r[h["groups"][0]["indices"] - 1] = np.array(values, dtype="<i4").tobytes()
        return edit

    def set_indptr(values: list[int]) -> Callable[[dict[str, Any], list[Any]], None]:
        def edit(h: dict[str, Any], r: list[Any]) -> None:
            r[h["groups"][0]["indptr"] - 1] = np.array(values, dtype="<i4").tobytes()
        return edit

    return [
        ("ids out of range", set_indices([4, 0, 1]), WireError, "outside 0..3"),
        ("negative id", set_indices([-1, 0, 1]), WireError, "outside 0..3"),
        ("ragged array", lambda h, r: r.__setitem__(h["groups"][0]["indices"] - 1, b"12345"),
         WireError, "whole number"),
        ("bad dtype", set_group(dtype="<f8"), WireError, "dtype"),
        ("frame out of range", set_group(indices=17), WireError, "frame 17"),
        ("indptr decreasing", set_indptr([0, 2, 1, 3]), WireError, "non-decreasing"),
        ("indptr short", set_indptr([0, 3]), WireError, "non-decreasing"),
        ("cycle", set_indices([2, 0, 1]), CycleError, "cycle"),
        ("duplicate keys", set_group(keys=["explicit", ["a", "a", "c"]]), DuplicateKeyError,
         "'a'"),
        ("bad key", set_group(keys=["explicit", ["a", ["b", [0, None]], "c"]]), WireError,
         "invalid key"),
        ("bad key block", set_group(keys=["triangular", "a", [3]]), WireError, "key block"),
        ("bad shape", set_group(keys=["regular", "a", [-3]]), WireError, "shape"),
        ("too many specs", set_group(specs=[b"", b"", b"", b""]), WireError, "4 specs"),
        ("spec not bytes", set_group(specs=[b"", "text", b""]), WireError, "not bytes"),
        ("template and specs", set_group(template=b""), WireError, "both or neither"),
        ("missing field", lambda h, r: h["groups"][0].pop("dtype"), WireError, "'dtype'"),
        ("bool stride", set_group(stride=True), WireError, "'stride'"),
        ("stride mismatch", set_group(stride=2), WireError, "with 2 each"),
        ("extra frame", lambda h, r: r.append(b""), WireError, "refers to 2 arrays"),
        ("no function table", lambda h, r: r.clear(), WireError, "frames"),
        ("group not a map", lambda h, r: h["groups"].append(3), WireError, "not a map"),
        ("external key", lambda h, r: h.update(external=[{"a": 1}]), WireError, "invalid key"),
        ("huge regular group", set_group(keys=["regular", "a", [10**6, 10**6]]), WireError,
         "limit"),
        ("astronomical regular group", set_group(keys=["regular", "a", [2**62] * 3]),
         WireError, "limit"),
    ]


@pytest.mark.parametrize("case", compact_edits(), ids=lambda c: c[0])
def test_bad_compact_messages(case: tuple[str, Any, type, str]) -> None:
    _, edit, error, match = case
    frames = rewrite(encode_graph(small_graph(), "compact"), edit)
    with pytest.raises(error, match=match):
        decode_graph(frames)


def test_duplicate_regular_blocks_and_external_keys() -> None:
    graph = two_regular_groups(4)
    frames = rewrite(encode_graph(graph, "compact"),
                     lambda h, r: h["groups"][1]["keys"].__setitem__(1, "x"))
    with pytest.raises(DuplicateKeyError, match="'x', 0"):
        decode_graph(frames)
    frames = rewrite(encode_graph(graph, "compact"), lambda h, r: h.update(external=[["y", 2]]))
    with pytest.raises(DuplicateKeyError, match="'y', 2"):
        decode_graph(frames)


def test_regular_group_depending_on_itself_is_refused() -> None:
    def edit(h: dict[str, Any], r: list[Any]) -> None:
        r[h["groups"][1]["indices"] - 1] = np.full(4, 5, dtype="<i4").tobytes()

    with pytest.raises(WireError, match="topological order"):
        decode_graph(rewrite(encode_graph(two_regular_groups(4), "compact"), edit))


def pickle_edits() -> list[tuple[str, Callable[[dict[str, Any], list[Any]], None], type,
                                 str]]:
    return [
        ("missing dependency", lambda h, r: h["deps"][1].append("nowhere"),
         MissingDependencyError, "'nowhere'"),
        ("unhashable dependency", lambda h, r: h["deps"][1].append({"a": 1}), WireError,
         "not a key"),
        ("deps not a list", lambda h, r: h["deps"].__setitem__(0, 5), WireError, "int"),
        ("duplicate keys", lambda h, r: h["keys"].__setitem__(1, "a"), DuplicateKeyError,
         "'a'"),
        ("key also external", lambda h, r: h["external"].append("a"), DuplicateKeyError,
         "'a'"),
        ("spec not bytes", lambda h, r: h["specs"].__setitem__(0, 7), WireError, "not bytes"),
        ("count mismatch", lambda h, r: h["specs"].pop(), WireError, "2 specs"),
        ("bad key", lambda h, r: h["keys"].__setitem__(0, None), WireError, "invalid key"),
        ("cycle", lambda h, r: h["deps"].__setitem__(0, [["b", 1]]), CycleError, "cycle"),
        ("extra frame", lambda h, r: r.append(b"x"), WireError, "2 frames"),
    ]


@pytest.mark.parametrize("case", pickle_edits(), ids=lambda c: c[0])
def test_bad_pickle_messages(case: tuple[str, Any, type, str]) -> None:
    _, edit, error, match = case
    frames = rewrite(encode_graph(small_graph(), "pickle"), edit)
    with pytest.raises(error, match=match):
        decode_graph(frames)


@pytest.mark.parametrize("encoding", GRAPH_ENCODINGS)
def test_graph_limits(encoding: str) -> None:
    frames = encode_graph(small_graph(), encoding)
    decode_graph(frames, GraphLimits(max_tasks=4))
    with pytest.raises(WireError, match="limit of 3"):
        decode_graph(frames, GraphLimits(max_tasks=3))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 4))
def test_fuzz_decode_raises_only_value_errors(data: bytes, cut: int) -> None:
    # Frames cut out of a valid message, and arbitrary bytes, in every position.
    frames = [bytes(f) for f in encode_graph(small_graph(), "compact")]
    frames[cut % len(frames)] = data
    with contextlib.suppress(WireError, GraphError):
        decode_graph(frames)


MSGPACK_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.text(max_size=3),
              st.binary(max_size=3), st.floats()),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=2), inner, max_size=2)),
    max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_header_values(data: st.DataObject) -> None:
    """Replacing any header value by arbitrary msgpack data gives a clear error or a graph."""
    frames = encode_graph(small_graph(), data.draw(st.sampled_from(GRAPH_ENCODINGS)))
    header = msgpack.unpackb(frames[0])
    value = data.draw(MSGPACK_VALUES)
    paths = [(header, k) for k in header]
    for g in header.get("groups", []):
        paths += [(g, k) for k in g]
    target, field = data.draw(st.sampled_from(paths))
    target[field] = value
    with contextlib.suppress(WireError, GraphError):
        decode_graph([msgpack.packb(header, use_bin_type=True), *frames[1:]])


# --- worker side ---------------------------------------------------------------------------

def test_spec_loader_errors() -> None:
    with pytest.raises(SpecLoadError, match="function table"):
        SpecLoader(b"not a pickle")
    with pytest.raises(SpecLoadError, match="not a list"):
        SpecLoader(pickle.dumps({"a": 1}))
    loader = SpecLoader(cloudpickle.dumps([operator.add]))
    with pytest.raises(SpecLoadError, match="task spec"):
        loader.load(b"\x80\x05garbage")
    # a persistent id outside the table
    blob = b"\x80\x05K\x07Q."   # PROTO 5, BININT1 7, BINPERSID, STOP
    with pytest.raises(SpecLoadError, match="function 7"):
        loader.load(blob)
    assert isinstance(SpecLoadError("x"), WireError)


def test_frame_error_is_what_a_bad_header_raises() -> None:
    with pytest.raises(FrameError):
        decode_graph([b"\xc1"])


def test_partial_is_one_table_entry() -> None:
    add_one = functools.partial(operator.add, 1)
    graph = TaskGraph.from_dict({("p", i): Task(add_one, i) for i in range(10)})
    wire, loaded = round_trip(graph, "compact")
    assert loaded.execute([("p", 4)]) == {("p", 4): 5}
    assert len(SpecLoader(wire.functions)) == 2   # the partial and Task
