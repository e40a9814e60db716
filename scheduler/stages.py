"""The eight pipeline stages and the span recorder that measures them.

Rules of this module:

- A span covers a batch or a message, never a single task in a hot loop. Counters (tasks,
  bytes, messages) say how much work the span covered.
- Clock: ``time.perf_counter_ns``. On one host every process shares it (it is
  CLOCK_MONOTONIC on Linux), so spans of different processes can be put on one timeline. Across
  hosts the runtime shifts a peer's spans by the offset it estimated at connect time.
- A recorder is an object passed to whoever records; there is no global recorder. A disabled
  recorder hands out one shared no-op span, so recording off costs one attribute test and a
  method call per batch.
- Recorded spans are plain tuples (see ``SpanRow``) so that they can be shipped with msgpack
  without conversion, then turned into a table by the harness.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from types import TracebackType
from typing import NamedTuple

__all__ = ["NULL_RECORDER", "SpanRecorder", "SpanRow", "Stage", "shift_rows"]


class Stage(enum.IntEnum):
    """The eight stages between ``compute()`` and the last result, in pipeline order."""

    generate = 1
    optimize = 2
    serialize = 3
    communicate = 4
    update_graph = 5
    schedule = 6
    dispatch = 7
    execute = 8


class SpanRow(NamedTuple):
    """One recorded span. ``stage`` is the ``Stage`` value (an int, so rows pack as msgpack)."""

    stage: int
    role: str
    start_ns: int
    end_ns: int
    tasks: int
    nbytes: int
    messages: int


class _OpenSpan:
    """A span being recorded; counters may be set inside the ``with`` block."""

    __slots__ = ("_recorder", "_stage", "_start", "tasks", "nbytes", "messages")

    def __init__(self, recorder: SpanRecorder, stage: Stage, tasks: int, nbytes: int,
                 messages: int) -> None:
        self._recorder = recorder
        self._stage = stage
        self.tasks = tasks
        self.nbytes = nbytes
        self.messages = messages
        self._start = 0

    def __enter__(self) -> _OpenSpan:
        self._start = time.perf_counter_ns()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        end = time.perf_counter_ns()
        rec = self._recorder
        rec._rows.append(SpanRow(int(self._stage), rec.role, self._start, end,
                                 self.tasks, self.nbytes, self.messages))


class _NullSpan:
    """The span handed out when recording is off: accepts counters and forgets them."""

    __slots__ = ()

    def __enter__(self) -> _NullSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __setattr__(self, name: str, value: object) -> None:
        return None

    # Reading a counter on the null span gives 0, so code may do ``s.tasks += n``.
    tasks = nbytes = messages = 0


_NULL_SPAN = _NullSpan()


class SpanRecorder:
    """Collects spans for one process role (``client``, ``scheduler``, ``worker-0``, ...).

    ``span(stage, ...)`` is a context manager; ``record(...)`` adds a span whose times the caller
    measured itself (for example a message's first byte written and last byte read). Both do
    nothing when ``enabled`` is false. ``drain()`` returns the rows recorded so far and forgets
    them, which is how a process ships its spans at the end of a run.
    """

    __slots__ = ("role", "enabled", "_rows")

    def __init__(self, role: str, enabled: bool = True) -> None:
        if not isinstance(role, str) or not role:
            raise ValueError(f"a recorder needs a non-empty role name, got {role!r}")
        self.role = role
        self.enabled = enabled
        self._rows: list[SpanRow] = []

    def span(self, stage: Stage, tasks: int = 0, nbytes: int = 0,
             messages: int = 0) -> _OpenSpan | _NullSpan:
        if not self.enabled:
            return _NULL_SPAN
        return _OpenSpan(self, stage, tasks, nbytes, messages)

    def record(self, stage: Stage, start_ns: int, end_ns: int, tasks: int = 0,
               nbytes: int = 0, messages: int = 0) -> None:
        if self.enabled:
            if end_ns < start_ns:
                raise ValueError(f"span for {Stage(stage).name} ends before it starts "
                                 f"({start_ns} > {end_ns})")
            self._rows.append(SpanRow(int(stage), self.role, start_ns, end_ns,
                                      tasks, nbytes, messages))

    def extend(self, rows: Iterable[Iterable[object]]) -> None:
        """Adopt rows recorded elsewhere (another process's drained spans)."""
        for row in rows:
            self._rows.append(SpanRow(*row))  # type: ignore[arg-type]

    def drain(self) -> list[SpanRow]:
        rows, self._rows = self._rows, []
        return rows

    def rows(self) -> list[SpanRow]:
        """The rows recorded so far, kept (a copy of the list)."""
        return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"SpanRecorder(role={self.role!r}, {state}, {len(self._rows)} spans)"


NULL_RECORDER = SpanRecorder("off", enabled=False)
"""A recorder that never records; the default wherever a recorder is optional."""


def shift_rows(rows: Iterable[Iterable[object]], offset_ns: int) -> list[SpanRow]:
    """Rows with ``offset_ns`` added to both times (a peer's clock mapped onto ours)."""
    out = []
    for row in rows:
        r = SpanRow(*row)  # type: ignore[arg-type]
        out.append(r._replace(start_ns=r.start_ns + offset_ns, end_ns=r.end_ns + offset_ns))
    return out
