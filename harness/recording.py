"""``stagecost.recording(client)``: the stages of whatever ``compute()``, ``persist()``,
``get`` or ``submit`` calls run inside a ``with`` block on an existing ``distributed.Client``,
as Dask itself exposes them.

Rules of this module:

- Nothing of Dask's is patched: the figures are those Dask records for itself. Three sources,
  each read once per block (no per-task work here):

  | stage        | role      | what Dask exposes                                              |
  |--------------|-----------|----------------------------------------------------------------|
  | serialize    | client    | each call of this client's ``_graph_to_futures`` (the one call every submission goes through: futures for the keys, pickling the expression, the message queued); bytes = the pickled expression |
  | communicate  | scheduler | from that message being handed to the client's comm to the scheduler starting the update (``start_timestamp_seconds`` of Dask's ``update-graph`` event) |
  | update_graph | scheduler | ``duration_seconds`` of Dask's ``update-graph`` event: unpickling, materialisation (Dask's low-level optimisation and lowering happen in it), ordering, task states; tasks = its ``tasks`` |
  | execute      | worker-i  | the worker's fine performance metrics (``Worker.digests_total``): ``execute`` seconds of the tasks of this block (by Dask span), plus fetching and serving dependencies (``gather-dep``, ``get-data``) but for waiting on the network |

  generate and optimize run in the calling code before Dask hands the graph to the client
  (nothing of Dask's times them), and Dask exposes no time for the scheduler's choosing of
  workers or its sending of tasks: those stages are reported not applicable, never as 0.
- The block's work is told from other work by a Dask span (``distributed.span``) opened for
  the block: every graph submitted inside it carries the span's annotation, so the tasks'
  metrics are those of this block only. Fetching and serving dependencies has no span in
  Dask's metrics: it counts everything the workers transferred during the block.
- On leaving the block, work still running (``persist()``) is waited for, up to ``timeout``
  seconds (a note says when it did not finish). Wall time runs from the first submission to
  the last task of the block finishing (Dask's span ``stop``); time to first task, to the
  span's ``start``. Dask's times are the scheduler's clock; its offset from this process's
  clock is estimated on entering (best of three round trips).
- The client is changed only by two instance attributes (wrappers of its
  ``_graph_to_futures`` and ``_send_to_scheduler``), removed on leaving. The cluster's
  processes run two small functions of this module (``client.run``), so they need stagecost
  importable, as for the ``dask-distributed`` backend.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from scheduler.stages import SpanRow, Stage

__all__ = ["APPLICABLE", "MERGED", "Recorder", "Recording", "recording"]

APPLICABLE = frozenset({Stage.serialize, Stage.communicate, Stage.update_graph, Stage.execute})
"""The stages Dask exposes times for (see the module docstring)."""

MERGED = {
    "optimize+update_graph": "recording: Dask's update-graph event gives the scheduler's "
                             "materialisation as one duration; the low-level optimisation "
                             "and lowering it runs are counted in update_graph",
    "communicate+update_graph": "recording: the scheduler reads and msgpack-decodes the "
                                "update-graph message before Dask's update starts; that "
                                "decoding is counted in communicate",
}
_BACKEND = "dask-distributed"
_METRICS = ("execute", "gather-dep", "get-data")


# --- run in the cluster's processes (by reference: they import this module) ----------------

def scheduler_time() -> float:
    """The scheduler's clock (Dask's timestamps are ``time.time()``)."""
    return time.time()


def worker_seconds(dask_worker: Any = None) -> dict[Any, float]:
    """The worker's cumulative seconds of executing tasks and moving their data, by Dask's
    metric key (a few keys per task prefix and span, never per task)."""
    return {k: float(v) for k, v in dask_worker.digests_total.items()
            if isinstance(k, tuple) and k and k[0] in _METRICS and k[-1] == "seconds"}


def span_state(span_id: str, dask_scheduler: Any = None) -> dict[str, Any] | None:
    """Dask's span ``span_id`` on the scheduler: done, start, stop, its ids and those of the
    spans nested in it, task counts by state; ``None`` before any of its tasks arrived."""
    ext = dask_scheduler.extensions.get("spans")
    span = ext.spans.get(span_id) if ext is not None else None
    if span is None:
        return None
    return {"done": bool(span.done), "start": float(span.start), "stop": float(span.stop),
            "ids": [s.id for s in span.traverse_spans()], "states": dict(span.states)}


# --- the recording ---------------------------------------------------------------------------

@dataclass
class Recording:
    """What a ``recording`` block measured. Tables have the columns of the run folder's
    (``stages.csv``, ``runs.csv``, ``spans.csv``); empty until the block has ended."""

    name: str = "recording"
    stages: pd.DataFrame = field(default_factory=pd.DataFrame)
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    spans: pd.DataFrame = field(default_factory=pd.DataFrame)
    graphs: list[dict[str, Any]] = field(default_factory=list)
    """Dask's ``update-graph`` metrics of each graph submitted, in order."""
    activities: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Dask's own split of the execute seconds: ``role``, ``metric`` (``execute``,
    ``gather-dep``, ``get-data``), ``activity`` (``thread-cpu``, ``executor``, ...),
    ``seconds``; ``counted`` says whether execute includes it."""
    notes: list[str] = field(default_factory=list)
    merged: dict[str, str] = field(default_factory=lambda: dict(MERGED))

    def write(self, folder: str | Path, *, render: bool = True) -> Path:
        """Write the recording as a run folder (and its report, unless ``render`` is
        False), as ``stagecost run`` writes one; return the folder."""
        import datetime as dt

        from harness.report.schema import SCHEMA_VERSION, write_tables
        from harness.runner import environment

        folder = Path(folder)
        env = environment()
        meta = {"schema_version": SCHEMA_VERSION,
                "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "parameters": {"command": "recording", "workloads": [self.name],
                               "backends": [_BACKEND], "graphs": self.graphs},
                "versions": env["versions"], "machine": env["machine"],
                "git_commit": env["git_commit"], "warmups": 0, "notes": self.notes,
                "merged_stages": self.merged, "reference_backend": _BACKEND}
        write_tables(folder, self.stages, self.spans, self.runs, meta)
        if render:
            from harness.report.render import render_report

            render_report([folder], folder)
        return folder


def recording(client: Any, name: str = "recording", timeout: float = 300.0) -> Recorder:
    """Measure the Dask work submitted through ``client`` inside the ``with`` block.

    ``with stagecost.recording(client) as rec: ...`` gives ``rec.stages``, ``rec.runs`` and
    ``rec.spans`` once the block ends (see the module docstring for what each stage is).
    ``name`` is the workload column; ``timeout`` bounds the wait, on leaving, for work the
    block submitted and did not wait for. A block that raises is still measured (without
    waiting). ``TypeError`` if ``client`` is not a synchronous ``distributed.Client``."""
    return Recorder(client, name, timeout)


class Recorder:
    """The context manager ``recording`` returns (one block, once)."""

    def __init__(self, client: Any, name: str = "recording", timeout: float = 300.0) -> None:
        if not hasattr(client, "_graph_to_futures") or not hasattr(client, "run"):
            raise TypeError(f"recording needs a distributed.Client, got "
                            f"{type(client).__module__}.{type(client).__qualname__}")
        if getattr(client, "asynchronous", False):
            raise TypeError("recording needs a synchronous distributed.Client")
        self.client = client
        self.timeout = timeout
        self.rec = Recording(name)
        self._submits: list[tuple[int, int]] = []
        self._sends: list[tuple[int, int]] = []
        self._futures: list[weakref.ref[Any]] = []
        self._span: Any = None
        self._span_id = ""

    # -- entering ---------------------------------------------------------------------------

    def __enter__(self) -> Recording:
        import distributed

        client = self.client
        if "_graph_to_futures" in vars(client):
            raise RuntimeError("this client is already being recorded; nest no recordings")
        self._offset_s = self._scheduler_offset()
        self._wall0, self._perf0 = time.time(), time.perf_counter_ns()
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        self._roles = {a: f"worker-{i}" for i, a in enumerate(workers)}
        self._before = client.run(worker_seconds)
        self._since = time.time() + self._offset_s  # on the scheduler's clock
        self._wrap()
        self._span = distributed.span(f"stagecost-{self.rec.name}")
        self._span_id = self._span.__enter__()
        return self.rec

    def _scheduler_offset(self) -> float:
        """Scheduler clock minus ours, in seconds (best of three round trips)."""
        best: tuple[float, float] | None = None
        for _ in range(3):
            t0 = time.time()
            remote = float(self.client.run_on_scheduler(scheduler_time))
            t1 = time.time()
            if best is None or t1 - t0 < best[0]:
                best = (t1 - t0, remote - (t0 + t1) / 2)
        assert best is not None
        return best[1]

    def _wrap(self) -> None:
        client = self.client
        to_futures, send = client._graph_to_futures, client._send_to_scheduler
        submits, sends, futures = self._submits, self._sends, self._futures

        def graph_to_futures(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter_ns()
            try:
                made = to_futures(*args, **kwargs)
            finally:
                submits.append((t0, time.perf_counter_ns()))
            futures.extend(weakref.ref(f) for f in made.values())  # what the caller keeps
            return made

        def send_to_scheduler(msg: Any) -> Any:
            if isinstance(msg, dict) and msg.get("op") == "update-graph":
                sends.append((time.perf_counter_ns(), _nbytes(msg.get("expr_ser"))))
            return send(msg)

        self._wrappers = (graph_to_futures, send_to_scheduler)
        client._graph_to_futures = graph_to_futures
        client._send_to_scheduler = send_to_scheduler

    def _unwrap(self) -> None:
        own = vars(self.client)
        for name, fn in zip(("_graph_to_futures", "_send_to_scheduler"), self._wrappers,
                            strict=True):
            if own.get(name) is fn:
                del own[name]

    # -- leaving ----------------------------------------------------------------------------

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._span.__exit__(None, None, None)
        finally:
            self._unwrap()
        state = self._wait(raised=exc_type is not None)
        self._measure(state)

    def _wait(self, raised: bool) -> dict[str, Any] | None:
        """The block's span once its tasks are done (or ``timeout`` passed)."""
        if not self._submits:
            return None
        deadline = time.monotonic() + (0.0 if raised else self.timeout)
        kept = [f for f in (ref() for ref in self._futures) if f is not None]
        self._futures.clear()
        if not raised and kept:  # done only once the client itself has heard of it
            from distributed import wait

            with contextlib.suppress(TimeoutError, CancelledError):
                wait(kept, timeout=max(deadline - time.monotonic(), 0.0))
        del kept
        while True:
            state = self.client.run_on_scheduler(span_state, self._span_id)
            if (state is not None and state["done"]) or time.monotonic() >= deadline:
                break
            if state is None and len(self._update_events()) >= len(self._sends):
                break  # every update ended and none made tasks: nothing to wait for
            time.sleep(0.05)
        if state is None or not state["done"]:
            self.rec.notes.append(f"recording: the block's work had not finished "
                                  f"{self.timeout:g} s after the block ended; what "
                                  f"finished is counted")
        return state

    def _update_events(self) -> list[dict[str, Any]]:
        """Dask's ``update-graph`` events of this client since the block began, in order."""
        events = self.client.get_events(self.client.id)
        return [msg for ts, msg in events if ts >= self._since and isinstance(msg, dict)
                and msg.get("action") == "update-graph"]

    def _perf(self, scheduler_ts: float) -> int:
        """A scheduler timestamp (seconds) on this process's ``perf_counter_ns`` clock."""
        return self._perf0 + int((scheduler_ts - self._offset_s - self._wall0) * 1e9)

    def _measure(self, state: dict[str, Any] | None) -> None:
        from harness.backends.base import Measurement
        from harness.measure import run_row, span_rows, stage_rows
        from harness.report.schema import RUNS_COLUMNS, SPANS_COLUMNS, STAGES_COLUMNS

        rec = self.rec
        events = [e for e in self._update_events() if e.get("status") == "OK"]
        metrics = [e.get("metrics", {}) for e in events]
        rec.graphs = [{k: v for k, v in m.items() if isinstance(v, int | float)}
                      for m in metrics]
        spans: list[SpanRow] = []
        for (t0, t1), (_, nbytes) in zip(self._submits, _padded(self._sends,
                                                                len(self._submits)),
                                         strict=True):
            spans.append(SpanRow(int(Stage.serialize), "client", t0, t1, 0, nbytes, 1))
        for (sent, nbytes), m in zip(self._sends, metrics, strict=False):
            start = self._perf(m["start_timestamp_seconds"])
            spans.append(SpanRow(int(Stage.communicate), "scheduler", sent, max(sent, start),
                                 0, nbytes, 1))
        for m in metrics:
            start = self._perf(m["start_timestamp_seconds"])
            spans.append(SpanRow(int(Stage.update_graph), "scheduler", start,
                                 start + int(m["duration_seconds"] * 1e9),
                                 int(m.get("tasks", 0)), 0, 1))
        t0 = self._submits[0][0] if self._submits else self._perf0
        first = self._perf(state["start"]) if state and state["start"] else None
        t_end = self._perf(state["stop"]) if state and state["start"] else \
            (self._submits[-1][1] if self._submits else t0)
        ids = set(state["ids"]) if state else set()
        after = self.client.run(worker_seconds)
        split: list[dict[str, Any]] = []
        for addr in sorted(after, key=lambda a: self._roles.get(a, a)):
            parts = _split(after[addr], self._before.get(addr, {}), ids)
            split += [{"role": self._roles.get(addr, addr), "metric": m, "activity": a,
                       "seconds": v, "counted": c} for (m, a, c), v in sorted(parts.items())]
            busy = sum(v for (_, _, counted), v in parts.items() if counted)
            if busy > 0:
                begin = first if first is not None else t0
                spans.append(SpanRow(int(Stage.execute), self._roles.get(addr, addr), begin,
                                     begin + int(busy * 1e9), 0, 0, 0))
        n_tasks = sum(int(m.get("tasks", 0)) for m in metrics)
        ran = sum(int(m.get("new_tasks", 0)) for m in metrics)
        meas = Measurement(spans, t0, max(t_end, t0), ran)
        key = {"backend": _BACKEND, "workload": rec.name, "n_tasks": n_tasks, "repeat": 0}
        if not metrics:
            rec.notes.append("recording: no graph was submitted inside the block")
        rec.stages = pd.DataFrame(stage_rows(meas, key, max(n_tasks, 1), APPLICABLE),
                                  columns=list(STAGES_COLUMNS))
        row = run_row(meas, key)
        row["time_to_first_task_s"] = None if first is None else (first - t0) / 1e9
        rec.runs = pd.DataFrame([row], columns=list(RUNS_COLUMNS))
        rec.spans = pd.DataFrame(span_rows(meas, key), columns=list(SPANS_COLUMNS))
        rec.activities = pd.DataFrame(split, columns=["role", "metric", "activity", "seconds",
                                                      "counted"])


def _padded(sends: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """One send per submission (a submission that raised before sending has none)."""
    return (sends + [(0, 0)] * n)[:n]


def _nbytes(serialized: Any) -> int:
    """Bytes of the pickled expression's frames (its small header dict aside)."""
    return sum(memoryview(f).nbytes for f in getattr(serialized, "frames", ())
               if isinstance(f, bytes | bytearray | memoryview))


def _split(after: dict[Any, float], before: dict[Any, float], span_ids: set[str]
           ) -> dict[tuple[str, str, bool], float]:
    """Seconds a worker spent, between two readings of its metrics, per (metric, activity,
    counted in execute): the block's tasks (by span), and moving data (every transfer: Dask
    keeps no span for it), waiting on the network not counted."""
    out: dict[tuple[str, str, bool], float] = {}
    for k, v in after.items():
        if k[0] == "execute" and (len(k) < 5 or k[1] not in span_ids):
            continue
        delta = v - before.get(k, 0.0)
        if delta <= 0:
            continue
        activity = str(k[-2])
        key = (str(k[0]), activity, k[0] == "execute" or activity != "network")
        out[key] = out.get(key, 0.0) + delta
    return out
