"""Stage 7, dispatch: turning ``SendTasks`` into messages, and messages back into work.

Scheduler side: ``graph_def_message`` introduces a graph to a worker once (its function table,
its groups' key shapes and template blobs); ``compute_message`` carries a batch of tasks as
arrays (ids, priorities, group and position of each task, dependency ids and the workers
holding them, the number of each task's assignment) plus the opaque spec blob of each task of an explicit group.

Worker side: ``GraphCatalog`` keeps what graph definitions said and turns a compute message
into a ``ComputeTasksEvent``, compiling each template once per group.

Rules: no per-task Python on the scheduler side (numpy only); blobs stay opaque there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..graph.keys import RegularKeys
from ..graph.task import IndexSlot, compile_spec, placeholders
from ..state.events import ComputeTasksEvent, SendTasks
from ..state.scheduler import SchedulerState
from ..state.segment import Segment, csr_gather
from ..wire.encodings import SpecLoader
from ..wire.frames import WireError
from .messages import Message, pack

__all__ = ["MAX_TASKS_PER_MESSAGE", "GraphCatalog", "compute_message", "compute_messages",
           "graph_def_message"]

MAX_TASKS_PER_MESSAGE = 32_768
"""Tasks in one compute message at most: a task of an explicit group brings a frame of its
own (its spec), and a message holds at most ``FrameLimits.max_frames`` (65,536) frames."""


def graph_def_message(seg: Segment, functions: bytes) -> list[Any]:
    groups = []
    blobs: list[Any] = [functions]
    for g in seg.graph.groups:
        shape = list(g.keys.shape) if isinstance(g.keys, RegularKeys) else None
        if g.specs is None:
            groups.append([shape, len(blobs)])
            blobs.append(g.template)
        else:
            groups.append([shape, -1])
    return pack("graph-def", {"sid": seg.sid, "base": seg.base, "n": seg.n, "groups": groups},
                None, blobs)


def compute_message(state: SchedulerState, ins: SendTasks) -> list[Any]:
    seg = state.segments[ins.segment]
    local = ins.ids - seg.base
    offsets = seg.graph.offsets
    group = np.searchsorted(offsets, local, side="right") - 1
    pos = local - offsets[group]
    deps, counts = csr_gather(seg.dep_ptr, seg.dep_idx, local)
    dep_ptr = np.zeros(len(local) + 1, dtype=np.int64)
    np.cumsum(counts, out=dep_ptr[1:])
    holders = state.holders(deps)
    blobs: list[Any] = []
    spec_at = None
    explicit = [gi for gi, g in enumerate(seg.graph.groups) if g.specs is not None]
    if explicit:
        spec_at = np.full(len(local), -1, dtype=np.int32)
        for gi in explicit:
            rows = np.flatnonzero(group == gi)
            if len(rows):
                specs = seg.graph.groups[gi].specs
                spec_at[rows] = np.arange(len(blobs), len(blobs) + len(rows))
                blobs.extend(specs[p] for p in pos[rows].tolist())  # type: ignore[index]
    arrays = {"ids": ins.ids, "prio": seg.priority[local], "group": group.astype(np.int32),
              "pos": pos, "dep_ptr": dep_ptr, "deps": deps, "holders": holders,
              "seq": seg.seq[local]}
    if spec_at is not None:
        arrays["spec_at"] = spec_at
    fields = {"sid": seg.sid, "stim": ins.stimulus_id} if ins.stimulus_id else {"sid": seg.sid}
    return pack("compute", fields, arrays, blobs)


def compute_messages(state: SchedulerState, ins: SendTasks) -> Iterator[list[Any]]:
    """``compute_message`` for ``ins`` in batches of at most ``MAX_TASKS_PER_MESSAGE``
    tasks (one message for all but the largest batches)."""
    ids = ins.ids
    for start in range(0, len(ids), MAX_TASKS_PER_MESSAGE):
        part = ids if len(ids) <= MAX_TASKS_PER_MESSAGE else \
            ids[start:start + MAX_TASKS_PER_MESSAGE]
        yield compute_message(state, SendTasks(stimulus_id=ins.stimulus_id, worker=ins.worker,
                                               segment=ins.segment, ids=part))


class _Group:
    __slots__ = ("keys", "runner", "needs_index")

    def __init__(self, keys: RegularKeys | None, runner: Any, needs_index: bool) -> None:
        self.keys = keys
        self.runner = runner
        self.needs_index = needs_index


class GraphCatalog:
    """Worker side: graph definitions received, by segment id."""

    def __init__(self) -> None:
        self._graphs: dict[int, tuple[SpecLoader, list[_Group]]] = {}

    def define(self, msg: Message) -> None:
        sid = msg["sid"]
        loader = SpecLoader(msg.blobs[0] if msg.blobs else b"")
        groups = []
        for shape, blob_no in msg["groups"]:
            keys = RegularKeys("g", shape) if shape is not None else None
            if blob_no >= 0:
                template = loader.load(msg.blobs[blob_no])
                needs = any(type(p) is IndexSlot for p in placeholders(template))
                groups.append(_Group(keys, compile_spec(template), needs))
            else:
                groups.append(_Group(keys, None, True))
        self._graphs[sid] = (loader, groups)

    def forget(self, sid: int) -> None:
        self._graphs.pop(sid, None)

    def __contains__(self, sid: int) -> bool:
        return sid in self._graphs

    def compute_event(self, msg: Message, stimulus_id: str) -> ComputeTasksEvent:
        sid = msg["sid"]
        if sid not in self._graphs:
            raise WireError(f"tasks of graph {sid} arrived before its definition")
        loader, groups = self._graphs[sid]
        group_arr = msg.array("group")
        pos_arr = msg.array("pos")
        spec_at = msg.arrays.get("spec_at")
        n = len(group_arr)
        runners: list[Any] = [None] * n
        indices: list[tuple] = [()] * n
        # tasks come in runs of one group: handle each run with numpy
        starts = np.flatnonzero(np.diff(group_arr, prepend=-1)) if n else np.zeros(0, int)
        ends = np.append(starts[1:], n)
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            grp = groups[int(group_arr[a])]
            if grp.runner is not None:
                runners[a:b] = [grp.runner] * (b - a)
                if grp.needs_index and grp.keys is not None:
                    indices[a:b] = grp.keys.indices(pos_arr[a:b])
            else:
                if spec_at is None:
                    raise WireError("tasks of an explicit group arrived without their specs")
                runners[a:b] = [_LazySpec(loader, msg.blobs[j])
                                for j in spec_at[a:b].tolist()]
        return ComputeTasksEvent(stimulus_id=stimulus_id, ids=msg.array("ids"),
                                 priorities=msg.array("prio"), runners=runners,
                                 indices=indices, dep_ptr=msg.array("dep_ptr"),
                                 dep_ids=msg.array("deps"), dep_holders=msg.array("holders"),
                                 seqs=msg.arrays.get("seq"))


class _LazySpec:
    """A task of an explicit group: loaded and compiled on the thread that runs it, so a
    spec that cannot be loaded fails that task (with its error) rather than the batch."""

    __slots__ = ("loader", "blob")

    def __init__(self, loader: SpecLoader, blob: Any) -> None:
        self.loader = loader
        self.blob = bytes(blob)

    def __call__(self, args: list, index: tuple) -> Any:
        return compile_spec(self.loader.load(self.blob))(args, index)
