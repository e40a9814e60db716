"""What a task is: a function call whose arguments may refer to other results.

A *spec* describes how to compute one value. It is either

- a ``Task(func, *args, **kwargs)``: call ``func``; its arguments are specs too, so tasks nest
  (that is how fused tasks look), and lists, tuples and dicts in arguments are walked;
- a placeholder standing for a value known only at run time:
  ``Ref(key)``: the result of another task, by key (the user-facing form);
  ``DepSlot(i)``: the task's ``i``-th dependency (the wire and worker form);
  ``DepList(start, stop)``: a list of the task's dependencies ``[start:stop]``;
  ``IndexSlot(axis)``: element ``axis`` of the task's block index (regular groups);
  ``BlockArg(name)``: the block of layer ``name`` at the same index (layers only);
- or any other value, which computes to itself.

Rules: only ``list``, ``tuple`` and ``dict`` (values) are walked, so a big array argument is
never scanned. Specs are immutable values. ``compile_spec`` turns a spec into a plain closure
once (per group or per task) so that running a million tasks of one template costs one closure
call each, not a tree walk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["BlockArg", "DepList", "DepSlot", "IndexSlot", "Ref", "Task", "compile_spec",
           "has_placeholders", "map_placeholders", "refs_to_slots", "spec_refs", "run_spec"]


class _Placeholder:
    __slots__ = ()

    def _fields(self) -> tuple:
        names: tuple[str, ...] = self.__slots__
        return tuple(getattr(self, s) for s in names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Placeholder) and type(other) is type(self) \
            and other._fields() == self._fields()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._fields()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(f) for f in self._fields())})"

    def __reduce__(self) -> tuple:
        return (type(self), self._fields())


class Ref(_Placeholder):
    """The result of the task with this key."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key


class DepSlot(_Placeholder):
    """The value of the task's ``i``-th dependency."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i


class DepList(_Placeholder):
    """A list of the task's dependency values ``[start:stop]`` (``stop=None``: to the end)."""

    __slots__ = ("start", "stop")

    def __init__(self, start: int = 0, stop: int | None = None) -> None:
        self.start = start
        self.stop = stop


class IndexSlot(_Placeholder):
    """Element ``axis`` of the task's block index (only in regular groups)."""

    __slots__ = ("axis",)

    def __init__(self, axis: int) -> None:
        self.axis = axis


class BlockArg(_Placeholder):
    """The block of layer ``name`` at the output block's index (high-level layers only)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Task:
    """``func(*args, **kwargs)`` where arguments may be specs."""

    __slots__ = ("func", "args", "kwargs")

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if not callable(func):
            raise TypeError(f"a Task needs a callable, got {type(func).__name__}: {func!r}")
        self.func = func
        self.args = args
        self.kwargs = kwargs

    def __eq__(self, other: object) -> bool:
        return (type(other) is Task and other.func == self.func and other.args == self.args
                and other.kwargs == self.kwargs)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        name = getattr(self.func, "__name__", repr(self.func))
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"Task({name}, {', '.join(parts)})"

    def __reduce__(self) -> tuple:
        if self.kwargs:
            return (_task_with_kwargs, (self.func, self.args, self.kwargs))
        return (Task, (self.func, *self.args))


def _task_with_kwargs(func: Callable[..., Any], args: tuple, kwargs: dict) -> Task:
    return Task(func, *args, **kwargs)


_PLACEHOLDERS = (Ref, DepSlot, DepList, IndexSlot, BlockArg)


def map_placeholders(spec: Any, fn: Callable[[Any], Any]) -> Any:
    """A copy of ``spec`` with every placeholder ``p`` replaced by ``fn(p)``.

    Containers and tasks without placeholders are returned as they are (not copied).
    """
    t = type(spec)
    if t is Task:
        args = tuple(map_placeholders(a, fn) for a in spec.args)
        kwargs = {k: map_placeholders(v, fn) for k, v in spec.kwargs.items()}
        if all(a is b for a, b in zip(args, spec.args, strict=True)) and all(
                kwargs[k] is spec.kwargs[k] for k in kwargs):
            return spec
        return Task(spec.func, *args, **kwargs)
    if t in _PLACEHOLDERS:
        return fn(spec)
    if t is list or t is tuple:
        items = [map_placeholders(a, fn) for a in spec]
        if all(a is b for a, b in zip(items, spec, strict=True)):
            return spec
        return items if t is list else tuple(items)
    if t is dict:
        vals = {k: map_placeholders(v, fn) for k, v in spec.items()}
        if all(vals[k] is spec[k] for k in vals):
            return spec
        return vals
    return spec


def _walk(spec: Any, out: list) -> None:
    t = type(spec)
    if t is Task:
        for a in spec.args:
            _walk(a, out)
        for v in spec.kwargs.values():
            _walk(v, out)
    elif t in _PLACEHOLDERS:
        out.append(spec)
    elif t is list or t is tuple:
        for a in spec:
            _walk(a, out)
    elif t is dict:
        for v in spec.values():
            _walk(v, out)


def placeholders(spec: Any) -> list:
    """Every placeholder in ``spec``, in depth-first order (with repeats)."""
    out: list = []
    _walk(spec, out)
    return out


def has_placeholders(spec: Any) -> bool:
    return bool(placeholders(spec))


def spec_refs(spec: Any) -> list:
    """The distinct keys ``spec`` refers to with ``Ref``, in order of first appearance."""
    seen: dict = {}
    for p in placeholders(spec):
        if type(p) is Ref and p.key not in seen:
            seen[p.key] = None
    return list(seen)


def refs_to_slots(spec: Any) -> tuple[Any, list]:
    """``spec`` with each ``Ref(key)`` replaced by ``DepSlot(i)``, and the ordered dep keys."""
    order: dict = {}

    def fn(p: Any) -> Any:
        if type(p) is Ref:
            i = order.get(p.key)
            if i is None:
                i = order[p.key] = len(order)
            return DepSlot(i)
        return p

    new = map_placeholders(spec, fn)
    return new, list(order)


# --- compilation ---------------------------------------------------------------------------

Getter = Callable[[Sequence[Any], tuple], Any]


def _const(value: Any) -> Getter:
    return lambda deps, index: value


def _compile(spec: Any) -> tuple[Getter, bool]:
    """(getter, is_constant) for ``spec``."""
    t = type(spec)
    if t is DepSlot:
        i = spec.i
        return (lambda deps, index: deps[i]), False
    if t is DepList:
        sl = slice(spec.start, spec.stop)
        return (lambda deps, index: list(deps[sl])), False
    if t is IndexSlot:
        ax = spec.axis
        return (lambda deps, index: index[ax]), False
    if t is Ref or t is BlockArg:
        raise ValueError(f"{spec!r} must be resolved before a task runs (a bug in lowering "
                         f"or in the graph's conversion to slots)")
    if t is Task:
        return _compile_task(spec), False
    if t is list or t is tuple:
        parts = [_compile(a) for a in spec]
        if all(c for _, c in parts):
            return _const(spec), True
        getters = [g for g, _ in parts]
        if t is list:
            return (lambda deps, index: [g(deps, index) for g in getters]), False
        return (lambda deps, index: tuple([g(deps, index) for g in getters])), False
    if t is dict:
        items = [(k, _compile(v)) for k, v in spec.items()]
        if all(c for _, (_, c) in items):
            return _const(spec), True
        kg = [(k, g) for k, (g, _) in items]
        return (lambda deps, index: {k: g(deps, index) for k, g in kg}), False
    return _const(spec), True


def _compile_task(task: Task) -> Getter:
    func = task.func
    args = [_compile(a) for a in task.args]
    kwargs = [(k, _compile(v)) for k, v in task.kwargs.items()]
    if kwargs:
        ag = [g for g, _ in args]
        kg = [(k, g) for k, (g, _) in kwargs]
        return lambda deps, index: func(*[g(deps, index) for g in ag],
                                        **{k: g(deps, index) for k, g in kg})
    # Specialise the shapes that a million-task template usually has.
    if all(c for _, c in args):
        const_args = task.args
        return lambda deps, index: func(*const_args)
    if len(args) == 1:
        g0 = args[0][0]
        if type(task.args[0]) is DepSlot and task.args[0].i == 0:
            return lambda deps, index: func(deps[0])
        return lambda deps, index: func(g0(deps, index))
    if len(args) == 2:
        (g0, c0), (g1, c1) = args
        if c1:
            v1 = task.args[1]
            if type(task.args[0]) is DepSlot and task.args[0].i == 0:
                return lambda deps, index: func(deps[0], v1)
            return lambda deps, index: func(g0(deps, index), v1)
        return lambda deps, index: func(g0(deps, index), g1(deps, index))
    ag = [g for g, _ in args]
    return lambda deps, index: func(*[g(deps, index) for g in ag])


def compile_spec(spec: Any) -> Getter:
    """A closure ``(dep_values, block_index) -> value`` that computes ``spec``.

    ``spec`` must use ``DepSlot``/``DepList``/``IndexSlot`` only (no ``Ref``/``BlockArg``).
    """
    return _compile(spec)[0]


def run_spec(spec: Any, deps: Sequence[Any] = (), index: tuple = ()) -> Any:
    """Compute ``spec`` once (compiles it; use ``compile_spec`` to run a template many times)."""
    return compile_spec(spec)(deps, index)
