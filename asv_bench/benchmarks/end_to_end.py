"""All stages at once: from ``compute()`` on the client to every output back in its hands.

Two backends of the reference system run the same lowered graph with 2 workers and span
recording off (as speed comparisons run):

- ``reference``: a ``LocalCluster`` (a scheduler and 2 worker processes on loopback) and a
  ``Client``, started in ``setup`` and closed in ``teardown`` for every sample, so each sample
  starts from an empty cluster. ``LocalCluster.close`` ends the processes it started; if
  this benchmark process is killed (asv's timeout), they exit on their own when they see
  their parent gone.
- ``reference-inproc``: ``InProcessCluster``, both state machines in this process, the real
  encodings and dispatch messages but no sockets or processes: the difference between the
  two is the cost of the network and the processes.
"""

from __future__ import annotations

from typing import Any

from scheduler import Client, LocalCluster
from scheduler.runtime.inproc import InProcessCluster

from . import common

BACKENDS = ("reference", "reference-inproc")


class EndToEnd(common.GraphInputs):
    """Times ``client.compute(graph, outputs)`` (``reference``) or
    ``InProcessCluster.run(graph, outputs)`` (``reference-inproc``) for the workload's lowered
    graph and output keys, encoding ``compact``: serialize, send, update_graph, schedule,
    dispatch, execute (trivial tasks) and gathering every output on the client. Starting
    and closing the cluster are not timed. One call per sample (``number = 1``)."""

    params = (list(common.STAGE_WORKLOADS), list(common.SIZES), list(BACKENDS))
    param_names = ("workload", "n_tasks", "backend")
    number = 1
    rounds = 1
    repeat = (1, 5, 60.0)
    warmup_time = 0.0
    timeout = common.LONG_TIMEOUT

    def setup(self, cache: Any, workload: str, n: int, backend: str) -> None:
        self.graph, self.outputs = common.load_once(self, cache[(workload, n)])
        self.cluster: LocalCluster | None = None
        self.client: Client | None = None
        self.inproc: InProcessCluster | None = None
        if backend == "reference":
            self.cluster = LocalCluster(n_workers=common.WORKERS, record=False)
            try:
                self.client = Client(self.cluster.address, record=False)
            except BaseException:
                self.cluster.close()
                self.cluster = None
                raise
        else:
            self.inproc = InProcessCluster(common.WORKERS, record=False)

    def teardown(self, cache: Any, workload: str, n: int, backend: str) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
        self.inproc = None

    def time_compute(self, cache: Any, workload: str, n: int, backend: str) -> None:
        if self.client is not None:
            self.client.compute(self.graph, self.outputs, encoding="compact", timeout=None)
        else:
            assert self.inproc is not None
            self.inproc.run(self.graph, self.outputs, encoding="compact")
