"""High-level layers: a graph described by a few layers instead of a million tasks.

A layer produces a block of keys from the blocks of earlier layers:

- ``Blockwise(name, shape, template)``: task ``(name, *i)`` runs ``template`` where each
  ``BlockArg(other)`` stands for block ``(other, *i)`` of layer ``other`` (which must have the
  same shape, or shape ``()`` for a single key broadcast to every block) and ``IndexSlot(d)``
  for ``i[d]``.
- ``Reduction(name, input, combine, aggregate, split_every)``: a tree over the blocks of
  ``input`` (flattened in C order); each level combines up to ``split_every`` results; the
  final key is ``(name, 0)``.
- ``Shuffle(name, input, split, combine, max_branch)``: all-to-all between the ``n`` blocks of a
  1-d ``input`` and ``n`` output blocks ``(name, j)``. With ``n <= max_branch`` it is one stage
  (n splits, n combines, n*n edges); beyond, it runs ``s`` stages of branching ``k`` with
  ``k**s >= n`` so edges grow as ``n*k*s`` instead of ``n*n``.
- ``Materialized(name, tasks)``: a plain ``{key: spec}`` whose specs use ``Ref(key)``.

Rules: layers are data (names, shapes, specs); lowering is vectorised with numpy (no per-task
Python work) for every layer but ``Materialized``; a ``LayerGraph`` keeps layers in
topological order and lowers them into a ``TaskGraph`` whose groups follow that order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import CycleError, DuplicateKeyError, GraphError, MissingDependencyError
from .keys import ExplicitKeys, Key, key_name
from .lowering import (
    Placed,
    Structure,
    blockwise_structure,
    explicit_structure,
    reduction_levels,
    reduction_structure,
    shuffle_plan,
    shuffle_stage_sizes,
    shuffle_structure,
)
from .lowgraph import TaskGraph, TaskGroup
from .task import (
    BlockArg,
    DepList,
    DepSlot,
    IndexSlot,
    Task,
    map_placeholders,
    placeholders,
    refs_to_slots,
)

__all__ = ["Blockwise", "Layer", "LayerGraph", "Materialized", "Reduction", "Shuffle"]


_Lowered = Placed  # where an input layer was placed


class Layer:
    """Base of the layer kinds. ``name`` names the output block; ``dependencies`` are the names
    of the layers read. Lowering pairs ``templates()`` (one per task group, client side: they
    hold user functions) with ``structure()`` (keys and dependency arrays: data only, which is
    what the scheduler computes in the ``layers`` encoding)."""

    name: str
    kind: str = ""

    @property
    def dependencies(self) -> tuple[Hashable, ...]:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the output key block."""
        raise NotImplementedError

    @property
    def n_tasks(self) -> int:
        """Tasks this layer lowers to (computed without lowering)."""
        raise NotImplementedError

    def templates(self) -> list[Any]:
        """One template per task group (``DepSlot``/``DepList``/``IndexSlot`` placeholders)."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The data that, with the placed inputs, fixes ``structure`` (msgpack-able)."""
        raise NotImplementedError

    def structure(self, inputs: Mapping[str, Placed], start: int,
                  resolve: Callable[[Key], int]) -> list[Structure]:
        return layer_structure(self.kind, self.params(), inputs, start, resolve)

    def lower(self, inputs: Mapping[str, Placed], start: int,
              resolve: Callable[[Key], int]) -> list[TaskGroup]:
        """Task groups, the last one being the output block; ids start at ``start``."""
        groups = []
        for (keys, indptr, indices), t in zip(self.structure(inputs, start, resolve),
                                              self.templates(), strict=True):
            groups.append(TaskGroup(keys, template=t, indptr=indptr, indices=indices))
        return groups


def layer_structure(kind: str, params: Mapping[str, Any], inputs: Mapping[str, Placed],
                    start: int, resolve: Callable[[Key], int]) -> list[Structure]:
    """Structure of a layer from its kind and ``params()`` (used on both sides of the wire)."""
    if kind == "blockwise":
        return blockwise_structure(params["name"], tuple(params["shape"]),
                                   [(nm, inputs[nm]) for nm in params["inputs"]])
    if kind == "reduction":
        return reduction_structure(params["name"], params["split_every"],
                                   inputs[params["input"]], start, params["input"])
    if kind == "shuffle":
        return shuffle_structure(params["name"], params["max_branch"],
                                 inputs[params["input"]], start, params["input"])
    if kind == "materialized":
        return [explicit_structure(ExplicitKeys(params["keys"]), params["deps"], start,
                                   resolve)]
    raise GraphError(f"unknown layer kind {kind!r}")


@dataclass(frozen=True)
class Blockwise(Layer):
    name: str
    out_shape: tuple[int, ...]
    template: Any
    kind = "blockwise"

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_shape", tuple(int(s) for s in self.out_shape))
        for p in placeholders(self.template):
            if type(p) is IndexSlot and not 0 <= p.axis < len(self.out_shape):
                raise GraphError(f"layer {self.name!r}: IndexSlot({p.axis}) outside its "
                                 f"{len(self.out_shape)}-d shape")
            if type(p) not in (BlockArg, IndexSlot):
                raise GraphError(f"layer {self.name!r}: a Blockwise template may only use "
                                 f"BlockArg and IndexSlot, not {p!r}")

    @property
    def dependencies(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.name for p in placeholders(self.template)
                                   if type(p) is BlockArg))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.out_shape

    @property
    def n_tasks(self) -> int:
        return math.prod(self.out_shape)

    def templates(self) -> list[Any]:
        slot = {nm: DepSlot(k) for k, nm in enumerate(self.dependencies)}
        return [map_placeholders(self.template,
                                 lambda p: slot[p.name] if type(p) is BlockArg else p)]

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.out_shape),
                "inputs": list(self.dependencies)}


@dataclass(frozen=True)
class Reduction(Layer):
    name: str
    input: str
    combine: Callable[[list], Any]
    aggregate: Callable[[list], Any] | None = None
    split_every: int = 8
    input_size: int = field(default=-1, compare=False)
    kind = "reduction"

    def __post_init__(self) -> None:
        if self.split_every < 2:
            raise GraphError(f"layer {self.name!r}: split_every must be >= 2, "
                             f"got {self.split_every}")

    @property
    def dependencies(self) -> tuple[str, ...]:
        return (self.input,)

    @property
    def shape(self) -> tuple[int, ...]:
        return (1,)

    def levels(self, n_in: int) -> list[int]:
        """Task count of each tree level, the last being the final aggregate (1)."""
        return reduction_levels(n_in, self.split_every)

    def _sized(self) -> int:
        if self.input_size < 0:
            raise GraphError(f"layer {self.name!r}: its size needs input_size "
                             f"(LayerGraph sets it)")
        return self.input_size

    @property
    def n_tasks(self) -> int:
        return sum(self.levels(self._sized()))

    def templates(self) -> list[Any]:
        n_levels = len(self.levels(self._sized()))
        last = Task(self.aggregate or self.combine, DepList())
        return [Task(self.combine, DepList())] * (n_levels - 1) + [last]

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "input": self.input, "split_every": self.split_every}


def _shuffle_pick(combine: Callable[[list], Any], parts: list, j: int, stage: int,
                  k: int) -> Any:
    digit = (j // k ** stage) % k
    return combine([p[digit] for p in parts])


@dataclass(frozen=True)
class Shuffle(Layer):
    """All-to-all exchange. ``split(part, stage, k)`` returns ``k`` pieces of ``part``: piece
    ``d`` holds the items whose target partition ``t`` has ``(t // k**stage) % k == d``.
    ``combine(pieces)`` joins pieces into one partition."""

    name: str
    input: str
    split: Callable[[Any, int, int], Sequence[Any]]
    combine: Callable[[list], Any]
    max_branch: int = 32
    input_size: int = field(default=-1, compare=False)
    kind = "shuffle"

    def __post_init__(self) -> None:
        if self.max_branch < 2:
            raise GraphError(f"layer {self.name!r}: max_branch must be >= 2")

    @property
    def dependencies(self) -> tuple[str, ...]:
        return (self.input,)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.input_size,)

    def plan(self, n: int) -> tuple[int, int]:
        """(stages, branching k) for ``n`` partitions: k**stages >= n, k <= max_branch."""
        return shuffle_plan(n, self.max_branch)

    def stage_sizes(self, n: int) -> list[tuple[int, int]]:
        """(split tasks, combine tasks) per stage."""
        return shuffle_stage_sizes(n, self.max_branch)

    @property
    def n_tasks(self) -> int:
        if self.input_size < 0:
            raise GraphError(f"layer {self.name!r}: task count needs input_size")
        return sum(a + b for a, b in self.stage_sizes(self.input_size))

    def templates(self) -> list[Any]:
        s, k = self.plan(self.input_size)
        out: list[Any] = []
        for t in range(s):
            out.append(Task(self.split, DepSlot(0), t, k))
            out.append(Task(_shuffle_pick, self.combine, DepList(), IndexSlot(0), t, k))
        return out

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "input": self.input, "max_branch": self.max_branch}


@dataclass(frozen=True)
class Materialized(Layer):
    """Explicit tasks ``{key: spec}``; specs refer to keys of this or earlier layers by
    ``Ref``. ``name`` only names the layer; keys may have any names."""

    name: str
    tasks: Mapping[Key, Any]
    kind = "materialized"

    @property
    def dependencies(self) -> tuple[Hashable, ...]:
        """Names of the layers or keys read (a key's name: see ``key_name``)."""
        own = {key_name(k) for k in self.tasks}
        names: dict[Hashable, None] = {}
        for spec in self.tasks.values():
            for p in placeholders(spec):
                nm = key_name(p.key) if hasattr(p, "key") else None
                if nm is not None and nm not in own:
                    names[nm] = None
        return tuple(names)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.tasks),)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def slotted(self) -> tuple[list[Any], list[list[Key]]]:
        """Per-task specs with ``DepSlot``s, and each task's dependency keys in slot order."""
        specs, deps = [], []
        for value in self.tasks.values():
            spec, dks = refs_to_slots(value)
            specs.append(spec)
            deps.append(dks)
        return specs, deps

    def templates(self) -> list[Any]:
        raise GraphError("a Materialized layer has one spec per task, not templates")

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "keys": list(self.tasks), "deps": self.slotted()[1]}

    def lower(self, inputs: Mapping[str, Placed], start: int,
              resolve: Callable[[Key], int]) -> list[TaskGroup]:
        specs, deps = self.slotted()
        keys, indptr, indices = explicit_structure(ExplicitKeys(list(self.tasks)), deps,
                                                   start, resolve)
        return [TaskGroup(keys, specs=specs, indptr=indptr, indices=indices)]


class LayerGraph:
    """Layers by name, in topological order. ``lower()`` turns them into a ``TaskGraph``."""

    def __init__(self, layers: Iterable[Layer]) -> None:
        by_name: dict[str, Layer] = {}
        for layer in layers:
            if layer.name in by_name:
                raise DuplicateKeyError([layer.name])
            by_name[layer.name] = layer
        self.layers = self._toposort(by_name)

    @staticmethod
    def _toposort(by_name: dict[str, Layer]) -> dict[str, Layer]:
        """Layers with every input first (iterative DFS: thousands of layers are fine)."""
        provider = _key_providers(by_name)
        out: dict[str, Layer] = {}
        on_path: set[str] = set()
        for root in by_name:
            if root in out:
                continue
            stack: list[tuple[str, int]] = [(root, 0)]
            path: list[str] = []
            while stack:
                name, state = stack.pop()
                if state == 1:
                    on_path.discard(name)
                    path.pop()
                    out[name] = by_name[name]
                    continue
                if name in out:
                    continue
                if name in on_path:
                    raise CycleError(path[path.index(name):] + [name])
                on_path.add(name)
                path.append(name)
                stack.append((name, 1))
                for dep in reversed(_inputs(by_name[name], by_name, provider)):
                    if dep not in out:
                        stack.append((dep, 0))
        sized: dict[str, Layer] = {}
        for name, layer in out.items():
            if isinstance(layer, Reduction | Shuffle):
                src = sized[layer.input]
                size = math.prod(src.shape)
                layer = _with_size(layer, size)
            sized[name] = layer
        return sized

    def __getitem__(self, name: str) -> Layer:
        return self.layers[name]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def n_tasks(self) -> int:
        return sum(layer.n_tasks for layer in self.layers.values())

    def inputs(self, name: str) -> list[str]:
        """Names of the layers that layer ``name`` reads (by name or, for Materialized
        layers, by the names of the keys it refers to)."""
        return _inputs(self.layers[name], self.layers, _key_providers(self.layers))

    def dependents(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {name: [] for name in self.layers}
        provider = _key_providers(self.layers)
        for name, layer in self.layers.items():
            for dep in _inputs(layer, self.layers, provider):
                out[dep].append(name)
        return out

    def lower(self) -> TaskGraph:
        """Lower every layer, in order, into one ``TaskGraph``."""
        groups: list[TaskGroup] = []
        placed: dict[Any, _Lowered] = {}   # layer names, and key names of Materialized keys
        offset = 0

        def resolve(key: Key) -> int:
            nm = key_name(key)
            where = placed.get(nm)
            if where is None:
                return -1
            gi_block = out_blocks[nm]
            p = gi_block.position(key)
            return where.offset + p if p >= 0 else -1

        out_blocks: dict[Any, Any] = {}
        for name, layer in self.layers.items():
            new = layer.lower(placed, offset, resolve)
            for g in new:
                offset += len(g)
            groups.extend(new)
            out = new[-1]
            placed[name] = _Lowered(offset - len(out), layer.shape)
            if isinstance(layer, Materialized):
                for k in out.keys.tolist():
                    nm = key_name(k)
                    placed.setdefault(nm, placed[name])
                    out_blocks.setdefault(nm, out.keys)
            out_blocks[name] = out.keys
        return TaskGraph(groups)

    def cull(self, names: Iterable[str]) -> LayerGraph:
        """Only the layers that ``names`` need (whole layers; no key-level culling)."""
        need: set[str] = set()
        stack = list(names)
        for nm in stack:
            if nm not in self.layers:
                raise MissingDependencyError({nm: "(requested)"})
        provider = _key_providers(self.layers)
        while stack:
            nm = stack.pop()
            if nm in need:
                continue
            need.add(nm)
            stack.extend(_inputs(self.layers[nm], self.layers, provider))
        if len(need) == len(self.layers):
            return self
        return LayerGraph(layer for nm, layer in self.layers.items() if nm in need)

    def fuse_blockwise(self, keep: Iterable[str] = ()) -> LayerGraph:
        """Fuse each Blockwise layer into the one Blockwise layer that reads it, when it is read
        once, has the same shape and is not in ``keep``. Chains fuse into their last layer."""
        keep = set(keep)
        layers = dict(self.layers)
        dependents = self.dependents()
        fused_any = False
        depth = {name: 1 for name in layers}  # layers nested in each template
        for name in list(layers):
            layer = layers[name]
            if not isinstance(layer, Blockwise):
                continue
            template = layer.template
            changed = True
            while changed:
                changed = False
                uses = [p.name for p in placeholders(template) if type(p) is BlockArg]
                for dep in dict.fromkeys(uses):
                    src = layers.get(dep)
                    if (isinstance(src, Blockwise) and dep not in keep
                            and src.out_shape == layer.out_shape
                            and dependents.get(dep) == [name] and uses.count(dep) == 1
                            and depth[name] + depth[dep] <= MAX_FUSED_DEPTH):
                        depth[name] += depth[dep]
                        template = map_placeholders(template, _substitute(dep, src.template))
                        for d2 in src.dependencies:
                            dependents[d2] = [name if x == dep else x
                                              for x in dependents.get(d2, [])]
                        del layers[dep]
                        changed = fused_any = True
                        break
            if template is not layer.template:
                layers[name] = Blockwise(name, layer.out_shape, template)
        return LayerGraph(layers.values()) if fused_any else self


def _substitute(name: str, template: Any) -> Callable[[Any], Any]:
    """A placeholder mapper putting ``template`` where ``BlockArg(name)`` stands."""

    def fn(p: Any) -> Any:
        return template if type(p) is BlockArg and p.name == name else p

    return fn


MAX_FUSED_DEPTH = 64
"""Most layers fused into one template: deeper nesting would exhaust Python's recursion
when the template is compiled; longer chains fuse into several layers."""


def _key_providers(layers: Mapping[str, Layer]) -> dict[Hashable, str]:
    """Key name -> the Materialized layer defining keys of that name (when not a layer)."""
    out: dict[Hashable, str] = {}
    for name, layer in layers.items():
        if isinstance(layer, Materialized):
            for k in layer.tasks:
                nm = key_name(k)
                if nm not in layers:
                    out.setdefault(nm, name)
    return out


def _inputs(layer: Layer, layers: Mapping[str, Layer], provider: Mapping[Hashable, str]
            ) -> list[str]:
    out: dict[str, None] = {}
    for dep in layer.dependencies:
        src = dep if isinstance(dep, str) and dep in layers else provider.get(dep)
        if src is None:
            if not isinstance(layer, Materialized):
                raise MissingDependencyError({dep: layer.name})
            continue  # checked key by key at lowering
        out[src] = None
    return list(out)


def _with_size(layer: Layer, size: int) -> Layer:
    from dataclasses import replace

    return replace(layer, input_size=size)  # type: ignore[type-var]


def blockwise(name: str, shape: Sequence[int], func: Callable[..., Any], *args: Any,
              **kwargs: Any) -> Blockwise:
    """``Blockwise(name, shape, Task(func, *args, **kwargs))``; pass ``BlockArg(layer)`` for
    inputs and ``IndexSlot(d)`` for the block index."""
    return Blockwise(name, tuple(shape), Task(func, *args, **kwargs))
