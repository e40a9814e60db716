"""The ``layers`` encoding: high-level layers as data, lowered on the scheduler.

What travels: per layer its kind and parameters (names, shapes, sizes: msgpack), its task
templates as opaque blobs (pickled against one function table, as in ``compact``), and for a
``Materialized`` layer its keys, per-task spec blobs and each task's dependency keys; plus the
names of the output layers. For regular layers the message size does not depend on the task
count.

On the scheduler, ``decode`` keeps only the layers the outputs need (whole-layer culling:
outputs are whole layers, so this is exact), checks the task budget from the parameters
before allocating anything, and lowers each layer with ``scheduler.graph.lowering`` (numpy,
data only). It never unpickles: templates stay bytes. It returns the lowered graph and the
output ids, in the order of the output layers' keys.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from ..graph.errors import GraphError
from ..graph.keys import Key, RegularKeys, key_name, key_repr
from ..graph.layers import LayerGraph, Materialized, layer_structure
from ..graph.lowering import Placed, reduction_levels, shuffle_stage_sizes
from ..graph.lowgraph import TaskGraph, TaskGroup
from .compact import SpecDumper
from .encodings import GraphLimits, build_graph
from .frames import BytesLike, WireError

__all__ = ["VERSION", "decode_layers", "encode_layers"]

VERSION = 1

_KINDS = ("blockwise", "reduction", "shuffle", "materialized")


def encode_layers(layers: LayerGraph, outputs: Sequence[str]) -> tuple[dict[str, Any], list[Any]]:
    """Header fields and frames for ``layers``, asking for every key of layers ``outputs``."""
    for name in outputs:
        if name not in layers.layers:
            raise ValueError(f"output layer {name!r} is not in the layer graph")
    layers = layers.cull(outputs)
    dumper = SpecDumper()
    entries = []
    for layer in layers.layers.values():
        entry: dict[str, Any] = {"kind": layer.kind, "params": layer.params()}
        if isinstance(layer, Materialized):
            entry["specs"] = [dumper.dumps(s) for s in layer.slotted()[0]]
        else:
            entry["templates"] = [dumper.dumps(t) for t in layer.templates()]
        entries.append(entry)
    return {"layers": entries, "outputs": list(outputs)}, [dumper.table()]


def _str(value: object, what: str) -> str:
    if type(value) is not str or not value:
        raise WireError(f"the client sent a layer whose {what} is {value!r}, not a name")
    return value


def _int(value: object, what: str, low: int = 0) -> int:
    if type(value) is not int or value < low:
        raise WireError(f"the client sent a layer whose {what} is {value!r}, not an int >= "
                        f"{low}")
    return value


def _check(kind: str, params: Mapping[str, Any], placed: Mapping[str, Placed],
           n_blobs: int) -> tuple[int, tuple[int, ...], int]:
    """Validate one layer's parameters; return (tasks, output shape, templates expected)."""
    name = _str(params.get("name"), "name")

    def source(key: str) -> Placed:
        src = _str(params.get(key), key)
        if src not in placed:
            raise WireError(f"layer {name!r} reads {src!r}, which is not an earlier layer")
        return placed[src]

    if kind == "blockwise":
        shape = params.get("shape")
        if not isinstance(shape, list | tuple) or len(shape) > 32:
            raise WireError(f"layer {name!r}: bad shape {shape!r}")
        shape = tuple(_int(s, "shape") for s in shape)
        inputs = params.get("inputs")
        if not isinstance(inputs, list | tuple):
            raise WireError(f"layer {name!r}: inputs must be a list of layer names")
        for nm in inputs:
            if _str(nm, "input") not in placed:
                raise WireError(f"layer {name!r} reads {nm!r}, which is not an earlier layer")
        return math.prod(shape), shape, 1
    if kind == "reduction":
        src = source("input")
        split = _int(params.get("split_every"), "split_every", 2)
        levels = reduction_levels(max(1, math.prod(src.shape)), split)
        return sum(levels), (1,), len(levels)
    if kind == "shuffle":
        src = source("input")
        branch = _int(params.get("max_branch"), "max_branch", 2)
        if len(src.shape) != 1:
            raise WireError(f"layer {name!r} shuffles a layer of shape {src.shape}")
        sizes = shuffle_stage_sizes(src.shape[0], branch)
        return sum(a + b for a, b in sizes), (src.shape[0],), 2 * len(sizes)
    if kind == "materialized":
        keys, deps = params.get("keys"), params.get("deps")
        if not isinstance(keys, list | tuple) or not isinstance(deps, list | tuple) or \
                len(keys) != len(deps) or len(keys) != n_blobs:
            raise WireError(f"layer {name!r}: keys, deps and specs must be lists of one "
                            f"length")
        return len(keys), (len(keys),), n_blobs
    raise WireError(f"the client sent a layer of unknown kind {kind!r} (known: "
                    f"{', '.join(_KINDS)})")


def decode_layers(header: Mapping[str, Any], limits: GraphLimits
                  ) -> tuple[TaskGraph, np.ndarray]:
    """(lowered graph with opaque templates, output task ids). Never unpickles."""
    entries = header.get("layers")
    outputs = header.get("outputs")
    if not isinstance(entries, list | tuple) or not isinstance(outputs, list | tuple):
        raise WireError("a layers message needs a list of layers and a list of outputs")
    by_name: dict[str, Mapping[str, Any]] = {}
    for e in entries:
        if not isinstance(e, Mapping) or not isinstance(e.get("params"), Mapping):
            raise WireError("each layer must be a map with kind and params")
        name = _str(e["params"].get("name"), "name")
        if name in by_name:
            raise WireError(f"layer {name!r} appears twice")
        by_name[name] = e
    for o in outputs:
        if _str(o, "output") not in by_name:
            raise WireError(f"output layer {o!r} is not among the layers sent")
    needed = _needed(by_name, outputs)
    placed: dict[Any, Placed] = {}   # layer names, and key names of Materialized keys
    blocks: dict[Any, Any] = {}
    groups: list[TaskGroup] = []
    start = 0
    total = 0

    def resolve(key: Key) -> int:
        nm = key_name(key)
        where, block = placed.get(nm), blocks.get(nm)
        if where is None or block is None:
            return -1
        p = block.position(key)
        return where.offset + p if p >= 0 else -1

    for name, e in by_name.items():
        if name not in needed:
            continue
        kind, params = e.get("kind"), e["params"]
        blobs = e.get("specs" if kind == "materialized" else "templates")
        if not isinstance(blobs, list | tuple) or not all(
                isinstance(b, bytes | bytearray | memoryview) for b in blobs):
            raise WireError(f"layer {name!r}: templates/specs must be a list of bytes")
        n, shape, n_templates = _check(str(kind), params, placed, len(blobs))
        total += n
        if total > limits.max_tasks:
            raise WireError(f"the layers lower to more than {limits.max_tasks:,} tasks "
                            f"(GraphLimits.max_tasks)")
        if len(blobs) != n_templates:
            raise WireError(f"layer {name!r} needs {n_templates} templates, got {len(blobs)}")
        try:
            structure = layer_structure(str(kind), params, placed, start, resolve)
        except (KeyError, TypeError) as exc:
            raise WireError(f"layer {name!r}: bad parameters ({exc})") from None
        if kind == "materialized":
            keys, indptr, indices = structure[0]
            groups.append(TaskGroup(keys, specs=[bytes(b) for b in blobs], indptr=indptr,
                                    indices=indices))
            for k in keys.tolist():
                nm = key_name(k)
                placed.setdefault(nm, Placed(start, shape))
                blocks.setdefault(nm, keys)
        else:
            for (keys, indptr, indices), blob in zip(structure, blobs, strict=True):
                groups.append(TaskGroup(keys, template=bytes(blob), indptr=indptr,
                                        indices=indices))
        start += n
        out = groups[-1]
        placed[name] = Placed(start - len(out), shape)
        blocks[name] = out.keys
    graph = build_graph(groups, [])
    ids = [np.arange(len(blocks[o]), dtype=np.int64) + placed[o].offset for o in outputs]
    return graph, (np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64))


def _needed(by_name: Mapping[str, Mapping[str, Any]], outputs: Sequence[str]) -> set[str]:
    """Layers the outputs need (by layer name, or by key name for materialized layers)."""
    providers: dict[Hashable, str] = {}
    for name, e in by_name.items():
        if e.get("kind") == "materialized":
            for k in e["params"].get("keys") or ():
                try:
                    providers.setdefault(key_name(k), name)
                except (TypeError, IndexError):
                    raise WireError(f"layer {name!r}: bad key {key_repr(k)}") from None
    need: set[str] = set()
    stack = list(outputs)
    while stack:
        nm = stack.pop()
        if nm in need:
            continue
        need.add(nm)
        e = by_name[nm]
        p = e["params"]
        if e.get("kind") == "blockwise":
            deps = list(p.get("inputs") or ())
        elif e.get("kind") == "materialized":
            deps = [providers.get(key_name(d), key_name(d))
                    for ds in p.get("deps") or () for d in ds]
        else:
            deps = [p.get("input")]
        stack.extend(d for d in deps if isinstance(d, str) and d in by_name)
    return need


def output_keys(layers: LayerGraph, outputs: Sequence[str]) -> list[Key]:
    """The keys of the output layers, in the order ``decode_layers`` returns their ids."""
    out: list[Key] = []
    for name in outputs:
        layer = layers[name]
        if isinstance(layer, Materialized):
            out.extend(layer.tasks)
        else:
            out.extend(RegularKeys(name, layer.shape).tolist())
    return out


def decode(header: Mapping[str, Any], frames: Sequence[BytesLike], limits: GraphLimits
           ) -> tuple[TaskGraph, bytes, np.ndarray]:
    if len(frames) < 2:
        raise WireError("a layers message needs its function table frame")
    try:
        graph, outputs = decode_layers(header, limits)
    except GraphError:
        raise
    except (ValueError, TypeError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"the client sent layers that cannot be lowered: {exc}") from None
    return graph, bytes(frames[1]), outputs
