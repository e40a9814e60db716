"""The reference system's stage map, and the idle/import patterns every map shares.

Rule semantics are in ``rules.py`` (leaf-first walk; the first frame some rule matches decides;
rules in order; ``within`` = this frame or a caller; roles ``client``/``scheduler``/``worker``
also match ``worker-3``). Maps are immutable data: adjust them here as modules change, or
extend one at run time with ``REFERENCE_MAP.with_rules(Rule(Stage.schedule, function="f"))``.
Samples no rule matches are reported as ``unattributed`` with their leaf functions: that is how
a missing rule shows up. A pattern that matches no function shows up in a test:
``map_check.unmatched_patterns`` checks every module and function glob of both maps against
the source of this repository, the installed Dask and the standard library, so a rename
cannot silently move samples elsewhere. The Dask map is in ``dask_map.py``.

Principles of ``REFERENCE_MAP``:

- The runtime opens a span for each stage in a few functions (``SchedulerServer._on_graph``,
  ``WorkerServer._on_compute``, ``run_batch``, ...); those functions are rules, so whatever
  runs under them and matches nothing more specific gets the span's stage. Profiles and spans
  therefore agree on what each stage is.
- Shared helpers (``SchedulerState.handle``, transitions, ``state/segment.py``,
  ``wire/frames.py``, ``runtime/messages.py``, ``Comm.recv``/``post``) have NO rule: their
  caller decides. Broad module catch-alls (graph modules, asyncio by direction) are
  ``fallback`` rules, used only when no specific function is on the stack (graphs built in
  user code before ``Client.run``; socket callbacks run by the event loop).
- Method names are py-spy's qualified names (``SchedulerServer._apply``), so one name used in
  several classes is told apart without roles; roles are only needed for code every process
  runs (the ``Comm`` class, asyncio).
- With no role (``""``, e.g. ``reference-inproc`` where all roles share a process) only the
  role-free rules apply; they are enough for the in-process runner.
- asyncio runs socket reads and writes from loop callbacks, outside any handler. They are
  told apart by role and direction (see ``MERGED``).

Imports: a sample with ``importlib``'s ``_find_and_load`` anywhere on its stack counts as
``import``: module-level code runs then, imports happen before ``compute()`` (or lazily, once),
so they are no stage's work.

Idle: a sample whose leaf frame is a known wait counts as ``idle``, not as a stage. py-spy drops
idle threads on its own unless recorded with ``--idle``; these patterns catch what it keeps
(waits it does not recognise, and everything under ``--idle``). With ``--native``, native leaf
frames (``epoll_wait``, ``pthread_cond_wait``, ...) up to the first Python frame are checked too.

| waiting in (leaf frame)                      | functions                                   |
|----------------------------------------------|---------------------------------------------|
| ``selectors.py``                             | ``*.select``                                |
| ``asyncio/base_events.py``                   | ``*._run_once``, ``*.run_forever``          |
| ``threading.py``                             | ``wait``, ``join``, ``_wait_for_tstate_lock``, ``*Semaphore.acquire`` |
| ``queue.py``                                 | ``get``, ``put``                            |
| ``concurrent/futures/thread.py``, ``distributed/threadpoolexecutor.py``, ``distributed/_concurrent_futures_thread.py`` | ``_worker`` (blocked on its work queue) |
| ``socket.py``, ``ssl.py``                    | ``accept``, ``recv*``, ``read``             |
| ``subprocess.py``, ``multiprocessing/``      | ``wait``, ``_wait``, ``_try_wait``, ``communicate``, ``_recv*``, ``poll``, ``acquire`` |
| native (``--native`` only)                   | ``epoll_wait``, ``select``, ``poll``, ``pthread_cond_*wait``, ``sem_*wait``, futex waits, ``*nanosleep``, ``take_gil`` |

``REFERENCE_MAP`` (C client, S scheduler, W worker, · any role or none; "fb" = fallback).

| module                            | function (globs)                                           | role | stage |
|-----------------------------------|------------------------------------------------------------|------|-------|
| ``scheduler/graph/*.py``          | ``run_spec``, ``compile_spec``, ``_compile*``, ``TaskGraph.execute``, ``run_dask_node``, ``run_subgraph`` | · | execute |
| ``scheduler/graph/optimize*.py``  | any                                                        | ·    | optimize |
| ``scheduler/wire/encodings.py``   | ``encode_graph`` / ``decode_graph``                        | ·    | serialize / update_graph |
| ``scheduler/state/priority.py``   | any                                                        | ·    | update_graph |
| ``scheduler/state/scheduler*.py`` | ``*graph_submitted*``, ``_add_segment*``, ``_link_external``, ``_notify_outputs_external`` | · | update_graph |
| ``scheduler/state/sharing.py``    | any                                                        | ·    | update_graph |
| ``scheduler/state/scheduler*.py`` | ``schedule``, ``_schedule*``, ``_place*``, ``_enqueue*``, ``_fill_from_queue``, ``_merge_queue``, ``_assign*`` | · | schedule |
| ``scheduler/state/scheduler*.py`` | ``*finished*``, ``*erred*``, ``*release*``, ``*lost*``, ``_requeue*``, ``_recompute*``, ``_gather``, ``_wanters``, ``_count_missing``, ``_dependents_closure``, ``_maybe_drop`` | · | execute |
| ``scheduler/state/worker*.py``    | ``_compute``                                               | ·    | dispatch |
| ``scheduler/state/worker*.py``    | ``_executed``, ``_fetched``, ``_drop``, ``_unuse``, ``_start_batches`` | · | execute |
| ``scheduler/runtime/client.py``   | ``Client.get``, ``Client.run``                             | ·    | generate |
| ``scheduler/runtime/client.py``   | ``Client._submit`` (output ids, message framing)           | ·    | serialize |
| ``scheduler/runtime/client.py``   | ``Client._gather_pending``, ``Client._fetch``, ``Client._listen``, ``Client._on_message``, ``Client.gather``, ``Future.result`` | · | execute |
| ``scheduler/runtime/scheduler_server.py`` | ``*._on_graph``                                    | ·    | update_graph |
| ``scheduler/runtime/scheduler_server.py`` | ``*._schedule_and_apply``                          | ·    | schedule |
| ``scheduler/runtime/scheduler_server.py`` | ``*._apply``, ``*._to_worker``                     | ·    | dispatch |
| ``scheduler/runtime/scheduler_server.py`` | ``*._flush_finished``, ``*._on_worker_message``, ``*._run``, ``*._worker_loop``, ``*._to_client`` | · | execute |
| ``scheduler/runtime/scheduler_server.py`` | ``*._client_loop``                                 | ·    | communicate |
| ``scheduler/runtime/dispatch.py`` | ``compute_message``, ``graph_def_message``, ``GraphCatalog.*`` | · | dispatch |
| ``scheduler/runtime/dispatch.py`` | ``_LazySpec.*``                                            | ·    | execute |
| ``scheduler/runtime/worker.py``   | ``*._on_compute``, ``*._listen``, ``*._on_message``        | ·    | dispatch |
| ``scheduler/runtime/worker.py``   | ``run_batch``, ``dumps_values``, ``dumps_error``, ``*._batch_done``, ``*._flush_finished``, ``*._fetch``, ``*._on_peer``, ``*._do`` | · | execute |
| ``scheduler/runtime/inproc.py``   | ``*._apply``, ``*._deliver`` / ``*._step``, ``*._sched``   | ·    | dispatch / execute |
| ``scheduler/runtime/comm.py``     | ``Comm._write_loop`` (a task of its own: no caller)        | C / S / W | communicate / dispatch / execute |
| ``scheduler/graph/`` (fb)         | any                                                        | S    | update_graph (lowering on the scheduler) |
| ``scheduler/graph/`` (fb)         | any                                                        | C, · | generate (graphs built in user code) |
| ``scheduler/wire/`` (fb)          | any                                                        | C    | serialize |
| ``scheduler/wire/`` (fb)          | decoding (``decode*``, ``loads*``, ``_unpack*``, ``read*``, ``*Reader.*``, ``_parse*``, ``_split*``) / any other | S | update_graph / dispatch |
| ``scheduler/wire/`` (fb)          | decoding / any other                                       | W    | dispatch / execute |
| ``scheduler/wire/`` (fb)          | decoding / any other                                       | ·    | update_graph / serialize |
| ``asyncio/``, ``socket.py``, ``ssl.py`` (fb) | ``*read*``, ``*recv*``, ``*data_received*``     | C / S / W | execute / execute / dispatch |
| ``asyncio/``, ``socket.py``, ``ssl.py`` (fb) | any other (writes, loop machinery)              | C / S / W | communicate / dispatch / execute |
| ``concurrent/futures/`` (fb)      | any (the task thread pool)                                 | W    | execute |
| ``scheduler/runtime/inproc.py`` (fb) | ``InProcessCluster.run``                                | ·    | execute (merged) |
"""

from __future__ import annotations

from types import MappingProxyType

from scheduler.stages import Stage

from .rules import FramePattern, Rule, StageMap

__all__ = ["IDLE_PATTERNS", "IMPORT_PATTERNS", "REFERENCE_MAP"]

S = Stage

IDLE_PATTERNS: tuple[FramePattern, ...] = (
    FramePattern(module="selectors.py", function="select"),
    FramePattern(module="asyncio/base_events.py", function=("_run_once", "run_forever")),
    FramePattern(module="threading.py",
                 function=("wait", "join", "_wait_for_tstate_lock", "*Semaphore.acquire")),
    FramePattern(module="queue.py", function=("get", "put")),
    FramePattern(module=("concurrent/futures/thread.py", "distributed/threadpoolexecutor.py",
                         "distributed/_concurrent_futures_thread.py"), function="_worker"),
    FramePattern(module=("socket.py", "ssl.py"), function=("accept", "recv*", "read")),
    FramePattern(module=("subprocess.py", "multiprocessing/"),
                 function=("wait", "_wait", "_try_wait", "communicate", "_recv*", "poll",
                           "acquire")),
    FramePattern(native=True, function=(
        "epoll_wait", "__epoll_wait*", "epoll_pwait*", "select", "__select*", "pselect*",
        "poll", "__poll*", "ppoll*", "pthread_cond_wait*", "pthread_cond_timedwait*",
        "__pthread_cond_wait*", "__pthread_cond_timedwait*", "sem_wait*", "sem_timedwait*",
        "sem_clockwait*", "__new_sem_wait*", "do_futex_wait*", "futex_wait*",
        "__futex_abstimed_wait*", "*nanosleep*", "take_gil", "accept*", "recv", "recvfrom",
        "recvmsg")),
)

IMPORT_PATTERNS: tuple[FramePattern, ...] = (
    FramePattern(module=("<frozen importlib._bootstrap>", "importlib/_bootstrap.py"),
                 function="_find_and_load"),
)

_GRAPH = "scheduler/graph/"
_WIRE = "scheduler/wire/"
_DECODE = ("decode*", "loads*", "_unpack*", "read*", "*Reader.*", "_parse*", "_split*")
_SCHED_STATE = "scheduler/state/scheduler*.py"
_WORKER_STATE = "scheduler/state/worker*.py"
_CLIENT = "scheduler/runtime/client.py"
_SERVER = "scheduler/runtime/scheduler_server.py"
_WORKER = "scheduler/runtime/worker.py"
_COMM = "scheduler/runtime/comm.py"
_SYS_IO = ("asyncio/", "socket.py", "ssl.py")
_SYS_READS = ("*read*", "*recv*", "*data_received*")

_REFERENCE_RULES: tuple[Rule, ...] = (
    # --- graph: running specs anywhere; optimising
    Rule(S.execute, module="scheduler/graph/*.py",
         function=("run_spec", "compile_spec", "_compile*", "TaskGraph.execute",
                   "run_dask_node", "run_subgraph")),
    Rule(S.optimize, module="scheduler/graph/optimize*.py"),
    # --- wire graph codecs (compact/legacy/frames under them have no rule)
    Rule(S.serialize, module="scheduler/wire/encodings.py", function="encode_graph"),
    Rule(S.update_graph, module="scheduler/wire/encodings.py", function="decode_graph"),
    # --- scheduler state machine (handle/transitions have no rule: the caller decides)
    Rule(S.update_graph, module="scheduler/state/priority.py"),
    Rule(S.update_graph, module=_SCHED_STATE,
         function=("*graph_submitted*", "_add_segment*", "_link_external",
                   "_notify_outputs_external")),
    Rule(S.update_graph, module="scheduler/state/sharing.py"),
    Rule(S.schedule, module=_SCHED_STATE,
         function=("schedule", "_schedule*", "_place*", "_enqueue*", "_fill_from_queue",
                   "_merge_queue", "_assign*")),
    Rule(S.execute, module=_SCHED_STATE,
         function=("*finished*", "*erred*", "*release*", "*lost*", "_requeue*", "_recompute*",
                   "_gather", "_wanters", "_count_missing", "_dependents_closure", "_maybe_drop")),
    # --- worker state machine
    Rule(S.dispatch, module=_WORKER_STATE, function="_compute"),
    Rule(S.execute, module=_WORKER_STATE,
         function=("_executed", "_fetched", "_drop", "_unuse", "_start_batches")),
    # --- runtime: the functions that open each stage's span
    Rule(S.generate, module=_CLIENT, function=("Client.get", "Client.run")),
    Rule(S.serialize, module=_CLIENT, function="Client._submit",
         note="preparing and framing the graph message; the bytes leave in Comm._write_loop"),
    Rule(S.execute, module=_CLIENT,
         function=("Client._gather_pending", "Client._fetch", "Client._listen",
                   "Client._on_message", "Client.gather", "Future.result")),
    Rule(S.update_graph, module=_SERVER, function="*._on_graph"),
    Rule(S.schedule, module=_SERVER, function="*._schedule_and_apply"),
    Rule(S.dispatch, module=_SERVER, function=("*._apply", "*._to_worker")),
    Rule(S.execute, module=_SERVER,
         function=("*._flush_finished", "*._on_worker_message", "*._run", "*._worker_loop",
                   "*._to_client")),
    Rule(S.communicate, module=_SERVER, function="*._client_loop"),
    Rule(S.dispatch, module="scheduler/runtime/dispatch.py",
         function=("compute_message", "graph_def_message", "GraphCatalog.*")),
    Rule(S.execute, module="scheduler/runtime/dispatch.py", function="_LazySpec.*"),
    Rule(S.dispatch, module=_WORKER, function=("*._on_compute", "*._listen", "*._on_message")),
    Rule(S.execute, module=_WORKER,
         function=("run_batch", "dumps_values", "dumps_error", "*._batch_done",
                   "*._flush_finished", "*._fetch", "*._on_peer", "*._do")),
    Rule(S.dispatch, module="scheduler/runtime/inproc.py", function=("*._apply", "*._deliver")),
    Rule(S.execute, module="scheduler/runtime/inproc.py", function=("*._step", "*._sched")),
    # --- the writer task of each connection has no caller: by role
    Rule(S.communicate, module=_COMM, function="Comm._write_loop", roles="client"),
    Rule(S.dispatch, module=_COMM, function="Comm._write_loop", roles="scheduler"),
    Rule(S.execute, module=_COMM, function="Comm._write_loop", roles="worker"),
    # --- fallbacks: module catch-alls, used only when no rule above matches the stack
    Rule(S.update_graph, module=_GRAPH, roles="scheduler", fallback=True,
         note="lowering layers on the scheduler is update_graph"),
    Rule(S.generate, module=_GRAPH, fallback=True, note="graphs built in user code"),
    Rule(S.serialize, module=_WIRE, roles="client", fallback=True),
    Rule(S.update_graph, module=_WIRE, roles="scheduler", function=_DECODE, fallback=True),
    Rule(S.dispatch, module=_WIRE, roles="scheduler", fallback=True),
    Rule(S.dispatch, module=_WIRE, roles="worker", function=_DECODE, fallback=True),
    Rule(S.execute, module=_WIRE, roles="worker", fallback=True),
    Rule(S.update_graph, module=_WIRE, function=_DECODE, fallback=True),
    Rule(S.serialize, module=_WIRE, fallback=True),
    Rule(S.execute, module=_SYS_IO, roles=("client", "scheduler"), function=_SYS_READS,
         fallback=True),
    Rule(S.dispatch, module=_SYS_IO, roles="worker", function=_SYS_READS, fallback=True),
    Rule(S.communicate, module=_SYS_IO, roles="client", fallback=True),
    Rule(S.dispatch, module=_SYS_IO, roles="scheduler", fallback=True),
    Rule(S.execute, module=_SYS_IO, roles="worker", fallback=True),
    Rule(S.execute, module="scheduler/runtime/inproc.py", function="InProcessCluster.run",
         fallback=True, note="its own loop collects results; see MERGED"),
    Rule(S.execute, module="concurrent/futures/", roles="worker", fallback=True,
         note="the task thread pool's own bookkeeping around run_batch"),
)

_REFERENCE_MERGED = MappingProxyType({
    "scheduler/runtime/comm.py:Comm._write_loop": "one writer task per connection: on the "
    "scheduler it sends task batches (dispatch) and client reports alike: dispatch; on a worker "
    "reports and results: execute; on the client the graph and small requests: communicate.",
    "asyncio/ socket reads and writes": "run from loop callbacks with no handler on the stack "
    "(fallback): on the scheduler reads are mostly worker reports (execute) and writes task "
    "batches (dispatch); on a worker reads are mostly task batches (dispatch), writes reports "
    "(execute); on the client writes carry the graph (communicate), reads results (execute).",
    "scheduler/runtime/inproc.py:InProcessCluster.run": "drives every stage of the in-process "
    "run; the functions it calls have their own rules, and its own loop (collecting the "
    "results of each step) counts as execute (fallback).",
    "scheduler/state/scheduler.py:SchedulerState.handle": "no rule: the event handler under it "
    "(_graph_submitted, _tasks_finished, ...) or the runtime function above it decides.",
})

REFERENCE_MAP = StageMap("reference", _REFERENCE_RULES, IDLE_PATTERNS, IMPORT_PATTERNS,
                         _REFERENCE_MERGED)
