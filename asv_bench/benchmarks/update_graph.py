"""Stage 5, update_graph: the scheduler's state machine taking in a decoded graph.

What is measured is ``SchedulerState.handle(GraphSubmittedEvent(...), schedule=False)``, as
the scheduler server calls it: building the graph's segment (dependencies, dependents),
priorities, and the first transitions (waiting / ready). Decoding the message is measured by
``serialization.DecodeGraph``; placing the ready tasks by ``dispatch.Schedule``.

``handle`` consumes its state (a graph id is accepted once), so every sample gets a fresh
state with 2 workers and a freshly decoded graph from ``setup`` (``number = 1``).
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

from scheduler.wire.encodings import decode_graph

from . import common


class UpdateGraph(common.WireInputs):
    """Times ``state.handle(GraphSubmittedEvent(graph, outputs), schedule=False)`` on a new
    ``SchedulerState`` with 2 workers, the graph decoded from the workload's ``encoding``
    (``pickle`` gives explicit groups, ``compact`` regular ones).

    - ``peakmem_update_graph``: the benchmark process's peak resident memory after the same
      call; it includes the interpreter, the input frames and the decoded graph, so compare
      it across commits rather than read it as the scheduler's memory.
    - ``track_us_per_task``: the same call timed once, over the real task count.
    - ``track_state_bytes_per_task``: memory the state keeps after the call (traced with
      ``tracemalloc``: Python objects and numpy buffers) over the real task count; the
      decoded graph itself is allocated before and not counted.
    """

    params = (list(common.STAGE_WORKLOADS), list(common.SIZES), list(common.ENCODINGS))
    param_names = ("workload", "n_tasks", "encoding")
    skip_params = common.pickle_skips(common.STAGE_WORKLOADS)
    number = 1
    repeat = (1, 5, 30.0)
    warmup_time = 0.0
    timeout = common.LONG_TIMEOUT

    def setup(self, cache: Any, workload: str, n: int, encoding: str) -> None:
        common.skip_unless(encoding != "pickle" or n <= common.PICKLE_MAX_TASKS)
        frames, out_ids, self.n_tasks = common.load_once(self, cache[(workload, n, encoding)])
        self.state = common.fresh_state()
        self.event = common.submit_event(decode_graph(frames).graph, out_ids)

    def time_update_graph(self, cache: Any, workload: str, n: int, encoding: str) -> None:
        self.state.handle(self.event, schedule=False)

    def peakmem_update_graph(self, cache: Any, workload: str, n: int, encoding: str) -> None:
        self.state.handle(self.event, schedule=False)

    def track_us_per_task(self, cache: Any, workload: str, n: int, encoding: str) -> float:
        t0 = time.perf_counter_ns()
        self.state.handle(self.event, schedule=False)
        return (time.perf_counter_ns() - t0) / 1e3 / self.n_tasks

    track_us_per_task.unit = "µs/task"  # type: ignore[attr-defined]

    def track_state_bytes_per_task(self, cache: Any, workload: str, n: int,
                                   encoding: str) -> float:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            self.state.handle(self.event, schedule=False)
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        return (after - before) / self.n_tasks

    track_state_bytes_per_task.unit = "bytes/task"  # type: ignore[attr-defined]
