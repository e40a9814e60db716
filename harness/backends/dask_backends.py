"""Real Dask as backends: ``dask-distributed``, ``dask-threads``, ``dask-processes``,
``dask-sync``.

Rules: every backend runs the workload's Dask collection (``dask_graphs``) the way
``persist`` + gather does it (Dask's default optimisation on, no finalize task), and times
Dask's own calls by wrapping them (``dask_plugins``): frames nest per thread and time is
exclusive, so a stage nested in another is split out only where Dask calls a separate
function. Per-task calls are coalesced into per-batch spans (see ``dask_plugins``). With
recording off nothing is installed and only wall time is measured; ``set_record`` switches
between runs (off removes every hook, so a record-off run is plain Dask, and the runner's
interleaved record-on / record-off repeats measure what the hooks cost).

What recording costs: a wrapped call is about two clock reads and a few list operations
(a few microseconds on a loaded 2-core VM). The hooks are placed where one call covers a
message or a batch wherever Dask has such a call; where Dask decides per task (a transition
choosing a worker, building a task's message, a task's run and its report) the call is per
task, and a distributed scheduler opens about 8-9 frames per task of a reduction. Cheap
per-task bookkeeping (moving a task into the queue, ``send_all`` handing messages to the
batched streams) is not wrapped: its time is counted in the stage of the call around it,
or in no stage. ``options.fuse`` and
``options.encoding`` do not apply to Dask (it always fuses as its defaults say; it pickles).
``Measurement.tasks_run`` counts the tasks Dask ran (after its fusion); ``extra["results"]``
holds the gathered outputs, in output order (tests compare them with the reference).
Roles: ``client`` (this process's calling thread), ``scheduler`` (distributed's scheduler;
for the local schedulers, the ``get`` loop in the calling thread), ``worker-i`` (distributed
workers; pool threads or processes; for dask-sync, tasks run inline in the calling thread).

What each stage covers (N/A: reported not applicable):

| stage        | dask-distributed                                   | dask-threads / dask-sync / dask-processes |
|--------------|----------------------------------------------------|-------------------------------------------|
| generate     | client: building the collection (Dask API calls, ``collections_to_expr``) | same |
| optimize     | client: ``expr.optimize()`` (expression level); scheduler: the collection's low-level optimiser (``__dask_optimize__``, run by ``HLGExpr._optimized_dsk`` while the scheduler materialises the graph) minus the lowering it does itself | client: ``expr.optimize()``; scheduler: the low-level optimiser as for distributed, run when ``get`` materialises the graph; processes also ``dask.multiprocessing``'s ``cull`` + ``fuse`` |
| serialize    | client: ``serialize(to_serialize(expr))`` in ``Client._graph_to_futures`` (pickling the whole expression); bytes = frames | N/A (no graph encoding; processes pickle per task: dispatch) |
| communicate  | from the client handing the update-graph message to its comm (``_send_to_scheduler``) to the scheduler's handler starting (includes the client's batching interval, TCP, the scheduler reading and msgpack-decoding the message) | N/A |
| update_graph | scheduler: the update-graph handler's synchronous steps (unpickling the expression, checking lost dependencies, building task states, priorities, first transitions), its offloaded ``_materialize_graph`` (lowering: Blockwise expansion, ``ensure_dict``, ``convert_legacy_graph``) and ``dask.order.order`` | scheduler: materialising the graph (lowering as for distributed), ``convert_legacy_graph``, ``dask.order.order`` and ``start_state_from_dask`` in ``get_async`` |
| schedule     | scheduler: the transitions that choose a worker (waiting/queued/no-worker -> processing, with ``decide_worker``; moving a task into the queue is left to its caller's stage: too cheap to time per task), work stealing (``balance``, steal responses); worker: steal requests | scheduler: the rest of ``get_async``'s loop (picking ready tasks, handing them to the pool, storing results), exclusive of everything else listed here |
| dispatch     | scheduler: ``_task_to_msg``, the synchronous part of writes to worker streams (msgpack, pickling run specs); worker: reads of the scheduler stream (decoding), handling ``compute-task`` events | threads/sync N/A (handing a task over is a call in the loop: schedule); processes: the parent pickling each task and its inputs (``func_dumps``) |
| execute      | worker: task runs (``_run_task`` in executor threads), the event-loop steps of ``execute``, ``gather_dep``, ``get_data``, other state-machine events, writes of reports; scheduler: handlers of worker reports (``task-finished``, ...) minus the schedule/dispatch inside them, reads of worker streams, writes to the client | worker-i: Dask's ``batch_execute_tasks`` per batch (pool thread, pool child, or inline for sync); scheduler: ``finish_task`` and, for processes, unpickling results |

Not attributed to any stage (they are in wall time only): the client's gathering of results,
its ``_get_computation_code``, the raw socket reads and writes tornado does outside
coroutine steps, the process pool's feeder thread pickling calls (dask-processes), and the
first message batch read on each distributed stream after the hooks are installed (that
read had already started; the runner's warmup run absorbs it).

The LocalCluster's scheduler runs in this (the client's) process, on the event-loop thread it
shares with the client, as ``LocalCluster`` always does; ``pids()`` reports that. For a
scheduler in its own process, start one (``dask scheduler``) and pass its address.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from harness.backends import dask_plugins as plug
from harness.backends.base import Backend, BackendError, Measurement, RunOptions
from harness.backends.dask_graphs import dask_collection
from harness.workloads import Workload
from scheduler.stages import SpanRow, Stage

__all__ = ["DistributedBackend", "ProcessesBackend", "SyncBackend", "ThreadsBackend",
           "to_spans"]

_LOCAL_MERGED = {
    "schedule+execute": "dask-threads/-processes/-sync: get_async's loop stores each result "
                        "and fires callbacks between Dask's calls; only finish_task (and, "
                        "for processes, unpickling results) is split out as execute, the "
                        "rest of the loop counts as schedule",
}
_DISTRIBUTED_MERGED = {
    "communicate+update_graph": "dask-distributed: the scheduler's comm reads and "
                                "msgpack-decodes the update-graph message before its handler "
                                "runs; that decoding is counted in communicate (the "
                                "expression itself is unpickled in update_graph)",
}
_FORGET_TIMEOUT_S = 60.0


def to_spans(rows: list[tuple[Any, ...]], offset_ns: int = 0) -> list[SpanRow]:
    return [SpanRow(int(Stage[r[0]]), r[1], r[2] + offset_ns, r[3] + offset_ns, r[4], r[5],
                    r[6]) for r in rows]


def _clock(record: bool, role: str = "client") -> plug.StageClock:
    return plug.StageClock(role) if record else plug.StageClock(role, accept=lambda t: False)


def parse_dask_config(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` as a Dask config mapping; values are read as int, float
    (``inf`` too), ``true``/``false``/``null``, else kept as strings. Unknown keys (typos)
    are refused: Dask would silently ignore them."""
    import dask.config

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ValueError(f"Dask config setting {item!r} is not KEY=VALUE (e.g. "
                             f"distributed.scheduler.worker-saturation=inf)")
        if key.startswith("distributed."):
            import distributed  # noqa: F401 - loads distributed's defaults into dask.config
        try:
            dask.config.get(key)
        except KeyError:
            raise ValueError(f"unknown Dask config key {key!r}") from None
        out[key] = _config_value(text)
    return out


def _config_value(text: str) -> Any:
    words = {"true": True, "false": False, "null": None, "none": None}
    if text.lower() in words:
        return words[text.lower()]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _check_results(results: Any, workload: Workload) -> None:
    """One result per output (work built with Dask's APIs has as many as its keys)."""
    if workload.dask is None and len(results) != len(workload.outputs):
        raise BackendError(f"{len(results)} results for {len(workload.outputs)} outputs")


class _DaskBackend(Backend):
    """What every Dask backend does on the client: generate and optimise. Settings of
    ``options.dask_config`` hold from ``start`` to ``close`` in this process; clusters
    started meanwhile inherit them (a Nanny hands its config to the worker it spawns);
    dask-processes' pool children do not (they run tasks only)."""

    def __init__(self, options: RunOptions) -> None:
        super().__init__(options)
        try:
            self.config = parse_dask_config(options.dask_config)
        except ValueError as e:
            raise BackendError(str(e)) from e
        self._config_set: Any = None

    def _apply_config(self) -> None:
        import dask.config

        if self.config and self._config_set is None:
            self._config_set = dask.config.set(self.config)

    def _restore_config(self) -> None:
        undo, self._config_set = self._config_set, None
        if undo is not None:
            undo.__exit__(None, None, None)

    def start(self) -> None:
        self._apply_config()

    def close(self) -> None:
        self._restore_config()

    def _client_stages(self, workload: Workload, clock: plug.StageClock
                       ) -> tuple[Any, list[Any]]:
        from dask.base import collections_to_expr
        from dask.core import flatten

        with clock.frame("generate"):
            graph = dask_collection(workload)
            expr = collections_to_expr(list(graph.collections), optimize_graph=True)
        with clock.frame("optimize"):
            expr = expr.optimize()
            keys = list(flatten(expr.__dask_keys__()))
        if graph.n_outputs >= 0 and len(keys) != graph.n_outputs:
            raise BackendError(f"the Dask graph of {workload.name} has {len(keys)} outputs, "
                               f"the workload {len(workload.outputs)} (a bug in dask_graphs)")
        return expr, keys

    def describe(self) -> dict[str, Any]:
        from importlib import metadata

        return {"name": self.name, "dask": metadata.version("dask"),
                "workers": self.options.workers, "threads": self.options.threads,
                "optimisation": "Dask defaults (blockwise and linear fusion on)",
                "dask_config": list(self.options.dask_config) or "Dask defaults"}


# --- dask-distributed ------------------------------------------------------------------------

class DistributedBackend(_DaskBackend):
    name = "dask-distributed"
    applicable = frozenset(Stage)
    merged = _DISTRIBUTED_MERGED

    def __init__(self, options: RunOptions) -> None:
        super().__init__(options)
        self.cluster: Any = None
        self.client: Any = None
        self._roles: dict[str, str] = {}
        self._pids: dict[str, int] = {}
        self._offsets: dict[str, int] = {}
        self._clock = _clock(False)
        self._patches: plug.Patches | None = None
        self._installed = False

    def start(self) -> None:
        import logging

        from distributed import Client, LocalCluster

        opts = self.options
        if opts.scheduler_address and self.config:
            raise BackendError("--dask-config applies to clusters stagecost starts; set it "
                               "in the configuration of the cluster at "
                               f"{opts.scheduler_address} instead")
        self._apply_config()
        try:
            if opts.scheduler_address:
                self.client = Client(opts.scheduler_address, timeout="30s")
                self.client.wait_for_workers(1, timeout=60)
            else:
                self.cluster = LocalCluster(n_workers=opts.workers,
                                            threads_per_worker=opts.threads, processes=True,
                                            host="127.0.0.1", scheduler_port=0,
                                            dashboard_address=None,
                                            silence_logs=logging.ERROR)
                self.client = Client(self.cluster)
            self._hook_up(remote=bool(opts.scheduler_address))
        except (OSError, TimeoutError, RuntimeError, ValueError) as e:
            self.close()
            raise BackendError(f"could not start or reach the Dask cluster: {e}") from e

    @classmethod
    def attached(cls, client: Any, options: RunOptions | None = None) -> DistributedBackend:
        """This backend's hooks on a client someone else started (``stagecost.record``):
        nothing is started, and ``detach`` removes the hooks and nothing else."""
        self = cls(options or RunOptions())
        self.client = client
        try:
            self._hook_up(remote=True)
        except BaseException:
            self.detach()
            raise
        return self

    def _hook_up(self, remote: bool) -> None:
        """Name the workers, estimate remote clocks, install the hooks (recording on)."""
        workers = sorted(self.client.scheduler_info(n_workers=-1)["workers"])
        self._roles = {a: f"worker-{i}" for i, a in enumerate(workers)}
        self._offsets = self._clock_offsets() if remote else {}
        if self.options.record:
            self._install()
        else:
            self._pids = {"scheduler": self.client.run_on_scheduler(os.getpid)}
            for addr, pid in self.client.run(os.getpid).items():
                self._pids[self._roles.get(addr, addr)] = pid

    def _switch_record(self, on: bool) -> None:
        """Install the hooks, or remove every one of them (recording off is plain Dask)."""
        if on:
            self._install()
        else:
            self._unhook(self.client)

    def _install(self) -> None:
        import distributed.client as dclient

        client = self.client
        self._pids = {"scheduler": client.run_on_scheduler(plug.install_scheduler)}
        for addr, pid in client.run(plug.install_worker, self._roles).items():
            self._pids[self._roles.get(addr, addr)] = pid
        self._installed = True
        clock = self._clock = plug.StageClock("client")
        p = self._patches = plug.Patches()
        serialize, key = dclient.serialize, clock.key("serialize")

        def timed_serialize(*args: Any, **kwargs: Any) -> Any:
            frame = clock.push(key, 0, 1)
            try:
                out = serialize(*args, **kwargs)
                if frame is not None:
                    frame[3] = sum(memoryview(f).nbytes for f in out[1])
                return out
            finally:
                if frame is not None:
                    clock.pop()

        send = client._send_to_scheduler

        def timed_send(msg: dict[str, Any]) -> Any:
            if msg.get("op") == "update-graph":
                clock.mark("graph_sent_ns")
            return send(msg)

        p.setattr(dclient, "serialize", timed_serialize)
        p.setattr(client, "_send_to_scheduler", timed_send)

    def _clock_offsets(self) -> dict[str, int]:
        """Peer clock minus ours, for peers on other hosts (NTP-style, best of 5 pings)."""
        import socket

        here = socket.gethostname()
        client = self.client
        def on_scheduler() -> int:
            return int(client.run_on_scheduler(plug.perf_counter_ns))

        def on_worker(addr: str) -> Callable[[], int]:
            return lambda: int(client.run(plug.perf_counter_ns, workers=[addr])[addr])

        calls: dict[str, tuple[str, Callable[[], int]]] = {
            "scheduler": (client.run_on_scheduler(socket.gethostname), on_scheduler)}
        for addr, host in client.run(socket.gethostname).items():
            calls[self._roles.get(addr, addr)] = (host, on_worker(addr))
        out = {}
        for role, (host, call) in calls.items():
            if host == here:
                continue
            best = None
            for _ in range(5):
                t0 = time.perf_counter_ns()
                remote = call()
                t1 = time.perf_counter_ns()
                if best is None or t1 - t0 < best[0]:
                    best = (t1 - t0, remote - (t0 + t1) // 2)
            assert best is not None
            out[role] = best[1]
        return out

    def _collect(self) -> tuple[list[SpanRow], int | None]:
        client = self.client
        rows, marks = self._clock.drain()
        spans = to_spans(rows)
        s_rows, s_marks = client.run_on_scheduler(plug.drain_scheduler)
        s_off = self._offsets.get("scheduler", 0)
        spans += to_spans(s_rows, -s_off)
        tasks_run = 0
        for addr, (w_rows, _) in client.run(plug.drain_worker).items():
            w_spans = to_spans(w_rows, -self._offsets.get(self._roles.get(addr, addr), 0))
            tasks_run += sum(r.tasks for r in w_spans if r.stage == Stage.execute)
            spans += w_spans
        sent, received = marks.get("graph_sent_ns"), s_marks.get("graph_received_ns")
        if sent and received and received[-1] - s_off >= sent[-1]:
            nbytes = sum(r.nbytes for r in spans if r.stage == Stage.serialize)
            spans.append(SpanRow(int(Stage.communicate), "scheduler", sent[-1],
                                 received[-1] - s_off, 0, nbytes, 1))
        spans.sort(key=lambda r: r.start_ns)
        return spans, tasks_run

    def _discard(self) -> None:
        if self._installed:
            self._clock.drain()
            self.client.run_on_scheduler(plug.drain_scheduler)
            self.client.run(plug.drain_worker)

    def _gather(self, futures: list[Any], progress: Any,
                sent_before: int | None = None) -> list[Any]:
        from distributed import CancelledError

        total = len(futures)
        tasks = getattr(progress, "tasks", None) if sent_before is not None else None
        timeout = self.options.timeout
        stop = threading.Event()
        timed_out = []

        def watch() -> None:
            # This thread shares the GIL with a LocalCluster's scheduler: a sweep over the
            # futures costs ~1.6 us each, so sweeps are spaced to take at most 2 % of the time.
            # The count of finished tasks is asked of the scheduler, which answers only
            # between two of its handlers: that wait is not work, and does not space sweeps.
            deadline = None if timeout is None else time.monotonic() + timeout
            interval = 1.0
            while True:
                wait = interval if deadline is None else \
                    min(interval, max(0.0, deadline - time.monotonic()))
                if stop.wait(wait):
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    timed_out.append(True)
                    self.client.cancel(futures)
                    return
                if progress is not None:
                    if tasks is not None:
                        # best effort: a failed query must not end this thread, which also
                        # enforces the timeout
                        with contextlib.suppress(Exception):
                            self._tell_tasks(tasks, sent_before)
                    t = time.perf_counter()
                    progress(sum(f.done() for f in futures), total)
                    interval = max(1.0, 50 * (time.perf_counter() - t))

        watcher = None
        if progress is not None or timeout is not None:
            watcher = threading.Thread(target=watch, name="stagecost-progress", daemon=True)
            watcher.start()
        try:
            results = self.client.gather(futures)
        except CancelledError as e:
            if timed_out:
                raise BackendError(f"the run did not finish within {timeout} s") from e
            raise
        finally:
            stop.set()
            if watcher is not None:
                watcher.join()
        if progress is not None:
            progress(total, total)
        return list(results)

    def _tell_tasks(self, tasks: Any, sent_before: int) -> None:
        """``tasks(finished, total)`` from the scheduler's counters (nothing before the graph
        has reached it)."""
        sent, processing, unfinished = self.client.run_on_scheduler(
            plug.scheduler_task_progress)
        finished = max(0, sent - sent_before - processing)
        if unfinished:
            tasks(finished, finished + unfinished)

    def _forget(self, baseline: int) -> str | None:
        """Wait until the scheduler has released this run's tasks (the next repeat reuses
        their keys: Dask's keys are deterministic tokens); a note if it did not."""
        deadline = time.monotonic() + _FORGET_TIMEOUT_S
        while self.client.run_on_scheduler(plug.scheduler_task_count) > baseline:
            if time.monotonic() > deadline:
                return (f"the scheduler still held tasks {_FORGET_TIMEOUT_S:.0f} s after the "
                        f"results were released; the next repeat may find some in memory")
            time.sleep(0.02)
        return None

    def run_once(self, workload: Workload, progress: Any = None) -> Measurement:
        if self.client is None:
            raise BackendError("start() the backend (or use it as a context manager) first")
        baseline = self.client.run_on_scheduler(plug.scheduler_task_count)
        sent_before = self.client.run_on_scheduler(plug.scheduler_task_progress)[0]
        self._discard()
        self._peak_rss(reset=True)
        t0 = time.perf_counter_ns()
        expr, keys = self._client_stages(workload, self._clock)
        futures = self.client.get(expr, keys, sync=False)
        results = self._gather(futures, progress, sent_before)
        t_end = time.perf_counter_ns()
        rss = self._peak_rss(reset=False)
        spans, tasks_run = self._collect() if self._installed else ([], None)
        del futures, expr
        note = self._forget(baseline)
        self._discard()
        _check_results(results, workload)
        nbytes = sum(r.nbytes for r in spans if r.stage == Stage.serialize) or None
        return Measurement(spans, t0, t_end, tasks_run, nbytes, notes=[note] if note else [],
                           extra={"results": results}, peak_rss=rss)

    def _peak_rss(self, reset: bool) -> dict[str, int]:
        """Peak resident bytes of the scheduler and each worker since the last reset (one
        call to each process, once per run)."""
        from scheduler.runtime.memory import peak_rss

        out = {"scheduler": int(self.client.run_on_scheduler(peak_rss, reset))}
        for addr, v in self.client.run(peak_rss, reset).items():
            out[self._roles.get(addr, addr)] = int(v)
        return out

    def pids(self) -> dict[str, int]:
        return {"client": os.getpid(), **self._pids}

    def describe(self) -> dict[str, Any]:
        from importlib import metadata

        return {**super().describe(), "distributed": metadata.version("distributed"),
                "address": self.client.scheduler.address if self.client else None,
                "scheduler_in_client_process": self._pids.get("scheduler") == os.getpid()}

    def _unhook(self, client: Any) -> None:
        try:
            if client is not None and self._installed:
                with contextlib.suppress(Exception):
                    client.run(plug.uninstall_worker)
                    client.run_on_scheduler(plug.uninstall_scheduler)
        finally:
            self._installed = False
            if self._patches is not None:
                self._patches.restore()
                self._patches = None

    def detach(self) -> None:
        """Remove the hooks from an ``attached`` client, leaving it and its cluster be."""
        client, self.client = self.client, None
        self._unhook(client)

    def close(self) -> None:
        client, self.client = self.client, None
        try:
            self._unhook(client)
        finally:
            if client is not None:
                client.close()
            if self.cluster is not None:
                self.cluster.close()
                self.cluster = None
            self._restore_config()


# --- the local schedulers ----------------------------------------------------------------------

class _LocalBackend(_DaskBackend):
    """``dask.local.get_async`` with a thread pool, a process pool or inline."""

    applicable = frozenset(Stage) - {Stage.serialize, Stage.communicate, Stage.dispatch}
    merged = _LOCAL_MERGED

    def _get(self, dsk: dict[Any, Any], keys: list[Any], clock: plug.StageClock) -> Any:
        raise NotImplementedError

    def _batch_hook(self, p: plug.Patches, clock: plug.StageClock) -> None:
        """Time ``batch_execute_tasks`` where it runs (pool threads, or inline)."""
        import dask.local as dl

        run = dl.batch_execute_tasks

        def batch(it: Any) -> Any:
            frame = clock.push(clock.key("execute", clock.thread_role()))
            try:
                out = run(it)
                if frame is not None:
                    frame[2] = len(out)
                return out
            finally:
                if frame is not None:
                    clock.pop()

        p.setattr(dl, "batch_execute_tasks", batch)
        p.setattr(dl, "queue_get", plug.timed(clock, None, dl.queue_get))

    @contextlib.contextmanager
    def _hooks(self, clock: plug.StageClock) -> Iterator[None]:
        import dask.local as dl

        p = plug.Patches()
        try:
            plug.patch_lowering(p, clock, optimize_role="scheduler")
            for name in ("order", "start_state_from_dask"):
                p.setattr(dl, name, plug.timed(clock, "update_graph", getattr(dl, name),
                                               role="scheduler"))
            p.setattr(dl, "finish_task", plug.timed(clock, "execute", dl.finish_task,
                                                    role="scheduler"))
            self._batch_hook(p, clock)
            yield
        finally:
            p.restore()

    def run_once(self, workload: Workload, progress: Any = None) -> Measurement:
        record = self.record
        clock = _clock(record)
        with self._hooks(clock) if record else contextlib.nullcontext():
            t0 = time.perf_counter_ns()
            expr, keys = self._client_stages(workload, clock)
            with clock.frame("update_graph", role="scheduler"):
                dsk = expr.__dask_graph__()  # what get_async does first, timed on its own
            with clock.frame("schedule", role="scheduler"):
                results = self._get(dsk, keys, clock)
            t_end = time.perf_counter_ns()
        spans = to_spans(clock.drain()[0])
        ran = sum(r.tasks for r in spans if r.stage == Stage.execute
                  and r.role.startswith("worker"))
        _check_results(results, workload)
        if progress is not None:
            progress(len(results), len(results))
        return Measurement(spans, t0, t_end, ran if record else None,
                           extra={"results": list(results)})

    def pids(self) -> dict[str, int]:
        return {"client": os.getpid(), "scheduler": os.getpid()}


class ThreadsBackend(_LocalBackend):
    name = "dask-threads"

    def _get(self, dsk: dict[Any, Any], keys: list[Any], clock: plug.StageClock) -> Any:
        import dask.threaded

        return dask.threaded.get(dsk, keys,
                                 num_workers=self.options.workers * self.options.threads)


class SyncBackend(_LocalBackend):
    name = "dask-sync"

    def _get(self, dsk: dict[Any, Any], keys: list[Any], clock: plug.StageClock) -> Any:
        import dask.local

        return dask.local.get_sync(dsk, keys)


class ProcessesBackend(_LocalBackend):
    """``dask.multiprocessing.get`` on a pool of ``workers`` processes started once (by
    ``start``, as Dask would start one per call); the parent's pickling of tasks is dispatch."""

    name = "dask-processes"
    applicable = frozenset(Stage) - {Stage.serialize, Stage.communicate}

    def __init__(self, options: RunOptions) -> None:
        super().__init__(options)
        self.pool: Any = None
        self._child_roles: dict[int, str] = {}

    def start(self) -> None:
        import functools
        from concurrent.futures import ProcessPoolExecutor

        import dask.multiprocessing as dmp

        self._apply_config()

        n = self.options.workers
        try:
            self.pool = ProcessPoolExecutor(
                n, mp_context=dmp.get_context(),
                initializer=functools.partial(dmp.initialize_worker_process))
            pids: set[int] = set()
            for _ in range(20):  # children start on demand: keep them busy until all are up
                pids |= {f.result(timeout=120) for f in
                         [self.pool.submit(plug.child_pid, 0.05) for _ in range(n)]}
                if len(pids) >= n:
                    break
        except (OSError, RuntimeError, TimeoutError) as e:
            self.close()
            raise BackendError(f"could not start the process pool: {e}") from e
        self._child_roles = {pid: f"worker-{i}" for i, pid in enumerate(sorted(pids))}

    def _batch_hook(self, p: plug.Patches, clock: plug.StageClock) -> None:
        import dask.local as dl

        roles = self._child_roles
        wait = dl.queue_get

        def queue_get(q: Any) -> Any:
            frame = clock.push(None)
            try:
                fut = wait(q)
            finally:
                if frame is not None:
                    clock.pop()
            if fut.done() and fut.exception() is None:
                start, end, pid, tasks = getattr(fut.result(), "span", (0, 0, 0, 0))
                if end:
                    clock.add("execute", roles.get(pid, f"worker-pid{pid}"), start, end,
                              tasks=tasks, lane=pid)
            return fut

        p.setattr(dl, "batch_execute_tasks", plug.execute_batch_timed)
        p.setattr(dl, "queue_get", queue_get)

    @contextlib.contextmanager
    def _hooks(self, clock: plug.StageClock) -> Iterator[None]:
        import dask.multiprocessing as dmp

        with super()._hooks(clock):
            p = plug.Patches()
            try:
                for name in ("cull", "fuse"):
                    p.setattr(dmp, name, plug.timed(clock, "optimize", getattr(dmp, name),
                                                    role="scheduler"))
                yield
            finally:
                p.restore()

    def _get(self, dsk: dict[Any, Any], keys: list[Any], clock: plug.StageClock) -> Any:
        import dask.multiprocessing as dmp

        if self.pool is None:
            raise BackendError("start() the backend (or use it as a context manager) first")
        codecs: dict[str, Any] = {}
        if self.record:
            codecs = {"func_dumps": plug.TimedCodec(dmp._dumps, clock, "dispatch"),
                      "func_loads": plug.TimedCodec(dmp._loads, clock, "execute")}
        return dmp.get(dsk, keys, num_workers=self.options.workers, pool=self.pool, **codecs)

    def pids(self) -> dict[str, int]:
        return {**super().pids(), **{role: pid for pid, role in self._child_roles.items()}}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self._restore_config()
