"""Framed messages: how a list of byte frames travels over a stream.

A message is a list of frames. By convention the first frame is a msgpack header (see
``dumps_msg`` / ``loads_header``) and the others are opaque bytes-like payloads (numpy buffers,
pickled blobs) that are never copied into the header.

Layout on the stream, all integers unsigned 64-bit little-endian::

    count | length_0 ... length_{count-1} | payload_0 ... payload_{count-1}

Rules of this module:

- The reader checks ``FrameLimits`` from the prefix alone: the frame count as soon as its
  8 bytes are in, the total size as soon as the length table is in, so a peer cannot make us
  buffer (or allocate) more than the limit. A violation raises ``FrameError``.
- ``FrameError`` (a ``WireError``, a ``ValueError``) always means *the peer* sent something
  malformed or too large; the connection should be closed. Bugs in this process raise
  anything else (``TypeError`` for a frame that is not a contiguous buffer, ``ValueError`` for a
  message too large to send).
- ``FrameReader`` is sans-I/O (in the manner of h11): ``feed(data)`` buffers,
  ``next_message()`` returns a complete message or ``None``. Incomplete input never blocks and
  never raises; garbage raises ``FrameError`` and nothing else. Once it has raised, the reader
  stays broken (every later call raises again).
- Payloads are not copied when avoidable: frames come back as read-only ``memoryview`` slices
  of one block per message. That block is the fed data itself when one ``feed`` held the whole
  payload, else one joined copy.
- ``read_message`` / ``write_message`` are the only asyncio code here; they use the same
  limit checks.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = ["BIG_INT_BYTES", "DEFAULT_LIMITS", "BytesLike", "FrameError", "FrameLimits", "FrameReader", "WireError",
           "dumps_msg", "loads_header", "message_nbytes", "pack_frames", "read_message",
           "write_message"]

_U64 = struct.Struct("<Q")

BytesLike = bytes | bytearray | memoryview


class WireError(ValueError):
    """A message received from a peer is malformed or invalid (the peer's fault, not ours)."""


class FrameError(WireError):
    """The framing of a received message is malformed or exceeds the limits (peer's fault)."""


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """Largest message a reader accepts. Both ends should agree; the sender checks too."""

    max_bytes: int = 2 * 1024**3
    """Total payload bytes of one message (the count and length table not included)."""
    max_frames: int = 65_536
    """Number of frames in one message."""

    def __post_init__(self) -> None:
        if self.max_bytes < 0 or self.max_frames < 0:
            raise ValueError(f"frame limits must be non-negative, got {self}")


DEFAULT_LIMITS = FrameLimits()


# --- writing -------------------------------------------------------------------------------

def _as_bytes_like(frame: Any, i: int) -> bytes | memoryview:
    if type(frame) is bytes:
        return frame
    try:
        view = memoryview(frame)
    except TypeError:
        raise TypeError(f"frame {i} is a {type(frame).__name__}, not a bytes-like object "
                        f"(a bug in the code that built this message)") from None
    if view.ndim == 1 and view.itemsize == 1 and view.contiguous:
        return view
    if not view.c_contiguous:
        raise TypeError(f"frame {i} is not a C-contiguous buffer; copy it first "
                        f"(a bug in the code that built this message)")
    return view.cast("B")


def pack_frames(frames: Sequence[Any], limits: FrameLimits = DEFAULT_LIMITS
                ) -> list[bytes | memoryview]:
    """The message ``frames`` as a list of buffers for ``writer.writelines``.

    Frames may be any C-contiguous buffers (``bytes``, ``bytearray``, ``memoryview``, numpy
    arrays); they are not copied. Empty frames are allowed. Raises ``ValueError`` when the
    message exceeds ``limits`` (the peer would reject it, so we refuse to send it).
    """
    views = [_as_bytes_like(f, i) for i, f in enumerate(frames)]
    lengths = [v.nbytes if isinstance(v, memoryview) else len(v) for v in views]
    total = sum(lengths)
    if len(views) > limits.max_frames or total > limits.max_bytes:
        raise ValueError(f"refusing to send a message of {len(views)} frames and {total} bytes: "
                         f"the limit is {limits.max_frames} frames and {limits.max_bytes} bytes; "
                         f"send less per message or raise FrameLimits on both ends")
    prefix = struct.pack(f"<{len(views) + 1}Q", len(views), *lengths)
    return [prefix, *(v for v, n in zip(views, lengths, strict=True) if n)]


def message_nbytes(frames: Iterable[Any]) -> int:
    """Bytes that ``frames`` take on the stream, prefix included."""
    n = 0
    total = 0
    for f in frames:
        n += 1
        total += len(f) if type(f) is bytes else memoryview(f).nbytes
    return _U64.size * (n + 1) + total


async def write_message(writer: asyncio.StreamWriter, frames: Sequence[Any],
                        limits: FrameLimits = DEFAULT_LIMITS) -> int:
    """Write one message and wait until the transport has taken it; return its size on the
    stream in bytes."""
    buffers = pack_frames(frames, limits)
    writer.writelines(buffers)
    await writer.drain()
    return sum(b.nbytes if isinstance(b, memoryview) else len(b) for b in buffers)


# --- reading -------------------------------------------------------------------------------

def _check_count(count: int, limits: FrameLimits) -> int:
    if count > limits.max_frames:
        raise FrameError(f"the peer announced a message of {count} frames, more than the limit "
                         f"of {limits.max_frames}: it is malformed or too large (is the peer "
                         f"speaking this protocol?)")
    return count


def _check_lengths(table: BytesLike, count: int, limits: FrameLimits) -> tuple[tuple[int, ...], int]:
    lengths: tuple[int, ...] = struct.unpack(f"<{count}Q", table)
    total = sum(lengths)
    if total > limits.max_bytes:
        raise FrameError(f"the peer announced a message of {total} bytes in {count} frames, "
                         f"more than the limit of {limits.max_bytes} bytes: it is malformed or "
                         f"too large")
    return lengths, total


def _split(block: memoryview, lengths: Sequence[int]) -> list[memoryview]:
    out = []
    pos = 0
    for n in lengths:
        out.append(block[pos:pos + n])
        pos += n
    return out


class FrameReader:
    """Incremental, sans-I/O decoder of framed messages.

    ``feed(data)`` buffers bytes (and parses prefixes eagerly, so that a limit violation
    raises from the ``feed`` that reveals it, before the payload is buffered);
    ``next_message()`` returns the next complete message or ``None``. Call ``eof()`` when the
    stream ends: it raises ``FrameError`` if a message was cut short.
    """

    __slots__ = ("limits", "_chunks", "_buffered", "_count", "_lengths", "_total", "_ready",
                 "_error")

    def __init__(self, limits: FrameLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._chunks: deque[memoryview] = deque()
        self._buffered = 0
        self._count = -1                      # -1: waiting for the count
        self._lengths: tuple[int, ...] = ()
        self._total = -1                      # -1: waiting for the length table
        self._ready: deque[list[memoryview]] = deque()
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned in a message."""
        return self._buffered

    def feed(self, data: BytesLike) -> None:
        """Add bytes from the stream. The reader keeps a reference to ``data`` when it is
        ``bytes``; other buffers are copied (they could change under us)."""
        self._raise_if_broken()
        if type(data) is not bytes:
            data = bytes(data)
        if not data:
            return
        self._chunks.append(memoryview(data))
        self._buffered += len(data)
        try:
            self._parse()
        except FrameError as exc:
            self._error = str(exc)
            self._chunks.clear()
            self._buffered = 0
            raise

    def next_message(self) -> list[memoryview] | None:
        """The next complete message (its frames), or ``None`` until one is complete."""
        if self._ready:
            return self._ready.popleft()
        self._raise_if_broken()
        return None

    def eof(self) -> None:
        """The stream ended: raise ``FrameError`` if it ended inside a message."""
        self._raise_if_broken()
        if self._buffered or self._count >= 0:
            raise FrameError(f"the peer closed the stream in the middle of a message "
                             f"({self._buffered} bytes of it received)")

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise FrameError(f"the stream is unusable after an earlier error: {self._error}")

    def _take(self, n: int) -> memoryview:
        """The next ``n`` buffered bytes (the caller checked there are enough)."""
        chunks = self._chunks
        self._buffered -= n
        first = chunks[0]
        if len(first) >= n:
            if len(first) == n:
                chunks.popleft()
            else:
                chunks[0] = first[n:]
            return first[:n]
        pieces = []
        need = n
        while need:
            c = chunks[0]
            if len(c) <= need:
                pieces.append(chunks.popleft())
                need -= len(c)
            else:
                pieces.append(c[:need])
                chunks[0] = c[need:]
                need = 0
        return memoryview(b"".join(pieces))

    def _parse(self) -> None:
        limits = self.limits
        while True:
            if self._count < 0:
                if self._buffered < _U64.size:
                    return
                self._count = _check_count(_U64.unpack(self._take(_U64.size))[0], limits)
            if self._total < 0:
                need = _U64.size * self._count
                if self._buffered < need:
                    return
                table = self._take(need) if need else b""
                self._lengths, self._total = _check_lengths(table, self._count, limits)
            if self._buffered < self._total:
                return
            block = self._take(self._total) if self._total else memoryview(b"")
            self._ready.append(_split(block, self._lengths))
            self._count, self._lengths, self._total = -1, (), -1


async def _read_exactly(reader: asyncio.StreamReader, n: int, started: bool) -> bytes:
    if not n:
        return b""
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        if not started and not exc.partial:
            raise EOFError("the peer closed the stream between messages") from None
        raise FrameError("the peer closed the stream in the middle of a message") from None


async def read_message(reader: asyncio.StreamReader, limits: FrameLimits = DEFAULT_LIMITS
                       ) -> list[memoryview] | None:
    """Read one message; ``None`` if the stream ended cleanly before it began.

    Raises ``FrameError`` if the prefix breaks ``limits`` (before reading the payload) or if
    the stream ends inside a message.
    """
    try:
        head = await _read_exactly(reader, _U64.size, started=False)
    except EOFError:
        return None
    count = _check_count(_U64.unpack(head)[0], limits)
    table = await _read_exactly(reader, _U64.size * count, started=True)
    lengths, total = _check_lengths(table, count, limits)
    payload = await _read_exactly(reader, total, started=True)
    return _split(memoryview(payload), lengths)


# --- headers -------------------------------------------------------------------------------

BIG_INT_BYTES = 512
"""Largest int outside msgpack's 64-bit range that a header carries, in bytes (4,096 bits):
such ints travel as an extension type, so that any Dask key (``("x", 2**70)``) can travel."""

_EXT_BIG_INT = 1


def _pack_default(value: Any) -> msgpack.ExtType:
    """msgpack's fallback: an int beyond 64 bits as an extension; anything else is refused."""
    if type(value) is int:
        n = (value.bit_length() + 8) // 8   # room for the sign bit
        if n <= BIG_INT_BYTES:
            return msgpack.ExtType(_EXT_BIG_INT, value.to_bytes(n, "little", signed=True))
        raise ValueError(f"an int of {value.bit_length()} bits cannot travel in a message "
                         f"header (the limit is {8 * BIG_INT_BYTES} bits)")
    raise TypeError(f"msgpack cannot encode a {type(value).__name__}")


def _unpack_ext(code: int, data: bytes) -> Any:
    if code == _EXT_BIG_INT:
        if not 0 < len(data) <= BIG_INT_BYTES:
            raise ValueError(f"a big int of {len(data)} bytes (the limit is {BIG_INT_BYTES})")
        return int.from_bytes(data, "little", signed=True)
    return msgpack.ExtType(code, data)  # not ours: left as is, validation will refuse it


def dumps_msg(header: dict[str, Any], *payloads: Any) -> list[Any]:
    """A message: ``header`` packed with msgpack, followed by ``payloads`` untouched.

    msgpack has one array type: tuples and lists both become arrays, and come back as lists
    (or all as tuples, with ``loads_header(frame, use_list=False)``), nested ones included.
    ``bytes`` travel as msgpack bin, ``str`` as msgpack str, ints beyond 64 bits (up to
    ``BIG_INT_BYTES``) as an extension type. Anything else msgpack cannot encode raises
    ``TypeError`` (a bug in the caller: put such values in a payload frame instead); an int
    too big for the extension raises ``ValueError``.
    """
    return [msgpack.packb(header, use_bin_type=True, default=_pack_default), *payloads]


def loads_header(frame: BytesLike, *, use_list: bool = True) -> dict[str, Any]:
    """The header dict packed by ``dumps_msg``. Raises ``FrameError`` if ``frame`` is not one
    msgpack map with str keys (the peer's fault). ``use_list=False`` turns every array into a
    tuple, which is what keys need (``("x", 1)`` goes out as an array)."""
    try:
        header = msgpack.unpackb(frame, raw=False, use_list=use_list, strict_map_key=True,
                                 ext_hook=_unpack_ext)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise FrameError(f"the peer sent a header that is not valid msgpack: "
                         f"{type(exc).__name__}: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError(f"the peer sent a header that is a msgpack {type(header).__name__}, "
                         f"not a map")
    return header
