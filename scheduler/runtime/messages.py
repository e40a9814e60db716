"""Runtime messages: an operation name, msgpack fields, numpy arrays and opaque blobs.

Layout (on top of ``scheduler.wire.frames``): frame 0 is a msgpack map with ``op``, the
fields, ``_a`` (``{name: [dtype, frame number]}``) and ``_b`` (``[first frame, count]``);
arrays travel as their raw buffers, blobs untouched. Nothing here unpickles.

Rules: one message per batch, never per task; a field that is not msgpack data is a bug in
the sender (``TypeError``); a message whose layout is wrong raises ``WireError`` (the peer's
fault). Fields come back with arrays as lists: a field holding a key is read with
``key_field``, which gives tuples back (keys never hold lists).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..graph.keys import InvalidKeyError, Key, check_key
from ..wire.frames import BytesLike, WireError, dumps_msg, loads_header

__all__ = ["Message", "key_field", "pack", "unpack"]

_DTYPES = frozenset({"<i8", "<i4", "<i2", "|i1", "<f8", "|b1", "<u8"})


@dataclass
class Message:
    op: str
    fields: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    blobs: list[BytesLike] = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        try:
            return self.fields[name]
        except KeyError:
            raise WireError(f"message {self.op!r} lacks field {name!r}") from None

    def key(self, name: str) -> Key:
        """Field ``name`` as a key (see ``key_field``)."""
        return key_field(self[name], f"field {name!r} of message {self.op!r}")

    def array(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise WireError(f"message {self.op!r} lacks array {name!r}") from None


def pack(op: str, fields: Mapping[str, Any] | None = None,
         arrays: Mapping[str, np.ndarray] | None = None,
         blobs: Sequence[BytesLike] = ()) -> list[Any]:
    header: dict[str, Any] = {"op": op, **(fields or {})}
    payloads: list[Any] = []
    if arrays:
        spec = {}
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            if a.dtype.str not in _DTYPES:
                a = a.astype(np.int64)
            spec[name] = [a.dtype.str, len(payloads) + 1]
            payloads.append(a.data.cast("B") if a.size else b"")
        header["_a"] = spec
    if blobs:
        header["_b"] = [len(payloads) + 1, len(blobs)]
        payloads.extend(blobs)
    return dumps_msg(header, *payloads)


def unpack(frames: Sequence[BytesLike]) -> Message:
    if not frames:
        raise WireError("the peer sent an empty message")
    header = loads_header(frames[0])
    op = header.pop("op", None)
    if not isinstance(op, str):
        raise WireError(f"the peer sent a message without an operation name: {op!r}")
    try:
        return _unpack(op, header, frames)
    except WireError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise WireError(f"message {op!r} has a malformed layout: {type(e).__name__}: {e}"
                        ) from None


def _unpack(op: str, header: dict[str, Any], frames: Sequence[BytesLike]) -> Message:
    arrays = {}
    spec = header.pop("_a", {})
    if not isinstance(spec, dict):
        raise WireError(f"message {op!r}: the array table is not a map")
    for name, entry in spec.items():
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise WireError(f"message {op!r}: bad array entry {name!r}")
        dtype, no = entry
        if dtype not in _DTYPES or not isinstance(no, int) or not 0 < no < len(frames):
            raise WireError(f"message {op!r}: bad array {name!r} ({dtype!r}, frame {no!r})")
        buf = frames[no]
        size = np.dtype(dtype).itemsize
        if len(buf) % size:
            raise WireError(f"message {op!r}: array {name!r} has {len(buf)} bytes, not a "
                            f"multiple of {size}")
        arrays[name] = np.frombuffer(buf, dtype=dtype) if len(buf) else np.zeros(0, dtype)
    blobs: list[BytesLike] = []
    if "_b" in header:
        b = header.pop("_b")
        if not isinstance(b, list | tuple) or len(b) != 2:
            raise WireError(f"message {op!r}: bad blob range {b!r}")
        first, count = b
        if not (isinstance(first, int) and isinstance(count, int) and first >= 1
                and first + count <= len(frames)):
            raise WireError(f"message {op!r}: bad blob range {first!r}+{count!r}")
        blobs = list(frames[first:first + count])
    return Message(op, header, arrays, blobs)


def key_field(value: Any, where: str = "a message") -> Key:
    """A key read from a message field: msgpack arrays (lists here) become tuples again, at
    every depth. Raises ``WireError`` if the result is not a key (the peer's fault)."""
    if type(value) is list:
        value = _tuples(value)
    try:
        return check_key(value)
    except InvalidKeyError as exc:
        raise WireError(f"the peer sent an invalid key in {where}: {exc}") from None


def _tuples(items: list) -> tuple:
    return tuple([_tuples(v) if type(v) is list else v for v in items])
