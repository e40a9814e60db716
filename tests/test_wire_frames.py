"""Framed messages: round trips, incremental decoding, limits, and hostile input."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.wire.frames import (
    DEFAULT_LIMITS,
    FrameError,
    FrameLimits,
    FrameReader,
    WireError,
    dumps_msg,
    loads_header,
    message_nbytes,
    pack_frames,
    read_message,
    write_message,
)

T = TypeVar("T")


def wire_bytes(frames: list, limits: FrameLimits = DEFAULT_LIMITS) -> bytes:
    return b"".join(bytes(b) for b in pack_frames(frames, limits))


def as_bytes(message: list | None) -> list[bytes] | None:
    return None if message is None else [bytes(f) for f in message]


def prefix(*lengths: int) -> bytes:
    return struct.pack(f"<{len(lengths) + 1}Q", len(lengths), *lengths)


# --- round trips ---------------------------------------------------------------------------

@pytest.mark.parametrize("frames", [
    [],
    [b""],
    [b"", b"", b""],
    [b"header", b"", b"payload"],
    [b"x" * 100_000, b"y"],
    [bytes([i % 256]) * (i % 7) for i in range(2000)],
])
def test_round_trip(frames: list[bytes]) -> None:
    reader = FrameReader()
    reader.feed(wire_bytes(frames))
    assert as_bytes(reader.next_message()) == frames
    assert reader.next_message() is None
    assert reader.buffered == 0
    reader.eof()


def test_buffers_of_any_kind_are_sent_without_copy_and_arrive_equal() -> None:
    arr = np.arange(12, dtype=np.float64).reshape(3, 4)
    frames = [b"h", bytearray(b"ba"), memoryview(b"mv"), arr]
    packed = pack_frames(frames)
    assert any(isinstance(b, memoryview) and b.obj is arr for b in packed)
    reader = FrameReader()
    reader.feed(b"".join(bytes(b) for b in packed))
    got = reader.next_message()
    assert got is not None
    assert as_bytes(got[:3]) == [b"h", b"ba", b"mv"]
    np.testing.assert_array_equal(np.frombuffer(got[3], dtype=np.float64).reshape(3, 4), arr)
    assert message_nbytes(frames) == sum(len(bytes(b)) for b in packed)


def test_one_feed_holding_a_whole_message_is_not_copied() -> None:
    data = wire_bytes([b"abc", b"defg"])
    reader = FrameReader()
    reader.feed(data)
    message = reader.next_message()
    assert message is not None and all(f.obj is data for f in message)
    assert all(f.readonly for f in message)


def test_fed_byte_by_byte_with_several_messages() -> None:
    messages = [[b"one", b"", b"1" * 300], [], [b"two"], [b"", b"three"]]
    stream = b"".join(wire_bytes(m) for m in messages)
    reader = FrameReader()
    got = []
    for i in range(len(stream)):
        reader.feed(stream[i:i + 1])
        while (m := reader.next_message()) is not None:
            got.append(as_bytes(m))
    assert got == messages
    reader.eof()


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.binary(max_size=40), max_size=6), min_size=1, max_size=4),
       st.lists(st.integers(0, 60), max_size=30))
def test_any_split_of_any_messages_round_trips(messages: list[list[bytes]],
                                                cuts: list[int]) -> None:
    stream = b"".join(wire_bytes(m) for m in messages)
    reader = FrameReader()
    got: list = []
    pos = 0
    for c in [*cuts, len(stream)]:
        reader.feed(bytearray(stream[pos:pos + c]))  # not bytes: the reader must copy it
        pos += c
        while (m := reader.next_message()) is not None:
            got.append(as_bytes(m))
    reader.feed(stream[pos:])
    while (m := reader.next_message()) is not None:
        got.append(as_bytes(m))
    assert got == messages


# --- limits and hostile input --------------------------------------------------------------

def test_too_many_frames_is_refused_from_the_count_alone() -> None:
    reader = FrameReader(FrameLimits(max_frames=10))
    with pytest.raises(FrameError, match="11 frames, more than the limit of 10"):
        reader.feed(struct.pack("<Q", 11))


def test_too_many_bytes_is_refused_from_the_length_table_before_the_payload() -> None:
    reader = FrameReader(FrameLimits(max_bytes=1000))
    head = prefix(500, 501)
    reader.feed(head[:12])                 # incomplete length table: just wait
    assert reader.next_message() is None
    with pytest.raises(FrameError, match="1001 bytes.*limit of 1000"):
        reader.feed(head[12:])             # table complete: 1001 > 1000, no payload fed
    # The default limit is far above what a test sends, but a peer claiming 2**63 is refused.
    with pytest.raises(FrameError):
        FrameReader().feed(prefix(2**63, 2**63 - 1))


def test_a_broken_stream_stays_broken() -> None:
    reader = FrameReader(FrameLimits(max_frames=1))
    with pytest.raises(FrameError):
        reader.feed(prefix(1, 1))
    with pytest.raises(FrameError, match="earlier error"):
        reader.feed(wire_bytes([b"fine"]))
    with pytest.raises(FrameError):
        reader.next_message()


def test_http_request_is_garbage() -> None:
    with pytest.raises(FrameError, match="malformed"):
        FrameReader().feed(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")


def test_message_exactly_at_the_limits_is_accepted() -> None:
    limits = FrameLimits(max_bytes=10, max_frames=2)
    reader = FrameReader(limits)
    reader.feed(wire_bytes([b"12345", b"67890"], limits))
    assert as_bytes(reader.next_message()) == [b"12345", b"67890"]


def test_truncated_input_waits_and_eof_reports_it() -> None:
    data = wire_bytes([b"abc", b"def"])
    for cut in range(len(data)):
        reader = FrameReader()
        reader.feed(data[:cut])
        assert reader.next_message() is None
        if cut:
            with pytest.raises(FrameError, match="middle of a message"):
                reader.eof()
        else:
            reader.eof()


@settings(max_examples=400)
@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=10))
def test_fuzz_arbitrary_bytes_raise_only_frame_error(data: bytes, cuts: list[int]) -> None:
    reader = FrameReader(FrameLimits(max_bytes=200, max_frames=8))
    pos = 0
    try:
        for c in [*cuts, len(data)]:
            reader.feed(data[pos:pos + c])
            pos += c
            while reader.next_message() is not None:
                pass
        reader.eof()
    except FrameError:
        pass


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_fuzz_with_default_limits(data: bytes) -> None:
    reader = FrameReader()
    try:
        reader.feed(data)
        reader.next_message()
    except FrameError:
        pass


def test_frame_error_is_a_wire_error_and_a_value_error() -> None:
    assert issubclass(FrameError, WireError)
    assert issubclass(FrameError, ValueError)


# --- sending -------------------------------------------------------------------------------

def test_pack_refuses_what_the_peer_would_refuse() -> None:
    with pytest.raises(ValueError, match="refusing to send"):
        pack_frames([b"x" * 11], FrameLimits(max_bytes=10))
    with pytest.raises(ValueError, match="refusing to send"):
        pack_frames([b""] * 3, FrameLimits(max_frames=2))


def test_pack_rejects_non_buffers_and_non_contiguous_arrays() -> None:
    with pytest.raises(TypeError, match="frame 1 is a str"):
        pack_frames([b"", "text"])
    with pytest.raises(TypeError, match="not a C-contiguous"):
        pack_frames([np.arange(10)[::2]])


def test_empty_frames_add_no_buffers() -> None:
    assert len(pack_frames([b"", b"", b"a"])) == 2


# --- headers -------------------------------------------------------------------------------

def test_header_round_trip_and_tuple_handling() -> None:
    header = {"op": "x", "key": ("x", 1, 2.5), "data": b"\x00\xff", "n": None}
    frames = dumps_msg(header, b"payload")
    assert frames[1] == b"payload"
    assert loads_header(frames[0]) == {**header, "key": ["x", 1, 2.5]}
    assert loads_header(frames[0], use_list=False)["key"] == ("x", 1, 2.5)


@pytest.mark.parametrize("frame", [b"", b"\xc1", b"\x93\x01\x02", b"\x81\x01\x02",
                                   b"\x80\x80", b"\xa2\xff\xfe"])
def test_bad_headers_raise_frame_error(frame: bytes) -> None:
    with pytest.raises(FrameError):
        loads_header(frame)


@settings(max_examples=200)
@given(st.binary(max_size=40))
def test_fuzz_headers(frame: bytes) -> None:
    with contextlib.suppress(FrameError):
        assert isinstance(loads_header(frame), dict)


# --- asyncio helpers -----------------------------------------------------------------------

def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def test_read_and_write_over_a_socket() -> None:
    messages: list[list[Any]] = [[b"head", b"", np.arange(1000, dtype=np.int32)], [],
                                 [b"last"]]

    async def main() -> list:
        a, b = socket.socketpair()
        _, writer = await asyncio.open_connection(sock=a)
        reader, other = await asyncio.open_connection(sock=b)
        sizes = [await write_message(writer, m) for m in messages]
        writer.close()
        await writer.wait_closed()
        got = []
        while (m := await read_message(reader)) is not None:
            got.append(as_bytes(m))
        other.close()
        await other.wait_closed()
        assert sizes == [message_nbytes(m) for m in messages]
        return got

    expected = [[bytes(memoryview(f).cast("B")) for f in m] for m in messages]
    assert run(main()) == expected


def stream_of(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def test_read_message_checks_limits_before_reading_the_payload() -> None:
    async def main() -> None:
        # No payload and no EOF: if the reader waited for the payload this would time out.
        reader = stream_of(prefix(600, 600), eof=False)
        with pytest.raises(FrameError, match="1200 bytes"):
            await read_message(reader, FrameLimits(max_bytes=1000))
        reader = stream_of(struct.pack("<Q", 9), eof=False)
        with pytest.raises(FrameError, match="9 frames"):
            await read_message(reader, FrameLimits(max_frames=8))

    run(main())


def test_read_message_truncated_and_clean_eof() -> None:
    data = wire_bytes([b"abc"])

    async def main() -> None:
        assert await read_message(stream_of(b"")) is None
        for cut in (3, 8, 12, len(data) - 1):
            with pytest.raises(FrameError, match="middle of a message"):
                await read_message(stream_of(data[:cut]))
        assert as_bytes(await read_message(stream_of(data))) == [b"abc"]

    run(main())
