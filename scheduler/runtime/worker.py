"""The worker process: asyncio and a thread pool around ``WorkerState``.

Rules: the event loop thread owns the state machine; threads only run batches of tasks
(``Execute``) on arguments already gathered, and hand back results. Finished tasks are
reported in one message per loop iteration, not per task. Peers (other workers, clients)
fetch results with ``get-data``; results are pickled here, in batches. A worker has one
``get-data`` request under way per peer at a time; the dependencies wanted meanwhile go in the
next one. The worker exits when
its scheduler connection ends, when told to close, or when its parent process dies.

Spans: ``dispatch`` (receiving and decoding task batches), ``execute`` (running batches,
fetching dependencies, serving results).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any

import cloudpickle
import numpy as np

from ..stages import SpanRecorder, Stage
from ..state.worker import (
    CancelTasksEvent,
    DataFetchedEvent,
    Execute,
    ExecutedEvent,
    FetchData,
    ForgetGraphEvent,
    ReleaseDataEvent,
    ReportDataLost,
    ReportErred,
    ReportFinished,
    WorkerEvent,
    WorkerInstruction,
    WorkerState,
)
from ..wire.encodings import SpecLoadError
from ..wire.frames import WireError
from .clocks import clock_identity, estimate_offset, now_ns
from .comm import LOOPBACK, TOKEN_ENV, Comm, CommClosedError, connect, serve, token_ok
from .dispatch import GraphCatalog
from .gcpolicy import task_gc
from .memory import peak_rss
from .messages import Message

__all__ = ["WorkerServer", "dumps_error", "dumps_values", "main", "run_batch"]

REPORT_INTERVAL = 0.002
"""Seconds finished tasks may wait to be reported together (fewer, bigger messages)."""
REPORT_BATCH = 2048
"""Report at once when this many finished tasks are waiting."""
BATCH_SECONDS = 0.005
"""How long a batch of tasks handed to a thread should run: batches are sized from the
last batch's time per task, between 1 and ``MAX_BATCH`` tasks (the first has ``FIRST_BATCH``).
Each batch costs the worker and the scheduler (which handles its report) fixed work, so
short tasks go in big batches; long tasks go one or a few at a time, so that their results
are reported as they finish."""
MAX_BATCH = 1024
FIRST_BATCH = 8
PARTIAL_REPORT_NS = 20_000_000
"""A running batch hands over the results it has after this long (and again after each
further interval), so that slow tasks in a batch sized from fast ones are reported on time."""
_WELCOME_S = 30.0  # how long a new worker waits for the scheduler to take it in
_MAX_RUN = 64  # most tasks run between two reads of the clock in a batch


def dumps_error(exc: BaseException) -> tuple[bytes, str]:
    """(pickled exception, formatted traceback); an exception that cannot be pickled is
    replaced by a RuntimeError carrying its repr."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = cloudpickle.dumps(exc)
    except Exception:
        blob = cloudpickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
    return blob, text


def dumps_values(values: dict[int, Any]) -> tuple[bytes, dict[int, str]]:
    """Pickle ``values`` in one blob; values that cannot be pickled are left out and returned
    as ``{id: reason}``."""
    try:
        return pickle.dumps(values, protocol=5), {}
    except Exception:
        pass
    good: dict[int, Any] = {}
    bad: dict[int, str] = {}
    for k, v in values.items():
        try:
            cloudpickle.dumps(v)
            good[k] = v
        except Exception as e:
            bad[k] = f"{type(e).__name__}: {e}"
    return cloudpickle.dumps(good), bad


def run_batch(tasks: list, recorder: SpanRecorder,
               report: Callable[[dict[int, Any], list], None] | None = None
               ) -> tuple[dict[int, Any], list, int]:
    """(results, errors, nanoseconds the batch took) of the tasks not yet reported.

    With ``report``, a batch that runs past ``PARTIAL_REPORT_NS`` hands what it has finished
    to ``report(results, errors)`` (from this thread) each time that much more time passed:
    a batch sized from short tasks may meet long ones, and their results must not wait for
    the whole batch."""
    results: dict[int, Any] = {}
    errors: list[tuple[int, bytes, str]] = []
    start = due = last = now_ns()
    todo = iter(tasks)
    left = len(tasks)
    # The clock is read between runs of tasks, not after each one: a run lasts about a
    # quarter of PARTIAL_REPORT_NS at the last run's pace (1 to 64 tasks; the first is 1).
    step = 1 if report is not None else left
    with recorder.span(Stage.execute, tasks=left):
        while left:
            for tid, runner, args, index in islice(todo, step):
                try:
                    results[tid] = runner(args, index)
                except BaseException as e:  # noqa: BLE001 - a task's failure goes to its caller
                    errors.append((tid, *dumps_error(e)))
            ran = min(step, left)
            left -= ran
            if report is not None and left:
                t = now_ns()
                if t - due >= PARTIAL_REPORT_NS:
                    report(results, errors)
                    results, errors, due = {}, [], t
                per_task = max(1, t - last) / ran
                step = max(1, min(_MAX_RUN, int(PARTIAL_REPORT_NS / 4 / per_task)))
                last = t
    return results, errors, now_ns() - start


def batch_size(n_tasks: int, elapsed_ns: int) -> int:
    """Tasks for the next batch, given the last one ran ``n_tasks`` in ``elapsed_ns``."""
    if n_tasks <= 0:
        return FIRST_BATCH
    per_task = elapsed_ns / n_tasks
    if per_task <= 0:
        return MAX_BATCH
    return max(1, min(MAX_BATCH, int(BATCH_SECONDS * 1e9 / per_task)))


class WorkerServer:
    def __init__(self, scheduler_address: str, nthreads: int = 1, name: str | None = None,
                 host: str = LOOPBACK, record: bool = True,
                 auth_token: str | None = None) -> None:
        self.scheduler_address = scheduler_address
        self.nthreads = nthreads
        self.name = name or f"worker-{os.getpid()}"
        self.host = host
        self.auth_token = auth_token
        self.state = WorkerState(nthreads, max_batch=FIRST_BATCH)
        self.catalog = GraphCatalog()
        self._stims = itertools.count()
        self.recorder = SpanRecorder(self.name, enabled=record)
        self.peers: dict[int, str] = {}
        self.wid = -1
        self.address = ""
        self.offset_ns = 0
        self._pool = ThreadPoolExecutor(nthreads, thread_name_prefix="stagecost-task")
        self._scheduler: Comm | None = None
        self._peer_comms: dict[str, Comm] = {}
        self._peer_locks: dict[str, asyncio.Lock] = {}
        self._finished: list[int] = []
        self._finished_seq: list[int] = []  # the assignment each report answers
        self._flush_pending = False
        self._failed_graphs: dict[int, str] = {}
        self._wanted: dict[int, list[int]] = {}  # peer -> ids to ask for in its next request
        self._ranges: dict[int, tuple[int, int]] = {}  # graph id -> (first task id, tasks)
        self._done = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server, self.address = await serve(self._on_peer, self.host, 0)
        comm = await connect(self.scheduler_address)
        t0 = now_ns()
        hello = {"nthreads": self.nthreads, "address": self.address, "name": self.name,
                 "t0": t0, "clock": clock_identity()}
        if self.auth_token:
            hello["token"] = self.auth_token
        try:
            welcome = await comm.request("hello-worker", hello, timeout=_WELCOME_S)
        except TimeoutError:
            raise TimeoutError(f"the scheduler at {self.scheduler_address} did not welcome "
                               f"this worker within {_WELCOME_S:g} s") from None
        t2 = now_ns()
        if welcome.op != "welcome":
            raise ConnectionRefusedError(f"the scheduler refused this worker: "
                                         f"{welcome.fields.get('reason', welcome.op)}")
        self._scheduler = comm
        self.wid = int(welcome["worker"])
        self.offset_ns = estimate_offset(t0, int(welcome["t1"]), t2, str(welcome["clock"]))
        self.recorder.role = f"worker-{self.wid}"
        self._set_peers(welcome["peers"])
        self._spawn(self._listen())
        self._spawn(self._heartbeat(float(welcome["heartbeat"])))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_closed(self) -> None:
        await self._done.wait()

    async def close(self) -> None:
        if self._done.is_set():
            return
        self._done.set()
        for t in list(self._tasks):
            t.cancel()
        if self._scheduler:
            await self._scheduler.close()
        for c in self._peer_comms.values():
            await c.close()
        if self._server:
            self._server.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _set_peers(self, peers: dict[str, str]) -> None:
        self.peers = {int(k): v for k, v in peers.items()}
        # a peer the scheduler removed (dead, or silent too long) answers no more fetches:
        # end those at once instead of waiting for their timeout
        gone = set(self._peer_comms) - set(self.peers.values())
        for address in gone:
            self._peer_comms.pop(address).abort()

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            assert self._scheduler is not None
            self._scheduler.post_msg("heartbeat")

    # --- messages from the scheduler ---------------------------------------------------------

    async def _listen(self) -> None:
        assert self._scheduler is not None
        try:
            while True:
                msg = await self._scheduler.recv()
                if not self._on_message(msg):
                    break
        except (CommClosedError, WireError) as e:
            if not self._done.is_set():
                print(f"{self.name}: scheduler connection ended ({e}); exiting",
                      file=sys.stderr)
        finally:
            await self.close()

    def _on_message(self, msg: Message) -> bool:
        op = msg.op
        if op == "compute":
            self._on_compute(msg)
        elif op == "graph-def":
            self._ranges[int(msg["sid"])] = (int(msg["base"]), int(msg.fields.get("n", 0)))
            try:
                self.catalog.define(msg)
            except SpecLoadError as e:
                self._failed_graphs[int(msg["sid"])] = str(e)
        elif op == "release":
            self._handle(ReleaseDataEvent(stimulus_id=self.stimulus_of(msg), ids=msg.array("ids"),
                                          seqs=msg.arrays.get("seq")))
        elif op == "cancel":
            self._handle(CancelTasksEvent(stimulus_id=self.stimulus_of(msg), ids=msg.array("ids")))
        elif op == "forget-graph":
            sid = int(msg["sid"])
            self.catalog.forget(sid)
            self._failed_graphs.pop(sid, None)
            base, n = self._ranges.pop(sid, (0, 0))
            if n:
                self._handle(ForgetGraphEvent(stimulus_id=self.stimulus_of(msg), base=base, n=n))
        elif op == "peers":
            self._set_peers(msg["peers"])
        elif op == "spans":
            drain = bool(msg.fields.get("drain", True))
            rows = self.recorder.drain() if drain else self.recorder.rows()
            if msg.fields.get("record") is not None:
                self.recorder.enabled = bool(msg.fields["record"])
            shifted = [[r[0], r[1], r[2] + self.offset_ns, r[3] + self.offset_ns, *r[4:]]
                       for r in rows]
            assert self._scheduler is not None
            self._scheduler.post_msg("spans", {"request": msg["request"], "rows": shifted,
                                               "rss": {self.name: peak_rss(reset=drain)}})
        elif op == "held":
            assert self._scheduler is not None
            self._scheduler.post_msg("held", {"request": msg["request"]},
                                     {"ids": np.fromiter(self.state.data, dtype=np.int64,
                                                         count=len(self.state.data))})
        elif op == "close":
            return False
        return True

    def stimulus_of(self, msg: Message) -> str:
        """The stimulus id of a message from the scheduler: the id of the scheduler's event
        that caused it (``stim``), or one numbered here for a peer without it."""
        stim = msg.fields.get("stim")
        return stim if isinstance(stim, str) and stim else self._own(msg.op)

    def _own(self, what: str) -> str:
        """A stimulus id of this worker's own events (a batch ran, data arrived)."""
        return f"{self.name}-{what}-{next(self._stims)}"

    def _on_compute(self, msg: Message) -> None:
        sid = int(msg["sid"])
        ids = msg.array("ids")
        if sid in self._failed_graphs:
            assert self._scheduler is not None
            reason = self._failed_graphs[sid]
            blob, text = dumps_error(SpecLoadError(reason))
            for tid in ids.tolist():
                self._scheduler.post_msg("erred", {"id": tid, "text": text}, blobs=[blob])
            return
        with self.recorder.span(Stage.dispatch, tasks=len(ids), messages=1):
            event = self.catalog.compute_event(msg, self.stimulus_of(msg))
        self._handle(event)

    # --- the state machine and its instructions -------------------------------------------------

    def _handle(self, *events: WorkerEvent) -> None:
        self._do(self.state.handle(*events))

    def _do(self, instructions: list[WorkerInstruction]) -> None:
        loop = asyncio.get_running_loop()
        sched = self._scheduler
        for ins in instructions:
            if isinstance(ins, Execute):
                # partial results are queued on the loop from the task thread before the
                # batch's future completes, so they are handled first
                report = functools.partial(loop.call_soon_threadsafe, self._partial_done)
                fut = loop.run_in_executor(self._pool, run_batch, ins.tasks, self.recorder,
                                           report)
                fut.add_done_callback(functools.partial(self._batch_done, len(ins.tasks)))
            elif isinstance(ins, ReportFinished):
                self._finished.extend(ins.ids)
                self._finished_seq.extend(ins.seqs or [1] * len(ins.ids))
                if len(self._finished) >= REPORT_BATCH:
                    self._flush_finished()
                elif not self._flush_pending:
                    self._flush_pending = True
                    loop.call_later(REPORT_INTERVAL, self._flush_finished)
            elif isinstance(ins, FetchData):
                self._want(ins.peer, ins.ids)
            elif isinstance(ins, ReportErred) and sched is not None:
                blob = ins.error or dumps_error(TypeError(ins.text))[0]
                with contextlib.suppress(CommClosedError):
                    sched.post_msg("erred", {"id": ins.id, "text": ins.text}, blobs=[blob])
            elif isinstance(ins, ReportDataLost) and sched is not None:
                with contextlib.suppress(CommClosedError):
                    sched.post_msg("data-lost", {"id": ins.id},
                                   {"missing": np.asarray(ins.missing, dtype=np.int64)})

    def _partial_done(self, results: dict[int, Any], errors: list) -> None:
        if self._done.is_set():
            return
        with self.recorder.span(Stage.execute, tasks=0):
            self._handle(ExecutedEvent(stimulus_id=self._own("ran-part"), results=results,
                                       errors=errors, partial=True))

    def _batch_done(self, n_tasks: int, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or self._done.is_set():
            return
        exc = fut.exception()
        if exc is not None:
            print(f"{self.name}: a task batch failed outside any task: {exc!r}",
                  file=sys.stderr)
            return
        results, errors, elapsed_ns = fut.result()
        # reporting back (execute): storing results, starting the next batches, queueing
        # the report
        with self.recorder.span(Stage.execute, tasks=0):
            self._handle(ExecutedEvent(stimulus_id=self._own("ran"), results=results,
                                       errors=errors,
                                       next_batch=batch_size(n_tasks, elapsed_ns)))

    def _flush_finished(self) -> None:
        self._flush_pending = False
        ids, self._finished = self._finished, []
        seqs, self._finished_seq = self._finished_seq, []
        if ids and self._scheduler is not None:
            with contextlib.suppress(CommClosedError), \
                    self.recorder.span(Stage.execute, messages=1) as sp:
                sp.nbytes = self._scheduler.post_msg(
                    "finished", {}, {"ids": np.asarray(ids, dtype=np.int64),
                                     "seq": np.asarray(seqs, dtype=np.int32)})

    # --- data between workers -------------------------------------------------------------------

    async def _peer_comm(self, address: str) -> Comm:
        lock = self._peer_locks.setdefault(address, asyncio.Lock())
        async with lock:
            comm = self._peer_comms.get(address)
            if comm is None or comm.closed:
                comm = await connect(address)
                hello = {"name": self.name}
                if self.auth_token:
                    hello["token"] = self.auth_token
                comm.post_msg("hello-peer", hello)
                self._peer_comms[address] = comm
            return comm

    def _want(self, peer: int, ids: list[int]) -> None:
        """Fetch ``ids`` from ``peer``: one request at a time per peer, and what is wanted
        while one is under way goes in the next one, so that batches arriving together cost
        one round trip, not one each."""
        pending = self._wanted.get(peer)
        if pending is not None:
            pending += ids
            return
        self._wanted[peer] = list(ids)
        self._spawn(self._fetch_from(peer))

    async def _fetch_from(self, peer: int) -> None:
        try:
            while ids := self._wanted.get(peer):
                self._wanted[peer] = []
                await self._fetch(peer, ids)
        finally:
            self._wanted.pop(peer, None)

    async def _fetch(self, peer: int, ids: list[int]) -> None:
        address = self.peers.get(peer)
        values: dict[int, Any] = {}
        missing = list(ids)
        bad: dict[int, str] = {}
        if address is not None:
            try:
                if address == self.address:
                    values = {i: self.state.data[i] for i in ids if i in self.state.data}
                else:
                    comm = await self._peer_comm(address)
                    lock = self._peer_locks.setdefault(address + "/req", asyncio.Lock())
                    async with lock:
                        reply = await comm.request(
                            "get-data", {}, {"ids": np.asarray(ids, dtype=np.int64)},
                            timeout=120)
                    # the span covers this process's work (decoding), not the wait
                    nbytes = sum(len(b) for b in reply.blobs)
                    with self.recorder.span(Stage.execute, tasks=len(ids), nbytes=nbytes,
                                            messages=1):
                        values = pickle.loads(reply.blobs[0]) if reply.blobs else {}
                    raw = reply.fields.get("unserializable") or {}
                    bad = {int(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) \
                        else {}
                missing = [i for i in ids if i not in values and i not in bad]
            except (CommClosedError, WireError, TimeoutError, OSError):
                self._peer_comms.pop(address, None)
        if not self._done.is_set():
            self._handle(DataFetchedEvent(stimulus_id=self._own("fetched"), peer=peer,
                                          values=values,
                                          missing=missing, unserializable=bad))

    async def _on_peer(self, comm: Comm) -> None:
        """Serve ``get-data`` to other workers and to clients gathering results."""
        try:
            hello = await asyncio.wait_for(comm.recv(), 10)
            if self.auth_token and not token_ok(hello.fields.get("token"), self.auth_token):
                comm.post_msg("error", {"reason": "authentication failed"})
                return
            while True:
                msg = await comm.recv()
                if msg.op != "get-data":
                    comm.post_msg("error", {"reason": f"unknown request {msg.op!r}"})
                    continue
                ids = msg.array("ids").tolist()
                data = self.state.data
                with self.recorder.span(Stage.execute, tasks=len(ids), messages=1) as sp:
                    values = {i: data[i] for i in ids if i in data}
                    blob, bad = dumps_values(values)
                    sp.nbytes = len(blob)
                comm.post_msg("data", {"unserializable": {str(k): v for k, v in bad.items()}},
                              blobs=[blob])
        except (CommClosedError, TimeoutError):
            return
        except (WireError, TypeError, ValueError) as e:  # the peer's fault: tell it, hang up
            with contextlib.suppress(CommClosedError):
                comm.post_msg("error", {"reason": f"malformed request: {e}"})


async def _main_async(args: argparse.Namespace) -> None:
    token = args.auth_token or os.environ.get(TOKEN_ENV) or None
    worker = WorkerServer(args.scheduler, nthreads=args.nthreads, name=args.name,
                          host=args.host, record=not args.no_record, auth_token=token)
    await worker.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: loop.create_task(worker.close()))
    if args.parent_pid:
        loop.create_task(_exit_with_parent(args.parent_pid, worker))
    await worker.wait_closed()


async def _exit_with_parent(pid: int, worker: WorkerServer) -> None:
    while True:
        await asyncio.sleep(0.5)
        if os.getppid() != pid:
            await worker.close()
            return


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="stagecost worker",
                                description="Run a stagecost reference worker.")
    p.add_argument("scheduler", help="scheduler address, tcp://HOST:PORT")
    p.add_argument("--nthreads", type=int, default=1, help="threads running tasks")
    p.add_argument("--name", default=None, help="name shown in reports")
    p.add_argument("--host", default=LOOPBACK, help="address to serve peers on")
    p.add_argument("--auth-token", default=None,
                   help=f"shared secret expected by the scheduler (or ${TOKEN_ENV})")
    p.add_argument("--no-record", action="store_true", help="do not record stage spans")
    p.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.nthreads < 1:
        p.error("--nthreads must be at least 1")
    try:
        with task_gc():
            asyncio.run(_main_async(args))
    except (ConnectionError, OSError) as e:
        print(f"stagecost worker: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
