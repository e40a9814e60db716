"""Graph encodings: how a ``TaskGraph`` travels from the client to the scheduler, and how its
task specs finally reach the workers.

A graph message is a framed message (``scheduler.wire.frames``): frame 0 is a msgpack map with
at least ``"encoding"`` (a name of ``ENCODINGS``) and ``"version"`` (an int, per encoding); the
other frames are the encoding's business. Encodings:

- ``pickle`` (``legacy.py``): the baseline whose cost we measure. One cloudpickle blob per task,
  function included every time; keys and dependencies as explicit key lists.
- ``compact`` (``compact.py``): keys as data (a regular block is its name and shape),
  dependencies as raw integer arrays, each distinct function pickled once in a function table,
  one blob per template (regular groups) or per task (explicit groups).
- ``layers`` (``layers.py``): high-level layers as data (parameters, template blobs, output
  layer names), lowered and culled on the scheduler from data alone.

Rules of this module:

- **The scheduler never unpickles what a client sent.** ``decode_graph`` runs on the
  scheduler: it reads msgpack and numpy integer buffers only, and returns a ``WireGraph`` whose
  task templates/specs are the client's opaque ``bytes``, forwarded untouched to workers.
  Only ``SpecLoader`` unpickles, and only workers use it.
- ``decode_graph`` raises ``ValueError`` subclasses only, all the client's fault: ``WireError``
  when the message is malformed (wrong version, bad field, ids out of range, bad arrays), a
  ``GraphError`` (``DuplicateKeyError``, ``CycleError``, ``MissingDependencyError``) when the
  message is well formed but the graph it describes is invalid.
- ``GraphLimits`` bounds what a message may make the scheduler allocate (the number of tasks
  a regular block may claim), checked before allocating.
- An encoding is a module of this package with ``VERSION``, ``encode(graph) -> (header fields,
  payload frames)`` and ``decode(header, frames, limits) -> (TaskGraph, function table)``,
  listed in ``_CODECS`` and imported on first use (so that ``layers``, which pulls in
  lowering code, costs nothing until it is used). The shared decoding helpers below are for
  those modules.
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any

import numpy as np

from ..graph.errors import DuplicateKeyError, GraphError
from ..graph.keys import ExplicitKeys, InvalidKeyError, Key, KeyBlock, check_key
from ..graph.lowgraph import TaskGraph, TaskGroup
from .frames import BytesLike, WireError, dumps_msg, loads_header, message_nbytes

__all__ = ["DEFAULT_GRAPH_LIMITS", "ENCODINGS", "GRAPH_ENCODINGS", "GraphLimits", "SpecLoadError", "SpecLoader",
           "WireError", "WireGraph", "decode_graph", "encode_graph", "load_codecs"]

# name -> module of this package implementing it (immutable: no module-level mutable state)
_CODECS: Mapping[str, str] = MappingProxyType({"pickle": "legacy", "compact": "compact",
                                                "layers": "layers"})

ENCODINGS: tuple[str, ...] = tuple(_CODECS)
"""Names of the graph encodings this version can write and read."""

GRAPH_ENCODINGS: tuple[str, ...] = ("pickle", "compact")
"""The encodings that carry a lowered ``TaskGraph`` (``layers`` carries a ``LayerGraph``)."""


@dataclass(frozen=True, slots=True)
class GraphLimits:
    """What one graph message may make the scheduler allocate."""

    max_tasks: int = 50_000_000
    """Tasks plus external keys in one graph (a regular block of a few bytes can claim
    billions of tasks; its arrays are built only after this check)."""


DEFAULT_GRAPH_LIMITS = GraphLimits()


@dataclass(frozen=True, slots=True)
class WireGraph:
    """A graph as the scheduler holds it after decoding.

    ``graph`` is a validated ``TaskGraph`` whose group templates (regular groups) and specs
    (explicit groups) are opaque ``bytes``: pickles that only a worker's ``SpecLoader`` may
    open, together with ``functions``, the opaque function table (``b""`` when the encoding
    has none). ``nbytes`` is the message's size on the stream.
    """

    graph: TaskGraph
    functions: bytes
    encoding: str
    nbytes: int
    outputs: np.ndarray | None = None
    """Output ids chosen on the scheduler (``layers``: every key of the output layers, in
    their key order); ``None`` when the client sends its own output ids."""


def _codec(encoding: object) -> ModuleType | None:
    module = _CODECS.get(encoding) if type(encoding) is str else None
    if module is None:
        return None
    return importlib.import_module(f"{__package__}.{module}")


def load_codecs() -> None:
    """Import every encoding's codec now, so that a long-lived reader (the scheduler) pays
    for it when it starts rather than on the first graph of each encoding."""
    for encoding in ENCODINGS:
        _codec(encoding)


def encode_graph(graph: Any, encoding: str, outputs: Sequence[str] | None = None
                 ) -> list[Any]:
    """Frames of a graph message for ``graph`` in ``encoding`` (one of ``ENCODINGS``).

    For ``pickle`` and ``compact``, ``graph`` is a ``TaskGraph``. For ``layers`` it is a
    ``LayerGraph`` and ``outputs`` names the layers whose keys are wanted. Frames are
    bytes-like, ready for ``frames.write_message``. Raises ``ValueError`` for an unknown
    encoding name or a graph of the wrong kind for the encoding.
    """
    codec = _codec(encoding)
    if codec is None:
        raise ValueError(f"unknown graph encoding {encoding!r}; choose one of "
                         f"{', '.join(ENCODINGS)}")
    if encoding == "layers":
        from ..graph.layers import LayerGraph

        if not isinstance(graph, LayerGraph) or outputs is None:
            raise ValueError("the layers encoding sends a LayerGraph and the names of its "
                             "output layers")
        fields, payloads = codec.encode_layers(graph, outputs)
    else:
        if not isinstance(graph, TaskGraph):
            raise ValueError(f"the {encoding} encoding sends a TaskGraph, got "
                             f"{type(graph).__name__} (lower it first, or use layers)")
        fields, payloads = codec.encode(graph)
    header = {"encoding": encoding, "version": codec.VERSION, **fields}
    try:
        return dumps_msg(header, *payloads)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"this graph cannot be encoded as {encoding!r}: {exc} (msgpack "
                         f"carries its keys and parameters)") from exc


def decode_graph(frames: Sequence[BytesLike], limits: GraphLimits = DEFAULT_GRAPH_LIMITS
                 ) -> WireGraph:
    """The ``WireGraph`` in a graph message received from a client. Never unpickles.

    Raises ``WireError`` for a malformed message and ``GraphError`` for an invalid graph (both
    the client's fault; see the module docstring).
    """
    if not frames:
        raise WireError("the client sent an empty graph message (no header frame)")
    header = loads_header(frames[0], use_list=False)
    encoding = header.get("encoding")
    codec = _codec(encoding)
    if codec is None:
        raise WireError(f"the client sent a graph in encoding {encoding!r}, which this "
                        f"scheduler does not read (it reads {', '.join(ENCODINGS)})")
    version = header.get("version")
    if version != codec.VERSION or type(version) is not int:
        raise WireError(f"the client sent a {encoding!r} graph of version {version!r}; this "
                        f"scheduler reads version {codec.VERSION}: client and scheduler run "
                        f"different versions of stagecost")
    decoded = codec.decode(header, frames, limits)
    graph, functions = decoded[0], decoded[1]
    outputs = decoded[2] if len(decoded) > 2 else None
    return WireGraph(graph=graph, functions=functions, encoding=str(encoding), outputs=outputs,
                     nbytes=message_nbytes(frames))


# --- worker side ---------------------------------------------------------------------------

class SpecLoadError(WireError):
    """A worker could not unpickle a task spec or function table sent by a client."""


class _SpecUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, table: tuple[Any, ...]) -> None:
        super().__init__(file)
        self._table = table

    def persistent_load(self, pid: Any) -> Any:
        table = self._table
        if type(pid) is int and 0 <= pid < len(table):
            return table[pid]
        raise pickle.UnpicklingError(f"the spec refers to function {pid!r} but the function "
                                     f"table has {len(table)} entries")


class SpecLoader:
    """Worker side: opens the opaque blobs of a ``WireGraph`` (this is where unpickling
    happens, and the only place).

    Built once per graph from its function table; ``load(blob)`` returns the real spec of a
    template or task. Failures raise ``SpecLoadError`` naming the cause (often a module the
    client used that is missing on the worker).
    """

    __slots__ = ("_table",)

    def __init__(self, functions: BytesLike = b"") -> None:
        table: Any = ()
        if len(functions):
            try:
                table = pickle.loads(functions)
            except Exception as exc:
                raise SpecLoadError(f"could not load the function table sent by the client: "
                                    f"{type(exc).__name__}: {exc} (is every module it uses "
                                    f"installed on this worker?)") from exc
        if not isinstance(table, list | tuple):
            raise SpecLoadError(f"the function table sent by the client is a "
                                f"{type(table).__name__}, not a list")
        self._table: tuple[Any, ...] = tuple(table)

    def __len__(self) -> int:
        return len(self._table)

    def load(self, blob: BytesLike) -> Any:
        """The spec pickled in ``blob``."""
        try:
            return _SpecUnpickler(io.BytesIO(blob), self._table).load()
        except Exception as exc:
            raise SpecLoadError(f"could not load a task spec sent by the client: "
                                f"{type(exc).__name__}: {exc} (is every module it uses "
                                f"installed on this worker?)") from exc

    def load_graph(self, graph: TaskGraph) -> TaskGraph:
        """A copy of ``graph`` with every template and spec loaded (same keys and arrays)."""
        groups = []
        for g in graph.groups:
            if g.specs is None:
                groups.append(TaskGroup(g.keys, template=self.load(g.template),
                                        indptr=g.indptr, indices=g.indices))
            else:
                groups.append(TaskGroup(g.keys, specs=[self.load(b) for b in g.specs],
                                        indptr=g.indptr, indices=g.indices))
        return TaskGraph(groups, external=graph.external, validate=False)


# --- helpers for the decoders of encoding modules -------------------------------------------

def get_field(fields: Mapping[str, Any], name: str, kinds: tuple[type, ...], where: str) -> Any:
    """``fields[name]``, checked to be exactly of one of ``kinds`` (so ``bool`` is no ``int``)."""
    if name not in fields:
        raise WireError(f"the client's graph message lacks the field {name!r} in {where}")
    value = fields[name]
    if type(value) not in kinds:
        expected = " or ".join(k.__name__ for k in kinds)
        raise WireError(f"the client's graph message has {name!r} of type "
                        f"{type(value).__name__} in {where}, expected {expected}")
    return value


def keys_from_wire(raw: Sequence[Any], where: str) -> list[Key]:
    """Keys received as msgpack data (arrays already tuples), each checked."""
    try:
        return [check_key(k) for k in raw]
    except InvalidKeyError as exc:
        raise WireError(f"the client sent an invalid key in {where}: {exc}") from None


def explicit_keys(raw: Sequence[Any], where: str) -> ExplicitKeys:
    """An ``ExplicitKeys`` block from wire data; ``DuplicateKeyError`` names repeated keys."""
    keys = keys_from_wire(raw, where)
    try:
        return ExplicitKeys(keys, validate=False)
    except ValueError:
        dups = [k for k, c in Counter(keys).items() if c > 1]
        raise DuplicateKeyError(dups) from None


def check_ids(ids: np.ndarray, limit: int, where: str) -> None:
    """Raise ``WireError`` unless every id is in ``0 .. limit - 1``."""
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= limit):
        raise WireError(f"the client sent dependency ids outside 0..{limit - 1} in {where} "
                        f"(min {int(ids.min())}, max {int(ids.max())})")


def check_budget(ntasks: int, limits: GraphLimits) -> None:
    if ntasks > limits.max_tasks:
        raise WireError(f"the client sent a graph of at least {ntasks} tasks and external keys, "
                        f"more than this scheduler's limit of {limits.max_tasks} "
                        f"(GraphLimits.max_tasks)")


def make_group(keys: KeyBlock, *, indptr: np.ndarray, indices: np.ndarray,
               template: bytes | None = None, specs: list[bytes] | None = None,
               where: str) -> TaskGroup:
    """A ``TaskGroup``; a structural error is reported as the client's ``WireError``."""
    try:
        return TaskGroup(keys, indptr=indptr, indices=indices, template=template, specs=specs)
    except (ValueError, TypeError) as exc:
        raise WireError(f"the client sent an invalid task group in {where}: {exc}") from None


def build_graph(groups: list[TaskGroup], external: list[Key]) -> TaskGraph:
    """A validated ``TaskGraph``; ``GraphError``s pass through, other problems the graph's
    checks find become ``WireError`` (the client's fault)."""
    try:
        return TaskGraph(groups, external=external, validate=True)
    except GraphError:
        raise
    except (ValueError, TypeError) as exc:
        raise WireError(f"the client sent an invalid graph: {exc}") from None
