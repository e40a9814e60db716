"""The ``compact`` graph encoding: keys and dependencies as data, functions pickled once.

Frames::

    0  header (msgpack map)
    1  function table: cloudpickle of a list of callables (opaque to the scheduler)
    2+ dependency arrays, raw little-endian integers, referenced by frame number

Header fields besides ``encoding``/``version``::

    external  [key, ...]          keys the graph uses but does not define (ids n, n+1, ...)
    groups    [group, ...]        in id order
    group = {
      keys:     ["regular", name, [extent, ...]] | ["explicit", [key, ...]]
      template: bin               one opaque spec for every task (regular group), or
      specs:    [bin, ...]        one opaque spec per task (explicit group)
      dtype:    "<i4" | "<i8"     of both arrays of this group
      indices:  frame number      global dependency ids, CSR order
      stride:   int | nil         k: task i depends on indices[i*k:(i+1)*k], no indptr frame
      indptr:   frame number      present only when stride is nil (n + 1 entries)
    }

Rules of this module:

- Keys are msgpack data: tuples go out as arrays and come back as tuples (the header is read
  with ``use_list=False``), ``str``/``int``/``float`` parts keep their types.
- A spec blob is pickled with a ``persistent_id`` hook that replaces every callable object
  (functions, lambdas, closures, classes, ufuncs, partials) by its index in the function table,
  so each distinct callable (by identity) is serialised once, in frame 1, by value when
  cloudpickle would (lambdas, closures, ``__main__``), by reference otherwise.
- Arrays are ``int32`` when every value fits, else ``int64``. ``indptr`` is omitted when
  every task of the group has the same number of dependencies.
- Decoding does per-task Python work only for explicit groups (their keys and blobs);
  regular groups cost O(1) Python work plus numpy work on their arrays.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import cloudpickle
import numpy as np

from ..graph.keys import ExplicitKeys, KeyBlock, RegularKeys
from ..graph.lowgraph import TaskGraph, TaskGroup
from .encodings import (
    GraphLimits,
    WireError,
    build_graph,
    check_budget,
    check_ids,
    explicit_keys,
    get_field,
    keys_from_wire,
    make_group,
)
from .frames import BytesLike

__all__ = ["VERSION", "SpecDumper", "decode", "encode"]

VERSION = 1

_INT32_MAX = 2**31 - 1
_DTYPES: Mapping[str, int] = MappingProxyType({"<i4": 4, "<i8": 8})   # dtype -> itemsize
_MAX_NDIM = 64


# --- encoding ------------------------------------------------------------------------------

class _TablePickler(cloudpickle.Pickler):
    """Pickles specs, putting every callable into a shared table instead of the blob."""

    def __init__(self, file: io.BytesIO, table: list[Any]) -> None:
        super().__init__(file)
        self._table = table
        self._index: dict[int, int] = {}   # id(callable) -> position; the table keeps it alive

    def persistent_id(self, obj: Any) -> int | None:
        if not callable(obj):
            return None
        i = self._index.get(id(obj))
        if i is None:
            i = self._index[id(obj)] = len(self._table)
            self._table.append(obj)
        return i


class SpecDumper:
    """Pickles specs one at a time against one function table."""

    __slots__ = ("functions", "_buf", "_pickler")

    def __init__(self) -> None:
        self.functions: list[Any] = []
        self._buf = io.BytesIO()
        self._pickler = _TablePickler(self._buf, self.functions)

    def dumps(self, spec: Any) -> bytes:
        buf = self._buf
        self._pickler.dump(spec)
        blob = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        self._pickler.clear_memo()  # each blob must load on its own
        return blob

    def table(self) -> bytes:
        return cloudpickle.dumps(self.functions)


def _keys_to_wire(keys: KeyBlock) -> list[Any]:
    if isinstance(keys, RegularKeys):
        return ["regular", keys.name, list(keys.shape)]
    if isinstance(keys, ExplicitKeys):
        return ["explicit", keys.keys]
    return ["explicit", keys.tolist()]


def _as_frame(a: np.ndarray) -> memoryview:
    return np.ascontiguousarray(a).data.cast("B")


def _deps_to_wire(g: TaskGroup) -> tuple[str, int | None, np.ndarray, np.ndarray | None]:
    """(dtype, stride or None, indices, indptr or None) for group ``g``."""
    indptr, indices = g.indptr, g.indices
    n = len(g)
    if len(indices) and int(indices.min()) < 0:
        raise ValueError(f"group {g!r} has negative dependency ids: a bug in the code that "
                         f"built this graph")
    top = max(int(indptr[-1]), int(indices.max()) if len(indices) else 0)
    dtype = "<i4" if top <= _INT32_MAX else "<i8"
    stride: int | None = None
    if n == 0:
        stride = 0
    elif len(indices) % n == 0:
        steps = np.diff(indptr)
        if (steps == len(indices) // n).all():
            stride = len(indices) // n
    return (dtype, stride, indices.astype(dtype, copy=False),
            None if stride is not None else indptr.astype(dtype, copy=False))


def encode(graph: TaskGraph) -> tuple[dict[str, Any], list[Any]]:
    """Header fields and payload frames (function table, arrays) of ``graph``."""
    dumper = SpecDumper()
    arrays: list[memoryview] = []
    groups = []
    for g in graph.groups:
        entry: dict[str, Any] = {"keys": _keys_to_wire(g.keys)}
        if g.specs is None:
            entry["template"] = dumper.dumps(g.template)
        else:
            entry["specs"] = [dumper.dumps(s) for s in g.specs]
        dtype, stride, indices, indptr = _deps_to_wire(g)
        entry["dtype"] = dtype
        entry["stride"] = stride
        entry["indices"] = 2 + len(arrays)
        arrays.append(_as_frame(indices))
        if indptr is not None:
            entry["indptr"] = 2 + len(arrays)
            arrays.append(_as_frame(indptr))
        groups.append(entry)
    fields = {"external": graph.external, "groups": groups}
    return fields, [dumper.table(), *arrays]


# --- decoding (scheduler side: no unpickling) ----------------------------------------------

def _key_block(raw: Any, where: str) -> KeyBlock:
    if type(raw) is not tuple or len(raw) < 2 or raw[0] not in ("regular", "explicit"):
        raise WireError(f"the client sent a key block that is neither [\"regular\", name, "
                        f"shape] nor [\"explicit\", keys] in {where}")
    if raw[0] == "explicit":
        if len(raw) != 2 or type(raw[1]) is not tuple:
            raise WireError(f"the client sent an explicit key block without a key list "
                            f"in {where}")
        return explicit_keys(raw[1], where)
    if len(raw) != 3 or type(raw[1]) is not str or type(raw[2]) is not tuple:
        raise WireError(f"the client sent a regular key block that is not [name, shape] "
                        f"in {where}")
    shape = raw[2]
    if len(shape) > _MAX_NDIM or any(type(s) is not int or s < 0 for s in shape):
        raise WireError(f"the client sent a regular key block with an invalid shape "
                        f"{shape!r} in {where}")
    return RegularKeys(raw[1], shape)  # computes its size only: nothing allocated yet


def _array(frames: list[BytesLike], no: Any, dtype: str, used: set[int],
           where: str) -> np.ndarray:
    if type(no) is not int or not 2 <= no < len(frames):
        raise WireError(f"the client's graph message refers to frame {no!r} in {where}, but "
                        f"frames 2..{len(frames) - 1} hold arrays")
    used.add(no)
    buf = frames[no]
    nbytes = memoryview(buf).nbytes
    if nbytes % _DTYPES[dtype]:
        raise WireError(f"frame {no} of the client's graph message has {nbytes} bytes, not a "
                        f"whole number of {dtype} integers ({where})")
    return np.frombuffer(buf, dtype=dtype).astype(np.int64, copy=False)


def _group(raw: Any, keys: KeyBlock, frames: list[BytesLike], limit: int,
           used: set[int], where: str) -> TaskGroup:
    n = len(keys)
    template = specs = None
    if ("template" in raw) == ("specs" in raw):
        raise WireError(f"the client sent a group with both or neither of 'template' and "
                        f"'specs' in {where}")
    if "template" in raw:
        template = get_field(raw, "template", (bytes,), where)
    else:
        blobs = get_field(raw, "specs", (tuple,), where)
        if len(blobs) != n or not all(type(b) is bytes for b in blobs):
            raise WireError(f"the client sent {len(blobs)} specs for {n} tasks, or specs that "
                            f"are not bytes, in {where}")
        specs = list(blobs)
    dtype = get_field(raw, "dtype", (str,), where)
    if dtype not in _DTYPES:
        raise WireError(f"the client sent dependency arrays of dtype {dtype!r} in {where}; "
                        f"expected one of {', '.join(_DTYPES)}")
    indices = _array(frames, raw.get("indices"), dtype, used, where)
    check_ids(indices, limit, where)
    stride = get_field(raw, "stride", (int, type(None)), where)
    if stride is not None:
        if stride < 0 or len(indices) != n * stride:
            raise WireError(f"the client sent {len(indices)} dependency ids for {n} tasks "
                            f"with {stride} each in {where}")
        indptr = (np.arange(0, n * stride + 1, stride, dtype=np.int64) if stride
                  else np.zeros(n + 1, dtype=np.int64))
    else:
        indptr = _array(frames, raw.get("indptr"), dtype, used, where)
        if (len(indptr) != n + 1 or indptr[0] != 0 or indptr[-1] != len(indices)
                or (np.diff(indptr) < 0).any()):
            raise WireError(f"the client sent an indptr array that is not {n + 1} "
                            f"non-decreasing offsets from 0 to {len(indices)} in {where}")
    return make_group(keys, indptr=indptr, indices=indices, template=template, specs=specs,
                      where=where)


def decode(header: dict[str, Any], frames: list[BytesLike],
           limits: GraphLimits) -> tuple[TaskGraph, bytes]:
    """The graph (opaque templates/specs) and the function table blob of a message."""
    if len(frames) < 2:
        raise WireError(f"the client's compact graph message has {len(frames)} frames; it "
                        f"needs a header and a function table")
    external = keys_from_wire(get_field(header, "external", (tuple,), "the header"),
                              "the external keys")
    raw_groups = get_field(header, "groups", (tuple,), "the header")
    # First pass: key blocks, so that the id range (and the size budget) is known before
    # any array is built.
    blocks: list[KeyBlock] = []
    for gi, raw in enumerate(raw_groups):
        where = f"group {gi}"
        if type(raw) is not dict:
            raise WireError(f"the client sent a {type(raw).__name__} as {where}, not a map")
        blocks.append(_key_block(get_field(raw, "keys", (tuple,), where), where))
    # math.prod, not len(): a hostile shape's size may not even fit an index-sized int
    limit = len(external) + sum(math.prod(b.shape) if isinstance(b, RegularKeys) else len(b)
                                for b in blocks)
    check_budget(limit, limits)
    used: set[int] = set()
    groups = [_group(raw, block, frames, limit, used, f"group {gi} ({block!r})")
              for gi, (raw, block) in enumerate(zip(raw_groups, blocks, strict=True))]
    if len(used) != len(frames) - 2:
        raise WireError(f"the client's compact graph message has {len(frames)} frames but "
                        f"refers to {len(used)} arrays")
    return build_graph(groups, external), bytes(frames[1])
