"""The backend interface: what the runner asks of every system it measures.

Rules: a backend measures one repeat at a time with ``run_once`` and returns a
``Measurement``: with stage recording on (``record``) or off, as ``set_record`` last said
(``options.record`` at first); a backend started with recording off keeps it off. Off means
nothing of the recording is installed, so that the difference measures what recording costs.
``run_once`` returns the spans it recorded (times in ns on the runner's clock), the times of
``compute()`` and of the last result, and how many tasks ran. It declares the stages it has
(``applicable``); the runner reports the others as not applicable, never as zero. Where a
backend cannot tell two stages apart it records the time under the first one and says so in
``merged`` (``{"schedule+dispatch": why}``); it never invents a split.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from harness.workloads import Workload
from scheduler.stages import SpanRow, Stage

__all__ = ["Backend", "BackendError", "Measurement", "RunOptions"]


class BackendError(RuntimeError):
    """A backend could not run (missing package, cluster failed to start, ...)."""


@dataclass(frozen=True)
class RunOptions:
    """Everything that shapes one configuration's runs (recorded in meta.json)."""

    workers: int = 2
    threads: int = 1
    encoding: str = "compact"
    fuse: bool = False
    record: bool = True
    scheduler_address: str | None = None
    timeout: float | None = None
    dask_config: tuple[str, ...] = ()   # "key=value" settings for the clusters Dask backends start


@dataclass
class Measurement:
    spans: list[SpanRow]
    t0_ns: int
    t_end_ns: int
    tasks_run: int | None
    nbytes: int | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)
    """Peak resident bytes of this run by role (``scheduler``, ``worker-0``, ...); the runner
    adds ``client`` (its own process) when the backend has not."""


class Backend(ABC):
    name: str = ""
    applicable: frozenset[Stage] = frozenset(Stage)
    merged: dict[str, str] = {}  # noqa: RUF012 - read-only class default

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.record = options.record

    def set_record(self, on: bool) -> None:
        """Record stage spans in the runs from now on, or not (between runs only). A backend
        whose options turned recording off stays off: ``ValueError``."""
        if on and not self.options.record:
            raise ValueError(f"{self.name} was started with recording off")
        if on != self.record:
            self._switch_record(on)
        self.record = on

    def _switch_record(self, on: bool) -> None:  # noqa: B027 - optional hook
        """Turn recording on or off where the backend's processes record it; backends that
        read ``self.record`` at each run need nothing more."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start what the runs share (a cluster); called once before the first repeat."""

    @abstractmethod
    def run_once(self, workload: Workload, progress: Any = None) -> Measurement:
        """Build, optimise, submit and compute ``workload`` once; return what was measured.

        ``progress``, if given, is called with (outputs in memory, outputs) as they land;
        where the backend can count finished tasks it also calls ``progress.tasks(finished,
        tasks)`` if ``progress`` has that method."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what ``start`` acquired."""

    def pids(self) -> dict[str, int]:
        """Process ids by role (``scheduler``, ``worker-0``, ...) for profiling."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def __enter__(self) -> Backend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
