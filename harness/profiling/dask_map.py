"""The Dask/distributed stage map: which Dask code does the work of which stage.

Rule semantics are in ``rules.py``; idle and import patterns are shared with the reference map
(``stage_map.py``). Checked against the dask/distributed 2026.8 sources and a profiled run
(a scheduler, one worker and a client computing
``((x + 1) * 2).sum()`` on a 100 x 100-chunk ``dask.array``). Principles:

- Where Dask does several stages' work in one function, its own frames go to the EARLIER
  stage, and ``MERGED`` says so; functions it calls are matched first (leaf-first), so the
  merge only concerns the function's own code.
- Generic utility modules (``dask/utils.py``, ``dask/config.py``, ``dask/sizeof.py``, ...)
  match nothing on the client and scheduler: their samples go to their caller's stage.
- Broad module catch-alls are ``fallback`` rules: a stage-defining function on the stack
  (``update_graph``, ``_task_to_msg``, ``add_client``, ``_run_task``) decides first, so
  pickling inside ``_task_to_msg`` is dispatch, not serialize or generate.
- On the scheduler, tornado/asyncio callbacks run outside any handler, so I/O without a
  stage-defining caller is told apart by direction: reads (mostly worker reports) count as
  execute, writes and loop machinery as dispatch.

C client, S scheduler, W worker, · any role. "I/O" is ``distributed/comm/``,
``distributed/protocol/``, ``distributed/batched.py``, ``distributed/core.py``, ``tornado/``,
``asyncio/``, ``socket.py``, ``ssl.py``, ``msgpack/``, ``pickle.py``, ``cloudpickle/``.

Specific rules (leaf-first; the nearest matching frame decides):

| module                                         | function (globs)                                       | role | stage |
|------------------------------------------------|--------------------------------------------------------|------|-------|
| ``dask/``                                      | within ``_execute_subgraph``/``execute_graph``         | ·    | execute (fused subgraphs even run ``dask.order``) |
| ``dask/optimization.py``, ``dask/array/optimization.py`` | any                    | ·    | optimize |
| ``dask/blockwise.py``                          | ``*optimize_blockwise``, ``rewrite_blockwise``, ``fuse_roots`` | · | optimize |
| ``dask/_task_spec.py``                         | ``fuse_linear_task_spec``, ``cull``                    | ·    | optimize |
| ``dask/_expr.py``, ``dask/dataframe/dask_expr/``, ``dask/array/_array_expr/`` | ``*optimize*``, ``*simplify*``, ``*lower*``, ``*fuse*``, ``_optimized_dsk`` | · | optimize |
| ``dask/order.py``                              | any                                                    | ·    | update_graph |
| ``dask/local.py``                              | ``execute_task``, ``batch_execute_tasks``, ``finish_task``, ``release_data`` | · | execute |
| ``dask/local.py``                              | ``start_state_from_dask`` / ``fire_tasks``, ``submit*`` | ·   | update_graph / dispatch |
| ``dask/local.py``, ``threaded.py``, ``multiprocessing.py`` | any other (the ``get_async`` loop)         | ·    | schedule (merged) |
| ``distributed/scheduler.py``                   | ``update_graph``, ``_materialize_graph``, ``_cull``, ``_create_taskstate_from_graph``, ``_generate_taskstates``, ``_set_priorities``, ``_apply_annotations``, ``_find_lost_dependencies`` | · | update_graph |
| ``distributed/scheduler.py``                   | ``add_client``                                         | ·    | communicate (the client's stream) |
| ``distributed/scheduler.py``                   | ``*decide_worker*``, ``_transition_*_processing``, ``_add_to_processing``, ``worker_objective``, ``valid_workers``, ``is_rootish``, ``get_comm_cost``, ``check_idle_saturated``, ``stimulus_queue_slots_maybe_opened``, ``_task_slots_available`` | · | schedule |
| ``distributed/scheduler.py``                   | ``send_task_to_worker``, ``_task_to_msg``, ``worker_send``, ``send_all`` | · | dispatch |
| ``distributed/scheduler.py``                   | ``handle_task_*``, ``stimulus_task_*``, ``_transition_processing_*``, ``_transition_memory_*``, ``_transition_*_forgotten``, ``_transition_*_released``, ``_exit_processing_common``, ``_add_to_memory``, ``_propagate_forgotten``, ``client_releases_keys``, ``report``, ``client_send``, ``handle_*``, ``add_worker``, ``release_worker_data``, ``heartbeat_worker`` | · | execute |
| ``distributed/stealing.py``                    | any                                                    | ·    | schedule |
| ``distributed/protocol/``, ``msgpack/``, ``pickle.py``, ``cloudpickle/`` (and ``distributed/comm/utils.py`` for the loads) | ``*loads*``, ``*deserialize*``, ``*unpack*``, ``from_frames`` / any other | C | execute (results) / serialize |
| ``distributed/client.py``                      | ``_graph_to_futures``, ``_send_to_scheduler``          | ·    | serialize |
| ``distributed/client.py``                      | ``*gather*``, ``_handle_report``, ``_handle_key_in_memory``, ``result`` | · | execute (results) |
| ``distributed/worker.py``                      | ``execute``, ``_run_task*``, ``gather_dep``, ``get_data``, ``get_data_from_worker`` | · | execute |
| ``distributed/worker.py``                      | ``handle_scheduler``, ``_handle_remote_stimulus``, ``handle_stimulus`` | · | dispatch (merged) |
| ``distributed/worker_state_machine.py``        | ``_handle_compute_task``, ``_ensure_task_exists``, ``_transition_released_waiting``, ``_transition_waiting_ready`` | · | dispatch |
| ``distributed/worker_state_machine.py``        | ``_handle_execute_*``, ``_execute_done_common``, ``_transition_executing_*``, ``_transition_*_memory``, ``*gather_dep*``, ``_ensure_c*``, ``_transition_*fetch*``, ``_transition_*flight*``, ``_handle_free_keys``, ``_handle_update_data`` | · | execute |

Fallback rules (only when no specific rule matches any frame of the stack):

| module                                         | function (globs)                                       | role | stage |
|------------------------------------------------|--------------------------------------------------------|------|-------|
| ``distributed/scheduler.py``                   | ``_transition``, ``_transitions``, ``transitions``, ``stimulus_*`` | · | schedule (merged) |
| ``dask/``                                      | any                                                    | W    | execute (task bodies) |
| graph modules (1)                              | any                                                    | S    | update_graph (lowering) |
| graph modules (1)                              | any                                                    | C, · | generate |
| I/O                                            | ``*read*``, ``*recv*``, ``_consume``, ``_handle_read``, ``*loads*``, ``*deserialize*``, ``*unpack*``, ``from_frames`` | S | execute (reads run from loop callbacks: mostly worker reports) |
| I/O                                            | any other (writes, event-loop machinery)               | S    | dispatch (batched sends, merged) |
| I/O, ``distributed/client.py``                 | any                                                    | C    | communicate (merged) |
| I/O                                            | reads and loads as above / any other                   | W    | dispatch (task batches) / execute (reports) |
| ``distributed/worker_state_machine.py``        | any                                                    | ·    | dispatch (merged) |
| ``distributed/worker.py``, ``distributed/threadpoolexecutor.py`` | any                                  | ·    | execute |

(1) graph modules: ``dask/array/``, ``dask/dataframe/``, ``dask/bag/``, ``highlevelgraph.py``,
``blockwise.py``, ``layers.py``, ``_task_spec.py``, ``_expr.py``, ``core.py``, ``delayed.py``,
``base.py``, ``tokenize.py``, ``graph_manipulation.py``, ``_collections.py``, ``rewrite.py``.
Utility modules (``dask/config.py``, ``dask/utils.py``, ``dask/sizeof.py``, ...) match nothing on
the client and scheduler, so their samples go to whoever called them.
"""

from __future__ import annotations

from types import MappingProxyType

from scheduler.stages import Stage

from .rules import Rule, StageMap
from .stage_map import IDLE_PATTERNS, IMPORT_PATTERNS

__all__ = ["DASK_MAP", "MERGED"]

S = Stage

_DSCHED = "distributed/scheduler.py"
_DWORKER = "distributed/worker.py"
_DWSM = "distributed/worker_state_machine.py"
_DEXPR = ("dask/_expr.py", "dask/dataframe/dask_expr/", "dask/array/_array_expr/")
_SER = ("distributed/protocol/", "msgpack/", "pickle.py", "cloudpickle/")
_COMM = ("distributed/comm/", "distributed/batched.py", "distributed/core.py", "tornado/",
         "asyncio/", "socket.py", "ssl.py")
_IO = _SER + _COMM
_LOADS = ("*loads*", "*deserialize*", "*unpack*", "from_frames")
_READS = ("*read*", "*recv*", "_consume", "_handle_read")
# Dask modules that build or lower graphs. Utility modules (config, utils, sizeof, ...) are
# deliberately absent: a frame there says nothing, so the walk goes on to its caller.
_DGRAPH = ("dask/array/", "dask/dataframe/", "dask/bag/", "dask/highlevelgraph.py",
           "dask/blockwise.py", "dask/layers.py", "dask/_task_spec.py", "dask/task_spec.py",
           "dask/_expr.py", "dask/core.py", "dask/delayed.py", "dask/base.py", "dask/tokenize.py",
           "dask/graph_manipulation.py", "dask/_collections.py", "dask/rewrite.py")

_DASK_RULES: tuple[Rule, ...] = (
    # --- dask: fused subgraphs run on workers (and even call dask.order)
    Rule(S.execute, module="dask/", within=("_execute_subgraph", "execute_graph")),
    # --- dask: optimisation (it lives in modules that also generate)
    Rule(S.optimize, module=("dask/optimization.py", "dask/array/optimization.py")),
    Rule(S.optimize, module="dask/blockwise.py",
         function=("*optimize_blockwise", "rewrite_blockwise", "fuse_roots")),
    Rule(S.optimize, module="dask/_task_spec.py", function=("fuse_linear_task_spec", "cull")),
    Rule(S.optimize, module=_DEXPR,
         function=("*optimize*", "*simplify*", "*lower*", "*fuse*", "_optimized_dsk"),
         note="Dask runs HLG low-level optimisation on the scheduler (in _materialize_graph)"),
    Rule(S.update_graph, module="dask/order.py", note="priorities, computed on the scheduler"),
    # --- dask's in-process schedulers (dask-threads/-processes/-sync backends)
    Rule(S.execute, module="dask/local.py",
         function=("execute_task", "batch_execute_tasks", "finish_task", "release_data")),
    Rule(S.update_graph, module="dask/local.py", function="start_state_from_dask"),
    Rule(S.dispatch, module="dask/local.py", function=("fire_tasks", "submit*")),
    Rule(S.schedule, module=("dask/local.py", "dask/threaded.py", "dask/multiprocessing.py")),
    # --- distributed scheduler
    Rule(S.update_graph, module=_DSCHED,
         function=("update_graph", "_materialize_graph", "_cull", "_create_taskstate_from_graph",
                   "_generate_taskstates", "_set_priorities", "_apply_annotations",
                   "_find_lost_dependencies")),
    Rule(S.communicate, module=_DSCHED, function="add_client",
         note="the client's stream: reading its messages (the graph)"),
    Rule(S.schedule, module=_DSCHED,
         function=("*decide_worker*", "_transition_*_processing", "_add_to_processing",
                   "worker_objective", "valid_workers", "is_rootish", "get_comm_cost",
                   "check_idle_saturated", "stimulus_queue_slots_maybe_opened",
                   "_task_slots_available")),
    Rule(S.dispatch, module=_DSCHED,
         function=("send_task_to_worker", "_task_to_msg", "worker_send", "send_all")),
    Rule(S.execute, module=_DSCHED,
         function=("handle_task_*", "stimulus_task_*", "_transition_processing_*",
                   "_transition_memory_*", "_transition_*_forgotten", "_transition_*_released",
                   "_exit_processing_common", "_add_to_memory", "_propagate_forgotten",
                   "client_releases_keys", "report", "client_send", "handle_*", "add_worker",
                   "release_worker_data", "heartbeat_worker")),
    Rule(S.schedule, module="distributed/stealing.py"),
    # --- distributed client
    Rule(S.execute, module=(*_SER, "distributed/comm/utils.py"), roles="client",
         function=_LOADS, note="results"),
    Rule(S.serialize, module=_SER, roles="client"),
    Rule(S.serialize, module="distributed/client.py",
         function=("_graph_to_futures", "_send_to_scheduler")),
    Rule(S.execute, module="distributed/client.py",
         function=("*gather*", "_handle_report", "_handle_key_in_memory", "result")),
    # --- distributed worker
    Rule(S.execute, module=_DWORKER,
         function=("execute", "_run_task*", "gather_dep", "get_data",
                   "get_data_from_worker")),
    Rule(S.dispatch, module=_DWORKER,
         function=("handle_scheduler", "_handle_remote_stimulus", "handle_stimulus")),
    Rule(S.dispatch, module=_DWSM,
         function=("_handle_compute_task", "_ensure_task_exists", "_transition_released_waiting",
                   "_transition_waiting_ready")),
    Rule(S.execute, module=_DWSM,
         function=("_handle_execute_*", "_execute_done_common", "_transition_executing_*",
                   "_transition_*_memory", "*gather_dep*", "_ensure_c*", "_transition_*fetch*",
                   "_transition_*flight*", "_handle_free_keys", "_handle_update_data")),
    # --- fallbacks: used only when no rule above matches any frame of the stack
    Rule(S.schedule, module=_DSCHED,
         function=("_transition", "_transitions", "transitions", "stimulus_*"), fallback=True,
         note="the transition engine without a stage-defining caller"),
    Rule(S.execute, module="dask/", roles="worker", fallback=True),
    Rule(S.update_graph, module=_DGRAPH, roles="scheduler", fallback=True,
         note="materialising layers on the scheduler is lowering, so update_graph"),
    Rule(S.generate, module=_DGRAPH, fallback=True),
    Rule(S.execute, module=_IO, roles="scheduler", function=(*_READS, *_LOADS), fallback=True,
         note="reads run from loop callbacks, outside any handler: mostly worker reports"),
    Rule(S.dispatch, module=_IO, roles="scheduler", fallback=True),
    Rule(S.communicate, module=(*_COMM, "distributed/client.py"), roles="client",
         fallback=True),
    Rule(S.dispatch, module=_IO, roles="worker", function=(*_READS, *_LOADS), fallback=True),
    Rule(S.execute, module=_IO, roles="worker", fallback=True),
    Rule(S.dispatch, module=_DWSM, fallback=True),
    Rule(S.execute, module=(_DWORKER, "distributed/threadpoolexecutor.py"), fallback=True),
)

_DASK_MERGED = MappingProxyType({
    "distributed/scheduler.py:SchedulerState._transitions": "the transition engine runs "
    "scheduling (waiting->processing), dispatch (messages to workers) and the handling of "
    "results (processing->memory). Its caller decides (update_graph: the graph's first "
    "transitions; stimulus_task_finished: execute); specific _transition_* methods are mapped "
    "by name; with no stage-defining caller it counts as schedule, the earliest (fallback).",
    "distributed/scheduler.py:SchedulerState.stimulus_*": "stimulus handlers not mapped by name "
    "(retry, cancel, ...) count as schedule (fallback).",
    "distributed/scheduler.py:Scheduler.send_all": "sends task batches to workers (dispatch) "
    "and reports to clients (execute) in one call: dispatch.",
    "asyncio/, tornado/ on the scheduler": "event-loop and coroutine machinery outside any "
    "handler runs sends to workers, reports to clients and timers alike: dispatch.",
    "distributed/batched.py:BatchedSend._background_send": "on the scheduler one coroutine type "
    "writes both worker streams (dispatch) and client streams (reports): dispatch.",
    "distributed/scheduler.py:_materialize_graph": "lowering (update_graph on the scheduler) "
    "and the collection's low-level optimiser: its own frames are update_graph, the optimiser "
    "it calls matches the optimize rules (so Dask's optimize shows up in the scheduler's "
    "profile, not the client's).",
    "distributed/worker.py:Worker.handle_stimulus": "handles compute-task messages (dispatch) and "
    "execution results (execute) alike: dispatch.",
    "distributed/worker_state_machine.py:*": "WorkerState code not mapped by name handles both "
    "arriving tasks and finished ones: dispatch.",
    "distributed/client.py:Client.*": "client plumbing not mapped by name (sync, futures, "
    "message handling) counts as communicate.",
    "dask/local.py:get_async": "the in-process scheduler loop picks ready tasks, submits them "
    "and handles results: schedule.",
    "distributed/core.py:Server.handle_stream": "the stream reading loop has no rule: under "
    "Scheduler.add_client it is communicate, under handle_worker execute, under the worker's "
    "handle_scheduler dispatch; the handlers it awaits are matched first.",
})

DASK_MAP = StageMap("dask", _DASK_RULES, IDLE_PATTERNS, IMPORT_PATTERNS, _DASK_MERGED)

MERGED = DASK_MAP.merged
"""Where Dask does several stages' work in one place, and which stage its frames get."""
