"""The client: submits graphs, waits for results, gathers them from workers.

Public API: ``Client(address)`` (or ``Client(cluster)``), ``compute(graph, outputs)``,
``get(dsk, keys)`` (Dask's custom-scheduler protocol: ``dask.compute(x, scheduler=client.get)``),
``submit(func, *args)`` returning a ``Future``, ``gather(futures)``, ``spans()``, ``close()``.

Rules: the client runs an asyncio loop on a background thread and its public methods block
with timeouts. It records the client-side stages (``generate`` and ``optimize`` for Dask
graphs, ``serialize``, and ``execute`` for gathering results). It trusts workers (it unpickles
their results and errors); the scheduler never sees a pickle of ours opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import pickle
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..graph.errors import GraphError
from ..graph.keys import Key
from ..graph.layers import LayerGraph
from ..graph.lowgraph import TaskGraph
from ..graph.task import Ref, Task
from ..stages import SpanRecorder, SpanRow, Stage
from ..wire.encodings import encode_graph
from ..wire.frames import WireError
from .clocks import clock_identity, estimate_offset, now_ns
from .comm import TOKEN_ENV, Comm, CommClosedError, connect
from .messages import Message

__all__ = ["Client", "Future", "RemoteTraceback", "RunResult"]

T = TypeVar("T")


class RemoteTraceback(Exception):
    """The traceback of a task that failed on a worker (set as ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\nTraceback on the worker:\n{self.text}"


@dataclass
class RunResult:
    """What ``Client.run`` returns: results by key and the run's timings (client clock)."""

    results: dict[Key, Any]
    t_submit_ns: int
    t_done_ns: int
    graph_id: str
    nbytes: int


@dataclass
class _Pending:
    graph: TaskGraph
    out_ids: np.ndarray          # graph-local ids, sorted
    out_keys: list[Key]          # keys in the order of out_ids
    accepted: asyncio.Future[int]
    finished: asyncio.Future[None]
    held: dict[int, int] = field(default_factory=dict)   # global id -> worker
    base: int = -1
    order: np.ndarray | None = None  # outputs as sent -> out_ids order (None: the same)
    out_gids: np.ndarray | None = None  # ids of out_ids on the cluster (None: base + out_ids)
    error: BaseException | None = None
    progress: Callable[[int, int], None] | None = None
    task_progress: Callable[[int, int], None] | None = None


class Future:
    """A result of ``Client.submit``; ``result()`` waits for it."""

    def __init__(self, client: Client, key: Key, graph_id: str) -> None:
        self.client = client
        self.key = key
        self.graph_id = graph_id
        self._value: Any = None
        self._have = False
        self._finalizer = weakref.finalize(self, client.release_soon, graph_id)

    def result(self, timeout: float | None = 60.0) -> Any:
        if not self._have:
            self._value = self.client._wait_future(self, timeout)
            self._have = True
        return self._value

    def release(self) -> None:
        self._finalizer()

    def __repr__(self) -> str:
        return f"<Future {self.key!r}>"


class Client:
    def __init__(self, address: Any, *, name: str = "client", timeout: float = 30.0,
                 record: bool = True, encoding: str = "compact",
                 auth_token: str | None = None) -> None:
        if hasattr(address, "address"):
            address = address.address
        self.address = str(address)
        self.name = name
        self.timeout = timeout
        self.encoding = encoding
        self.recorder = SpanRecorder("client", enabled=record)
        self.auth_token = auth_token or os.environ.get(TOKEN_ENV) or None
        self.offset_ns = 0   # scheduler clock minus ours
        self.peers: dict[int, str] = {}
        self._ids = itertools.count()
        self._pending: dict[str, _Pending] = {}
        self._replies: list[tuple[str, asyncio.Future[Message]]] = []
        self._worker_comms: dict[str, Comm] = {}
        self._worker_locks: dict[str, asyncio.Lock] = {}
        self._comm: Comm | None = None
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="stagecost-client")
        self._thread.start()
        try:
            self._sync(self._connect(), timeout)
        except BaseException:
            self._stop_loop()
            raise

    # --- plumbing ------------------------------------------------------------------------------

    def _sync(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("this client is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise TimeoutError(f"no answer from the cluster at {self.address} within "
                               f"{timeout} s") from None

    async def _connect(self) -> None:
        comm = await connect(self.address, self.timeout)
        t0 = now_ns()
        hello: dict[str, Any] = {"name": self.name, "t0": t0, "clock": clock_identity()}
        if self.auth_token:
            hello["token"] = self.auth_token
        welcome = await comm.request("hello-client", hello, timeout=self.timeout)
        t2 = now_ns()
        if welcome.op != "welcome":
            await comm.close()
            raise ConnectionRefusedError(f"the scheduler refused this client: "
                                         f"{welcome.fields.get('reason', welcome.op)}")
        self.offset_ns = estimate_offset(t0, int(welcome["t1"]), t2, str(welcome["clock"]))
        self.peers = {int(k): v for k, v in welcome["peers"].items()}
        self._comm = comm
        self._loop.create_task(self._listen(comm))

    async def _listen(self, comm: Comm) -> None:
        try:
            while True:
                msg = await comm.recv()
                self._on_message(msg)
        except (CommClosedError, WireError) as e:
            err = ConnectionError(f"lost the connection to the scheduler at {self.address}: "
                                  f"{e}")
            for p in self._pending.values():
                for pf in (p.accepted, p.finished):
                    if not pf.done():
                        pf.set_exception(err)
            for _, rf in self._replies:
                if not rf.done():
                    rf.set_exception(err)

    def _on_message(self, msg: Message) -> None:
        op = msg.op
        gid = msg.fields.get("graph_id")
        p = self._pending.get(gid) if gid is not None else None
        if op == "graph-accepted" and p is not None:
            p.base = int(msg["base"])
            if "outputs" in msg.arrays:  # layers: graph ids chosen by the scheduler
                local = msg.array("outputs").copy()
                if len(local) > 1 and not (np.diff(local) > 0).all():
                    order = np.argsort(local, kind="stable")
                    local = local[order]
                    p.out_keys = [p.out_keys[i] for i in order.tolist()]
                    p.order = order
                p.out_ids = local
            if "gids" in msg.arrays:  # some outputs are tasks of other graphs (shared keys)
                gids = msg.array("gids")
                p.out_gids = gids if p.order is None else gids[p.order]
            if not p.accepted.done():
                p.accepted.set_result(p.base)
        elif op == "graph-rejected" and p is not None:
            err = GraphError(f"the scheduler rejected the graph: {msg['reason']}")
            for f in (p.accepted, p.finished):
                if not f.done():
                    f.set_exception(err)
        elif op == "in-memory" and p is not None:
            p.held.update(zip(msg.array("ids").tolist(), msg.array("workers").tolist(),
                              strict=True))
            if p.progress is not None:
                p.progress(len(p.held), len(p.out_ids))
            if msg["done"] and not p.finished.done():
                p.finished.set_result(None)
        elif op == "progress" and p is not None:
            if p.task_progress is not None:
                p.task_progress(int(msg["done"]), int(msg["total"]))
        elif op == "erred" and p is not None:
            if not p.finished.done():
                p.finished.set_exception(_remote_error(msg))
        elif op == "peers":
            self.peers = {int(k): v for k, v in msg["peers"].items()}
        elif op in ("spans", "info", "audit", "bye", "error"):
            for i, (want, reply) in enumerate(self._replies):
                if want == op or op == "error":
                    del self._replies[i]
                    if op == "error":
                        reply.set_exception(RuntimeError(
                            f"the scheduler says: {msg['reason']}"))
                    else:
                        reply.set_result(msg)
                    break
        elif op == "close":
            pass

    async def _ask(self, op: str, fields: dict[str, Any] | None = None,
                   reply: str | None = None) -> Message:
        assert self._comm is not None
        fut: asyncio.Future[Message] = self._loop.create_future()
        self._replies.append((reply or op, fut))
        self._comm.post_msg(op, fields)
        return await asyncio.wait_for(fut, self.timeout)

    # --- graphs --------------------------------------------------------------------------------

    def compute(self, graph: TaskGraph | LayerGraph, outputs: Sequence[Key], *,
                encoding: str | None = None, timeout: float | None = None) -> dict[Key, Any]:
        """Run ``graph`` on the cluster; return ``{key: value}`` for ``outputs``."""
        return self.run(graph, outputs, encoding=encoding, timeout=timeout).results

    def run(self, graph: TaskGraph | LayerGraph, outputs: Sequence[Key] | None = None, *,
            encoding: str | None = None, timeout: float | None = None,
            release: bool = True, output_layers: Sequence[str] | None = None,
            progress: Callable[[int, int], None] | None = None,
            task_progress: Callable[[int, int], None] | None = None) -> RunResult:
        """Like ``compute``, with timings; ``timeout=None`` waits as long as it takes.
        ``progress(done, total)`` is called (on the client's loop thread) as outputs land;
        ``task_progress(finished, total)`` about twice a second while the count of the
        graph's finished tasks moves (the scheduler counts them; a graph with few outputs,
        such as a reduction, shows its progress only there).

        With ``encoding="layers"``, ``graph`` is a ``LayerGraph`` sent as layers and lowered
        by the scheduler; the outputs are every key of ``output_layers`` (or of the layers
        whose keys ``outputs`` lists, which must then be all of their keys)."""
        encoding = encoding or self.encoding
        if encoding == "layers":
            if not isinstance(graph, LayerGraph):
                raise TypeError("the layers encoding sends a LayerGraph, got "
                                f"{type(graph).__name__}")
            names = list(output_layers) if output_layers is not None else \
                _whole_layers(graph, outputs or [])
            return self._sync_graph(self._run_layers(graph, names, release, progress,
                                                     task_progress), timeout)
        if outputs is None:
            raise TypeError("outputs (the keys wanted) are required")
        if isinstance(graph, LayerGraph):
            with self.recorder.span(Stage.generate) as sp:
                graph = graph.lower()
                sp.tasks = graph.n
        return self._sync_graph(self._run(graph, list(outputs), encoding, release, progress,
                                          task_progress), timeout)

    def _sync_graph(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """``_sync`` for a graph: a timeout says what the cluster was doing meanwhile (a
        cluster left without workers cannot finish anything)."""
        try:
            return self._sync(coro, timeout)
        except TimeoutError as e:
            try:
                info = self._sync(self._ask("info"), 5)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                raise e from None
            why = (f"; the scheduler holds {info['tasks']} tasks of {info['graphs']} graphs "
                   f"and has {info['workers']} workers")
            if not info["workers"]:
                why += " (nothing runs until a worker joins)"
            raise TimeoutError(f"{e}{why}") from None

    async def _run_layers(self, layers: LayerGraph, names: list[str], release: bool,
                          progress: Callable[[int, int], None] | None,
                          task_progress: Callable[[int, int], None] | None) -> RunResult:
        from ..wire.layers import output_keys

        assert self._comm is not None
        t_submit = now_ns()
        graph_id = f"{self.name}-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        with self.recorder.span(Stage.serialize, tasks=layers.n_tasks, messages=1) as sp:
            frames = encode_graph(layers, "layers", outputs=names)
            nbytes = sum(len(f) for f in frames)
            sp.nbytes = nbytes
        self._comm.post_msg("graph", {"graph_id": graph_id, "sent_ns": now_ns() + self.offset_ns,
                                      "encoding": "layers", "progress": task_progress is not None},
                            None, frames)
        self._comm.send_now()
        # the output keys are only needed for the answer: made while the scheduler lowers
        # the graph (no await before the pending entry exists, so no reply can come first)
        keys = output_keys(layers, names)
        p = _Pending(TaskGraph([]), np.arange(len(keys), dtype=np.int64), keys,
                     self._loop.create_future(), self._loop.create_future())
        p.accepted.add_done_callback(_consume)
        p.finished.add_done_callback(_consume)
        p.progress = progress
        p.task_progress = task_progress
        self._pending[graph_id] = p
        values = await self._results(graph_id, p, release)
        return RunResult(values, t_submit, now_ns(), graph_id, nbytes)

    async def _submit(self, graph: TaskGraph, outputs: list[Key], encoding: str,
                      progress: Callable[[int, int], None] | None = None,
                      task_progress: Callable[[int, int], None] | None = None
                      ) -> tuple[str, _Pending, int]:
        assert self._comm is not None
        graph_id = f"{self.name}-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        with self.recorder.span(Stage.serialize, tasks=graph.n, messages=1) as sp:
            out_ids = graph.ids_of(outputs)  # output keys as ids: part of the request's encoding
            order = np.argsort(out_ids, kind="stable")
            p = _Pending(graph, out_ids[order], [outputs[i] for i in order.tolist()],
                         self._loop.create_future(), self._loop.create_future(), order=order)
            frames = encode_graph(graph, encoding)
            sp.nbytes = sum(len(f) for f in frames)
        p.accepted.add_done_callback(_consume)
        p.finished.add_done_callback(_consume)
        p.progress, p.task_progress = progress, task_progress
        self._pending[graph_id] = p
        sent = now_ns()
        self._comm.post_msg("graph", {"graph_id": graph_id, "sent_ns": sent + self.offset_ns,
                                      "encoding": encoding,
                                      "progress": task_progress is not None},
                            {"outputs": out_ids}, frames)
        return graph_id, p, sp.nbytes if self.recorder.enabled else sum(len(f) for f in frames)

    async def _run(self, graph: TaskGraph, outputs: list[Key], encoding: str,
                   release: bool, progress: Callable[[int, int], None] | None = None,
                   task_progress: Callable[[int, int], None] | None = None) -> RunResult:
        t_submit = now_ns()
        graph_id, p, nbytes = await self._submit(graph, outputs, encoding, progress,
                                                 task_progress)
        values = await self._results(graph_id, p, release)
        return RunResult(values, t_submit, now_ns(), graph_id, nbytes)

    async def _results(self, graph_id: str, p: _Pending, release: bool) -> dict[Key, Any]:
        """Wait until the graph is accepted and done, gather its outputs, release it (also
        when anything fails, so that the cluster forgets it)."""
        try:
            await p.accepted
            await p.finished
            return await self._gather_pending(p)
        finally:
            if release:
                self._release(graph_id)

    async def _gather_pending(self, p: _Pending) -> dict[Key, Any]:
        want = (p.out_ids + p.base if p.out_gids is None else p.out_gids).tolist()
        got: dict[int, Any] = {}
        deadline = time.monotonic() + 600
        with self.recorder.span(Stage.execute, tasks=len(want)) as sp:
            while True:
                todo = [g for g in want if g not in got]
                if not todo:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("results stayed unreachable for 600 s")
                by_worker: dict[int, list[int]] = {}
                for g in todo:
                    w = p.held.get(g)
                    if w is not None:
                        by_worker.setdefault(w, []).append(g)
                results = await asyncio.gather(*(self._fetch(w, ids)
                                                 for w, ids in by_worker.items()))
                for values, nb in results:
                    got.update(values)
                    sp.nbytes += nb
                    sp.messages += 1
                if len(got) < len(want):
                    # a holder died: the scheduler recomputes and tells us where, again
                    for g in todo:
                        if g not in got:
                            p.held.pop(g, None)
                    await asyncio.sleep(0.05)
        return {k: got[g] for k, g in zip(p.out_keys, want, strict=True)}

    async def _fetch(self, worker: int, ids: list[int]) -> tuple[dict[int, Any], int]:
        address = self.peers.get(worker)
        if address is None:
            return {}, 0
        lock = self._worker_locks.setdefault(address, asyncio.Lock())
        async with lock:
            try:
                comm = self._worker_comms.get(address)
                if comm is None or comm.closed:
                    comm = await connect(address, self.timeout)
                    hello: dict[str, Any] = {"name": self.name}
                    if self.auth_token:
                        hello["token"] = self.auth_token
                    comm.post_msg("hello-peer", hello)
                    self._worker_comms[address] = comm
                reply = await comm.request("get-data", {},
                                           {"ids": np.asarray(ids, dtype=np.int64)},
                                           timeout=300)
            except (CommClosedError, TimeoutError, OSError):
                self._worker_comms.pop(address, None)
                return {}, 0
        bad = reply.fields.get("unserializable") or {}
        if bad:
            gid, reason = next(iter(bad.items()))
            raise TypeError(f"the result of task id {gid} could not be serialised on its "
                            f"worker: {reason}")
        nbytes = len(reply.blobs[0]) if reply.blobs else 0
        return (pickle.loads(reply.blobs[0]) if reply.blobs else {}), nbytes

    def _release(self, graph_id: str) -> None:
        self._pending.pop(graph_id, None)
        if self._comm is not None and not self._comm.closed:
            with contextlib.suppress(CommClosedError):
                self._comm.post_msg("release", {"graph_id": graph_id})

    def holders(self, graph_id: str | None = None) -> dict[int, int]:
        """Where the results of a live graph are held (global task id -> worker id), as this
        client last heard; without ``graph_id``, those of the oldest live graph."""
        p = next(iter(self._pending.values()), None) if graph_id is None else \
            self._pending.get(graph_id)
        if p is None:
            raise KeyError(f"no live graph {graph_id!r} on this client" if graph_id else
                           "no live graph on this client")
        return dict(p.held)

    def release_soon(self, graph_id: str) -> None:
        """Release ``graph_id`` from any thread (the release runs on the client's loop)."""
        if not self._closed and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._release, graph_id)

    # --- Dask's custom-scheduler protocol ------------------------------------------------------

    def get(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        """``dask.compute(x, scheduler=client.get)``: run a Dask graph here.

        Returns what Dask's own ``get`` does (``dask.local.get_sync``): for a single key its
        value, for a list of keys a tuple of values, for nested lists nested tuples
        (``[]`` gives ``()``). Keys are any Dask keys (nested tuples included); extra keyword
        arguments that ``dask.compute`` forwards are accepted and ignored."""
        from ..graph.dask_import import flatten_keys, from_dask, pack_results
        from ..graph.optimize import cull

        with self.recorder.span(Stage.generate) as sp:
            graph = from_dask(dsk)
            sp.tasks = graph.n
        flat = flatten_keys(keys)
        with self.recorder.span(Stage.optimize, tasks=graph.n):
            graph = cull(graph, flat)
        results = self.compute(graph, flat)
        return pack_results(keys, results.__getitem__)

    # --- futures -------------------------------------------------------------------------------

    def submit(self, func: Any, *args: Any, key: Key | None = None, **kwargs: Any) -> Future:
        """Run ``func(*args, **kwargs)`` on the cluster; ``Future`` arguments are replaced by
        their results (on the workers)."""
        if key is None:  # 0, "" and () are keys too
            key = f"{getattr(func, '__name__', 'task')}-{uuid.uuid4().hex}"
        external: dict[Key, None] = {}

        def swap(value: Any) -> Any:
            if isinstance(value, Future):
                external[value.key] = None
                return Ref(value.key)
            if isinstance(value, list | tuple):
                items = [swap(v) for v in value]
                return items if isinstance(value, list) else tuple(items)
            if isinstance(value, dict):
                return {k: swap(v) for k, v in value.items()}
            return value

        task = Task(func, *[swap(a) for a in args], **{k: swap(v) for k, v in kwargs.items()})
        graph = TaskGraph.from_dict({key: task}, external=list(external))
        graph_id, _, _ = self._sync(self._submit(graph, [key], self.encoding), self.timeout)
        return Future(self, key, graph_id)

    def _wait_future(self, fut: Future, timeout: float | None) -> Any:
        async def wait() -> Any:
            p = self._pending.get(fut.graph_id)
            if p is None:
                raise RuntimeError(f"{fut!r} was released")
            await p.accepted
            await p.finished
            values = await self._gather_pending(p)
            return values[fut.key]

        return self._sync(wait(), timeout)

    def gather(self, futures: Iterable[Future], timeout: float | None = 60.0) -> list[Any]:
        return [f.result(timeout) for f in futures]

    # --- measurements and admin ----------------------------------------------------------------

    def spans(self, drain: bool = True) -> list[SpanRow]:
        """Every span recorded so far by this client, the scheduler and its workers, on this
        client's clock. ``drain`` forgets them everywhere."""
        return self.collect(drain)[0]

    def collect(self, drain: bool = True, record: bool | None = None
                ) -> tuple[list[SpanRow], dict[str, int]]:
        """``spans(drain)``, and the peak resident bytes of the scheduler and of each worker
        (by role: ``scheduler``, ``worker-0``, ...) since the previous drain; ``drain``
        starts a new period everywhere. A worker that did not answer within 10 s is missing
        from both. ``record``, if given, turns span recording on or off from now on, in
        this client, the scheduler and the workers that answered (between two runs: a run
        under way would be recorded in part)."""
        fields: dict[str, Any] = {"drain": drain}
        if record is not None:
            fields["record"] = bool(record)
        msg = self._sync(self._ask("spans", fields), self.timeout)
        rows = self.recorder.drain() if drain else self.recorder.rows()
        if record is not None:
            self.recorder.enabled = bool(record)
        off = self.offset_ns
        for r in msg["rows"]:
            rows.append(SpanRow(int(r[0]), str(r[1]), int(r[2]) - off, int(r[3]) - off,
                                int(r[4]), int(r[5]), int(r[6])))
        rss = {str(k): int(v) for k, v in (msg.fields.get("rss") or {}).items()}
        return rows, rss

    def info(self) -> dict[str, Any]:
        return self._sync(self._ask("info"), self.timeout).fields

    def audit(self) -> dict[str, Any]:
        """What the cluster holds: the scheduler's live ``tasks``, ``graphs`` and ``results``
        (held by workers, as it knows them), and per worker name the results it ``held``,
        how many of them the scheduler ``tracked`` there, and ``untracked`` ones: results no
        graph of any client wants or needs; and ``bookkeeping``, the sizes of the scheduler's
        indexes beside its graphs (all 0 when none is live). Right after results land a few
        may still be on their way to the scheduler; on a quiet cluster ``untracked`` is 0."""
        return self._sync(self._ask("audit"), self.timeout).fields

    def wait_for_workers(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            have = self.info()["workers"]
            if have >= n:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{have} of {n} workers joined within {timeout} s")
            time.sleep(0.05)

    def shutdown(self) -> None:
        """Stop the scheduler and its workers."""
        with contextlib.suppress(Exception):
            self._sync(self._ask("shutdown", reply="bye"), 10)
        self.close()

    def close(self) -> None:
        if self._closed:
            return

        async def _close() -> None:
            for c in list(self._worker_comms.values()):
                await c.close()
            if self._comm is not None:
                await self._comm.close()

        with contextlib.suppress(Exception):
            self._sync(_close(), 10)
        self._closed = True
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.address} {'closed' if self._closed else 'open'}>"


def _whole_layers(layers: LayerGraph, outputs: Sequence[Key]) -> list[str]:
    """Names of the layers whose keys ``outputs`` are, checking that they are all of them."""
    from ..graph.keys import key_name

    names: list[str] = []
    missing: list[Hashable] = []
    for nm in dict.fromkeys(key_name(k) for k in outputs):
        if isinstance(nm, str) and nm in layers.layers:
            names.append(nm)
        else:
            missing.append(nm)
    if missing:
        raise ValueError(f"the layers encoding asks for whole layers; {missing!r} are not "
                         f"layers of this graph")
    if sum(math.prod(layers[nm].shape) for nm in names) != len(set(outputs)):
        raise ValueError("the layers encoding asks for every key of its output layers; pass "
                         "output_layers=[...] or use the compact encoding for a subset")
    return names


def _consume(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as retrieved (it is re-raised where awaited)."""
    if not fut.cancelled():
        fut.exception()


def _remote_error(msg: Message) -> BaseException:
    return remote_error(msg.key("key"), msg.blobs[0] if msg.blobs else b"", str(msg["text"]))


def remote_error(key: Key, blob: Any, text: str) -> BaseException:
    """The exception a task ``key`` raised on a worker (``blob``: its pickle, maybe empty),
    with the worker's traceback ``text`` as its cause; both name the key (``key_repr``)."""
    from ..graph.keys import key_repr

    shown = key_repr(key)
    try:
        exc = pickle.loads(blob) if len(blob) else RuntimeError(text)
        if not isinstance(exc, BaseException):
            raise TypeError
    except Exception:
        last = text.strip().splitlines()[-1:] or ["(no traceback was sent)"]
        exc = RuntimeError(f"task {shown} failed: {last[0]}")
    exc.__cause__ = RemoteTraceback(f"(task {shown})\n{text}")
    with contextlib.suppress(Exception):
        exc.add_note(f"raised by task {shown} on a stagecost worker")
    return exc
