"""Stages 6 and 7, schedule and dispatch, on a scheduler state halfway through a run.

The state comes from ``common.MidRunInputs``: a graph of the workload submitted to a state
with 2 workers, then driven (pure state machine, no I/O) as if the workers took turns
reporting their oldest tasks finished, up to 2,048 per report as a worker does, until half
the tasks finished. The next report that makes the scheduler send tasks is prepared but not
handled.

- ``Schedule``: the scheduler handling that report and placing what became ready;
  ``PlaceReady``: the placement alone.
- ``ComputeMessage``: the scheduler encoding the largest batch of tasks that report led to
  (what the server sends to one worker in one message).
- ``ComputeEvent``: a worker decoding that message into its ``ComputeTasksEvent``.
"""

from __future__ import annotations

from typing import Any

from scheduler.runtime.dispatch import GraphCatalog, compute_message, graph_def_message
from scheduler.runtime.messages import unpack

from . import common

_PARAMS = (list(common.STAGE_WORKLOADS), list(common.SIZES))
_NAMES = ("workload", "n_tasks")


class Schedule(common.MidRunInputs):
    """Times ``state.handle(report, schedule=False)`` then ``state.schedule()``, as the
    scheduler server does for a report of finished tasks: their bookkeeping (dependents made
    ready, results no longer needed released, outputs noted) and the placement of the tasks
    that became ready (by data locality; queued root-like tasks handed out to free workers).
    The state changes: every sample loads a fresh one (``number = 1``).
    ``track_report_tasks``: tasks in the report, to turn times into µs per task."""

    params = _PARAMS
    param_names = _NAMES
    number = 1
    repeat = (1, 5, 30.0)
    warmup_time = 0.0
    timeout = common.LONG_TIMEOUT

    def setup(self, cache: Any, workload: str, n: int) -> None:
        self.state, self.report, _ = common.load(cache[(workload, n)])

    def time_finished_and_schedule(self, cache: Any, workload: str, n: int) -> None:
        self.state.handle(self.report, schedule=False)
        self.state.schedule()

    def track_report_tasks(self, cache: Any, workload: str, n: int) -> int:
        return len(self.report.ids)

    track_report_tasks.unit = "tasks"  # type: ignore[attr-defined]


class PlaceReady(common.MidRunInputs):
    """Times ``state.schedule()`` alone: placing the tasks that the report (handled in
    ``setup`` with ``schedule=False``) made ready, and topping up the workers from the queue
    of root-like tasks; this is the ``schedule`` stage of the server's spans. The state
    changes: every sample loads a fresh one (``number = 1``). ``track_pending_tasks``: ready
    tasks waiting for placement when the timed call starts."""

    params = _PARAMS
    param_names = _NAMES
    number = 1
    repeat = (1, 5, 30.0)
    warmup_time = 0.0
    timeout = common.LONG_TIMEOUT

    def setup(self, cache: Any, workload: str, n: int) -> None:
        self.state, report, _ = common.load(cache[(workload, n)])
        self.state.handle(report, schedule=False)

    def time_schedule(self, cache: Any, workload: str, n: int) -> None:
        self.state.schedule()

    def track_pending_tasks(self, cache: Any, workload: str, n: int) -> int:
        return int(self.state.pending_placement)

    track_pending_tasks.unit = "tasks"  # type: ignore[attr-defined]


def _after_report(bench: Any, path: str) -> tuple[Any, Any, bytes]:
    """(state after the report, the batch it sent, function table), once per process."""
    memo = getattr(bench, "_stagecost_batch", None)
    if memo is None or memo[0] != path:
        state, report, functions = common.load(path)
        ins = state.handle(report, schedule=False)
        ins += state.schedule()
        memo = (path, (state, common.dispatch_batch(ins), functions))
        bench._stagecost_batch = memo
    return memo[1]


class ComputeMessage(common.MidRunInputs):
    """Times ``compute_message(state, batch)`` on the scheduler: the frames of one "compute"
    message (task ids, priorities, group and position of each task, dependency ids and the
    workers holding them, as arrays). The state is only read. ``track_batch_tasks``: tasks
    in the batch, to turn times into µs per task."""

    params = _PARAMS
    param_names = _NAMES
    timeout = common.LONG_TIMEOUT

    def setup(self, cache: Any, workload: str, n: int) -> None:
        self.state, self.batch, _ = _after_report(self, cache[(workload, n)])

    def time_compute_message(self, cache: Any, workload: str, n: int) -> None:
        compute_message(self.state, self.batch)

    def track_batch_tasks(self, cache: Any, workload: str, n: int) -> int:
        return len(self.batch.ids)

    track_batch_tasks.unit = "tasks"  # type: ignore[attr-defined]


class ComputeEvent(common.MidRunInputs):
    """Times ``GraphCatalog.compute_event(message)`` on a worker: turning a received "compute"
    message (``bytes`` frames, unpacked) into the worker's ``ComputeTasksEvent`` (a compiled
    runner and block index per task). The catalog already holds the graph's definition
    (templates unpickled and compiled once, in ``setup``); the message is only read."""

    params = _PARAMS
    param_names = _NAMES
    timeout = common.LONG_TIMEOUT

    def setup(self, cache: Any, workload: str, n: int) -> None:
        path = cache[(workload, n)]
        if getattr(self, "_stagecost_worker_for", None) != path:
            state, batch, functions = _after_report(self, path)
            seg = state.segments[batch.segment]
            self.catalog = GraphCatalog()
            self.catalog.define(unpack(_received(graph_def_message(seg, functions))))
            self.message = unpack(_received(compute_message(state, batch)))
            self._stagecost_worker_for = path

    def time_compute_event(self, cache: Any, workload: str, n: int) -> None:
        self.catalog.compute_event(self.message, "bench")


def _received(frames: list[Any]) -> list[bytes]:
    """Frames as a worker reads them from its socket."""
    return [bytes(f) for f in frames]
