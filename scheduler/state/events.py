"""Events (facts, past tense) that enter the state machines and instructions they emit.

Rules: events and instructions are frozen, slotted, keyword-only dataclasses carrying a
``stimulus_id`` so every instruction traces back to its cause. They hold ids and numpy
arrays, never sockets; the worker's carry the runners its runtime prepared, callables the
state machine hands on and never calls. Batches travel as arrays: one event per message,
not per task. Time, when it matters, is a field (``time_ns``) set by the runtime. The
scheduler's events and instructions come first, then the worker's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..graph.lowgraph import TaskGraph

__all__ = [
    "ClientLostEvent", "ClientReleasedKeysEvent", "DataLostEvent", "GraphAccepted",
    "GraphForgotten", "GraphRejected",
    "GraphSubmittedEvent", "Instruction", "KeysErred", "KeysInMemory", "ReleaseData",
    "SchedulerEvent", "SendTasks", "CancelTasks", "TaskErredEvent", "TasksFinishedEvent",
    "WorkerAddedEvent", "WorkerLostEvent",
    # the worker's
    "CancelTasksEvent", "ComputeTasksEvent", "DataFetchedEvent", "Execute", "ExecutedEvent",
    "FetchData", "ForgetGraphEvent", "ReleaseDataEvent", "ReportDataLost", "ReportErred",
    "ReportFinished", "WorkerEvent", "WorkerInstruction",
]

_DC = {"frozen": True, "slots": True, "kw_only": True}


@dataclass(**_DC)
class SchedulerEvent:
    stimulus_id: str


@dataclass(**_DC)
class WorkerAddedEvent(SchedulerEvent):
    worker: int
    nthreads: int


@dataclass(**_DC)
class WorkerLostEvent(SchedulerEvent):
    worker: int


@dataclass(**_DC)
class GraphSubmittedEvent(SchedulerEvent):
    """A client submitted ``graph`` (specs may be opaque bytes) and wants the tasks
    ``outputs`` (ids in ``graph``; ids >= ``graph.n`` are its external keys, which must name
    results the cluster still holds)."""

    client: str
    graph_id: str
    graph: TaskGraph
    outputs: np.ndarray


@dataclass(**_DC)
class TasksFinishedEvent(SchedulerEvent):
    """``worker`` holds the results of ``ids``; ``seqs[i]`` is the number of the assignment
    of ``ids[i]`` it answers (see ``Segment.seq``; ``None``: the current ones)."""

    worker: int
    ids: np.ndarray
    nbytes: np.ndarray | None = None
    seqs: np.ndarray | None = None


@dataclass(**_DC)
class TaskErredEvent(SchedulerEvent):
    """Task ``id`` raised on ``worker``. ``error`` is opaque bytes for the client (the
    scheduler never loads it); ``text`` is a printable summary."""

    worker: int
    id: int
    error: bytes
    text: str


@dataclass(**_DC)
class DataLostEvent(SchedulerEvent):
    """``worker`` could not obtain the dependencies ``missing`` for task ``id``."""

    worker: int
    id: int
    missing: np.ndarray


@dataclass(**_DC)
class ClientReleasedKeysEvent(SchedulerEvent):
    client: str
    graph_id: str


@dataclass(**_DC)
class ClientLostEvent(SchedulerEvent):
    client: str


@dataclass(**_DC)
class Instruction:
    stimulus_id: str


@dataclass(**_DC)
class SendTasks(Instruction):
    """Run tasks ``ids`` of segment ``segment`` (global ids, priority order) on ``worker``.
    The message carries each task's assignment number (``Segment.seq``) with it."""

    worker: int
    segment: int
    ids: np.ndarray


@dataclass(**_DC)
class CancelTasks(Instruction):
    worker: int
    ids: np.ndarray


@dataclass(**_DC)
class ReleaseData(Instruction):
    """Free the results ``ids`` on ``worker``: each one unless the worker was sent that task
    again after assignment ``seqs[i]`` (``None``: whatever the assignment)."""

    worker: int
    ids: np.ndarray
    seqs: np.ndarray | None = None


@dataclass(**_DC)
class KeysInMemory(Instruction):
    """Outputs of ``graph_id`` now held: ``ids[i]`` is on worker ``workers[i]``."""

    client: str
    graph_id: str
    ids: np.ndarray
    workers: np.ndarray
    done: bool = False


@dataclass(**_DC)
class KeysErred(Instruction):
    """Task ``id`` failed; ``ids`` are the outputs of ``graph_id`` that can no longer be
    computed because of it."""

    client: str
    graph_id: str
    id: int
    key: Any
    error: bytes
    text: str
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass(**_DC)
class GraphRejected(Instruction):
    client: str
    graph_id: str
    reason: str


@dataclass(**_DC)
class GraphAccepted(Instruction):
    """A graph was accepted as segment ``segment``: its tasks have global ids ``base ..
    base + n - 1``. ``gids``: the live global ids of the requested outputs when some are
    tasks of other live graphs (shared keys), else ``None`` (they are ``base + id``)."""

    client: str
    graph_id: str
    segment: int
    base: int
    n: int
    gids: np.ndarray | None = None


@dataclass(**_DC)
class GraphForgotten(Instruction):
    """Segment ``segment`` is gone: nothing of it runs or is held any more."""

    segment: int


# --- the worker's state machine (scheduler/state/worker.py) ---------------------------------

@dataclass(**_DC)
class WorkerEvent:
    stimulus_id: str


@dataclass(**_DC)
class ComputeTasksEvent(WorkerEvent):
    """Run tasks ``ids``: ``runners[i](args, indices[i])`` where ``args`` are the values of
    ``dep_ids[dep_ptr[i]:dep_ptr[i+1]]``, held by workers ``dep_holders`` (same layout)."""

    ids: np.ndarray
    priorities: np.ndarray
    runners: list[Callable[[list, tuple], Any]]
    indices: list[tuple]
    dep_ptr: np.ndarray
    dep_ids: np.ndarray
    dep_holders: np.ndarray
    seqs: np.ndarray | None = None
    """Number of each task's assignment (``None``: all first ones)."""


@dataclass(**_DC)
class ExecutedEvent(WorkerEvent):
    """A batch ran: ``results`` ``{id: value}``; ``errors`` ``[(id, error blob, text)]``.
    With ``partial``, these are the tasks a still-running batch has finished so far (a batch
    that runs long reports as it goes); its last event has ``partial=False``."""

    results: dict[int, Any]
    errors: list[tuple[int, bytes, str]] = field(default_factory=list)
    partial: bool = False
    next_batch: int | None = None  # most tasks for the next batch (the runtime's pace)


@dataclass(**_DC)
class DataFetchedEvent(WorkerEvent):
    """A peer answered a fetch: ``values`` arrived; ``missing`` ids it did not have."""

    peer: int
    values: dict[int, Any]
    missing: list[int] = field(default_factory=list)
    unserializable: dict[int, str] = field(default_factory=dict)
    """Results the peer holds but could not serialise: ``{id: reason}``; the tasks that need
    them fail with that reason (recomputing would fail the same way)."""


@dataclass(**_DC)
class ReleaseDataEvent(WorkerEvent):
    """Free results ``ids``, each unless a newer assignment than ``seqs[i]`` came here
    (``None``: whatever the assignment)."""

    ids: np.ndarray
    seqs: np.ndarray | None = None


@dataclass(**_DC)
class CancelTasksEvent(WorkerEvent):
    ids: np.ndarray


@dataclass(**_DC)
class ForgetGraphEvent(WorkerEvent):
    """The scheduler dropped the graph of task ids ``base .. base + n - 1``: results of it
    still here (ones whose report the scheduler did not accept) are dropped."""

    base: int
    n: int


@dataclass(**_DC)
class WorkerInstruction:
    stimulus_id: str


@dataclass(**_DC)
class Execute(WorkerInstruction):
    """Run ``tasks``: ``[(id, runner, args, index)]``, in order."""

    tasks: list[tuple[int, Callable[[list, tuple], Any], list, tuple]]


@dataclass(**_DC)
class FetchData(WorkerInstruction):
    peer: int
    ids: list[int]


@dataclass(**_DC)
class ReportFinished(WorkerInstruction):
    """Results of ``ids`` are here, answering assignments ``seqs`` (``None``: all 1)."""

    ids: list[int]
    seqs: list[int] | None = None


@dataclass(**_DC)
class ReportErred(WorkerInstruction):
    """Task ``id`` failed. ``error`` is the pickled exception, or empty when the failure was
    found here (then the runtime builds one from ``text``)."""

    id: int
    error: bytes
    text: str


@dataclass(**_DC)
class ReportDataLost(WorkerInstruction):
    id: int
    missing: list[int]
