"""Import Dask graphs into our graph model, and Dask's custom-scheduler protocol.

``from_dask(dsk, keys)`` turns a Dask low-level graph into a ``TaskGraph`` with the same keys
and the same dependencies. ``get_sync(dsk, keys)`` runs one in this process, so that
``dask.compute(x, scheduler=get_sync)`` works; it is the model the networked client follows.

What is accepted as ``dsk``: a ``dict`` of key -> task, any other ``Mapping`` (a
``HighLevelGraph`` is materialised with its ``to_dict``), or an object with
``__dask_graph__()`` (what ``dask.compute`` hands a custom scheduler is such an expression, not
a dict; a collection works too).

Rules of the conversion. They follow what Dask *runs* (``convert_legacy_graph`` and
``GraphNode.__call__``); where ``dask.core.get_dependencies`` disagrees, e.g. for a dict
argument of a tuple task, the executed meaning wins.

Legacy tuple tasks
- ``(func, *args)`` with ``func`` callable is a task; ``(apply, func, args[, kwargs])`` with a
  literal ``args`` list and ``kwargs`` dict becomes ``Task(func, *args, **kwargs)``.
- A ``str``, ``int``, ``float`` or ``tuple`` (subclasses included, as in Dask: ``True`` refers
  to a key ``1``; at any depth, outside dicts) is a reference only if it is a key of the graph;
  otherwise it is data. Keys nest (``("split", 0, (1, 2))``) and are matched whole. ``dsk[a] = "b"`` is an alias: ``a`` computes to ``b``'s
  value. Lists, tuples, sets and frozensets are walked; a walked container holding a reference
  is rebuilt at run time with the same type (a namedtuple through its constructor).
- A dict that is a direct task argument is rebuilt as a plain dict, and only Task-spec objects
  among its values are resolved (a string value stays a string, as in Dask); a dict anywhere
  else is data.

Task-spec objects (``dask._task_spec``)
- ``Task`` (and subclasses that keep ``Task.__call__``, e.g. distributed's
  ``P2PBarrierTask``) -> our ``Task``; only ``TaskRef`` and ``GraphNode`` arguments are
  resolved, as in Dask; plain containers among its arguments are data.
- ``TaskRef`` (and subclasses: distributed's ``Future`` and ``Actor``) and ``Alias`` -> a
  reference; ``DataNode`` -> its value; ``List``/``Tuple`` -> a list/tuple spec; ``Set`` -> a
  task building a set; ``Dict`` -> a dict spec (a task building a dict if a dict key is itself
  a reference). Nested nodes become nested specs.
- A fused task (``Task.fuse``: ``_execute_subgraph(inner, outkey, inkeys, *deps)``) becomes
  nested ``Task``s when its inner graph is a tree no deeper than ``MAX_INLINE_DEPTH``;
  otherwise (an inner result used twice, or a long fused chain) it becomes
  ``Task(run_subgraph, inner TaskGraph, outkey, inkeys, *deps)``, run by our own executor.
  Either way its dependencies are its ``deps``, as in Dask (inputs the inner graph ignores
  are passed to ``_first(value, *ignored)`` around the nested tasks).
- Any other ``GraphNode`` (a subclass with its own ``__call__``) cannot be converted
  structurally and is wrapped as ``Task(run_dask_node, node, {dep: <dep's value>, ...})``:
  Dask's own code computes it from its dependencies' values, so results stay correct.

General
- A key whose task refers to the key itself (``dsk[k] = k``, ``Alias(k)``, a future of ``k``)
  means "already held": it becomes an *external* key of the graph, as Dask drops it.
- Keys are Dask's (``scheduler.graph.keys``: str, int, float, tuples of keys nested to any
  depth); anything else raises ``InvalidKeyError`` saying why. A reference to a key that is
  neither in the graph nor external raises ``MissingDependencyError``.
- Data is never copied; a literal list/tuple/dict of more than ``BULKY_LITERAL`` items is
  wrapped in a zero-argument task, so that our spec walkers, which walk lists, tuples and
  dicts, do not walk data. (Only the outer length is looked at, to keep this O(1).)
- One pass, linear cost: each task is converted once, straight to ``DepSlot`` form with its
  ordered dependency keys, and the graph's arrays are built from those (no second walk to
  number ``Ref``s, which ``TaskGraph.from_dict`` would do). Within a task, nested nodes and
  walked containers are memoised by identity (a structure shared inside a task is converted
  once); across tasks, so are legacy containers found to hold no reference.
- Dask coroutine tasks (``is_coro``) are not awaited; async functions are not supported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any

import numpy as np

from .errors import MissingDependencyError, UnknownKeyError
from .keys import ExplicitKeys, InvalidKeyError, Key, check_key
from .lowgraph import TaskGraph, TaskGroup
from .task import DepSlot, Task

__all__ = ["BULKY_LITERAL", "MAX_INLINE_DEPTH", "flatten_keys", "from_dask", "get_sync",
           "pack_results"]

MAX_INLINE_DEPTH = 32
"""Fused Dask tasks whose inner chain is deeper than this run as an inner ``TaskGraph``."""

BULKY_LITERAL = 64
"""Literal lists/tuples/dicts longer than this are wrapped so that they are not walked."""

# Kinds of objects met in a Dask graph (see ``_classify``); non-zero so ``kinds.get(t) or``
# works.
_LITERAL, _REF, _TASK, _LIST, _TUPLE, _SET, _DICT, _ALIAS, _DATA, _OPAQUE = range(1, 11)

_EXTERNAL = object()  # ``_Converter.task`` result for a key whose task is the key itself
_MISSING = object()


# --- run-time helpers that converted specs call -----------------------------------------------

def _literal(value: Any) -> Any:
    """Return ``value`` (the body of a wrapped bulky literal)."""
    return value


def _first(value: Any, *ignored: Any) -> Any:
    """Return ``value``; the other arguments are inputs a fused task waits for but ignores."""
    return value


def run_dask_node(node: Any, values: dict) -> Any:
    """Compute a Dask ``GraphNode`` we cannot convert, from its dependencies' values."""
    return node(values)


def run_subgraph(graph: TaskGraph, outkey: Key, inkeys: tuple, *values: Any) -> Any:
    """Run a fused Dask task's inner graph with our executor; return ``outkey``'s value."""
    external = dict(zip(inkeys, values, strict=True))
    return graph.execute([outkey], external_values=external)[outkey]


def _wrap(value: Any) -> Task:
    """A zero-argument task returning ``value``, which our spec walkers do not look into."""
    return Task(functools.partial(_literal, value))


def _opaque(value: Any) -> Any:
    """``value`` as a spec: wrapped if it is a bulky list/tuple/dict, else itself."""
    t = type(value)
    if (t is list or t is tuple or t is dict) and len(value) > BULKY_LITERAL:
        return _wrap(value)
    return value


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


# --- classification of Dask's types -----------------------------------------------------------

def _classify(t: type, ts: Any) -> int:
    """The kind of objects of type ``t``; ``ts`` is ``dask._task_spec``."""
    if issubclass(t, ts.TaskRef):
        return _REF
    if not issubclass(t, ts.GraphNode):
        return _LITERAL
    call = t.__call__
    if issubclass(t, ts.NestedContainer):
        for base, kind in ((ts.List, _LIST), (ts.Tuple, _TUPLE), (ts.Set, _SET),
                           (ts.Dict, _DICT)):
            if (issubclass(t, base) and call is base.__call__
                    and getattr(t, "constructor", None) is getattr(base, "constructor", None)):
                return kind
        return _OPAQUE
    if issubclass(t, ts.Task):
        return _TASK if call is ts.Task.__call__ else _OPAQUE
    if issubclass(t, ts.Alias):
        return _ALIAS if call is ts.Alias.__call__ else _OPAQUE
    if issubclass(t, ts.DataNode):
        return _DATA if call is ts.DataNode.__call__ else _OPAQUE
    return _OPAQUE


class _Dask:
    """What the conversion needs from Dask, and a per-conversion cache of type kinds."""

    __slots__ = ("ts", "apply", "execute_subgraph", "identity_cast", "kinds")

    def __init__(self) -> None:
        from dask import _task_spec as ts
        from dask.utils import apply

        self.ts = ts
        self.apply = apply
        self.execute_subgraph = ts._execute_subgraph
        self.identity_cast = ts._identity_cast
        self.kinds: dict[type, int] = {}

    def kind(self, t: type) -> int:
        k = self.kinds.get(t)
        if k is None:
            k = self.kinds[t] = _classify(t, self.ts)
        return k


class _CannotInline(Exception):
    """Internal: a fused task's inner graph is not a shallow tree."""


# --- the converter ----------------------------------------------------------------------------

class _Converter:
    """Converts the tasks of one graph, one at a time, to ``DepSlot`` specs.

    ``keys`` decides which legacy strings/tuples are references. ``ref(key)`` is what a
    reference becomes: here a ``DepSlot`` numbered in the current task's order.
    """

    __slots__ = ("dask", "keys", "kinds", "taskref", "datanode", "subgraph_func", "cast_func",
                 "ref", "memo", "shared", "order", "slots", "inliner")

    def __init__(self, dask: _Dask, keys: Container[Any]) -> None:
        self.dask = dask
        self.keys = keys
        self.kinds = dask.kinds
        self.taskref = dask.ts.TaskRef
        self.datanode = dask.ts.DataNode
        self.subgraph_func = dask.execute_subgraph
        self.cast_func = dask.identity_cast
        self.ref: Callable[[Any], Any] = self.slot
        self.memo: dict[int, Any] = {}       # this task's nested conversions, by id
        self.shared: dict[int, Any] = {}     # conversions holding no reference, by id
        self.order: dict[Any, int] = {}      # this task's dependency keys -> slot number
        self.slots: list[DepSlot] = []       # DepSlot(i) objects, shared by all tasks
        self.inliner: _Inliner | None = None  # reused for every fused task met here

    def slot(self, key: Any) -> DepSlot:
        order = self.order
        i = order.get(key)
        if i is None:
            i = order[key] = len(order)
            if i == len(self.slots):
                self.slots.append(DepSlot(i))
        return self.slots[i]

    def task(self, key: Key, value: Any) -> tuple[Any, list]:
        """``(spec, dependency keys in slot order)`` for ``dsk[key] = value``, or
        ``(_EXTERNAL, [key])`` if the task is ``key`` itself."""
        if self.order:
            self.order = {}
        if self.memo:
            self.memo = {}
        t = type(value)
        kind = self.kinds.get(t) or self.dask.kind(t)
        if kind == _LITERAL:
            spec = self.legacy(value)
            if spec is value:
                spec = _opaque(value)
        elif kind == _REF:
            spec = self.ref(value.key)
        else:
            spec = self.node(value, kind)
        deps = list(self.order)
        if type(spec) is DepSlot and deps[spec.i] == key:
            return _EXTERNAL, deps
        return spec, deps

    # Task-spec objects

    def arg(self, a: Any) -> Any:
        """An argument of a Task-spec node: only nodes and ``TaskRef``s are resolved."""
        t = type(a)
        if t is self.taskref:
            return self.ref(a.key)
        if t is self.datanode:
            v = a.value
            tv = type(v)
            if (tv is list or tv is tuple or tv is dict) and len(v) > BULKY_LITERAL:
                return _wrap(v)
            return v
        kind = self.kinds.get(t) or self.dask.kind(t)
        if kind == _LITERAL:
            if (t is list or t is tuple or t is dict) and len(a) > BULKY_LITERAL:
                return _wrap(a)
            return a
        if kind == _REF:
            return self.ref(a.key)
        memo = self.memo
        spec = memo.get(id(a), _MISSING)
        if spec is _MISSING:
            spec = memo[id(a)] = self.node(a, kind)
        return spec

    def node(self, n: Any, kind: int) -> Any:
        arg = self.arg
        if kind == _TASK:
            func = n.func
            kwargs = n.kwargs
            if func is self.subgraph_func:
                return self.fused(n)
            if func is self.cast_func and len(kwargs) == 1 and "typ" in kwargs:
                return self.cast(kwargs["typ"], n.args)
            if kwargs:
                return Task(func, *map(arg, n.args), **{k: arg(v) for k, v in kwargs.items()})
            return Task(func, *map(arg, n.args))
        if kind == _ALIAS:
            return self.ref(n.target)
        if kind == _DATA:
            return _opaque(n.value)
        if kind == _LIST:
            return list(map(arg, n.args))
        if kind == _TUPLE:
            return tuple(map(arg, n.args))
        if kind == _SET:
            return Task(set, list(map(arg, n.args)))
        if kind == _DICT:
            ks, vs = n.args[0::2], n.args[1::2]
            if all(self.dask.kind(type(k)) == _LITERAL for k in ks):
                return {k: arg(v) for k, v in zip(ks, vs, strict=True)}
            return Task(dict, [[arg(k), arg(v)] for k, v in zip(ks, vs, strict=True)])
        # A node only Dask knows how to run: hand it its dependencies' values.
        return Task(run_dask_node, n, {d: self.ref(d) for d in n.dependencies})

    def cast(self, typ: Any, args: tuple) -> Any:
        """Dask's ``_identity_cast(*args, typ=typ)`` (how it rebuilds walked containers)."""
        items = list(map(self.arg, args))
        if typ is list:
            return items
        if typ is tuple:
            return tuple(items)
        return Task(typ, items)

    def fused(self, n: Any) -> Any:
        """A ``Task.fuse``d task: nested tasks if possible, else an inner graph of ours."""
        args = n.args
        if n.kwargs or len(args) < 3 or type(args[0]) is not dict:
            return self.plain_task(n)
        inner, outkey, inkeys, outer = args[0], args[1], args[2], args[3:]
        if (not isinstance(inkeys, tuple | list) or len(inkeys) != len(outer)
                or outkey not in inner):
            return self.plain_task(n)
        bound = dict(zip(inkeys, map(self.arg, outer), strict=True))
        inliner = self.inliner
        if inliner is None:
            inliner = self.inliner = _Inliner(self)
        inliner.begin(inner, bound)
        try:
            spec = inliner.inner_ref(outkey)
        except _CannotInline:
            pass
        else:
            if len(inliner.used) == len(bound):
                return spec
            # Keep the inputs the inner graph ignores as dependencies, as Dask does.
            unused = [v for k, v in bound.items() if k not in inliner.used]
            return Task(_first, spec, *unused)
        try:
            graph = from_dask(inner, external=list(inkeys))
        except InvalidKeyError:  # inner keys that are not keys: let Dask run it
            return self.plain_task(n)
        return Task(run_subgraph, graph, outkey, tuple(inkeys), *bound.values())

    def plain_task(self, n: Any) -> Task:
        return Task(n.func, *[self.arg(a) for a in n.args],
                    **{k: self.arg(v) for k, v in n.kwargs.items()})

    # Legacy tuple tasks

    def legacy(self, x: Any) -> Any:
        """A legacy value; ``x`` itself if it holds no reference and no task."""
        t = type(x)
        if t is str:
            return self.ref(x) if x in self.keys else x
        if t is tuple:
            if x and callable(x[0]):
                return self.container(x, self.legacy_task)
            try:
                if x in self.keys:
                    return self.ref(x)
            except TypeError:  # holds something unhashable: not a key
                pass
            return self.container(x, self.legacy_seq)
        if t is list:
            return self.container(x, self.legacy_seq)
        if t is int or t is float:
            return self.ref(x) if x in self.keys else x
        if t is dict or x is None:
            return x
        kind = self.kinds.get(t) or self.dask.kind(t)
        if kind == _REF:
            return self.ref(x.key)
        if kind != _LITERAL:
            return self.arg(x)
        if isinstance(x, str | tuple | int | float):
            try:
                if x in self.keys:
                    return self.ref(x)
            except TypeError:
                pass
        if isinstance(x, list | tuple | set | frozenset):
            return self.container(x, self.legacy_seq)
        if getattr(x, "__dask_future__", False) is True:
            return self.ref(x.key)
        return x

    def container(self, x: Any, convert: Callable[[Any], Any]) -> Any:
        i = id(x)
        if i in self.shared:
            return x
        spec = self.memo.get(i, _MISSING)
        if spec is _MISSING:
            spec = convert(x)
            if spec is x:
                self.shared[i] = x
            else:
                self.memo[i] = spec
        return spec

    def legacy_seq(self, x: Any) -> Any:
        legacy = self.legacy
        items = []
        changed = False
        for e in x:
            c = legacy(e)
            changed = changed or c is not e
            items.append(c)
        if not changed:
            return x
        t = type(x)
        if t is list:
            return items
        if t is tuple:
            return tuple(items)
        if _is_namedtuple(x):
            return Task(t, *items)
        return Task(t, items)  # set, frozenset, other list/tuple subclasses

    def legacy_arg(self, a: Any) -> Any:
        if isinstance(a, dict):
            return self.legacy_dict(a)
        c = self.legacy(a)
        return _opaque(a) if c is a else c

    def legacy_dict(self, d: dict) -> Any:
        """A dict argument of a tuple task: only Task-spec values are resolved (as Dask)."""
        kind = self.dask.kind
        if all(kind(type(k)) == _LITERAL for k in d):
            out = {k: (v if kind(type(v)) == _LITERAL else self.arg(v)) for k, v in d.items()}
            if type(d) is dict and all(out[k] is v for k, v in d.items()):
                return _opaque(d)
            return out
        return Task(dict, [[self.arg(k), self.arg(v)] for k, v in d.items()])

    def legacy_task(self, x: tuple) -> Task:
        func = x[0]
        args = [self.legacy_arg(x[i]) for i in range(1, len(x))]
        if func is self.dask.apply and 2 <= len(args) <= 3:
            f, a = args[0], args[1]
            kw = args[2] if len(args) == 3 else None
            if kw is None:
                kw = {}
            if (callable(f) and type(a) in (list, tuple) and type(kw) is dict
                    and all(type(k) is str for k in kw)):
                return Task(f, *a, **kw)
        return Task(func, *args)


class _Inliner(_Converter):
    """Converts a fused task's inner graph into nested specs, each inner key used once.

    A reference to an inner key becomes that key's spec, one to an input key the outer
    task's spec for it (``bound``); any other reference, a second use, or too deep a chain
    raises ``_CannotInline``. One inliner serves every fused task of its converter in turn
    (``begin``); a fused task nested in an inner graph gets the inliner's own inliner.
    """

    __slots__ = ("inner", "bound", "used", "done", "depth")

    def __init__(self, outer: _Converter) -> None:
        super().__init__(outer.dask, ())
        self.ref = self.inner_ref
        self.inner: dict = {}
        self.bound: dict = {}
        self.used: set = set()
        self.done: set = set()
        self.depth = 0

    def begin(self, inner: dict, bound: dict) -> None:
        """Start on another fused task."""
        self.keys = self.inner = inner
        self.bound = bound
        self.used.clear()
        self.done.clear()
        self.memo.clear()
        self.depth = 0

    def inner_ref(self, key: Any) -> Any:
        value = self.inner.get(key, _MISSING)
        if value is _MISSING:
            spec = self.bound.get(key, _MISSING)
            if spec is _MISSING:
                raise _CannotInline
            self.used.add(key)
            return spec
        if key in self.done or self.depth >= MAX_INLINE_DEPTH:
            raise _CannotInline
        self.done.add(key)
        kind = self.kinds.get(type(value)) or self.dask.kind(type(value))
        if kind in (_LITERAL, _REF):
            raise _CannotInline
        self.depth += 1
        spec = self.node(value, kind)
        self.depth -= 1
        return spec


# --- public API -------------------------------------------------------------------------------

def _as_graph(dsk: Any) -> Mapping[Any, Any]:
    if type(dsk) is dict:
        return dsk
    if isinstance(dsk, Mapping):
        to_dict = getattr(dsk, "to_dict", None)  # HighLevelGraph: merge layers at once
        return to_dict() if callable(to_dict) else dict(dsk)
    graph_of = getattr(dsk, "__dask_graph__", None)
    if callable(graph_of):
        graph = graph_of()
        if isinstance(graph, Mapping):
            return _as_graph(graph)
    raise TypeError(f"expected a Dask graph (a Mapping of key -> task, a HighLevelGraph, or "
                    f"an object with __dask_graph__()), got {type(dsk).__name__}")


def from_dask(dsk: Any, keys: Any = None, *, external: Iterable[Key] = ()) -> TaskGraph:
    """A ``TaskGraph`` with the keys and dependencies of the Dask graph ``dsk``.

    ``keys``: a key or nested lists of keys; if given, only they and the tasks they need are
    kept (in the order met), else every task is, in ``dsk``'s order.
    ``external``: keys held elsewhere (by the cluster) that tasks may refer to.

    Raises ``UnknownKeyError`` for a requested key not in ``dsk``,
    ``MissingDependencyError`` for a reference to a key neither in ``dsk`` nor external,
    ``InvalidKeyError`` for keys our model does not accept, ``CycleError`` for a cycle.
    """
    graph = _as_graph(dsk)
    convert = _Converter(_Dask(), graph).task
    task_keys: list[Key] = []
    specs: list[Any] = []
    dep_keys: list[Any] = []
    indptr = [0]
    held: list[Key] = []

    def add(key: Key, spec: Any, deps: list) -> None:
        if spec is _EXTERNAL:
            held.append(key)
        else:
            task_keys.append(key)
            specs.append(spec)
            dep_keys.extend(deps)
            indptr.append(len(dep_keys))

    if keys is None:
        for key, value in graph.items():
            add(key, *convert(key, value))
    else:
        wanted = flatten_keys(keys)
        unknown = [k for k in wanted if k not in graph]
        if unknown:
            raise UnknownKeyError(unknown, "the Dask graph")
        seen = set(wanted)
        stack = wanted[::-1]
        while stack:
            key = stack.pop()
            spec, deps = convert(key, graph[key])
            add(key, spec, deps)
            for d in deps:
                if d not in seen and d in graph:
                    seen.add(d)
                    stack.append(d)
    return _build(task_keys, specs, dep_keys, indptr, [*held, *external])


def _build(keys: list[Key], specs: list[Any], dep_keys: list[Any], indptr: list[int],
           external: list[Key]) -> TaskGraph:
    """One explicit group from converted tasks; dependency keys resolved to ids."""
    block = ExplicitKeys(keys)
    pos = block.positions
    n = len(keys)
    ext = [k for k in dict.fromkeys(external) if k not in pos]
    get = pos.get
    ids = [get(d, -1) for d in dep_keys]
    if -1 in ids:
        ext_pos = {k: n + j for j, k in enumerate(ext)}
        missing: dict[Any, Any] = {}
        for t in range(n):
            for j in range(indptr[t], indptr[t + 1]):
                if ids[j] < 0:
                    e = ext_pos.get(dep_keys[j], -1)
                    if e < 0:
                        missing.setdefault(dep_keys[j], keys[t])
                    ids[j] = e
        if missing:
            raise MissingDependencyError(missing)
    group = TaskGroup(block, specs=specs, indptr=np.asarray(indptr, dtype=np.int64),
                      indices=np.asarray(ids, dtype=np.int64))
    return TaskGraph([group], external=ext)


def flatten_keys(keys: Any) -> list[Key]:
    """The distinct keys in ``keys`` (a key or arbitrarily nested lists of keys), in order.

    Only lists nest (a tuple is a key). Raises ``InvalidKeyError`` for a non-key.
    """
    if not isinstance(keys, list):
        return [check_key(keys)]
    out: dict[Key, None] = {}
    stack = [iter(keys)]
    while stack:
        for k in stack[-1]:
            if isinstance(k, list):
                stack.append(iter(k))
                break
            out[check_key(k)] = None
        else:
            stack.pop()
    return list(out)


def pack_results(keys: Any, lookup: Callable[[Key], Any]) -> Any:
    """The values of ``keys`` in the structure Dask's ``get`` protocol returns
    (``dask.local.get_sync``): a single key gives its value, a list (at any depth) a tuple of
    the packed items; ``[]`` gives ``()``. Only lists nest (a tuple is a key)."""
    if not isinstance(keys, list):
        return lookup(keys)
    return tuple([pack_results(k, lookup) if isinstance(k, list) else lookup(k) for k in keys])


def get_sync(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    """Dask's custom-scheduler ``get``: compute ``keys`` of ``dsk`` in this process.

    Runs ``from_dask`` (culled to ``keys``) and ``TaskGraph.execute``, and packs results like
    ``keys``. Extra keyword arguments that ``dask.compute`` forwards are accepted and ignored.
    A graph with external keys raises ``MissingDependencyError``: nothing holds them here.
    """
    wanted = flatten_keys(keys)
    values = from_dask(dsk, wanted).execute(wanted)
    return pack_results(keys, values.__getitem__)
