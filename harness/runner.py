"""Runs a grid of workload x size x backend, records the run folder, renders its report.

Rules (in the manner of pyperf):

- The parent process never measures. Each configuration (a *cell*) runs in a fresh child
  process (``python -m harness.child``) whose parameters are all on its command line and which
  writes its result as JSON; so no state leaks from one configuration into the next.
- Inside a cell, ``warmups`` runs come first and are dropped (their count is recorded), then
  the measured runs, each a fresh graph built, submitted and computed: ``repeats`` with stage
  recording on interleaved with ``repeats`` with it off (on, off, on, off, ...; numbered in
  the order they ran, ``recorded`` says which), so that every configuration measures what
  recording costs it (``record_overhead`` in runs.csv: median wall time on / off - 1) and wall
  times come from runs that recorded nothing. With recording off (``--no-record``) or
  ``Cell.overhead`` false (a profile) all repeats are of the one kind. Before each measured
  repeat a fixed piece of work is timed (``machine_check.calibrate``, ``calibration_s``): how
  fast the machine was just then; during it, the CPU other processes used is measured
  (``other_load``, in cores), and the CPU seconds of this process and its children
  (``cpu_s``: the run's own work; a busy machine inflates it far less than wall time).
- Progress goes to stderr (``harness.progress``): a bar with the overall count and an ETA on a
  terminal, plain lines otherwise. Children send their progress to the parent as events.
- Ctrl-C (SIGINT, to the parent alone or to the whole process group) stops the whole grid:
  the cell under way keeps its finished repeats, later cells are not run, the run folder and
  its report hold what finished, and ``meta.json`` says what was interrupted. A child gets
  ``INTERRUPT_GRACE`` seconds to stop and write what it has, then it is killed.
- Results are data: ``write_tables`` records them, ``render_report`` renders from disk only.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from harness.backends import BACKENDS, make_backend
from harness.backends.base import BackendError, RunOptions
from harness.machine_check import LoadProbe, calibrate
from harness.measure import PEAK_RSS_COLUMNS, run_row, span_rows, stage_rows
from harness.progress import CellPlan, Events, GridProgress, PlainEvents
from harness.user_workloads import WorkloadError, build_any, graph_failed
from harness.workloads import not_applicable
from scheduler.runtime.memory import peak_rss

ENCODED_BACKENDS = frozenset({"reference", "reference-inproc"})
"""Backends that take a graph encoding (``-e``); Dask backends pickle as Dask does, so they
run once whatever ``-e`` lists."""

__all__ = ["ENCODED_BACKENDS", "INTERRUPT_GRACE", "Cell", "CellInterrupted", "default_run_dir",
           "environment", "record_overhead", "run_cell", "run_grid"]

INTERRUPT_GRACE = 20.0
"""Seconds a child has, after Ctrl-C, to stop its cluster and write its finished repeats."""

EVENTS_ENV = "STAGECOST_PROGRESS_EVENTS"
"""Set in a child's environment: report progress as events on stderr (``JsonEvents``)."""


class CellInterrupted(Exception):
    """Ctrl-C during a cell; ``result`` holds its finished repeats (or None)."""

    def __init__(self, result: dict[str, Any] | None) -> None:
        super().__init__("interrupted")
        self.result = result


@dataclass(frozen=True)
class Cell:
    workload: str
    n_tasks: int
    backend: str
    options: RunOptions = field(default_factory=RunOptions)
    repeats: int = 3
    warmups: int = 1
    label_encoding: bool = False
    source: str | None = None   # work pickled by stagecost.measure (see user_workloads)
    overhead: bool = True       # with recording on, interleave as many record-off repeats

    def modes(self) -> list[bool]:
        """Recording on (True) or off of each measured repeat, in the order they run."""
        if self.options.record and self.overhead:
            return [True, False] * self.repeats
        return [self.options.record] * self.repeats

    @property
    def runs_total(self) -> int:
        """Warmups plus measured repeats."""
        return self.warmups + len(self.modes())

    @property
    def backend_label(self) -> str:
        """The backend column of the tables: ``reference``, or ``reference/layers`` when one
        run compares encodings."""
        return f"{self.backend}/{self.options.encoding}" if self.label_encoding \
            else self.backend

    def label(self) -> str:
        return f"{self.workload} n={self.n_tasks:,} {self.backend_label}"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "options": asdict(self.options)})

    @classmethod
    def from_json(cls, text: str) -> Cell:
        d = json.loads(text)
        opts = d["options"]
        opts["dask_config"] = tuple(opts.get("dask_config", ()))
        return cls(**{**d, "options": RunOptions(**opts)})


def run_cell(cell: Cell, stream: TextIO = sys.stderr, hooks: Any = None,
             events: Events | None = None) -> dict[str, Any]:
    """Run one cell in this process; return its rows (stages, spans, runs) and notes.

    ``hooks``, if given, has ``started(backend)`` (called once the backend's processes exist,
    before the first run) and ``finished(backend)`` (after the last run, before closing).
    ``events`` receives the progress (default: lines on ``stream``). Ctrl-C during the runs
    ends the cell early: the result then has ``interrupted`` true and the finished repeats."""
    events = events if events is not None else PlainEvents(cell.label(), stream)
    backend = make_backend(cell.backend, cell.options)
    out: dict[str, Any] = {"stages": [], "spans": [], "runs": [], "notes": [],
                           "merged": dict(backend.merged), "backend": {}}
    with backend:
        out["backend"] = backend.describe()
        if hooks is not None:
            hooks.started(backend)
        modes = cell.modes()
        total = cell.warmups + len(modes)
        probe = LoadProbe()
        # built once: a workload is data, every run builds its graph afresh from it
        workload = build_any(cell.workload, cell.n_tasks, cell.source)
        for i in range(total):
            warm = i < cell.warmups
            record = cell.options.record if warm else modes[i - cell.warmups]
            what = "warmup" if warm else f"repeat {i - cell.warmups + 1}/{len(modes)}" + (
                "" if record else " (recording off)")
            try:
                backend.set_record(record)
                # how fast the machine is just now (compare withholds verdicts it changed)
                calibration = None if warm else calibrate()
                events.started(what, workload.n_tasks)
                peak_rss(reset=True)  # this process is the client: a new peak per run
                probe.start()
                m = backend.run_once(workload, progress=events)
                other_load = probe.stop()
                m.peak_rss.setdefault("client", peak_rss())
            except KeyboardInterrupt:
                out["interrupted"] = True
                break
            except Exception as e:
                if workload.dask is None or isinstance(e, BackendError | WorkloadError):
                    raise
                raise graph_failed(workload, cell.backend, e) from e
            wall = (m.t_end_ns - m.t0_ns) / 1e9
            events.done(what, wall)
            if warm:
                continue
            key = {"backend": cell.backend_label, "workload": cell.workload,
                   "n_tasks": workload.n_tasks, "repeat": i - cell.warmups}
            if record:  # recording off measured no stage: no stage rows at all
                out["stages"] += stage_rows(m, key, workload.n_tasks, backend.applicable)
            out["spans"] += span_rows(m, key)
            out["runs"].append({**run_row(m, key), "recorded": record,
                                "calibration_s": calibration, "other_load": other_load,
                                "cpu_s": probe.own_s})
            out["notes"] += m.notes
            out.setdefault("params", {})[cell.workload] = workload.params
        if hooks is not None:
            hooks.finished(backend)
    overhead = record_overhead(out["runs"])
    cpu_overhead = record_overhead(out["runs"], "cpu_s")
    for row in out["runs"]:
        row["record_overhead"] = overhead
        row["record_overhead_cpu"] = cpu_overhead
    return out


def record_overhead(runs: list[dict[str, Any]], column: str = "wall_s") -> float | None:
    """Median ``column`` (wall time) of the recorded runs over that of the unrecorded ones,
    minus 1 (0.05: recording made the runs 5 % slower); None without runs of both kinds."""
    import statistics

    on = [r[column] for r in runs if r["recorded"] and r.get(column) is not None]
    off = [r[column] for r in runs if not r["recorded"] and r.get(column) is not None]
    if not on or not off or statistics.median(off) <= 0:
        return None
    return statistics.median(on) / statistics.median(off) - 1.0


def _stop(proc: subprocess.Popen[str], grace: float) -> None:
    """Wait ``grace`` seconds for ``proc`` to end, then terminate it, then kill it."""
    try:
        proc.wait(grace)
        return
    except subprocess.TimeoutExpired:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _run_cell_child(cell: Cell, timeout: float | None,
                    progress: GridProgress | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="stagecost-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "harness.child", cell.to_json(), str(result)]
        env = {**os.environ, EVENTS_ENV: "1"}
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, bufsize=1)
        show = progress.feed if progress is not None else sys.stderr.write
        reader = threading.Thread(target=lambda: [show(line) for line in proc.stderr or ()],
                                  name="stagecost-child-stderr", daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _stop(proc, 0.0)
            raise TimeoutError(f"{cell.label()} did not finish within {timeout} s") from None
        except KeyboardInterrupt:
            # Ctrl-C in a terminal reaches the child too, and the child says so; a SIGINT
            # sent to this process alone does not: then pass it on, so that the child stops
            # and writes what it has (once: a second one would cut its cleanup short).
            if progress is not None:
                progress.hush()
                progress.child_interrupted.wait(1.0)
            told = progress is not None and progress.child_interrupted.is_set()
            if not told and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            _stop(proc, INTERRUPT_GRACE)
            reader.join(5)
            try:
                partial = json.loads(result.read_text()) if result.exists() else None
            except ValueError:  # killed while writing: nothing usable
                partial = None
            raise CellInterrupted(partial) from None
        finally:
            reader.join(5)
        doc = json.loads(result.read_text()) if result.exists() else {}
        if code != 0 or "error" in doc:
            why = doc.get("error") or "its error is printed above"
            raise RuntimeError(f"{cell.label()} failed (exit code {code}): {why}")
        return doc


def environment() -> dict[str, Any]:
    """Versions and machine facts for meta.json."""
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("stagecost", "numpy", "pandas", "msgpack", "cloudpickle", "dask",
                "distributed", "matplotlib", "py-spy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f
                        if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        import psutil

        mem = int(psutil.virtual_memory().total)
    except Exception:
        mem = None
    machine = {"cpu": cpu, "logical_cores": os.cpu_count(), "memory_bytes": mem,
               "platform": platform.platform(), "hostname": platform.node()}
    return {"versions": versions, "machine": machine, "git_commit": _git_commit()}


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def default_run_dir(root: Path, workloads: list[str], sizes: list[int],
                    backends: list[str]) -> Path:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = "-".join(["+".join(workloads), "+".join(str(n) for n in sizes),
                     "+".join(backends)])
    if len(name) > 120:
        name = name[:120]
    path = root / f"{stamp}-{name}"
    i = 1
    while path.exists():
        i += 1
        path = root / f"{stamp}-{name}-{i}"
    return path


def run_grid(workloads: list[str], sizes: list[int], backends: list[str],
             options: RunOptions, *, repeats: int = 3, warmups: int = 1,
             encodings: list[str] | None = None,
             run_dir: Path, in_process: bool = False, timeout: float | None = None,
             parameters: dict[str, Any] | None = None, render: bool = True,
             hooks: Any = None, sources: dict[str, str] | None = None,
             overhead: bool = True) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """Run every cell, write the run folder, render its report; return (folder, stages,
    runs). Cells run in child processes unless ``in_process`` (or ``hooks``: a profiler
    needs the cells' processes, so hooks imply in-process cells). ``hooks.extra()`` may add
    ``(profile_stages DataFrame, meta additions)`` to the run folder. ``sources`` maps a
    workload name to work pickled by ``stagecost.measure``. ``overhead`` false runs only
    recorded repeats (no record-off ones: see the module's rules). A cell whose workload cannot
    run on its backend (Dask's p2p shuffle off distributed) is not run: the report says
    why, and it does not count as failed."""
    from harness.report.schema import SCHEMA_VERSION, write_tables

    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    if repeats < 1 or warmups < 0:
        raise ValueError("repeats must be >= 1 and warmups >= 0")
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    stages: list[dict[str, Any]] = []
    spans: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    merged: dict[str, str] = {}
    described: dict[str, Any] = {}
    workload_params: dict[str, Any] = {}
    from dataclasses import replace

    encodings = encodings or [options.encoding]
    sources = sources or {}
    cells = [Cell(w, n, b, replace(options, encoding=e), repeats, warmups,
                  label_encoding=len(encodings) > 1 and b in ENCODED_BACKENDS,
                  source=sources.get(w), overhead=overhead)
             for w in workloads for n in sizes for b in backends
             for e in (encodings if b in ENCODED_BACKENDS else encodings[:1])]
    skipped: list[dict[str, str]] = []
    for w in workloads:
        for b in backends:
            why = not_applicable(w, b)
            if why:
                skipped.append({"cell": f"{w} on {b}", "reason": why})
                notes.append(f"{b}: {w} not applicable: {why}")
                print(f"[{w} {b}] not applicable: {why}", file=sys.stderr, flush=True)
    cells = [c for c in cells if not not_applicable(c.workload, c.backend)]
    if not cells:
        raise ValueError("no configuration applies: " + "; ".join(
            f"{s['cell']}: {s['reason']}" for s in skipped))
    failed: list[dict[str, str]] = []
    interrupted: dict[str, Any] | None = None
    progress = GridProgress([CellPlan(c.label(), c.runs_total, c.n_tasks) for c in cells])
    try:
        for i, cell in enumerate(cells):
            n, b = cell.n_tasks, cell.backend_label
            progress.cell(i)
            res: dict[str, Any] | None
            if in_process or hooks is not None:
                res = run_cell(cell, hooks=hooks, events=progress.events())
            else:
                try:
                    res = _run_cell_child(cell, timeout, progress)
                except CellInterrupted as e:
                    res = e.result or {"interrupted": True}
                    res["interrupted"] = True
                except (TimeoutError, RuntimeError) as e:  # keep the other cells' results
                    progress.write(f"[{cell.label()}] abandoned: {e}")
                    failed.append({"cell": cell.label(), "error": str(e)})
                    notes.append(f"{b}: {cell.workload} n={n:,} has no result: {e}")
                    progress.cell_ended()
                    continue
            if res.get("interrupted"):
                done = len(res.get("runs", []))
                interrupted = {"cell": cell.label(), "repeats_kept": done,
                               "not_run": [c.label() for c in cells[i + 1:]]}
                notes.append(f"{b}: interrupted (Ctrl-C) during {cell.workload} n={n:,}: "
                             f"{done} of {len(cell.modes())} repeats kept; "
                             f"{len(cells) - i - 1} configuration(s) not run")
            stages += res.get("stages", [])
            spans += res.get("spans", [])
            runs += res.get("runs", [])
            notes += [f"{b}: {t}" for t in res.get("notes", []) if f"{b}: {t}" not in notes]
            merged.update(res.get("merged", {}))
            if "backend" in res:
                described[b] = res["backend"]
            for wname, p in res.get("params", {}).items():
                workload_params.setdefault(wname, {})[str(n)] = p
            progress.cell_ended()
            if interrupted is not None:
                break
    finally:
        progress.close()
    if interrupted is not None and not runs:
        raise KeyboardInterrupt  # nothing finished: there is no run to keep
    if failed and len(failed) == len(cells):
        raise RuntimeError("no configuration finished: " + "; ".join(f["error"] for f in failed))
    env = environment()
    meta = {"failed_cells": failed, "not_applicable_cells": skipped, "schema_version": SCHEMA_VERSION, "created_utc": created,
            "parameters": {**(parameters or {}), "workloads": workloads, "sizes": sizes,
                           "backends": backends, "repeats": repeats,
                           "options": asdict(options), "workload_shapes": workload_params,
                           "backend_details": described},
            "versions": env["versions"], "machine": env["machine"],
            "git_commit": env["git_commit"], "warmups": warmups, "notes": notes,
            "merged_stages": merged, "reference_backend": cells[0].backend_label,
            "interrupted": interrupted}
    meta["parameters"]["encodings"] = encodings
    from harness.report.schema import RUNS_COLUMNS, SPANS_COLUMNS, STAGES_COLUMNS

    # with recording off there are no spans: the tables still carry their columns
    stages_df = pd.DataFrame(stages, columns=list(STAGES_COLUMNS)) if not stages else \
        pd.DataFrame(stages)
    spans_df = pd.DataFrame(spans, columns=list(SPANS_COLUMNS)) if not spans else \
        pd.DataFrame(spans)
    runs_df = pd.DataFrame(runs, columns=list(RUNS_COLUMNS)) if not runs else pd.DataFrame(runs)
    for col in PEAK_RSS_COLUMNS[:-1]:  # byte counts stay integers where some are missing
        if col in runs_df:
            runs_df[col] = runs_df[col].astype("Int64")
    run_dir.mkdir(parents=True, exist_ok=True)
    profile_df = None
    if hooks is not None:
        profile_df, more_meta = hooks.extra()
        meta.update(more_meta)
    write_tables(run_dir, stages_df, spans_df, runs_df, meta, profile_df)
    if render:
        from harness.report.render import render_report

        render_report([run_dir], run_dir)
    return run_dir, stages_df, runs_df
