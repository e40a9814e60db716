"""Stage 3, serialize: encoding a ``TaskGraph`` into the frames of a graph message, and (on
the scheduler, first step of stage 5) decoding them back without unpickling anything.

``pickle`` (the legacy baseline, about 150 µs per task) is measured up to
``common.PICKLE_MAX_TASKS`` tasks; larger parameter sets are skipped (shown as n/a).
"""

from __future__ import annotations

from typing import Any

from scheduler.wire.encodings import decode_graph, encode_graph

from . import common

_PARAMS = (list(common.STAGE_WORKLOADS), list(common.SIZES), list(common.ENCODINGS))
_NAMES = ("workload", "n_tasks", "encoding")


def _measured(n: int, encoding: str) -> bool:
    return encoding != "pickle" or n <= common.PICKLE_MAX_TASKS


class EncodeGraph(common.GraphInputs):
    """Times ``encode_graph(graph, encoding)`` on the client: the frames of the graph message
    (header, key blocks, dependency arrays, function table, template or spec blobs), without
    writing them anywhere. ``track_bytes_per_task`` is the message size over the real task
    count."""

    params = _PARAMS
    param_names = _NAMES
    skip_params = common.pickle_skips(common.STAGE_WORKLOADS)
    timeout = common.LONG_TIMEOUT

    def setup(self, cache: Any, workload: str, n: int, encoding: str) -> None:
        common.skip_unless(_measured(n, encoding))
        self.graph, _ = common.load_once(self, cache[(workload, n)])

    def time_encode(self, cache: Any, workload: str, n: int, encoding: str) -> None:
        encode_graph(self.graph, encoding)

    def track_bytes_per_task(self, cache: Any, workload: str, n: int, encoding: str) -> float:
        frames = encode_graph(self.graph, encoding)
        return sum(len(f) for f in frames) / self.graph.n

    track_bytes_per_task.unit = "bytes/task"  # type: ignore[attr-defined]


class DecodeGraph(common.WireInputs):
    """Times ``decode_graph(frames)`` on the scheduler: reading the header and key blocks,
    checking the dependency arrays and building the validated ``TaskGraph`` whose templates
    and specs stay opaque bytes. The frames are ``bytes``, as read from a socket."""

    params = _PARAMS
    param_names = _NAMES
    skip_params = common.pickle_skips(common.STAGE_WORKLOADS)
    timeout = common.LONG_TIMEOUT

    def setup(self, cache: Any, workload: str, n: int, encoding: str) -> None:
        common.skip_unless(_measured(n, encoding))
        self.frames, _, _ = common.load_once(self, cache[(workload, n, encoding)])

    def time_decode(self, cache: Any, workload: str, n: int, encoding: str) -> None:
        decode_graph(self.frames)
