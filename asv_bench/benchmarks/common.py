"""Inputs shared by the benchmark modules: workloads, lowered graphs, encoded graphs and
scheduler states, at the sizes this run asks for.

Rules of this module:

- Workloads come from ``harness.workloads.build``; nothing here generates a graph of its own.
  A size is a request: the real task count (``Workload.n_tasks``, ``TaskGraph.n``) can differ
  (a 1,000,000-task shuffle has 944,784 tasks), and per-task figures use the real count.
- Sizes: ``STAGECOST_ASV_SIZES`` unset (or ``all``) means 10,000, 100,000 and 1,000,000 tasks;
  ``small`` means 10,000 only (the CI dry run); a comma-separated list of counts (``1e6`` is
  accepted) picks those. Anything else is refused with a message saying what is accepted.
- Expensive inputs are built once per run, in the ``setup_cache`` of the ``*Inputs`` base
  classes below. Each writes one pickle file per parameter set into asv's cache directory
  (the working directory of ``setup_cache`` and of the benchmark processes) and returns their
  paths, so a benchmark process loads only the input of its own parameters. Subclasses share
  a base's cache: asv keys a cache by where ``setup_cache`` is defined.
- ``load_once`` keeps one loaded input per benchmark object for benchmarks that only read it
  (asv re-runs ``setup`` before every timed call); benchmarks that consume their input call
  ``load`` in ``setup`` and get a fresh copy every time.
"""

from __future__ import annotations

import os
import pickle
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np

from harness.workloads import build
from scheduler.runtime.worker import REPORT_BATCH
from scheduler.state.events import (
    GraphSubmittedEvent,
    Instruction,
    SendTasks,
    TasksFinishedEvent,
    WorkerAddedEvent,
)
from scheduler.state.routing import route
from scheduler.state.scheduler import SchedulerState
from scheduler.wire.encodings import decode_graph, encode_graph

__all__ = [
    "ENCODINGS", "GraphInputs", "LONG_TIMEOUT", "LayerInputs", "MidRunInputs",
    "OPTIMIZE_WORKLOADS", "PICKLE_MAX_TASKS", "SIZES", "SIZES_ENV", "STAGE_WORKLOADS",
    "WORKERS", "WireInputs", "dispatch_batch", "fresh_state", "load", "load_once",
    "parse_sizes", "pickle_skips", "run_to_midpoint", "skip_unless", "store_input",
    "submit_event",
]

SIZES_ENV = "STAGECOST_ASV_SIZES"
DEFAULT_SIZES: tuple[int, ...] = (10_000, 100_000, 1_000_000)
SMALL_SIZES: tuple[int, ...] = (10_000,)


def parse_sizes(text: str | None) -> tuple[int, ...]:
    """Task counts named by ``text`` (the value of ``STAGECOST_ASV_SIZES``; see the module
    docstring). Raises ``ValueError`` naming the accepted forms."""
    value = (text or "").strip().lower()
    if value in ("", "all", "full"):
        return DEFAULT_SIZES
    if value == "small":
        return SMALL_SIZES
    sizes = []
    for part in value.split(","):
        try:
            number = float(part)
        except ValueError:
            number = -1.0
        if not number.is_integer() or number < 2:
            raise ValueError(f"{SIZES_ENV}={text!r}: expected 'small', 'all' or task counts "
                             f"separated by commas (e.g. '10000,1e6'); {part!r} is not one")
        sizes.append(int(number))
    return tuple(sorted(set(sizes)))


SIZES: tuple[int, ...] = parse_sizes(os.environ.get(SIZES_ENV))
"""Task counts of this run (requests; see the module docstring)."""

STAGE_WORKLOADS: tuple[str, ...] = ("elementwise", "reduction", "shuffle")
"""Workloads of every stage benchmark."""

OPTIMIZE_WORKLOADS: tuple[str, ...] = (*STAGE_WORKLOADS, "chain")
"""Generation and optimisation add ``chain``: 100 layers, the target of linear fusion."""

ENCODINGS: tuple[str, ...] = ("compact", "pickle")
"""Graph encodings compared where the encoding changes the work."""

PICKLE_MAX_TASKS = 100_000
"""``pickle`` costs about 150 µs per task to encode: larger graphs are skipped."""

WORKERS = 2
"""Workers in every scheduler state and cluster of the suite."""

LONG_TIMEOUT = 1800.0
"""Seconds allowed to a benchmark (all its samples) or a cache with million-task inputs."""


# --- files in asv's cache directory ---------------------------------------------------------

def store_input(value: Any, *name_parts: object) -> str:
    """Pickle ``value`` into the working directory (asv's cache directory); return its path."""
    stem = "-".join(str(p) for p in name_parts)
    path = os.path.abspath(f"{stem}.pickle")
    with open(path, "wb") as f:
        pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load(path: str) -> Any:
    """A fresh copy of an input written by a ``setup_cache``."""
    with open(path, "rb") as f:
        return pickle.load(f)


def load_once(bench: Any, path: str) -> Any:
    """The input at ``path``, loaded once per benchmark object (for benchmarks that do not
    change their input: asv re-runs ``setup`` before every timed call)."""
    memo = getattr(bench, "_stagecost_input", None)
    if memo is None or memo[0] != path:
        memo = (path, load(path))
        bench._stagecost_input = memo
    return memo[1]


def skip_unless(condition: bool) -> None:
    """Skip this parameter set (asv shows it as n/a) unless ``condition`` holds."""
    if not condition:
        raise NotImplementedError("parameter set not measured")


def pickle_skips(workloads: Iterable[str]) -> list[tuple[str, int, str]]:
    """``skip_params`` of a (workload, n_tasks, encoding) grid: ``pickle`` beyond
    ``PICKLE_MAX_TASKS``, skipped before ``setup`` runs (``setup`` also refuses them, for
    asv versions without ``skip_params``)."""
    return [(w, n, "pickle") for w in workloads for n in SIZES if n > PICKLE_MAX_TASKS]


# --- scheduler states -----------------------------------------------------------------------

def fresh_state(n_workers: int = WORKERS) -> SchedulerState:
    """A scheduler state with ``n_workers`` one-thread workers and no graph."""
    state = SchedulerState()
    for w in range(n_workers):
        state.handle(WorkerAddedEvent(stimulus_id=f"add-{w}", worker=w, nthreads=1))
    return state


def submit_event(graph: Any, out_ids: np.ndarray, graph_id: str = "bench") -> GraphSubmittedEvent:
    """The event the scheduler server builds for a decoded graph."""
    return GraphSubmittedEvent(stimulus_id=f"graph-{graph_id}", client="bench",
                               graph_id=graph_id, graph=graph, outputs=out_ids)


def _sends(instructions: Iterable[Instruction]) -> list[tuple[int, np.ndarray]]:
    return [(w, s.ids) for (w, _), s in route(instructions).sends.items()]


def run_to_midpoint(state: SchedulerState, first: list[Instruction],
                    fraction: float = 0.5) -> tuple[SchedulerState, TasksFinishedEvent]:
    """Drive ``state`` (a graph just submitted and scheduled, ``first`` being what that
    returned) as its workers would: in turn, each reports its oldest tasks as finished, up to
    ``REPORT_BATCH`` (2,048) per report, the batch size of a worker's reports. Pick the first
    report, once ``fraction`` of the tasks finished, that makes the scheduler send tasks (or
    the last one that does, when none does after that point).

    Returns the state just before that report (mid-run: some results held in memory, other
    tasks queued, processing or waiting) and the report, not handled. The whole run is
    simulated once to find the report, then replayed up to it (the state machine is
    deterministic). ``state`` is left in an unspecified state."""
    start = pickle.dumps((state, first), protocol=pickle.HIGHEST_PROTOCOL)
    target = int(state.n_tasks * fraction)
    steps, _ = _drive(state, first, stop=None)
    sending = [k for k, (_, sent) in enumerate(steps) if sent]
    if not sending:
        raise RuntimeError("no report of finished tasks made the scheduler send tasks: the "
                           "graph is too small for a mid-run state")
    stop = next((k for k in sending if steps[k][0] >= target), sending[-1])
    state, first = pickle.loads(start)
    _, report = _drive(state, first, stop=stop)
    assert report is not None
    return state, report


def _drive(state: SchedulerState, first: list[Instruction], stop: int | None
           ) -> tuple[list[tuple[int, bool]], TasksFinishedEvent | None]:
    """Handle reports (see ``run_to_midpoint``) until the run ends, or until report number
    ``stop``, which is returned unhandled. Also returns, per report handled, the tasks
    finished before it and whether it made the scheduler send tasks."""
    queues: list[deque[np.ndarray]] = [deque() for _ in range(len(state.nthreads))]
    for w, ids in _sends(first):
        queues[w].append(ids)
    steps: list[tuple[int, bool]] = []
    done = 0
    while True:
        step = len(steps)
        worker = next((w for w in _turns(step, len(queues)) if queues[w]), None)
        if worker is None:
            if done < state.n_tasks:
                raise RuntimeError(f"the simulated run stalled after {done} of "
                                   f"{state.n_tasks} tasks (nothing sent, tasks left): a "
                                   f"bug in the scheduler state machine")
            return steps, None
        ids = _take(queues[worker], REPORT_BATCH)
        report = TasksFinishedEvent(stimulus_id=f"done-{step}", worker=worker, ids=ids)
        if step == stop:
            return steps, report
        ins = state.handle(report, schedule=False)
        ins += state.schedule()
        sends = _sends(ins)
        for w, sent in sends:
            queues[w].append(sent)
        steps.append((done, any(len(sent) for _, sent in sends)))
        done += len(ids)


def _turns(step: int, n: int) -> list[int]:
    """Workers in round-robin order, starting with the one whose turn it is."""
    return [(step + k) % n for k in range(n)]


def _take(queue: deque[np.ndarray], limit: int) -> np.ndarray:
    """Up to ``limit`` ids from the front of ``queue`` (batches in the order sent)."""
    parts: list[np.ndarray] = []
    count = 0
    while queue and count < limit:
        ids = queue.popleft()
        if count + len(ids) > limit:
            queue.appendleft(ids[limit - count:])
            ids = ids[:limit - count]
        parts.append(ids)
        count += len(ids)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def dispatch_batch(instructions: Iterable[Instruction]) -> SendTasks:
    """The largest message the scheduler server would send for ``instructions``: the
    ``SendTasks`` of one worker and graph, merged as the server merges them (``route``)."""
    sends = route(instructions).sends
    if not sends:
        raise RuntimeError("the prepared report sent no tasks: choose another midpoint")
    return max(sends.values(), key=lambda s: len(s.ids))


# --- inputs built once per run --------------------------------------------------------------

class LayerInputs:
    """Base: ``cache[(workload, n)]`` is the workload's ``LayerGraph`` and output layer.

    Layers are a few objects per layer, so they are returned whole rather than as files."""

    def setup_cache(self) -> dict[tuple[str, int], tuple[Any, str, int]]:
        out = {}
        for name in OPTIMIZE_WORKLOADS:
            for n in SIZES:
                w = build(name, n)
                out[(name, n)] = (w.layers, w.output_layer, w.n_tasks)
        return out

    setup_cache.timeout = LONG_TIMEOUT  # type: ignore[attr-defined]


class GraphInputs:
    """Base: ``cache[(workload, n)]`` is the path of ``(TaskGraph, outputs)``: the lowered
    graph and the keys a user asks for."""

    def setup_cache(self) -> dict[tuple[str, int], str]:
        out = {}
        for name in OPTIMIZE_WORKLOADS:
            for n in SIZES:
                w = build(name, n)
                out[(name, n)] = store_input((w.lower(), w.outputs), "graph", name, n)
        return out

    setup_cache.timeout = LONG_TIMEOUT  # type: ignore[attr-defined]


class WireInputs:
    """Base: ``cache[(workload, n, encoding)]`` is the path of ``(frames, out_ids, n_tasks)``:
    the graph message as the scheduler receives it (``bytes`` frames) and the output ids the
    client sends with it. ``pickle`` only up to ``PICKLE_MAX_TASKS``."""

    def setup_cache(self) -> dict[tuple[str, int, str], str]:
        out = {}
        for name in STAGE_WORKLOADS:
            for n in SIZES:
                w = build(name, n)
                graph = w.lower()
                out_ids = graph.ids_of(w.outputs)
                for encoding in ENCODINGS:
                    if encoding == "pickle" and n > PICKLE_MAX_TASKS:
                        continue
                    frames = [bytes(f) for f in encode_graph(graph, encoding)]
                    out[(name, n, encoding)] = store_input((frames, out_ids, graph.n),
                                                      "wire", name, n, encoding)
        return out

    setup_cache.timeout = LONG_TIMEOUT  # type: ignore[attr-defined]


class MidRunInputs:
    """Base: ``cache[(workload, n)]`` is the path of ``(state, report, functions)``: a
    scheduler state with 2 workers, halfway through running the ``compact``-decoded graph
    (``run_to_midpoint``), the next report of finished tasks (not handled yet) and the graph's
    opaque function table (for the workers' graph definition)."""

    def setup_cache(self) -> dict[tuple[str, int], str]:
        out = {}
        for name in STAGE_WORKLOADS:
            for n in SIZES:
                w = build(name, n)
                graph = w.lower()
                out_ids = graph.ids_of(w.outputs)
                wire = decode_graph([bytes(f) for f in encode_graph(graph, "compact")])
                state = fresh_state()
                first = state.handle(submit_event(wire.graph, out_ids), schedule=False)
                first += state.schedule()
                state, report = run_to_midpoint(state, first)
                out[(name, n)] = store_input((state, report, wire.functions), "midrun", name, n)
        return out

    setup_cache.timeout = LONG_TIMEOUT  # type: ignore[attr-defined]

