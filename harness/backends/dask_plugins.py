"""Timing code installed inside Dask's processes (scheduler, workers, local-pool children).

Rules of this module:

- It imports only the standard library at module level: it is imported by Dask's scheduler,
  its workers and the children of the ``dask-processes`` pool, by reference, so those processes
  need this package importable (same environment) and nothing else.
- Stages are timed by wrapping Dask's own functions at their call boundaries; nothing is copied
  from Dask. A wrapper opens a *frame*; frames nest per thread and time is exclusive: a
  frame's busy time is its duration minus that of the frames nested in it. So one call that runs
  two stages is split only where Dask itself calls a separate function, never by guessing.
  Frames with stage ``None`` are idle (waiting for results) and count for nothing.
- Coroutines are timed step by step (``timed_async``): only the synchronous stretches between
  two ``await``s count, so waiting for a socket or a thread never counts as work.
- Spans are per batch: a wrapped function called once per task (a transition, a task run)
  would make one span per task, so consecutive calls of one stage in one thread are coalesced
  into a span while they follow each other closely (``GAP_NS``) within ``WINDOW_NS``. A
  coalesced span starts when its first call started and lasts the *sum* of its calls' busy
  time: busy seconds are exact, and a timeline is compressed within one window at most.
- State lives on the object instrumented (``_stagecost`` on Dask's scheduler or worker) or in
  closures; the module keeps none. Every patch is undone by ``Patches.restore`` (LIFO, and
  only where the patched value is still ours).
- Rows are plain tuples ``(stage name, role, start_ns, end_ns, tasks, nbytes, messages)`` on
  this host's ``time.perf_counter_ns`` clock; the backend turns them into ``SpanRow``s.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["GAP_NS", "WINDOW_NS", "Patches", "StageClock", "TimedBatch", "drain_scheduler",
           "drain_worker", "execute_batch_timed", "install_scheduler", "install_worker",
           "scheduler_task_count", "scheduler_task_progress",
           "timed", "timed_async", "uninstall_scheduler", "uninstall_worker"]

GAP_NS = 50_000_000
"""Calls of one stage in one thread less than this apart are coalesced into one span."""
WINDOW_NS = 500_000_000
"""A coalesced span covers calls that started within this long of its first call."""

_ATTR = "_stagecost"
_perf_ns = time.perf_counter_ns

Row = tuple[str, str, int, int, int, int, int]


class _Lane:
    """What one thread records: its open frames and its coalescing spans (only that thread
    writes them; ``StageClock.drain`` reads them once the run is over)."""

    __slots__ = ("stack", "acc", "rows")

    def __init__(self, timed: bool) -> None:
        self.stack: list[list[Any]] | None = [] if timed else None
        self.acc: dict[tuple[Any, ...], list[int]] = {}
        self.rows: list[Row] = []


class StageClock:
    """Exclusive, nested stage timing for one process role, coalescing per-call spans.

    ``accept(thread)`` (optional) says whether a thread's calls count; it is asked once per
    thread. A thread it rejects gets no frames (``push`` returns ``None``).
    """

    __slots__ = ("role", "gap_ns", "window_ns", "marks", "_accept", "_local", "_lanes",
                 "_lock", "_thread_roles")

    def __init__(self, role: str, *, accept: Callable[[threading.Thread], bool] | None = None,
                 gap_ns: int = GAP_NS, window_ns: int = WINDOW_NS) -> None:
        self.role = role
        self.gap_ns = gap_ns
        self.window_ns = window_ns
        self.marks: dict[str, list[int]] = {}
        self._accept = accept
        self._local = threading.local()
        self._lanes: list[_Lane] = []
        self._lock = threading.Lock()
        self._thread_roles: dict[int, str] = {}

    def _lane(self) -> _Lane:
        try:
            return self._local.lane
        except AttributeError:
            lane = _Lane(self._accept is None or self._accept(threading.current_thread()))
            with self._lock:
                self._lanes.append(lane)
            self._local.lane = lane
            return lane

    def key(self, stage: str | None, role: str | None = None) -> tuple[str, str] | None:
        """What a frame of ``stage`` is charged to: (role, stage); ``None`` for idle."""
        return None if stage is None else (role or self.role, stage)

    def top(self) -> list[Any] | None:
        """The innermost open frame of this thread, if any (``frame[0]`` is its key)."""
        stack = self._lane().stack
        return stack[-1] if stack else None

    def push(self, key: tuple[str, str] | None, tasks: int = 0,
             messages: int = 0) -> list[Any] | None:
        """Open a frame charged to ``key`` (see ``key``); returns it (``frame[2:5]`` are its
        tasks, bytes, messages) or ``None`` if this thread is not timed. Every frame
        returned must be closed by ``pop`` in the same thread.

        This is the hot path (a wrapped Dask call costs one ``push`` and one ``pop``): it
        takes the clock once and appends; the enclosing frame is not touched, ``pop`` takes
        the closed frame's whole duration off it instead (``frame[5]``: time of the frames
        nested in it)."""
        try:
            stack = self._local.lane.stack
        except AttributeError:
            stack = self._lane().stack
        if stack is None:
            return None
        frame = [key, _perf_ns(), tasks, 0, messages, 0]
        stack.append(frame)
        return frame

    def pop(self) -> None:
        now = _perf_ns()
        lane: _Lane = self._local.lane
        stack: list[list[Any]] = lane.stack  # type: ignore[assignment]
        key, start, tasks, nbytes, messages, nested = stack.pop()
        if stack:
            stack[-1][5] += now - start
        if key is None:
            return
        acc = lane.acc.get(key)
        if acc is not None and start - acc[2] <= self.gap_ns and (
                start - acc[0] <= self.window_ns):
            acc[1] += now - start - nested
            acc[2] = now
            acc[3] += tasks
            acc[4] += nbytes
            acc[5] += messages
            return
        self._charge(lane, key, start, now, tasks, nbytes, messages, nested)

    @contextlib.contextmanager
    def frame(self, stage: str | None, role: str | None = None,
              tasks: int = 0) -> Iterator[list[Any] | None]:
        f = self.push(self.key(stage, role), tasks)
        try:
            yield f
        finally:
            if f is not None:
                self.pop()

    def add(self, stage: str, role: str, start_ns: int, end_ns: int, *, tasks: int = 0,
            nbytes: int = 0, messages: int = 0, lane: Any = None) -> None:
        """A span measured elsewhere (another process), coalesced per ``lane``."""
        self._charge(self._lane(), (role, stage, lane), start_ns, end_ns, tasks, nbytes,
                     messages)

    def thread_role(self, prefix: str = "worker") -> str:
        """``prefix-k``: a stable name for this thread, k counting threads as they come."""
        ident = threading.get_ident()
        role = self._thread_roles.get(ident)
        if role is None:
            with self._lock:
                role = self._thread_roles.setdefault(ident,
                                                     f"{prefix}-{len(self._thread_roles)}")
        return role

    def _charge(self, lane: _Lane, key: tuple[Any, ...], start: int, end: int, tasks: int,
                nbytes: int, messages: int, nested: int = 0) -> None:
        """Add a call of ``key`` from ``start`` to ``end`` (``nested`` ns of it spent in
        other frames) to its coalescing span, or close that span and open a new one."""
        busy = end - start - nested
        acc = lane.acc.get(key)
        if acc is not None and start - acc[2] <= self.gap_ns and (
                start - acc[0] <= self.window_ns):
            acc[1] += busy
            acc[2] = end
            acc[3] += tasks
            acc[4] += nbytes
            acc[5] += messages
            return
        if acc is not None:
            lane.rows.append((key[1], key[0], acc[0], acc[0] + acc[1], acc[3], acc[4], acc[5]))
        lane.acc[key] = [start, busy, end, tasks, nbytes, messages]

    def drain(self) -> tuple[list[Row], dict[str, list[int]]]:
        """Rows recorded so far (open coalesced spans closed) and the marks, forgetting both.
        Call it when the run is over: other threads' open spans are read without a lock."""
        rows: list[Row] = []
        with self._lock:
            for lane in self._lanes:
                done, lane.rows = lane.rows, []
                acc, lane.acc = lane.acc, {}
                rows += done
                rows += [(k[1], k[0], a[0], a[0] + a[1], a[3], a[4], a[5])
                         for k, a in acc.items()]
            marks, self.marks = self.marks, {}
        rows.sort(key=lambda r: r[2])
        return rows, marks

    def mark(self, name: str, ns: int | None = None) -> None:
        self.marks.setdefault(name, []).append(_perf_ns() if ns is None else ns)


# --- wrappers -------------------------------------------------------------------------------

def timed(clock: StageClock, stage: str | None, fn: Callable[..., Any], *, tasks: int = 0,
          messages: int = 0, role: str | None = None,
          count: Callable[[Any], int] | None = None) -> Callable[..., Any]:
    """``fn`` timed as one frame of ``stage`` per call; ``count(result)`` sets its tasks."""
    push, pop, key = clock.push, clock.pop, clock.key(stage, role)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        frame = push(key, tasks, messages)
        if frame is None:
            return fn(*args, **kwargs)
        try:
            out = fn(*args, **kwargs)
            if count is not None:
                frame[2] = count(out)
            return out
        finally:
            pop()

    return _mark_wrapper(wrapper, fn)


def timed_lowering(clock: StageClock, fn: Callable[..., Any],
                   stage: str = "update_graph") -> Callable[..., Any]:
    """A lowering function (Dask materialising layers): timed as ``stage`` on the scheduler
    role, but left to the enclosing frame when the client itself calls it while generating."""
    push, pop, top = clock.push, clock.pop, clock.top
    key = clock.key(stage, "scheduler")

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        outer = top()
        if outer is not None and outer[0] is not None and outer[0][0] == "client":
            return fn(*args, **kwargs)
        frame = push(key)
        if frame is None:
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        finally:
            pop()

    return _mark_wrapper(wrapper, fn)


def _mark_wrapper(wrapper: Callable[..., Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    functools.update_wrapper(wrapper, fn)  # signature too: Dask inspects handlers' params
    wrapper.__stagecost_wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


@types.coroutine
def _stepped(clock: StageClock, key: tuple[str, str], coro: Any, messages: int,
             result_nbytes: bool, on_first: Callable[[], None] | None) -> Any:
    push, pop = clock.push, clock.pop
    send, throw = coro.send, coro.throw
    value: Any = None
    exc: BaseException | None = None
    first = True
    while True:
        frame = push(key, 0, messages if first else 0)
        if first:
            first = False
            if on_first is not None:
                on_first()
        try:
            yielded = send(value) if exc is None else throw(exc)
        except StopIteration as stop:
            if frame is not None:
                if result_nbytes and type(stop.value) is int:
                    frame[3] = stop.value
                pop()
            return stop.value
        except BaseException:
            if frame is not None:
                pop()
            raise
        if frame is not None:
            pop()
        try:
            value, exc = (yield yielded), None
        except BaseException as e:  # thrown in by the event loop (cancellation, close)
            value, exc = None, e


def timed_async(clock: StageClock, stage: str, fn: Callable[..., Any], *, messages: int = 0,
                result_nbytes: bool = False,
                on_first: Callable[[], None] | None = None) -> Callable[..., Any]:
    """``async fn`` timed step by step (only its synchronous stretches count)."""
    key = clock.key(stage)
    assert key is not None

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await _stepped(clock, key, fn(*args, **kwargs), messages, result_nbytes,
                              on_first)

    return _mark_wrapper(wrapper, fn)


def _root(fn: Any) -> Any:
    while hasattr(fn, "__stagecost_wrapped__"):
        fn = fn.__stagecost_wrapped__
    return fn


class Patches:
    """Attribute and item replacements, undone in reverse order by ``restore``."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, Any, bool, Any, Any, bool]] = []

    def setattr(self, obj: Any, name: str, value: Any) -> None:
        own = vars(obj)
        had, old = name in own, own.get(name)
        setattr(obj, name, value)
        self._undo.append((obj, name, had, old, value, False))

    def setitem(self, mapping: Any, key: Any, value: Any) -> None:
        had, old = key in mapping, mapping.get(key)
        mapping[key] = value
        self._undo.append((mapping, key, had, old, value, True))

    def rebind(self, original: Callable[..., Any], make: Callable[[Any], Any],
               prefixes: tuple[str, ...] = ("dask", "distributed")) -> int:
        """Replace every module-level binding of ``original`` (possibly already wrapped) in
        the loaded modules under ``prefixes``; returns how many were replaced."""
        name = original.__name__
        made: dict[int, Any] = {}
        n = 0
        for modname, mod in list(sys.modules.items()):
            if mod is None or not modname.startswith(prefixes):
                continue
            current = vars(mod).get(name)
            if current is None or _root(current) is not original:
                continue
            if id(current) not in made:
                made[id(current)] = make(current)
            self.setattr(mod, name, made[id(current)])
            n += 1
        return n

    def restore(self) -> None:
        while self._undo:
            target, name, had, old, value, item = self._undo.pop()
            if item:
                if target.get(name) is not value:
                    continue
                if had:
                    target[name] = old
                else:
                    del target[name]
                continue
            if vars(target).get(name) is not value:
                continue
            if had:
                setattr(target, name, old)
            else:
                delattr(target, name)


def patch_lowering(p: Patches, clock: StageClock, optimize_role: str | None = None) -> None:
    """Time Dask's materialisation of a graph where it happens (update_graph), with Dask's
    low-level optimiser (the collection's ``__dask_optimize__``, run by
    ``HLGExpr._optimized_dsk``) split out as optimize, and the lowering that optimiser does
    itself (Blockwise expansion, ``ensure_dict``, ``convert_legacy_graph``) put back."""
    import dask._expr as dexpr
    import dask._task_spec as dtask
    import dask.blockwise as dblock
    import dask.utils as dutils

    for cls in (dexpr.HLGExpr, dexpr._HLGExprSequence):
        prop = vars(cls).get("_optimized_dsk")
        if isinstance(prop, functools.cached_property):
            new = functools.cached_property(timed(clock, "optimize", prop.func,
                                                  role=optimize_role))
            new.__set_name__(cls, "_optimized_dsk")
            p.setattr(cls, "_optimized_dsk", new)
    p.setattr(dblock, "_make_blockwise_graph",
              timed_lowering(clock, dblock._make_blockwise_graph))
    p.rebind(_root(dutils.ensure_dict), lambda f: timed_lowering(clock, f))
    p.rebind(_root(dtask.convert_legacy_graph), lambda f: timed_lowering(clock, f))


# --- the distributed scheduler --------------------------------------------------------------

_SCHEDULE_TRANSITIONS = {("waiting", "processing"): 1, ("queued", "processing"): 1,
                         ("no-worker", "processing"): 1}
"""The transitions timed as schedule (tasks each counts): those that choose a worker. Each
wrapped call costs about two clock reads and a few list operations, and a scheduler makes
several such calls per task, so cheap bookkeeping called once per task is left to its
caller's frame: the moves into the queue (waiting -> queued / no-worker) and ``send_all``
(which only hands messages to the batched streams)."""


def install_scheduler(gap_ns: int = GAP_NS, window_ns: int = WINDOW_NS,
                      dask_scheduler: Any = None) -> int:
    """Run on the scheduler (``client.run_on_scheduler``); returns its process id.

    Times: update-graph (step by step), its offloaded materialisation and ``dask.order``;
    the low-level optimiser inside it (optimize); the transitions that choose a worker and
    stealing (schedule); building task messages and the writes to workers (dispatch); the handlers of worker reports and the reads of worker streams (execute).
    """
    import dask.order
    import distributed.scheduler as dsched

    uninstall_scheduler(dask_scheduler=dask_scheduler)
    loop_thread = threading.get_ident()

    def accept(t: threading.Thread) -> bool:
        return t.ident == loop_thread or t.name.startswith("Dask-Offload")

    clock = StageClock("scheduler", accept=accept, gap_ns=gap_ns, window_ns=window_ns)
    p = Patches()
    s = dask_scheduler
    p.setattr(dsched, "_materialize_graph",
              timed(clock, "update_graph", dsched._materialize_graph,
                    count=lambda out: len(out[0])))
    p.setattr(dask.order, "order", timed(clock, "update_graph", dask.order.order))
    patch_lowering(p, clock)

    handlers = s.stream_handlers
    p.setitem(handlers, "update-graph",
              timed_async(clock, "update_graph", handlers["update-graph"], messages=1,
                          on_first=lambda: clock.mark("graph_received_ns")))
    for op in ("task-finished", "task-erred", "release-worker-data"):
        if op in handlers:
            p.setitem(handlers, op, timed(clock, "execute", handlers[op]))
    if "steal-response" in handlers:
        p.setitem(handlers, "steal-response", timed(clock, "schedule",
                                                    handlers["steal-response"]))
    table = dict(type(s)._TRANSITIONS_TABLE)
    for edge, n in _SCHEDULE_TRANSITIONS.items():
        if edge in table:
            table[edge] = timed(clock, "schedule", table[edge], tasks=n)
    p.setattr(s, "_TRANSITIONS_TABLE", table)
    p.setattr(s, "_task_to_msg", timed(clock, "dispatch", s._task_to_msg, tasks=1))
    stealing = s.periodic_callbacks.get("stealing")
    if stealing is not None:
        p.setattr(stealing, "callback", timed(clock, "schedule", stealing.callback))
    for bcomm in list(s.stream_comms.values()):
        comm = bcomm.comm
        if comm is not None:
            p.setattr(comm, "read", timed_async(clock, "execute", comm.read, messages=1))
            p.setattr(comm, "write", timed_async(clock, "dispatch", comm.write, messages=1,
                                                 result_nbytes=True))
    for bcomm in list(s.client_comms.values()):
        comm = getattr(bcomm, "comm", None)
        if comm is not None:
            p.setattr(comm, "write", timed_async(clock, "execute", comm.write, messages=1,
                                                 result_nbytes=True))
    setattr(s, _ATTR, (clock, p))
    return os.getpid()


def _drain(server: Any) -> tuple[list[Row], dict[str, list[int]]]:
    """The rows and marks recorded on a Dask scheduler or worker since the last drain."""
    state = getattr(server, _ATTR, None)
    return state[0].drain() if state else ([], {})


def _uninstall(server: Any) -> None:
    """Undo what ``install_scheduler``/``install_worker`` did on ``server``."""
    state = getattr(server, _ATTR, None)
    if state:
        state[1].restore()
        delattr(server, _ATTR)


# Dask passes the server by parameter name (``dask_scheduler`` / ``dask_worker``), hence the
# pairs of one-line functions below.

def drain_scheduler(dask_scheduler: Any = None) -> tuple[list[Row], dict[str, list[int]]]:
    return _drain(dask_scheduler)


def uninstall_scheduler(dask_scheduler: Any = None) -> None:
    _uninstall(dask_scheduler)


def scheduler_task_count(dask_scheduler: Any = None) -> int:
    """Tasks the scheduler still knows (0 once a run's results are released)."""
    return len(dask_scheduler.tasks)


_UNFINISHED = ("released", "waiting", "queued", "no-worker", "processing")


def scheduler_task_progress(dask_scheduler: Any = None) -> tuple[int, int, int]:
    """(tasks sent to workers so far, tasks processing now, tasks held and not finished, the
    processing ones included), from counters the scheduler keeps (``n_tasks`` and the state
    counts per task prefix), so this costs O(prefixes), not O(tasks). Between two calls,
    the growth of the first minus that of the second is how many tasks finished."""
    unfinished = processing = 0
    for prefix in list(dask_scheduler.task_prefixes.values()):
        states = prefix.states
        unfinished += sum(states.get(s, 0) for s in _UNFINISHED)
        processing += states.get("processing", 0)
    return int(dask_scheduler.n_tasks), processing, unfinished


# --- distributed workers --------------------------------------------------------------------

def install_worker(roles: dict[str, str], gap_ns: int = GAP_NS, window_ns: int = WINDOW_NS,
                   dask_worker: Any = None) -> int:
    """Run on every worker (``client.run``); returns its process id.

    Times: task runs in the executor threads, the event-loop parts of ``execute``, fetching
    dependencies and serving them, state-machine events other than new tasks, and the writes
    of reports to the scheduler (execute); the reads of the scheduler's stream and the
    handling of ``compute-task`` events (dispatch); steal requests (schedule).
    """
    import distributed.worker as dworker
    from distributed.worker_state_machine import ComputeTaskEvent, StealRequestEvent

    uninstall_worker(dask_worker=dask_worker)
    w = dask_worker
    clock = StageClock(roles.get(w.address, f"worker-{w.name}"), gap_ns=gap_ns,
                       window_ns=window_ns)
    p = Patches()
    p.setattr(dworker, "_run_task", timed(clock, "execute", dworker._run_task, tasks=1))
    p.setattr(w, "execute", timed_async(clock, "execute", w.execute))
    p.setattr(w, "gather_dep", timed_async(clock, "execute", w.gather_dep))
    if "get_data" in w.handlers:
        p.setitem(w.handlers, "get_data", timed_async(clock, "execute", w.handlers["get_data"]))
    handle = w.handle_stimulus
    push, pop = clock.push, clock.pop
    keys = {s: clock.key(s) for s in ("execute", "dispatch", "schedule")}

    def handle_stimulus(*stims: Any) -> None:
        stage = "execute"
        for ev in stims:
            if isinstance(ev, ComputeTaskEvent):
                stage = "dispatch"
                break
            if isinstance(ev, StealRequestEvent):
                stage = "schedule"
        frame = push(keys[stage])
        try:
            handle(*stims)
        finally:
            if frame is not None:
                pop()

    p.setattr(w, "handle_stimulus", _mark_wrapper(handle_stimulus, handle))
    comm = w.batched_stream.comm
    if comm is not None:
        p.setattr(comm, "read", timed_async(clock, "dispatch", comm.read, messages=1))
        p.setattr(comm, "write", timed_async(clock, "execute", comm.write, messages=1,
                                             result_nbytes=True))
    setattr(w, _ATTR, (clock, p))
    return os.getpid()


def drain_worker(dask_worker: Any = None) -> tuple[list[Row], dict[str, list[int]]]:
    return _drain(dask_worker)


def uninstall_worker(dask_worker: Any = None) -> None:
    _uninstall(dask_worker)


def perf_counter_ns() -> int:
    """This process's clock (for estimating a remote peer's offset)."""
    return _perf_ns()


# --- the dask-processes pool ----------------------------------------------------------------

class TimedBatch(list[Any]):
    """The results of one batch run in a pool child, with ``span`` = (start_ns, end_ns, pid,
    tasks); pickled back to the parent with its attribute."""

    span: tuple[int, int, int, int] = (0, 0, 0, 0)


def execute_batch_timed(it: Any) -> TimedBatch:
    """Dask's ``batch_execute_tasks``, run in a pool child, with when and where it ran."""
    from dask.local import batch_execute_tasks

    start = _perf_ns()
    out = TimedBatch(batch_execute_tasks(it))
    out.span = (start, _perf_ns(), os.getpid(), len(out))
    return out


def child_pid(delay: float = 0.0) -> int:
    """Warm-up task for pool children: imports this module there, returns the child's pid."""
    if delay:
        time.sleep(delay)
    return os.getpid()


def plain(fn: Any) -> Any:
    """Unpickling a ``TimedCodec`` in a child gives back the plain codec."""
    return fn


class TimedCodec:
    """Dask's pickling function for the process pool, timed in the parent as ``stage``; a
    child receives the plain function (it pickles as such)."""

    def __init__(self, fn: Callable[[Any], Any], clock: StageClock, stage: str,
                 role: str = "scheduler") -> None:
        self.fn = fn
        self.clock = clock
        self.stage = stage
        self.role = role

    def __call__(self, obj: Any) -> Any:
        frame = self.clock.push(self.clock.key(self.stage, self.role), 1)
        try:
            out = self.fn(obj)
            if frame is not None and isinstance(out, bytes | bytearray):
                frame[3] = len(out)
            return out
        finally:
            if frame is not None:
                self.clock.pop()

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return plain, (self.fn,)
