"""The reference system as a backend: ``reference`` (TCP LocalCluster, or an existing
scheduler) and ``reference-inproc`` (both state machines in this process).

What is timed, per repeat: ``generate`` = building the workload's layers and lowering them
(or, with ``encoding="layers"``, only building them); ``optimize`` = culling to the outputs
(and fusion with ``fuse``); the rest is recorded by the reference system itself. Workloads
written with Dask's APIs have Dask generate and optimise their graph (``reference_dask``).
"""

from __future__ import annotations

from typing import Any

from harness.backends.base import Backend, BackendError, Measurement, RunOptions
from harness.backends.reference_dask import prepare_dask, results_in_order
from harness.workloads import Workload
from scheduler.graph.layers import LayerGraph
from scheduler.graph.lowgraph import TaskGraph
from scheduler.stages import SpanRecorder, Stage

__all__ = ["InprocBackend", "ReferenceBackend", "prepare_graph"]


def prepare_layers(workload: Workload, recorder: SpanRecorder, fuse: bool) -> LayerGraph:
    """Stages 1-2 on the client for the layers encoding: build the layers, cull whole layers
    (and fuse blockwise layers); nothing is lowered here."""
    with recorder.span(Stage.generate) as sp:
        layers = workload.layer_graph()
        sp.tasks = layers.n_tasks
    with recorder.span(Stage.optimize, tasks=layers.n_tasks):
        if fuse:
            layers = layers.fuse_blockwise(keep=[workload.output_layer])
        layers = layers.cull([workload.output_layer])
    return layers


def prepare_graph(workload: Workload, recorder: SpanRecorder, fuse: bool) -> TaskGraph:
    """Stages 1-2 on the client: lower the workload's layers, cull (and fuse)."""
    from scheduler.graph.optimize import cull, fuse_linear

    layers = workload.layers
    if layers is not None and fuse:
        with recorder.span(Stage.optimize, tasks=layers.n_tasks):
            layers = layers.fuse_blockwise(keep=[workload.output_layer])
    with recorder.span(Stage.generate) as sp:
        graph = layers.lower() if layers is not None else workload.lower()
        sp.tasks = graph.n
    with recorder.span(Stage.optimize, tasks=graph.n):
        graph = cull(graph, workload.outputs)
        if fuse:
            graph = fuse_linear(graph, keep=workload.outputs)
    return graph


class ReferenceBackend(Backend):
    name = "reference"

    def __init__(self, options: RunOptions) -> None:
        super().__init__(options)
        self.cluster: Any = None
        self.client: Any = None

    def start(self) -> None:
        from scheduler import Client, LocalCluster

        opts = self.options
        try:
            if opts.scheduler_address:
                address = opts.scheduler_address
            else:
                self.cluster = LocalCluster(n_workers=opts.workers, nthreads=opts.threads,
                                            record=opts.record)
                address = self.cluster.address
            self.client = Client(address, record=opts.record, encoding=opts.encoding)
            if opts.scheduler_address:
                self.client.wait_for_workers(1)
        except (OSError, TimeoutError, RuntimeError) as e:
            self.close()
            raise BackendError(f"could not start the reference cluster: {e}") from e

    def run_once(self, workload: Workload, progress: Any = None) -> Measurement:
        from scheduler.runtime.clocks import now_ns

        client = self.client
        # start from an empty record (and memory peak) everywhere, recording as asked
        client.collect(drain=True, record=self.record)
        opts = self.options
        tasks = getattr(progress, "tasks", None)
        t0 = now_ns()
        outputs, dask_spans, extra = workload.outputs, [], {}
        if workload.layers is None and workload.dask is not None:  # built with Dask's APIs
            prep = prepare_dask(workload, self.record)
            outputs, dask_spans = prep.outputs, prep.spans
            if opts.encoding == "layers":
                layers, out = prep.layers(workload.name)
                result = client.run(layers, encoding="layers", timeout=opts.timeout,
                                    output_layers=[out], progress=progress,
                                    task_progress=tasks)
            else:
                result = client.run(prep.graph, outputs, timeout=opts.timeout,
                                    progress=progress, task_progress=tasks)
            tasks_run: int | None = prep.graph.n
            extra["results"] = results_in_order(result.results, outputs)
        elif opts.encoding == "layers":
            layers = prepare_layers(workload, client.recorder, opts.fuse)
            result = client.run(layers, encoding="layers", timeout=opts.timeout,
                                output_layers=[workload.output_layer], progress=progress,
                                task_progress=tasks)
            tasks_run = None
        else:
            graph = prepare_graph(workload, client.recorder, opts.fuse)
            result = client.run(graph, workload.outputs, timeout=opts.timeout,
                                progress=progress, task_progress=tasks)
            tasks_run = graph.n
        t_end = now_ns()
        if len(result.results) != len(outputs):
            raise BackendError(f"{len(result.results)} results for "
                               f"{len(outputs)} outputs")
        collected, rss = client.collect(drain=True)
        spans = dask_spans + collected
        if tasks_run is None:  # lowered on the scheduler: it says how many tasks there were
            tasks_run = max((r.tasks for r in spans if r.stage == Stage.update_graph),
                            default=None)
        return Measurement(spans, t0, t_end, tasks_run, result.nbytes, extra=extra,
                           peak_rss=rss)

    def pids(self) -> dict[str, int]:
        import os

        out = {"client": os.getpid()}
        if self.cluster is not None:
            out.update(self.cluster.pids)
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.client.address if self.client else None}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None


class InprocBackend(Backend):
    name = "reference-inproc"
    applicable = frozenset(Stage) - {Stage.communicate}

    def __init__(self, options: RunOptions) -> None:
        super().__init__(options)
        self.cluster: Any = None

    def run_once(self, workload: Workload, progress: Any = None) -> Measurement:
        from scheduler.runtime.clocks import now_ns
        from scheduler.runtime.inproc import InProcessCluster

        opts = self.options
        cluster = InProcessCluster(opts.workers, opts.threads, record=self.record)
        t0 = now_ns()
        dask_spans, extra = [], {}
        if workload.layers is None and workload.dask is not None:  # built with Dask's APIs
            prep = prepare_dask(workload, self.record)
            dask_spans = prep.spans
            if opts.encoding == "layers":
                layers, out = prep.layers(workload.name)
                result = cluster.run(layers, encoding="layers", output_layers=[out])
            else:
                result = cluster.run(prep.graph, prep.outputs, encoding=opts.encoding)
            extra["results"] = results_in_order(result.results, prep.outputs)
        elif opts.encoding == "layers":
            layers = prepare_layers(workload, cluster.client_rec, opts.fuse)
            result = cluster.run(layers, encoding="layers",
                                 output_layers=[workload.output_layer])
        else:
            graph = prepare_graph(workload, cluster.client_rec, opts.fuse)
            result = cluster.run(graph, workload.outputs, encoding=opts.encoding)
        t_end = now_ns()
        spans = dask_spans + cluster.spans()
        tasks_run = max((r.tasks for r in spans if r.stage == Stage.update_graph), default=None)
        return Measurement(spans, t0, t_end, tasks_run, result.nbytes, extra=extra)

    def pids(self) -> dict[str, int]:
        import os

        return {"client": os.getpid(), "scheduler": os.getpid()}
