"""Events (facts, past tense) that enter the state machines and instructions they emit.

Rules: events and instructions are frozen, slotted, keyword-only dataclasses carrying a
``stimulus_id`` so every instruction traces back to its cause. They hold ids and numpy
arrays, never sockets or callbacks. Batches travel as arrays: one event per message, not
per task. Time, when it matters, is a field (``time_ns``) set by the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..graph.lowgraph import TaskGraph

__all__ = [
    "ClientLostEvent", "ClientReleasedKeysEvent", "DataLostEvent", "GraphRejected",
    "GraphSubmittedEvent", "Instruction", "KeysErred", "KeysInMemory", "ReleaseData",
    "SchedulerEvent", "SendTasks", "CancelTasks", "TaskErredEvent", "TasksFinishedEvent",
    "WorkerAddedEvent", "WorkerLostEvent",
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
