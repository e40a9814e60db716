"""What the scheduler's instructions ask of each worker, grouped: one batch per message.

Rules: pure (no I/O). ``route`` reads one ``handle()``'s instructions once and merges, per
worker, the tasks to run of each graph, the results to free and the tasks to cancel, each
with the stimulus id of the first instruction merged (the cause the message names).
Instructions for clients are kept in order, untouched. Whoever sends the messages (the
scheduler server, the in-process cluster, the benchmarks) sends, per worker: cancels,
then task batches, then releases, as the server always has.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .events import CancelTasks, Instruction, ReleaseData, SendTasks

__all__ = ["ANY_ASSIGNMENT", "Routed", "route"]

ANY_ASSIGNMENT = np.iinfo(np.int32).max
"""The assignment number of a release that frees a result whatever its assignment."""


@dataclass
class Routed:
    sends: dict[tuple[int, int], SendTasks] = field(default_factory=dict)
    """(worker, segment) -> one ``SendTasks`` with every id sent there, in order."""
    releases: dict[int, ReleaseData] = field(default_factory=dict)
    """worker -> one ``ReleaseData`` whose ``seqs`` are always set."""
    cancels: dict[int, CancelTasks] = field(default_factory=dict)
    """worker -> one ``CancelTasks``."""
    others: list[Instruction] = field(default_factory=list)
    """Every other instruction (for clients), in order."""

    @property
    def n_sent(self) -> int:
        return sum(len(s.ids) for s in self.sends.values())


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def route(instructions: Iterable[Instruction]) -> Routed:
    sends: dict[tuple[int, int], tuple[str, list[np.ndarray]]] = {}
    releases: dict[int, tuple[str, list[np.ndarray], list[np.ndarray]]] = {}
    cancels: dict[int, tuple[str, list[np.ndarray]]] = {}
    out = Routed()
    for ins in instructions:
        if isinstance(ins, SendTasks):
            sends.setdefault((ins.worker, ins.segment), (ins.stimulus_id, []))[1].append(ins.ids)
        elif isinstance(ins, ReleaseData):
            _, ids, seqs = releases.setdefault(ins.worker, (ins.stimulus_id, [], []))
            ids.append(ins.ids)
            seqs.append(np.full(len(ins.ids), ANY_ASSIGNMENT, dtype=np.int32)
                        if ins.seqs is None else ins.seqs)
        elif isinstance(ins, CancelTasks):
            cancels.setdefault(ins.worker, (ins.stimulus_id, []))[1].append(ins.ids)
        else:
            out.others.append(ins)
    out.sends = {(w, sid): SendTasks(stimulus_id=stim, worker=w, segment=sid, ids=_cat(parts))
                 for (w, sid), (stim, parts) in sends.items()}
    out.releases = {w: ReleaseData(stimulus_id=stim, worker=w, ids=_cat(ids), seqs=_cat(seqs))
                    for w, (stim, ids, seqs) in releases.items()}
    out.cancels = {w: CancelTasks(stimulus_id=stim, worker=w, ids=_cat(parts))
                   for w, (stim, parts) in cancels.items()}
    return out
