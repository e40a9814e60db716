"""TCP connections carrying framed messages, with a batched writer.

Rules: addresses look like ``tcp://HOST:PORT``; the default host is loopback. ``Comm.post``
never blocks: messages queue and one writer task sends everything queued in one
``writelines`` + ``drain``, which is what batches many small messages into few syscalls.
``Comm.send`` waits until the message is written (for request/response). Closing is
idempotent. Every wait that could hang takes a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..wire.frames import DEFAULT_LIMITS, BytesLike, FrameLimits, pack_frames, read_message
from .messages import Message, pack, unpack

__all__ = ["Comm", "CommClosedError", "connect", "parse_address", "serve"]

LOOPBACK = "127.0.0.1"
TOKEN_ENV = "STAGECOST_AUTH_TOKEN"
"""Environment variable holding the shared secret (instead of ``--auth-token``)."""


class CommClosedError(ConnectionError):
    """The peer went away (or this side closed the connection)."""


def token_ok(given: object, expected: str) -> bool:
    """Constant-time comparison of a peer's token with ours (any text, compared as UTF-8)."""
    import hmac

    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8", "surrogatepass"))


def parse_address(address: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` -> (host, port); raises ValueError with what was wrong."""
    if not isinstance(address, str) or not address.startswith("tcp://"):
        raise ValueError(f"an address looks like tcp://HOST:PORT, got {address!r}")
    rest = address[len("tcp://"):]
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"an address looks like tcp://HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def format_address(host: str, port: int) -> str:
    return f"tcp://{host}:{port}"


class Comm:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 limits: FrameLimits = DEFAULT_LIMITS) -> None:
        self.reader = reader
        self.writer = writer
        self.limits = limits
        self.closed = False
        self.bytes_sent = 0
        self.bytes_received = 0
        self._queue: list[BytesLike] = []
        self._wake = asyncio.Event()
        self._writer_task = asyncio.get_running_loop().create_task(self._write_loop())
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def post(self, frames: Sequence[Any]) -> int:
        """Queue a message; returns its size in bytes."""
        if self.closed:
            raise CommClosedError(f"connection to {self.peer} is closed")
        chunks = pack_frames(frames, self.limits)
        n = sum(len(c) for c in chunks)
        self._queue.extend(chunks)
        self.bytes_sent += n
        self._wake.set()
        return n

    def send_now(self) -> None:
        """Hand what is queued to the transport now (it sends what the socket takes at
        once) instead of on the writer task's next turn, for a caller that has more work to
        do before it next yields to the loop."""
        if self._queue and not self.closed:
            chunks, self._queue = self._queue, []
            self.writer.writelines(chunks)

    def post_msg(self, op: str, fields: dict[str, Any] | None = None,
                 arrays: dict[str, Any] | None = None, blobs: Sequence[BytesLike] = ()) -> int:
        return self.post(pack(op, fields, arrays, blobs))

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._queue:
                    chunks, self._queue = self._queue, []
                    self.writer.writelines(chunks)
                    await self.writer.drain()
                if self.closed:
                    return
        except (ConnectionError, OSError):
            self._mark_closed()
        except asyncio.CancelledError:
            return

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far is handed to the socket."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._queue and not self.closed:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"could not send to {self.peer} within {timeout} s")
            await asyncio.sleep(0.001)
        if not self.closed:
            await asyncio.wait_for(self.writer.drain(), timeout)

    async def send(self, frames: Sequence[Any], timeout: float = 30.0) -> int:
        n = self.post(frames)
        await self.flush(timeout)
        return n

    async def recv_frames(self) -> list[memoryview]:
        if self.closed:
            raise CommClosedError(f"connection to {self.peer} is closed")
        try:
            frames = await read_message(self.reader, self.limits)
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
            self._mark_closed()
            raise CommClosedError(f"connection to {self.peer} lost: {e}") from None
        if frames is None:
            self._mark_closed()
            raise CommClosedError(f"{self.peer} closed the connection")
        self.bytes_received += sum(len(f) for f in frames)
        return frames

    async def recv(self) -> Message:
        return unpack(await self.recv_frames())

    async def request(self, op: str, fields: dict[str, Any] | None = None,
                      arrays: dict[str, Any] | None = None, blobs: Sequence[BytesLike] = (),
                      timeout: float = 60.0) -> Message:
        """Send one message and wait for the next message (the reply) on this connection."""
        self.post_msg(op, fields, arrays, blobs)
        return await asyncio.wait_for(self.recv(), timeout)

    def _mark_closed(self) -> None:
        self.closed = True
        self._wake.set()

    async def close(self) -> None:
        if self.closed and self.writer.is_closing():
            return
        with contextlib.suppress(Exception):
            if not self.closed:
                await asyncio.wait_for(self.flush(), 5)
        self._mark_closed()
        self._writer_task.cancel()
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)

    def abort(self) -> None:
        self._mark_closed()
        self._writer_task.cancel()
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


async def connect(address: str, timeout: float = 10.0,
                  limits: FrameLimits = DEFAULT_LIMITS) -> Comm:
    host, port = parse_address(address)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=2 ** 20), timeout)
    except (TimeoutError, OSError) as e:
        raise CommClosedError(f"could not connect to {address}: {e}") from None
    return Comm(reader, writer, limits)


async def serve(handler: Callable[[Comm], Awaitable[None]], host: str = LOOPBACK,
                port: int = 0, limits: FrameLimits = DEFAULT_LIMITS
                ) -> tuple[asyncio.AbstractServer, str]:
    """Start a TCP server calling ``handler(comm)`` per connection; returns (server, address)."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        comm = Comm(reader, writer, limits)
        try:
            await handler(comm)
        except asyncio.CancelledError:
            pass  # the server is shutting down; the connection just ends
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await comm.close()

    server = await asyncio.start_server(on_connect, host, port, limit=2 ** 20)
    sock = server.sockets[0].getsockname()
    shown = host if host not in ("0.0.0.0", "", "::") else LOOPBACK
    return server, format_address(shown, sock[1])
