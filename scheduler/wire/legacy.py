"""The ``pickle`` graph encoding: the legacy baseline, slow by design.

It mimics sending a dict of pickled tasks: every task is materialised (a regular group's
template is copied per task, and ``IndexSlot``s are replaced by the task's index values) and
cloudpickled on its own, function included every time; keys travel as one explicit list and
dependencies as one list of keys per task. Its cost is what the other encodings are
measured against, so do not make it faster.

One frame, the header; fields besides ``encoding``/``version``::

    keys      [key, ...]             every task's key, in id order
    specs     [bin, ...]             one cloudpickle blob per task (opaque to the scheduler)
    deps      [[key, ...], ...]      per task, the keys its ``DepSlot``s number, in order
    external  [key, ...]             keys used but not defined

The scheduler decodes it into a ``WireGraph`` of one explicit group, mapping dependency keys
to ids with a dict; it never unpickles the blobs. There is no function table (``b""``).
"""

from __future__ import annotations

from typing import Any

import cloudpickle
import numpy as np

from ..graph.errors import MissingDependencyError
from ..graph.keys import RegularKeys, key_repr
from ..graph.lowgraph import TaskGraph
from ..graph.task import IndexSlot, map_placeholders
from .encodings import (
    GraphLimits,
    WireError,
    build_graph,
    check_budget,
    explicit_keys,
    get_field,
    keys_from_wire,
    make_group,
)
from .frames import BytesLike

__all__ = ["VERSION", "decode", "encode"]

VERSION = 1


def _with_index(spec: Any, index: tuple) -> Any:
    def fn(p: Any) -> Any:
        return index[p.axis] if type(p) is IndexSlot else p

    return map_placeholders(spec, fn)


def encode(graph: TaskGraph) -> tuple[dict[str, Any], list[Any]]:
    """Header fields of ``graph`` (no payload frames)."""
    all_keys = graph.keys() + graph.external
    specs: list[bytes] = []
    deps: list[list[Any]] = []
    for g in graph.groups:
        ptr = g.indptr.tolist()
        ind = g.indices.tolist()
        materialise = isinstance(g.keys, RegularKeys)   # IndexSlots need the block index
        for i in range(len(g)):
            spec = g.spec(i)
            if materialise:
                spec = _with_index(spec, g.block_index(i))
            specs.append(cloudpickle.dumps(spec))
            deps.append([all_keys[d] for d in ind[ptr[i]:ptr[i + 1]]])
    fields = {"keys": all_keys[:graph.n], "specs": specs, "deps": deps,
              "external": graph.external}
    return fields, []


def decode(header: dict[str, Any], frames: list[BytesLike],
           limits: GraphLimits) -> tuple[TaskGraph, bytes]:
    """The graph (one explicit group of opaque specs) of a message; no function table."""
    if len(frames) != 1:
        raise WireError(f"the client's pickle graph message has {len(frames)} frames, "
                        f"expected 1")
    raw_keys = get_field(header, "keys", (tuple,), "the header")
    raw_external = get_field(header, "external", (tuple,), "the header")
    check_budget(len(raw_keys) + len(raw_external), limits)
    keys = explicit_keys(raw_keys, "the task keys")
    external = keys_from_wire(raw_external, "the external keys")
    specs = get_field(header, "specs", (tuple,), "the header")
    deps = get_field(header, "deps", (tuple,), "the header")
    n = len(keys)
    if len(specs) != n or len(deps) != n:
        raise WireError(f"the client sent {n} keys but {len(specs)} specs and {len(deps)} "
                        f"dependency lists")
    if not all(type(b) is bytes for b in specs):
        raise WireError("the client sent task specs that are not bytes")
    # A key both defined and external maps to its task here; validation reports it.
    pos: dict[Any, int] = {k: n + j for j, k in enumerate(external)}
    pos.update(zip(keys.keys, range(n), strict=True))
    get = pos.get
    indptr = [0]
    indices: list[int] = []
    missing: dict[Any, Any] = {}
    try:
        for key, dl in zip(keys.keys, deps, strict=True):
            if type(dl) is not tuple:
                raise WireError(f"the client sent a {type(dl).__name__} as the dependencies "
                                f"of {key_repr(key)}, not a list of keys")
            for d in dl:
                p = get(d)
                if p is None:
                    missing.setdefault(d, key)
                else:
                    indices.append(p)
            indptr.append(len(indices))
    except TypeError:  # an unhashable value (a msgpack map) where a key belongs
        raise WireError("the client sent a dependency that is not a key "
                        f"(an unhashable value) in the dependencies of {key_repr(key)}") from None
    if missing:
        raise MissingDependencyError(missing)
    group = make_group(keys, specs=list(specs), indptr=np.asarray(indptr, dtype=np.int64),
                       indices=np.asarray(indices, dtype=np.int64), where="the task list")
    return build_graph([group], external), b""
