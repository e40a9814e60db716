"""The scheduler process: asyncio around ``SchedulerState``.

Rules: this module owns sockets and clocks; every decision is the state machine's. A message
from a worker or client becomes one event; the instructions that come back are grouped per
peer and sent as one message each. Spans: ``communicate`` (client's first byte written to
our last byte read, for graph messages), ``update_graph`` (decoding + the state's handling of
the graph), ``schedule`` (placing ready tasks), ``dispatch`` (encoding and queueing task
batches), ``execute`` (handling workers' reports). The scheduler never unpickles client
bytes: graphs are decoded with ``decode_graph``; errors are forwarded as opaque blobs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..graph.errors import GraphError
from ..stages import SpanRecorder, Stage
from ..state.events import (
    ClientLostEvent,
    ClientReleasedKeysEvent,
    DataLostEvent,
    GraphAccepted,
    GraphForgotten,
    GraphRejected,
    GraphSubmittedEvent,
    Instruction,
    KeysErred,
    KeysInMemory,
    SchedulerEvent,
    TaskErredEvent,
    TasksFinishedEvent,
    WorkerAddedEvent,
    WorkerLostEvent,
)
from ..state.routing import ANY_ASSIGNMENT, route
from ..state.scheduler import SchedulerConfig, SchedulerState
from ..wire.encodings import WireGraph, decode_graph, load_codecs
from ..wire.frames import WireError
from .clocks import clock_identity, now_ns
from .comm import LOOPBACK, TOKEN_ENV, Comm, CommClosedError, serve, token_ok
from .dispatch import compute_messages, graph_def_message
from .memory import peak_rss
from .messages import Message, pack

__all__ = ["PROGRESS_INTERVAL", "SchedulerServer", "main"]

PROGRESS_INTERVAL = 0.5
"""Seconds between the counts of finished tasks sent to clients that asked for them."""


@dataclass
class _Worker:
    wid: int
    comm: Comm
    address: str
    name: str
    nthreads: int
    last_seen: float
    introduced: set[int] = field(default_factory=set)


def _any_seq(n: int) -> np.ndarray:
    """Assignment numbers that stand for any assignment (newer than every real one)."""
    return np.full(n, ANY_ASSIGNMENT, dtype=np.int32)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class SchedulerServer:
    def __init__(self, host: str = LOOPBACK, port: int = 0, *,
                 config: SchedulerConfig | None = None, record: bool = True,
                 auth_token: str | None = None, heartbeat_timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.state = SchedulerState(config)
        self.recorder = SpanRecorder("scheduler", enabled=record)
        self.auth_token = auth_token
        self.heartbeat_timeout = heartbeat_timeout
        self.workers: dict[int, _Worker] = {}
        self.clients: dict[str, Comm] = {}
        self.functions: dict[int, bytes] = {}  # segment id -> function table blob
        self.address = ""
        self._wids = itertools.count()
        self._cids = itertools.count()
        self._stim = itertools.count()
        self._server: asyncio.AbstractServer | None = None
        self._done = asyncio.Event()
        self._span_waiters: dict[int, asyncio.Future[Any]] = {}
        self._finished_buf: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._monitor: asyncio.Task[None] | None = None
        self._progress: asyncio.Task[None] | None = None
        # segment id -> (client, graph id, tasks finished last told) for graphs whose client
        # asked to hear how many tasks have finished
        self._watched: dict[int, tuple[str, str, int]] = {}

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> str:
        if self.host not in (LOOPBACK, "localhost", "::1") and not self.auth_token:
            print(f"warning: the scheduler listens on {self.host} without an auth token: "
                  f"anyone who can reach it can run code on its workers; set --auth-token "
                  f"or {TOKEN_ENV}", file=sys.stderr)
        load_codecs()  # not on the first graph's time to first task
        self._server, self.address = await serve(self._on_comm, self.host, self.port)
        self._monitor = asyncio.get_running_loop().create_task(self._watch_heartbeats())
        self._progress = asyncio.get_running_loop().create_task(self._tell_progress())
        return self.address

    async def wait_closed(self) -> None:
        await self._done.wait()

    async def close(self) -> None:
        if self._done.is_set():
            return
        for w in list(self.workers.values()):
            with contextlib.suppress(CommClosedError):
                w.comm.post_msg("close")
        for c in list(self.clients.values()):
            with contextlib.suppress(CommClosedError):
                c.post_msg("close")
        await asyncio.sleep(0.05)
        for comm in [w.comm for w in self.workers.values()] + list(self.clients.values()):
            await comm.close()
        for task in (self._monitor, self._progress):
            if task:
                task.cancel()
        if self._server:
            self._server.close()
        self._done.set()

    async def _watch_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.heartbeat_timeout / 4))
            now = time.monotonic()
            for w in list(self.workers.values()):
                if now - w.last_seen > self.heartbeat_timeout:
                    print(f"worker {w.name} sent nothing for {self.heartbeat_timeout} s: "
                          f"removing it", file=sys.stderr)
                    w.comm.abort()
                    self._remove_worker(w)

    async def _tell_progress(self) -> None:
        """Tell watching clients how many tasks of their graphs have finished: one small
        message per graph and interval, only when the count moved. Tasks recomputed after a
        worker was lost count again, so the count may reach the total a little early."""
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            for sid, (cid, graph_id, told) in list(self._watched.items()):
                seg = self.state.segments.get(sid)
                if seg is None or cid not in self.clients:
                    del self._watched[sid]
                    continue
                total = seg.n - len(seg.alias)  # tasks shared with older graphs run there
                done = min(seg.finished, total)
                if done != told:
                    self._to_client(cid, "progress", {"graph_id": graph_id, "done": done,
                                                      "total": total})
                    self._watched[sid] = (cid, graph_id, done)
                if done == total:
                    del self._watched[sid]

    # --- connections ---------------------------------------------------------------------------

    async def _on_comm(self, comm: Comm) -> None:
        try:
            hello = await asyncio.wait_for(comm.recv(), 10)
        except (CommClosedError, WireError, TimeoutError) as e:
            with contextlib.suppress(Exception):
                comm.post_msg("error", {"reason": f"bad or missing greeting: {e}"})
            return
        if self.auth_token is not None:
            token = hello.fields.get("token")
            if not token_ok(token, self.auth_token):
                comm.post_msg("error", {"reason": "authentication failed: wrong or missing "
                                                  "token"})
                return
        if hello.op == "hello-worker":
            await self._worker_loop(comm, hello)
        elif hello.op == "hello-client":
            await self._client_loop(comm, hello)
        else:
            comm.post_msg("error", {"reason": f"unknown greeting {hello.op!r}"})

    def _welcome(self, comm: Comm, hello: Message, fields: dict[str, Any]) -> None:
        comm.post_msg("welcome", {"t0": hello.fields.get("t0", 0), "t1": now_ns(),
                                  "clock": clock_identity(), "peers": self._peers(),
                                  "heartbeat": min(1.0, self.heartbeat_timeout / 4),
                                  **fields})

    def _peers(self) -> dict[str, str]:
        return {str(w.wid): w.address for w in self.workers.values()}

    def _broadcast_peers(self) -> None:
        peers = self._peers()
        for comm in [w.comm for w in self.workers.values()] + list(self.clients.values()):
            with contextlib.suppress(CommClosedError):
                comm.post_msg("peers", {"peers": peers})

    async def _worker_loop(self, comm: Comm, hello: Message) -> None:
        try:
            nthreads = int(hello["nthreads"])
            address = str(hello["address"])
            if nthreads < 1:
                raise ValueError(f"nthreads must be at least 1, got {nthreads}")
        except (WireError, TypeError, ValueError) as e:
            comm.post_msg("error", {"reason": f"bad worker greeting: {e}"})
            return
        wid = next(self._wids)
        w = _Worker(wid, comm, address, str(hello.fields.get("name", f"worker-{wid}")),
                    nthreads, time.monotonic())
        self.workers[wid] = w
        try:  # a worker that dies while greeted is removed like any other
            self._welcome(comm, hello, {"worker": wid})
            self._broadcast_peers()
            self._apply(self.state.handle(WorkerAddedEvent(stimulus_id=self._sid("add"),
                                                           worker=wid, nthreads=nthreads)))
            while True:
                msg = await comm.recv()
                w.last_seen = time.monotonic()
                self._on_worker_message(w, msg)
        except (CommClosedError, WireError):
            pass
        finally:
            self._remove_worker(w)

    def _remove_worker(self, w: _Worker) -> None:
        if self.workers.get(w.wid) is not w:
            return
        del self.workers[w.wid]
        w.comm.abort()  # nothing more is read from it: its reports are not trusted now
        for fut in self._span_waiters.values():
            if not fut.done():
                fut.set_result([])
        self._apply(self.state.handle(WorkerLostEvent(stimulus_id=self._sid("lost"),
                                                      worker=w.wid)))
        self._broadcast_peers()

    def _on_worker_message(self, w: _Worker, msg: Message) -> None:
        op = msg.op
        if op == "finished":
            # reports read in one loop iteration are handled together: one state call
            if not self._finished_buf:
                asyncio.get_running_loop().call_soon(self._flush_finished)
            ids = msg.array("ids")
            seq = msg.arrays.get("seq")
            self._finished_buf.append((w.wid, ids, _any_seq(len(ids)) if seq is None else seq))
        elif op == "erred":
            blob = bytes(msg.blobs[0]) if msg.blobs else b""
            self._run(TaskErredEvent(stimulus_id=self._sid("err"), worker=w.wid,
                                     id=int(msg["id"]), error=blob, text=str(msg["text"])),
                      Stage.execute, 1, msg)
        elif op == "data-lost":
            self._run(DataLostEvent(stimulus_id=self._sid("lost-data"), worker=w.wid,
                                    id=int(msg["id"]), missing=msg.array("missing")),
                      Stage.execute, 1, msg)
        elif op == "spans":
            fut = self._span_waiters.pop(int(msg["request"]), None)
            if fut is not None and not fut.done():
                fut.set_result(msg.fields)
        elif op == "held":
            fut = self._span_waiters.pop(int(msg["request"]), None)
            if fut is not None and not fut.done():
                fut.set_result(msg.array("ids"))
        elif op == "heartbeat":
            pass
        else:
            print(f"worker {w.name} sent unknown message {op!r}; ignored", file=sys.stderr)

    async def _client_loop(self, comm: Comm, hello: Message) -> None:
        cid = f"{hello.fields.get('name', 'client')}-{next(self._cids)}"
        self.clients[cid] = comm
        self._welcome(comm, hello, {"client": cid})
        try:
            while True:
                msg = await comm.recv()
                if msg.op == "graph":
                    self._on_graph(cid, comm, msg)
                elif msg.op == "release":
                    self._apply(self.state.handle(ClientReleasedKeysEvent(
                        stimulus_id=self._sid("release"), client=cid,
                        graph_id=str(msg["graph_id"]))))
                elif msg.op == "spans":
                    record = msg.fields.get("record")
                    rows, rss = await self._collect_spans(
                        bool(msg.fields.get("drain", True)),
                        None if record is None else bool(record))
                    comm.post_msg("spans", {"rows": rows, "rss": rss})
                elif msg.op == "info":
                    comm.post_msg("info", self.info())
                elif msg.op == "audit":
                    comm.post_msg("audit", await self._audit())
                elif msg.op == "shutdown":
                    comm.post_msg("bye")
                    await comm.flush()
                    asyncio.get_running_loop().create_task(self.close())
                    return
                else:
                    comm.post_msg("error", {"reason": f"unknown message type {msg.op!r}"})
        except WireError as e:
            with contextlib.suppress(CommClosedError):
                comm.post_msg("error", {"reason": f"malformed message: {e}"})
        except CommClosedError:
            pass
        finally:
            self.clients.pop(cid, None)
            self._apply(self.state.handle(ClientLostEvent(stimulus_id=self._sid("client-lost"),
                                                          client=cid)))

    def info(self) -> dict[str, Any]:
        return {"workers": len(self.workers), "tasks": self.state.n_tasks,
                "graphs": len(self.state.segments), "address": self.address,
                "threads": sum(w.nthreads for w in self.workers.values())}

    def _on_graph(self, cid: str, comm: Comm, msg: Message) -> None:
        received = now_ns()
        graph_id = str(msg["graph_id"])
        sent = msg.fields.get("sent_ns", received)
        if type(sent) is not int:
            sent = received  # not a time: no communicate span for this message
        nbytes = sum(len(b) for b in msg.blobs)
        if sent <= received:
            self.recorder.record(Stage.communicate, sent, received, nbytes=nbytes, messages=1)
        with self.recorder.span(Stage.update_graph, messages=1, nbytes=nbytes) as sp:
            try:
                wire: WireGraph = decode_graph(msg.blobs)
            except (WireError, GraphError) as e:
                comm.post_msg("graph-rejected", {"graph_id": graph_id, "reason": str(e)})
                return
            sp.tasks = wire.graph.n
            outputs = wire.outputs if wire.outputs is not None else msg.array("outputs")
            event = GraphSubmittedEvent(stimulus_id=self._sid("graph"), client=cid,
                                        graph_id=graph_id, graph=wire.graph, outputs=outputs)
            ins = self.state.handle(event, schedule=False)
            acc = next((i for i in ins if isinstance(i, GraphAccepted)), None)
            if acc is not None:
                self.functions[acc.segment] = wire.functions
                # when the scheduler chose the output ids (layers), the client learns them
                # (ids within the graph, in the order of the output layers' keys)
                arrays = {"outputs": outputs} if wire.outputs is not None else {}
                if acc.gids is not None:
                    # outputs may be tasks of other live graphs (keys defined there first,
                    # or named as existing results): their real ids, in the same order
                    arrays["gids"] = acc.gids
                comm.post_msg("graph-accepted", {"graph_id": graph_id, "base": acc.base,
                                                 "n": acc.n}, arrays or None)
                if msg.fields.get("progress"):
                    self._watched[acc.segment] = (cid, graph_id, 0)
        self._apply(ins)
        self._schedule_and_apply()

    def _flush_finished(self) -> None:
        buf, self._finished_buf = self._finished_buf, []
        by_worker: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for wid, ids, seq in buf:
            parts = by_worker.setdefault(wid, ([], []))
            parts[0].append(ids)
            parts[1].append(seq)
        events = [TasksFinishedEvent(stimulus_id=self._sid("done"), worker=wid,
                                     ids=_cat(ids), seqs=_cat(seqs))
                  for wid, (ids, seqs) in by_worker.items() if wid in self.workers]
        if not events:
            return
        with self.recorder.span(Stage.execute, tasks=sum(len(e.ids) for e in events),
                                messages=len(buf)):
            ins = self.state.handle(*events, schedule=False)
        self._apply(ins)
        self._schedule_and_apply()

    def _run(self, event: SchedulerEvent, stage: Stage, tasks: int, msg: Message) -> None:
        with self.recorder.span(stage, tasks=tasks, messages=1):
            ins = self.state.handle(event, schedule=False)
        self._apply(ins)
        self._schedule_and_apply()

    def _schedule_and_apply(self) -> None:
        n = self.state.pending_placement
        with self.recorder.span(Stage.schedule, tasks=n):
            ins = self.state.schedule()
        self._apply(ins)

    def _sid(self, what: str) -> str:
        return f"{what}-{next(self._stim)}"

    # --- instructions ----------------------------------------------------------------------------

    def _apply(self, instructions: list[Instruction]) -> None:
        if not instructions:
            return
        routed = route(instructions)
        for ins in routed.others:
            if isinstance(ins, KeysInMemory):
                self._to_client(ins.client, "in-memory", {"graph_id": ins.graph_id,
                                                          "done": ins.done},
                                {"ids": ins.ids, "workers": ins.workers})
            elif isinstance(ins, KeysErred):
                self._to_client(ins.client, "erred", {"graph_id": ins.graph_id, "key": ins.key,
                                                      "text": ins.text, "id": ins.id},
                                {"ids": ins.ids}, [ins.error])
            elif isinstance(ins, GraphRejected):
                self._to_client(ins.client, "graph-rejected", {"graph_id": ins.graph_id,
                                                               "reason": ins.reason})
        # each message to a worker names the scheduler event that caused it (``stim``)
        for w, cancel in routed.cancels.items():
            self._to_worker(w, "cancel", {"stim": cancel.stimulus_id}, {"ids": cancel.ids})
        if routed.sends:
            with self.recorder.span(Stage.dispatch, tasks=routed.n_sent) as sp:
                for (w, sid), send in routed.sends.items():
                    worker = self.workers.get(w)
                    if worker is None:
                        continue
                    if sid not in worker.introduced:
                        seg = self.state.segments[sid]
                        sp.nbytes += self._post(worker, graph_def_message(
                            seg, self.functions.get(sid, b"")))
                        worker.introduced.add(sid)
                    for frames in compute_messages(self.state, send):
                        sp.nbytes += self._post(worker, frames)
                        sp.messages += 1
        for w, rel in routed.releases.items():
            self._to_worker(w, "release", {"stim": rel.stimulus_id},
                            {"ids": rel.ids, "seq": rel.seqs})
        for sid in [i.segment for i in routed.others if isinstance(i, GraphForgotten)]:
            self.functions.pop(sid, None)
            for worker in self.workers.values():
                if sid in worker.introduced:
                    worker.introduced.discard(sid)
                    self._to_worker(worker.wid, "forget-graph",
                                    {"sid": sid, "stim": f"forget-graph-{sid}"})

    def _to_worker(self, w: int, op: str, fields: dict[str, Any],
                   arrays: dict[str, Any] | None = None) -> None:
        worker = self.workers.get(w)
        if worker is not None:
            self._post(worker, pack(op, fields, arrays))

    def _post(self, worker: _Worker, frames: list[Any]) -> int:
        """Queue a message to ``worker``; returns its size. A connection found closed means
        the worker is gone even if its reader has not noticed yet: the message is dropped
        and the worker removed on the next loop iteration, which hands its tasks to others.
        Never raises, so that the instructions after this one are still carried out."""
        try:
            return worker.comm.post(frames)
        except CommClosedError:
            asyncio.get_running_loop().call_soon(self._remove_worker, worker)
            return 0

    def _to_client(self, cid: str, op: str, fields: dict[str, Any],
                   arrays: dict[str, Any] | None = None,
                   blobs: Sequence[bytes] = ()) -> None:
        comm = self.clients.get(cid)
        if comm is not None:
            with contextlib.suppress(CommClosedError):
                comm.post_msg(op, fields, arrays, blobs)

    async def _audit(self) -> dict[str, Any]:
        """What the scheduler tracks against what each worker holds: per worker, results
        it holds (``held``), those the scheduler knows there (``tracked``), and those it holds
        that no graph of any client wants or needs (``untracked``: a leak once quiet); and
        the sizes of the scheduler's indexes beside its graphs (``bookkeeping``)."""
        waits: dict[int, asyncio.Future[Any]] = {}
        for w in list(self.workers.values()):
            req = next(self._stim)
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._span_waiters[req] = fut
            with contextlib.suppress(CommClosedError):
                w.comm.post_msg("held", {"request": req})
            waits[w.wid] = fut
        if waits:
            await asyncio.wait(list(waits.values()), timeout=10)
        workers: dict[str, dict[str, int]] = {}
        for wid, fut in waits.items():
            w = self.workers.get(wid)
            if w is None or not fut.done() or not isinstance(fut.result(), np.ndarray):
                continue
            held = fut.result()
            tracked = self.state.results_on(wid)
            workers[w.name] = {"held": len(held), "tracked": len(tracked),
                               "untracked": int((~np.isin(held, tracked)).sum())}
        return {"tasks": self.state.n_tasks, "graphs": len(self.state.segments),
                "results": self.state.n_results, "workers": workers,
                "bookkeeping": {**self.state.bookkeeping(), "functions": len(self.functions)}}

    async def _collect_spans(self, drain: bool, record: bool | None = None
                             ) -> tuple[list[list[Any]], dict[str, int]]:
        """Spans of the scheduler and its workers, and each one's peak resident bytes since
        the last drain (``drain`` starts a new period everywhere); ``record``, if given,
        turns recording on or off everywhere from then on."""
        rows: list[list[Any]] = [list(r) for r in (self.recorder.drain() if drain
                                                  else self.recorder.rows())]
        if record is not None:
            self.recorder.enabled = record
        rss = {"scheduler": peak_rss(reset=drain)}
        waits = []
        for w in list(self.workers.values()):
            req = next(self._stim)
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._span_waiters[req] = fut
            with contextlib.suppress(CommClosedError):
                ask: dict[str, Any] = {"request": req, "drain": drain}
                if record is not None:
                    ask["record"] = record
                w.comm.post_msg("spans", ask)
            waits.append(fut)
        if waits:
            done, _ = await asyncio.wait(waits, timeout=10)
            for fut in done:
                reply = fut.result()
                rows.extend(reply["rows"])
                rss.update(reply.get("rss", {}))
        return rows, rss


async def _main_async(args: argparse.Namespace) -> None:
    token = args.auth_token or os.environ.get(TOKEN_ENV) or None
    server = SchedulerServer(args.host, args.port, record=not args.no_record,
                             auth_token=token, heartbeat_timeout=args.heartbeat_timeout)
    address = await server.start()
    print(f"ADDRESS {address}", flush=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: loop.create_task(server.close()))
    if args.parent_pid:
        loop.create_task(_exit_with_parent(args.parent_pid, server))
    await server.wait_closed()


async def _exit_with_parent(pid: int, server: SchedulerServer) -> None:
    while True:
        await asyncio.sleep(0.5)
        if os.getppid() != pid:
            await server.close()
            return


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="stagecost scheduler",
                                description="Run a stagecost reference scheduler.")
    p.add_argument("--host", default=LOOPBACK, help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=8786, help="port (0: any free port)")
    p.add_argument("--auth-token", default=None,
                   help=f"shared secret required from workers and clients (or ${TOKEN_ENV})")
    p.add_argument("--heartbeat-timeout", type=float, default=30.0,
                   help="seconds of silence after which a worker is removed")
    p.add_argument("--no-record", action="store_true", help="do not record stage spans")
    p.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    asyncio.run(_main_async(args))


if __name__ == "__main__":
    main()
